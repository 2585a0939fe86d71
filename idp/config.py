"""Every setting of Corp ID, read from ``IDP_*`` environment variables.

Each setting has one line saying what it is. ``load_config()`` returns a plain dict that
``create_app`` puts into ``app.config``; tests pass overrides to ``create_app(config)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS: dict[str, Any] = {
    # Issuer identifier: the https URL relying parties see; every endpoint hangs off it.
    "ISSUER": "http://localhost:5000",
    # SQLAlchemy URL; SQLite under instance/ by default, postgresql+psycopg://... at scale.
    "DATABASE_URL": f"sqlite:///{ROOT / 'instance' / 'idp.sqlite3'}",
    # Redis URL for replay caches and rate limits; empty means the database holds them.
    "REDIS_URL": "",
    # Folder of key material (key-encryption key, session secret, attestation roots).
    "KEYS_DIR": str(ROOT / "keys"),
    # Secret from which the key-encryption key and the session secret are derived; empty means
    # random files under KEYS_DIR (fine for one machine, set it when several machines serve).
    "SECRET_KEY": "",
    # Demo mode: enables demo-only conveniences (e.g. http issuer on non-loopback) and nothing else.
    "DEMO": False,
    # Lifetime of authorization codes in seconds (SECURITY.md: at most 60).
    "CODE_TTL": 60,
    # Lifetime of a pushed authorization request's request_uri in seconds (RFC 9126; < 600).
    "PAR_TTL": 60,
    # Lifetime of JWT access tokens in seconds.
    "ACCESS_TOKEN_TTL": 600,
    # Lifetime of ID tokens in seconds.
    "ID_TOKEN_TTL": 600,
    # Lifetime of a refresh token family in seconds (absolute, from the first login).
    "REFRESH_TOKEN_TTL": 30 * 24 * 3600,
    # Algorithm that signs access tokens (ES256 is fast and small).
    "ACCESS_TOKEN_ALG": "ES256",
    # Seconds a new signing key is published in JWKS before it signs anything.
    "KEY_ROTATION_OVERLAP": 3600,
    # Seconds a process caches the published key set before reading it again.
    "JWKS_CACHE_TTL": 10,
    # Seconds a worker may reuse a client record it read (0 disables). Bounds how long a
    # disabled client or a rotated secret keeps working on *other* workers; the worker that made
    # the change forgets at once.
    "CLIENT_CACHE_TTL": 5,
    # Default lifetime of a consent in seconds, when the request names no duration (365 days).
    "CONSENT_TTL": 365 * 24 * 3600,
    # Longest consent a relying party may ask for with an authorization_details duration.
    "CONSENT_MAX_TTL": 2 * 365 * 24 * 3600,
    # Seconds a worker may answer an access token it found active from memory, while the
    # shared revocation epoch in Redis is unchanged (idp.oauth.active_cache; 0 disables, and
    # nothing is cached without IDP_REDIS_URL). Revocations are seen at once regardless.
    "ACTIVE_TOKEN_CACHE_TTL": 30,
    # Lifetime of invitation links in seconds (7 days).
    "INVITE_TTL": 7 * 24 * 3600,
    # Maximum age, in seconds, of a client assertion's exp-iat window (RFC 7523).
    "CLIENT_ASSERTION_MAX_AGE": 300,
    # Clock skew allowed when checking client assertions, in seconds.
    "CLOCK_SKEW": 30,
    # Requests allowed per client per minute at the token, introspection and revocation
    # endpoints (0 disables).
    "RATE_LIMIT_CLIENT_PER_MINUTE": 60_000,
    # Requests allowed per source address per minute at the same endpoints (0 disables).
    "RATE_LIMIT_SOURCE_PER_MINUTE": 30_000,
    # Largest request body accepted, in bytes (a fast 413 beyond it).
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Largest register CSV the operator console accepts (one route); bigger ones: the CLI.
    "REGISTER_UPLOAD_MAX_BYTES": 5 * 1024 * 1024,
    # Largest JWT (client assertion, id_token_hint, token to introspect) accepted, in bytes.
    "MAX_JWT_LENGTH": 8 * 1024,
    # Idle timeout of a sign-in session in seconds.
    "SESSION_IDLE_TTL": 30 * 60,
    # Absolute lifetime of a sign-in session in seconds.
    "SESSION_ABSOLUTE_TTL": 12 * 3600,
    # WebAuthn RP ID: the issuer's host or a registrable suffix of it; empty = the issuer's host.
    "WEBAUTHN_RP_ID": "",
    # Name of the relying party shown by the browser and the security key.
    "WEBAUTHN_RP_NAME": "Corp ID",
    # Seconds a WebAuthn challenge (enrolment or sign-in) stays valid; single-use either way.
    "WEBAUTHN_CHALLENGE_TTL": 300,
    # Milliseconds the browser waits for the security key (the ceremony's timeout option).
    "WEBAUTHN_TIMEOUT_MS": 120_000,
    # Failed sign-ins allowed per source address per minute before 429 (0 disables).
    "LOGIN_FAILURES_PER_SOURCE_PER_MINUTE": 30,
    # Failed sign-ins allowed against one person per minute before 429 (0 disables).
    "LOGIN_FAILURES_PER_PERSON_PER_MINUTE": 10,
    # Enrolment requests (options and verify) allowed per source address per minute (0 disables).
    "ENROL_RATE_LIMIT_SOURCE_PER_MINUTE": 60,
    # Lifetime of back-channel logout tokens in seconds (each attempt signs a fresh one).
    "BACKCHANNEL_LOGOUT_TOKEN_TTL": 120,
    # Seconds to wait for a relying party's back-channel logout URI (connect and answer each).
    "BACKCHANNEL_LOGOUT_TIMEOUT": 5,
    # Attempts at delivering one back-channel logout before giving up.
    "BACKCHANNEL_LOGOUT_ATTEMPTS": 5,
    # Seconds before the first retry; each later retry waits four times longer (30 s: ~40 min).
    "BACKCHANNEL_LOGOUT_RETRY_DELAY": 30,
    # Threads per process sending back-channel logouts off the request (0: only the
    # `idp logout deliver` command sends them).
    "BACKCHANNEL_LOGOUT_THREADS": 4,
    # Comma-separated company data sources, in order; each category comes from the first
    # that provides it (idp.data.services.SOURCE_TYPES names them; "register" is the import).
    "DATA_SOURCES": "register",
    # IDA trust_framework named in verified_claims of data from the imported register.
    "DATA_TRUST_FRAMEWORK": "corp_id_register",
    # Seconds between rounds of each process's audit sealer thread linking committed events
    # into the hash chain (0: no thread, only `idp audit seal` / `idp audit verify` seal).
    "AUDIT_SEAL_INTERVAL": 1,
    # Log level for the idp logger.
    "LOG_LEVEL": "INFO",
    # WebAuthn attestation policy: none (any authenticator) or trusted (certified hardware keys
    # chained to keys/attestation-roots/ or the MDS3 BLOB); empty = none in demo, else trusted.
    "WEBAUTHN_ATTESTATION": "",
    # FIDO Metadata Service (MDS3) BLOB file, relative to KEYS_DIR; empty disables it.
    "WEBAUTHN_MDS_BLOB": "mds3.jwt",
    # PEM trust anchor (FIDO's MDS root) the BLOB's signing chain must end at, relative to KEYS_DIR.
    "WEBAUTHN_MDS_ROOT": "mds-root.pem",
    # Comma-separated AAGUIDs allowed to enrol in trusted mode; empty = no allow-list.
    "WEBAUTHN_AAGUID_ALLOWLIST": "",
    # Seconds in the past a DPoP proof's iat may be (RFC 9449 §11.1); older proofs are refused.
    "DPOP_IAT_WINDOW": 60,
    # Seconds in the future a DPoP proof's iat may be (clock skew of the client).
    "DPOP_IAT_LEEWAY": 5,
    # Seconds one DPoP server nonce slot lasts; a nonce is accepted for one to two slots.
    "DPOP_NONCE_LIFETIME": 300,
    # Require a DPoP server nonce from fapi2 clients at the token and resource endpoints.
    "DPOP_REQUIRE_NONCE_FAPI2": True,
}

_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}


def _coerce(name: str, default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        try:
            return _BOOL[raw.strip().lower()]
        except KeyError:
            raise ValueError(f"IDP_{name} must be a boolean, not {raw!r}") from None
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"IDP_{name} must be an integer, not {raw!r}") from None
    return raw


def load_config(
    overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """Return the settings: defaults, then ``IDP_*`` variables, then ``overrides``."""
    env = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for name, default in DEFAULTS.items():
        raw = env.get(f"IDP_{name}")
        if raw is not None:
            config[name] = _coerce(name, default, raw)
    if overrides:
        config.update(overrides)
    config["ISSUER"] = str(config["ISSUER"]).rstrip("/")
    validate_config(config)
    return config


def validate_config(config: dict[str, Any]) -> None:
    """Refuse settings that would make the provider unsafe."""
    issuer = config["ISSUER"]
    if not (issuer.startswith("https://") or _is_loopback_http(issuer)):
        raise ValueError("IDP_ISSUER must be an https URL (http only on localhost)")
    if config["CODE_TTL"] > 60 or config["CODE_TTL"] <= 0:
        raise ValueError("IDP_CODE_TTL must be between 1 and 60 seconds")
    if not 0 < int(config.get("PAR_TTL", 60)) < 600:
        raise ValueError("IDP_PAR_TTL must be between 1 and 599 seconds")
    if config["ACCESS_TOKEN_ALG"] not in ("ES256", "RS256", "PS256", "EdDSA"):
        raise ValueError("IDP_ACCESS_TOKEN_ALG must be ES256, RS256, PS256 or EdDSA")
    rp_id = str(config.get("WEBAUTHN_RP_ID") or "")
    host = (urlsplit(issuer).hostname or "").lower()
    if rp_id and not (rp_id.lower() == host or host.endswith("." + rp_id.lower())):
        raise ValueError("IDP_WEBAUTHN_RP_ID must be the issuer's host or a suffix of it")
    if not 30 <= int(config.get("WEBAUTHN_CHALLENGE_TTL", 300)) <= 600:
        raise ValueError("IDP_WEBAUTHN_CHALLENGE_TTL must be between 30 and 600 seconds")
    timeout_ms = int(config.get("WEBAUTHN_TIMEOUT_MS", 120_000))
    if not 1_000 <= timeout_ms <= int(config.get("WEBAUTHN_CHALLENGE_TTL", 300)) * 1000:
        raise ValueError(
            "IDP_WEBAUTHN_TIMEOUT_MS must be at least 1000 and no longer than the challenge lives"
        )
    if not 1 <= int(config.get("DPOP_IAT_WINDOW", 60)) <= 600:
        raise ValueError("IDP_DPOP_IAT_WINDOW must be between 1 and 600 seconds")
    if not 1 <= int(config.get("DPOP_NONCE_LIFETIME", 300)) <= 3600:
        raise ValueError("IDP_DPOP_NONCE_LIFETIME must be between 1 and 3600 seconds")
    _validate_attestation(config)


def _validate_attestation(config: dict[str, Any]) -> None:
    from idp.authn.attestation import parse_allowlist, resolve_mode

    resolve_mode(config)  # raises on a value other than none, trusted or empty
    parse_allowlist(str(config.get("WEBAUTHN_AAGUID_ALLOWLIST") or ""))
    for name in ("WEBAUTHN_MDS_BLOB", "WEBAUTHN_MDS_ROOT"):
        if "\x00" in str(config.get(name) or ""):
            raise ValueError(f"IDP_{name} must be a file name")


def _is_loopback_http(url: str) -> bool:
    for host in ("http://localhost", "http://127.0.0.1", "http://[::1]"):
        if url == host or url.startswith(host + ":") or url.startswith(host + "/"):
            return True
    return False
