"""The WebAuthn attestation policy: which authenticators may enrol (``IDP_WEBAUTHN_ATTESTATION``).

The ceremony module (``idp.authn.webauthn``, the one door to py_webauthn) asks this module two
things during enrolment:

1. ``current_policy().roots_for(fmt=, aaguid=)`` — the PEM root certificates to pass to
   ``verify_registration_response(pem_root_certs_bytes_by_fmt={fmt: roots})``. py_webauthn
   checks a trust path only when it is given roots, so in mode ``trusted`` an empty answer is
   never returned: ``AttestationRefused`` is raised instead.
2. ``current_policy().enforce(fmt=, aaguid=, has_trust_path=, backup_eligible=)`` after
   py_webauthn verified the response — the rules py_webauthn leaves to us (formats, self
   attestation, AAGUID allow-list, compromised models, synced credentials). Returns a
   ``Verdict`` with the AAGUID and the model name to store.

Modes: ``none`` accepts any authenticator (the demo default); ``trusted`` requires a ``packed``,
``fido-u2f`` or ``tpm`` attestation with a certificate chain (x5c) ending at a root in
``keys/attestation-roots/`` or in a FIDO Metadata Service (MDS3) BLOB the operator placed in
``keys/``. The BLOB is verified (JWS signature, x5c chain up to the configured MDS root,
``nextUpdate``) once per process per file version; a BLOB that fails is logged and ignored
(no roots, no model names from it), it never makes enrolment requests fail with a 500.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from flask import current_app, has_request_context

from idp.errors import IdpError

log = logging.getLogger("idp.authn.attestation")

MODES = ("none", "trusted")
# Formats whose statement can carry a certificate chain we can check against our roots.
TRUSTED_FORMATS = frozenset({"packed", "fido-u2f", "tpm"})
# MDS3 AuthenticatorStatus values that mean the model's keys cannot be trusted.
COMPROMISE_STATUSES = frozenset(
    {
        "ATTESTATION_KEY_COMPROMISE",
        "USER_VERIFICATION_BYPASS",
        "USER_KEY_REMOTE_COMPROMISE",
        "USER_KEY_PHYSICAL_COMPROMISE",
        "REVOKED",
    }
)
ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"
ROOTS_FOLDER = "attestation-roots"
# The real MDS3 BLOB is a few MB; anything far larger is not one.
MAX_BLOB_BYTES = 32 * 1024 * 1024
# One PEM file of a few roots; a larger file in the roots folder is a mistake.
MAX_ROOT_FILE_BYTES = 1024 * 1024
# Algorithms the MDS BLOB may be signed with (JWS, RFC 7518); never ``none`` or HMAC.
BLOB_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
MODEL_NAME_MAX = 200  # SecurityKey.model_name

# reason -> (English, Traditional Chinese): what the person is told.
REASONS: dict[str, tuple[str, str]] = {
    "format": (
        "This kind of security key cannot prove which model it is. Use a hardware security key "
        "approved by your organisation.",
        "此類保安鑰匙無法證明其型號。請使用貴機構核准的硬件保安鑰匙。",
    ),
    "self_attestation": (
        "This security key did not present a manufacturer certificate. Use a hardware security "
        "key approved by your organisation.",
        "此保安鑰匙未有提供製造商證書。請使用貴機構核准的硬件保安鑰匙。",
    ),
    "untrusted": (
        "This security key model is not on the list of trusted models. Use a hardware security "
        "key approved by your organisation.",
        "此保安鑰匙型號不在信任名單上。請使用貴機構核准的硬件保安鑰匙。",
    ),
    "aaguid_not_allowed": (
        "This security key model is not allowed here. Use a hardware security key approved by "
        "your organisation.",
        "此處不接受此保安鑰匙型號。請使用貴機構核准的硬件保安鑰匙。",
    ),
    "compromised": (
        "This security key model has a known security problem and cannot be used. Use another "
        "security key.",
        "此保安鑰匙型號有已知的保安問題而不能使用。請使用另一把保安鑰匙。",
    ),
    "synced": (
        "This is a synced passkey (copied between devices). Corp ID needs a hardware security "
        "key whose key never leaves it.",
        "這是會在裝置之間同步的通行密鑰。Corp ID 需要密鑰不會離開裝置的硬件保安鑰匙。",
    ),
}


class AttestationRefused(IdpError):
    """This security key is not allowed by the attestation policy."""

    status = 400
    code = "attestation_refused"

    def __init__(self, reason: str, message: str = "", **details: Any) -> None:
        self.reason = reason
        # Raised while serving a page's request: in that page's language.
        locale = "en"
        if has_request_context():
            from idp.web import current_locale

            locale = current_locale()
        super().__init__(message or self.text(locale), reason=reason, **details)

    def text(self, locale: str) -> str:
        """The message for a person, in ``locale`` (``zh-Hant*`` or English)."""
        english, chinese = REASONS.get(self.reason, REASONS["untrusted"])
        return chinese if locale.lower().startswith("zh") else english


class MetadataError(Exception):
    """The MDS3 BLOB cannot be used (unreadable, bad signature or chain, out of date)."""


@dataclass(frozen=True)
class Verdict:
    """What enrolment stores about an accepted authenticator."""

    aaguid: str
    model_name: str | None


@dataclass(frozen=True)
class MetadataEntry:
    """One authenticator model of the MDS3 BLOB."""

    aaguid: str
    description: str | None
    roots: tuple[bytes, ...]  # PEM
    status: str | None  # the latest status report's status


@dataclass(frozen=True)
class Metadata:
    """A verified MDS3 BLOB payload, reduced to what the policy uses."""

    number: int
    next_update: dt.date
    entries: dict[str, MetadataEntry] = field(default_factory=dict)


def resolve_mode(config: dict[str, Any]) -> str:
    """The effective mode: the setting, or (when empty) ``none`` in demo mode, else ``trusted``."""
    value = str(config.get("WEBAUTHN_ATTESTATION") or "").strip().lower()
    if not value:
        return "none" if config.get("DEMO") else "trusted"
    if value not in MODES:
        raise ValueError("IDP_WEBAUTHN_ATTESTATION must be none or trusted (or empty)")
    return value


def parse_allowlist(raw: str) -> frozenset[str] | None:
    """The AAGUID allow-list setting as canonical UUID strings; None when empty (no list).

    Raises ``ValueError`` on an entry that is not a UUID."""
    items = [item.strip() for item in str(raw or "").split(",") if item.strip()]
    if not items:
        return None
    allowed = set()
    for item in items:
        try:
            allowed.add(str(uuid.UUID(item)))
        except ValueError:
            raise ValueError(
                f"IDP_WEBAUTHN_AAGUID_ALLOWLIST: {item[:40]!r} is not an AAGUID (a UUID)"
            ) from None
    return frozenset(allowed)


def canonical_aaguid(aaguid: str | None) -> str:
    """``aaguid`` as a lowercase UUID string; the all-zero AAGUID when missing or malformed."""
    try:
        return str(uuid.UUID(str(aaguid or "")))
    except ValueError:
        return ZERO_AAGUID


class Policy:
    """The attestation policy of one app. Thread-safe; reads key files lazily and caches them
    by path and modification time, so a new BLOB or root is picked up without a restart."""

    def __init__(
        self,
        *,
        mode: str,
        roots_dir: Path,
        blob_path: Path | None,
        mds_root_path: Path | None,
        allowlist: frozenset[str] | None,
    ) -> None:
        self.mode = mode
        self.roots_dir = roots_dir
        self.blob_path = blob_path
        self.mds_root_path = mds_root_path
        self.allowlist = allowlist
        self._lock = threading.Lock()
        self._folder_key: tuple[Any, ...] | None = None
        self._folder_roots: tuple[bytes, ...] = ()
        self._blob_key: tuple[Any, ...] | None = None
        self._metadata: Metadata | None = None
        self._highest_no: int | None = None
        self.metadata_error: str | None = None

    # --- what the ceremony asks ------------------------------------------------------------

    def roots_for(self, *, fmt: str, aaguid: str) -> list[bytes]:
        """PEM root certificates for an attestation of format ``fmt`` from model ``aaguid``.

        ``[]`` in mode ``none``. In mode ``trusted`` raises ``AttestationRefused``
        (``format``) for a format we cannot check and (``untrusted``) when no root is known."""
        if self.mode == "none":
            return []
        if fmt not in TRUSTED_FORMATS:
            raise AttestationRefused("format", fmt=fmt)
        roots = list(self.folder_roots())
        entry = self.metadata_entry(aaguid)
        if entry is not None:
            roots.extend(r for r in entry.roots if r not in roots)
        if not roots:
            raise AttestationRefused("untrusted", fmt=fmt, aaguid=canonical_aaguid(aaguid))
        return roots

    def enforce(
        self, *, fmt: str, aaguid: str, has_trust_path: bool, backup_eligible: bool
    ) -> Verdict:
        """Apply the rules py_webauthn leaves to us, after it verified the attestation with the
        roots from ``roots_for``. Returns the ``Verdict`` to store; raises ``AttestationRefused``
        with ``reason`` ``format``, ``self_attestation``, ``untrusted``,
        ``aaguid_not_allowed``, ``compromised`` or ``synced``."""
        aaguid = canonical_aaguid(aaguid)
        entry = self.metadata_entry(aaguid)
        model_name = entry.description if entry is not None else None
        if self.mode == "none":
            return Verdict(aaguid=aaguid, model_name=model_name)
        if fmt not in TRUSTED_FORMATS:
            raise AttestationRefused("format", fmt=fmt, aaguid=aaguid)
        if not has_trust_path:
            raise AttestationRefused("self_attestation", fmt=fmt, aaguid=aaguid)
        # The chain was checked by py_webauthn against roots_for's answer; refuse here too when
        # there is none, so that a caller that skipped roots_for cannot enrol an unchecked key.
        self.roots_for(fmt=fmt, aaguid=aaguid)
        if self.allowlist is not None and aaguid not in self.allowlist:
            raise AttestationRefused("aaguid_not_allowed", fmt=fmt, aaguid=aaguid)
        if entry is not None and entry.status in COMPROMISE_STATUSES:
            raise AttestationRefused("compromised", fmt=fmt, aaguid=aaguid, status=entry.status)
        if backup_eligible:
            raise AttestationRefused("synced", fmt=fmt, aaguid=aaguid)
        return Verdict(aaguid=aaguid, model_name=model_name)

    def model_name(self, aaguid: str) -> str | None:
        """The model's description from the BLOB, or None."""
        entry = self.metadata_entry(aaguid)
        return entry.description if entry is not None else None

    # --- key files ---------------------------------------------------------------------------

    def folder_roots(self) -> tuple[bytes, ...]:
        """Every certificate in ``keys/attestation-roots/*.pem`` (and ``*.crt``, ``*.der``), as
        PEM. Unreadable files are logged and skipped."""
        try:
            files = sorted(
                p
                for p in self.roots_dir.iterdir()
                if p.is_file() and p.suffix.lower() in (".pem", ".crt", ".der", ".cer")
            )
            key: tuple[Any, ...] = tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files
            )
        except OSError:
            return ()
        with self._lock:
            if key == self._folder_key:
                return self._folder_roots
            roots: list[bytes] = []
            for path in files:
                try:
                    roots.extend(_read_certificates(path))
                except (OSError, ValueError) as exc:
                    log.error("attestation root %s skipped: %s", path.name, exc)
            self._folder_key, self._folder_roots = key, tuple(roots)
            return self._folder_roots

    def metadata(self) -> Metadata | None:
        """The verified MDS3 BLOB, or None (no file, or it failed: ``metadata_error`` says
        why). Verified once per file version; out of date once ``nextUpdate`` passed."""
        if self.blob_path is None:
            return None
        try:
            stat = self.blob_path.stat()
        except OSError:
            with self._lock:
                self._blob_key, self._metadata, self.metadata_error = None, None, None
            return None
        root_stat: tuple[Any, ...] = ()
        if self.mds_root_path is not None:
            try:
                rs = self.mds_root_path.stat()
                root_stat = (rs.st_mtime_ns, rs.st_size)
            except OSError:
                root_stat = ("missing",)
        key = (str(self.blob_path), stat.st_mtime_ns, stat.st_size, root_stat)
        with self._lock:
            if key != self._blob_key:
                self._blob_key = key
                self._metadata, self.metadata_error = None, None
                try:
                    loaded = self._load_blob(stat.st_size)
                    if self._highest_no is not None and loaded.number < self._highest_no:
                        raise MetadataError(
                            f"serial number {loaded.number} is older than {self._highest_no},"
                            " the BLOB this process already used"
                        )
                    self._metadata, self._highest_no = loaded, loaded.number
                except MetadataError as exc:
                    self.metadata_error = str(exc)
                    log.error("MDS3 BLOB %s not used: %s", self.blob_path, exc)
            metadata = self._metadata
        if metadata is not None and metadata.next_update < _today():
            if self.metadata_error is None:
                self.metadata_error = f"nextUpdate {metadata.next_update} has passed"
                log.error("MDS3 BLOB %s not used: %s", self.blob_path, self.metadata_error)
            return None
        return metadata

    def metadata_entry(self, aaguid: str) -> MetadataEntry | None:
        metadata = self.metadata()
        if metadata is None:
            return None
        aaguid = canonical_aaguid(aaguid)
        if aaguid == ZERO_AAGUID:
            return None
        return metadata.entries.get(aaguid)

    def _load_blob(self, size: int) -> Metadata:
        assert self.blob_path is not None
        if size > MAX_BLOB_BYTES:
            raise MetadataError(f"the file is larger than {MAX_BLOB_BYTES} bytes")
        if self.mds_root_path is None:
            raise MetadataError("no MDS root certificate is configured")
        try:
            anchors = _read_certificates(self.mds_root_path)
        except (OSError, ValueError) as exc:
            raise MetadataError(
                f"the MDS root {self.mds_root_path} cannot be read: {exc}"
            ) from None
        try:
            with self.blob_path.open("rb") as handle:
                blob = handle.read(MAX_BLOB_BYTES + 1)
        except OSError as exc:
            raise MetadataError(f"the file cannot be read: {exc}") from None
        return load_metadata(blob, anchors=anchors, now=dt.datetime.now(dt.UTC))


def load_metadata(blob: bytes, *, anchors: list[bytes], now: dt.datetime) -> Metadata:
    """Verify an MDS3 BLOB (a JWS whose header ``x5c`` chains to one of ``anchors``, PEM) and
    return its entries. Raises ``MetadataError``.

    FIDO MDS3 §3.1.3: the signing certificate chain must validate (signatures, validity, basic
    constraints, key usage) up to the MDS root, the signature must verify with the first
    certificate's key, and ``nextUpdate`` must not have passed. CRLs are not fetched (nothing
    here goes to the network): the operator replaces the file."""
    if len(blob) > MAX_BLOB_BYTES:
        raise MetadataError(f"the file is larger than {MAX_BLOB_BYTES} bytes")
    try:
        token = blob.decode("ascii").strip()
        header = jwt.get_unverified_header(token)
    except (UnicodeDecodeError, jwt.PyJWTError) as exc:
        raise MetadataError(f"not a JWS in compact form ({_short(exc)})") from None
    alg = header.get("alg")
    if alg not in BLOB_ALGORITHMS:
        raise MetadataError(f"signature algorithm {str(alg)[:20]!r} is not accepted")
    chain = _header_chain(header.get("x5c"))
    _verify_chain(chain, anchors=anchors, now=now)
    try:
        payload = jwt.decode(
            token,
            key=chain[0].public_key(),  # type: ignore[arg-type]
            algorithms=[alg],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise MetadataError("the signature does not verify") from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise MetadataError(f"the BLOB cannot be decoded ({_short(exc)})") from None
    return _parse_payload(payload, today=now.date())


def _header_chain(x5c: Any) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= 8:
        raise MetadataError("the header has no x5c certificate chain (1 to 8 certificates)")
    chain = []
    for item in x5c:
        try:
            if not isinstance(item, str):
                raise ValueError("not a string")
            chain.append(x509.load_der_x509_certificate(base64.b64decode(item, validate=True)))
        except (ValueError, binascii.Error) as exc:
            raise MetadataError(f"an x5c certificate is malformed ({_short(exc)})") from None
    return chain


def _verify_chain(chain: list[x509.Certificate], *, anchors: list[bytes], now: dt.datetime) -> None:
    try:
        store = verification.Store([x509.load_pem_x509_certificate(a) for a in anchors])
    except ValueError as exc:
        raise MetadataError(f"the MDS root cannot be used ({_short(exc)})") from None
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(now)
        .max_chain_depth(8)
        # CA certificates: the Web PKI profile (basicConstraints cA, keyCertSign, ...); the
        # signer itself is the MDS's own end-entity certificate, with no name or EKU to check.
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except verification.VerificationError as exc:
        raise MetadataError(
            f"the signing certificate chain does not validate up to the MDS root ({_short(exc)})"
        ) from None


def _parse_payload(payload: Any, *, today: dt.date) -> Metadata:
    if not isinstance(payload, dict):
        raise MetadataError("the payload is not a JSON object")
    number, next_update, entries = (
        payload.get("no"),
        payload.get("nextUpdate"),
        payload.get("entries"),
    )
    if not isinstance(number, int) or isinstance(number, bool):
        raise MetadataError("the payload has no serial number (no)")
    try:
        next_date = dt.date.fromisoformat(str(next_update))
    except ValueError:
        raise MetadataError("the payload has no valid nextUpdate date") from None
    if next_date < today:
        raise MetadataError(f"nextUpdate {next_date} has passed: download a newer BLOB")
    if not isinstance(entries, list):
        raise MetadataError("the payload has no entries list")
    parsed: dict[str, MetadataEntry] = {}
    for raw in entries:
        item = _parse_entry(raw)
        if item is not None:
            parsed[item.aaguid] = item
    return Metadata(number=number, next_update=next_date, entries=parsed)


def _parse_entry(raw: Any) -> MetadataEntry | None:
    # Only FIDO2 entries (with an AAGUID) are of use here; UAF and U2F entries are skipped.
    if not isinstance(raw, dict) or not isinstance(raw.get("aaguid"), str):
        return None
    try:
        aaguid = str(uuid.UUID(raw["aaguid"]))
    except ValueError:
        return None
    statement = raw.get("metadataStatement")
    statement = statement if isinstance(statement, dict) else {}
    roots: list[bytes] = []
    for item in statement.get("attestationRootCertificates") or []:
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(str(item), validate=True))
        except (ValueError, binascii.Error):
            continue  # one unusable root does not make the model's other roots unusable
        roots.append(cert.public_bytes(serialization.Encoding.PEM))
    return MetadataEntry(
        aaguid=aaguid,
        description=_model_name(statement.get("description")),
        roots=tuple(roots),
        status=_latest_status(raw.get("statusReports")),
    )


def _latest_status(reports: Any) -> str | None:
    """The status of the report with the latest ``effectiveDate`` (the later one in the list on
    a tie or without dates)."""
    if not isinstance(reports, list):
        return None
    latest: tuple[str, int] | None = None
    status = None
    for index, report in enumerate(reports):
        if not isinstance(report, dict) or not isinstance(report.get("status"), str):
            continue
        order = (str(report.get("effectiveDate") or ""), index)
        if latest is None or order >= latest:
            latest, status = order, report["status"]
    return status


def _model_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = "".join(ch for ch in value if ch.isprintable()).strip()
    return name[:MODEL_NAME_MAX] or None


def _short(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__


def _read_certificates(path: Path) -> list[bytes]:
    """The certificates of a PEM (one or more) or DER file, as PEM. Raises ValueError."""
    data = path.read_bytes()[: MAX_ROOT_FILE_BYTES + 1]
    if len(data) > MAX_ROOT_FILE_BYTES:
        raise ValueError("file too large")
    if b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        certs = [x509.load_der_x509_certificate(data)]
    return [c.public_bytes(serialization.Encoding.PEM) for c in certs]


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def build_policy(config: dict[str, Any]) -> Policy:
    """A ``Policy`` from the settings (``app.config["IDP"]``)."""
    keys_dir = Path(config["KEYS_DIR"])
    blob = str(config.get("WEBAUTHN_MDS_BLOB") or "")
    root = str(config.get("WEBAUTHN_MDS_ROOT") or "")
    return Policy(
        mode=resolve_mode(config),
        roots_dir=keys_dir / ROOTS_FOLDER,
        blob_path=keys_dir / blob if blob else None,
        mds_root_path=keys_dir / root if root else None,
        allowlist=parse_allowlist(str(config.get("WEBAUTHN_AAGUID_ALLOWLIST") or "")),
    )


def current_policy() -> Policy:
    """The policy of the current app, built once per process from its settings."""
    policy: Policy | None = current_app.extensions.get("idp.attestation")
    if policy is None:
        policy = build_policy(current_app.config["IDP"])
        current_app.extensions["idp.attestation"] = policy
    return policy
