"""The relying-party service: registration, settings, secrets and disabling of OAuth clients.

Every registration rule lives here, so the CLI, the operator console and tests get the same
checks. Client secrets are shown once and stored only as their SHA-256 digest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt
from sqlalchemy import select, update

from idp.audit.services import record
from idp.clients.models import AuthMethod, Client, ClientProfile, ClientStatus, SubjectType
from idp.db import new_public_id, utcnow
from idp.errors import ConflictError, NotFoundError, ValidationError
from idp.extensions import db
from idp.oauth.discovery import SCOPES
from idp.oauth.models import Grant
from idp.security import CLIENT_SECRET_PREFIX, digest, new_secret

GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
DEFAULT_GRANT_TYPES = ("authorization_code", "refresh_token")
DEFAULT_SCOPES = ("openid", "profile", "email", "corp")
ID_TOKEN_ALGS = ("RS256", "ES256", "PS256", "EdDSA")
# FAPI 2.0 Security Profile §5.4.1: PS256, ES256 or EdDSA only.
FAPI2_ALGS = ("PS256", "ES256", "EdDSA")
SECRET_METHODS = (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# JWK members that only private or symmetric keys carry (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048
MAX_URIS = 50
MAX_URI_LENGTH = 2000
MAX_JWKS_KEYS = 20

# Fields an operator may change after registration (see ``update_client``).
UPDATABLE = (
    "name",
    "redirect_uris",
    "auth_method",
    "jwks",
    "jwks_uri",
    "scopes",
    "grant_types",
    "id_token_alg",
    "subject_type",
    "post_logout_redirect_uris",
    "backchannel_logout_uri",
    "profile",
    "members_authorised_only",
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What ``new_client_id`` makes (URL-safe base64), within the column's 64 characters.
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# --- validation -------------------------------------------------------------------------------


def validate_uri(uri: object, *, field: str, https_only: bool = False) -> str:
    """Check one registered URL and return it unchanged (matching is by exact string).

    Absolute, no fragment, no credentials; https, or http on a loopback host (native apps and
    development) unless ``https_only``. Raises ``ValidationError``.
    """
    if not isinstance(uri, str) or not uri:
        raise ValidationError(f"{field}: a URL is required")
    if len(uri) > MAX_URI_LENGTH:
        raise ValidationError(f"{field}: URL longer than {MAX_URI_LENGTH} characters")
    if _CONTROL.search(uri) or " " in uri:
        raise ValidationError(f"{field}: URL contains whitespace or control characters")
    if "#" in uri:
        raise ValidationError(f"{field}: URL must not contain a fragment: {uri}")
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        raise ValidationError(f"{field}: not a valid URL: {uri}") from None
    if not parts.scheme or not parts.netloc or not host:
        raise ValidationError(f"{field}: URL must be absolute: {uri}")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(f"{field}: URL must not contain credentials: {uri}")
    if "*" in parts.netloc:
        raise ValidationError(f"{field}: wildcards are not allowed: {uri}")
    if parts.scheme == "https":
        return uri
    if parts.scheme == "http" and host in LOOPBACK_HOSTS and not https_only:
        return uri
    if https_only:
        raise ValidationError(f"{field}: URL must use https: {uri}")
    raise ValidationError(f"{field}: URL must use https (http only on a loopback host): {uri}")


def _uri_list(uris: Iterable[str] | None, *, field: str) -> list[str]:
    if uris is None:
        return []
    if isinstance(uris, str):
        raise ValidationError(f"{field}: a list of URLs is required")
    checked = [validate_uri(u, field=field) for u in uris]
    if len(checked) > MAX_URIS:
        raise ValidationError(f"{field}: at most {MAX_URIS} URLs")
    return list(dict.fromkeys(checked))


def _subset(
    values: Iterable[str] | None, *, allowed: tuple[str, ...], default: tuple[str, ...], field: str
) -> list[str]:
    if values is None:
        return list(default)
    if isinstance(values, str):
        raise ValidationError(f"{field}: a list is required")
    chosen = list(dict.fromkeys(values))
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise ValidationError(
            f"{field}: unsupported {', '.join(map(str, unknown))}; choose from {', '.join(allowed)}"
        )
    if not chosen:
        raise ValidationError(f"{field}: at least one is required")
    return chosen


def _enum(enum_type: Any, value: object, *, field: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(m.value for m in enum_type)
        raise ValidationError(f"{field}: {value!r} is not one of {choices}") from None


def validate_jwks(jwks: object) -> dict[str, Any]:
    """Check a client's JWK Set and return it. Only public signing keys are accepted.

    Raises ``ValidationError`` for a key with private or symmetric members, an unparsable key,
    an RSA key shorter than 2048 bits, or several keys without distinct ``kid`` values.
    """
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ValidationError('jwks: a JWK Set {"keys": [...]} is required')
    keys = jwks["keys"]
    if not keys:
        raise ValidationError("jwks: the key set is empty")
    if len(keys) > MAX_JWKS_KEYS:
        raise ValidationError(f"jwks: at most {MAX_JWKS_KEYS} keys")
    kids = []
    for index, key in enumerate(keys):
        if not isinstance(key, Mapping):
            raise ValidationError(f"jwks: key {index} is not a JSON object")
        if key.get("kty") == "oct":
            raise ValidationError(f"jwks: key {index} is symmetric (kty oct); only public keys")
        private = [m for m in PRIVATE_JWK_MEMBERS if m in key]
        if private:
            raise ValidationError(
                f"jwks: key {index} has private members "
                f"({', '.join(private)}); register only public keys"
            )
        try:
            # Parsing only (no signing here): PyJWT knows every JWK shape we accept.
            parsed = jwt.PyJWK(dict(key))
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ValidationError(f"jwks: key {index} is not a valid public JWK: {exc}") from None
        size = getattr(parsed.key, "key_size", None)
        if key.get("kty") == "RSA" and (size is None or size < MIN_RSA_BITS):
            raise ValidationError(
                f"jwks: key {index} is an RSA key shorter than {MIN_RSA_BITS} bits"
            )
        kids.append(key.get("kid"))
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise ValidationError("jwks: several keys need distinct kid values")
    return dict(jwks)


def _name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("name: a name is required")
    name = name.strip()
    if len(name) > 200:
        raise ValidationError("name: at most 200 characters")
    if _CONTROL.search(name):
        raise ValidationError("name: control characters are not allowed")
    return name


def validate_settings(
    *,
    name: object,
    redirect_uris: Iterable[str] | None,
    auth_method: object,
    jwks: object = None,
    jwks_uri: object = None,
    scopes: Iterable[str] | None = None,
    grant_types: Iterable[str] | None = None,
    id_token_alg: object = None,
    subject_type: object = "public",
    post_logout_redirect_uris: Iterable[str] | None = (),
    backchannel_logout_uri: object = None,
    profile: object = "basic",
    members_authorised_only: object = False,
) -> dict[str, Any]:
    """Check a client's settings together; return them normalised, ready for the model.

    Raises ``ValidationError`` naming the first rule broken.
    """
    checked_name = _name(name)
    if not isinstance(members_authorised_only, bool):
        raise ValidationError("members_authorised_only: true or false")
    method = _enum(AuthMethod, auth_method, field="auth_method")
    client_profile = _enum(ClientProfile, profile, field="profile")
    subject = _enum(SubjectType, subject_type, field="subject_type")
    grants = _subset(
        grant_types, allowed=GRANT_TYPES, default=DEFAULT_GRANT_TYPES, field="grant_types"
    )
    allowed_scopes = _subset(scopes, allowed=SCOPES, default=DEFAULT_SCOPES, field="scopes")
    redirects = _uri_list(redirect_uris, field="redirect_uris")
    logout_redirects = _uri_list(post_logout_redirect_uris, field="post_logout_redirect_uris")
    backchannel = (
        validate_uri(backchannel_logout_uri, field="backchannel_logout_uri")
        if backchannel_logout_uri is not None
        else None
    )

    if "authorization_code" in grants and not redirects:
        raise ValidationError("redirect_uris: at least one is required for authorization_code")
    if "refresh_token" in grants and "authorization_code" not in grants:
        raise ValidationError("grant_types: refresh_token needs authorization_code")
    if method is AuthMethod.NONE and "client_credentials" in grants:
        raise ValidationError(
            "grant_types: a public client (auth_method none) cannot use client_credentials"
        )

    if jwks is not None and jwks_uri is not None:
        raise ValidationError("give jwks or jwks_uri, not both")
    checked_jwks = validate_jwks(jwks) if jwks is not None else None
    checked_jwks_uri = (
        validate_uri(jwks_uri, field="jwks_uri", https_only=True) if jwks_uri is not None else None
    )
    if method is AuthMethod.PRIVATE_KEY_JWT and checked_jwks is None and checked_jwks_uri is None:
        raise ValidationError("private_key_jwt needs the client's public keys: jwks or jwks_uri")

    if id_token_alg is None:
        id_token_alg = "PS256" if client_profile is ClientProfile.FAPI2 else "RS256"
    if id_token_alg not in ID_TOKEN_ALGS:
        raise ValidationError(
            f"id_token_alg: {id_token_alg!r} is not one of {', '.join(ID_TOKEN_ALGS)}"
        )
    if client_profile is ClientProfile.FAPI2:
        if method is not AuthMethod.PRIVATE_KEY_JWT:
            raise ValidationError("profile fapi2: auth_method must be private_key_jwt")
        if id_token_alg not in FAPI2_ALGS:
            raise ValidationError(
                f"profile fapi2: id_token_alg must be one of {', '.join(FAPI2_ALGS)}"
            )

    sector = None
    if subject is SubjectType.PAIRWISE:
        hosts = {urlsplit(u).hostname for u in redirects}
        if len(hosts) != 1:
            raise ValidationError(
                "subject_type pairwise: the redirect URIs must all share one "
                "host (it identifies the sector)"
            )
        sector = hosts.pop()

    return {
        "name": checked_name,
        "auth_method": method,
        "redirect_uris": redirects,
        "post_logout_redirect_uris": logout_redirects,
        "backchannel_logout_uri": backchannel,
        "jwks": checked_jwks,
        "jwks_uri": checked_jwks_uri,
        "scopes": allowed_scopes,
        "grant_types": grants,
        "id_token_alg": id_token_alg,
        "subject_type": subject,
        "sector_identifier": sector,
        "profile": client_profile,
        "members_authorised_only": members_authorised_only,
    }


# --- the service ------------------------------------------------------------------------------


def new_client_id() -> str:
    """A random, URL-safe client_id (128 bits) that does not start with "-" or "_", so that it
    never reads as an option on a command line."""
    while True:
        client_id = new_public_id()
        if client_id[0].isalnum():
            return client_id


def create_client(
    *,
    name: str,
    redirect_uris: Iterable[str],
    auth_method: str,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    scopes: Iterable[str] | None = None,
    grant_types: Iterable[str] | None = None,
    id_token_alg: str | None = None,
    subject_type: str | None = None,
    post_logout_redirect_uris: Iterable[str] = (),
    backchannel_logout_uri: str | None = None,
    profile: str = "basic",
    members_authorised_only: bool = False,
    actor: str = "operator:cli",
) -> tuple[Client, str | None]:
    """Register a relying party. ``subject_type`` defaults to pairwise for ``fapi2`` clients
    (banks must not be able to join their records; the sector is the redirect URIs' host),
    public otherwise.

    Returns ``(client, secret)``: the plaintext secret for ``client_secret_basic`` and
    ``client_secret_post`` clients, shown this once and stored only hashed; ``None`` for
    ``private_key_jwt`` and ``none``. Raises ``ValidationError`` when a setting breaks a rule.
    """
    if subject_type is None:
        subject_type = "pairwise" if profile == ClientProfile.FAPI2.value else "public"
    settings = validate_settings(
        name=name,
        redirect_uris=redirect_uris,
        auth_method=auth_method,
        jwks=jwks,
        jwks_uri=jwks_uri,
        scopes=scopes,
        grant_types=grant_types,
        id_token_alg=id_token_alg,
        subject_type=subject_type,
        post_logout_redirect_uris=post_logout_redirect_uris,
        backchannel_logout_uri=backchannel_logout_uri,
        profile=profile,
        members_authorised_only=members_authorised_only,
    )
    secret = new_secret(CLIENT_SECRET_PREFIX) if settings["auth_method"] in SECRET_METHODS else None
    client = Client(
        client_id=new_client_id(),
        secret_hash=digest(secret) if secret else None,
        status=ClientStatus.ACTIVE,
        **settings,
    )
    db.session.add(client)
    record(
        "clients:client:create",
        actor=actor,
        subject=f"client:{client.client_id}",
        details={
            "name": client.name,
            "auth_method": client.auth_method.value,
            "redirect_uris": client.redirect_uris,
            "grant_types": client.grant_types,
            "scopes": client.scopes,
            "profile": client.profile.value,
            "members_authorised_only": client.members_authorised_only,
        },
    )
    db.session.commit()
    return client, secret


def query_client(client_id: object) -> Client | None:
    """The client with this ``client_id``, active or not; ``None`` if there is none (or the value
    could not be a client_id: PostgreSQL refuses some strings, such as ones holding NUL)."""
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        return None
    return db.session.scalar(select(Client).where(Client.client_id == client_id))


def get_client(client_id: str) -> Client:
    """The client with this ``client_id``, active or not. Raises ``NotFoundError``."""
    client = query_client(client_id)
    if client is None:
        raise NotFoundError(f"no client {client_id!r}")
    return client


def list_clients() -> list[Client]:
    """Every client, oldest first."""
    return list(db.session.scalars(select(Client).order_by(Client.created_at, Client.id)))


def _current_settings(client: Client) -> dict[str, Any]:
    return {
        "name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "auth_method": client.auth_method,
        "jwks": client.jwks,
        "jwks_uri": client.jwks_uri,
        "scopes": list(client.scopes),
        "grant_types": list(client.grant_types),
        "id_token_alg": client.id_token_alg,
        "subject_type": client.subject_type,
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "profile": client.profile,
        "members_authorised_only": client.members_authorised_only,
    }


def update_client(client_id: str, /, *, actor: str = "operator:cli", **changes: Any) -> Client:
    """Change some of a client's settings (names as in ``UPDATABLE``); the result is checked
    with every registration rule. Returns the client.

    Switching to ``private_key_jwt`` or ``none`` deletes the stored secret; switching to a
    secret method leaves the client without one until ``rotate_secret``. Raises
    ``NotFoundError`` and ``ValidationError``.
    """
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise ValidationError(f"cannot change {', '.join(unknown)}")
    client = get_client(client_id)
    current = _current_settings(client)
    settings = validate_settings(**{**current, **changes})
    changed = sorted(k for k, v in settings.items() if getattr(client, k) != v)
    for key in changed:
        setattr(client, key, settings[key])
    if client.auth_method not in SECRET_METHODS:
        client.secret_hash = None
    record(
        "clients:client:update",
        actor=actor,
        subject=f"client:{client.client_id}",
        details={"changed": changed},
    )
    db.session.commit()
    return client


def rotate_secret(client_id: str, *, actor: str = "operator:cli") -> str:
    """Replace a client's secret; the old one stops working at once.

    Returns the new plaintext secret (shown once). Raises ``NotFoundError``, and
    ``ConflictError`` when the client's auth method uses no secret.
    """
    client = get_client(client_id)
    if client.auth_method not in SECRET_METHODS:
        raise ConflictError(
            f"client {client_id} authenticates with {client.auth_method.value}, "
            "which uses no secret"
        )
    secret = new_secret(CLIENT_SECRET_PREFIX)
    client.secret_hash = digest(secret)
    record("clients:client:rotate-secret", actor=actor, subject=f"client:{client.client_id}")
    db.session.commit()
    return secret


def disable_client(client_id: str, *, actor: str = "operator:cli") -> Client:
    """Disable a client and revoke every live grant (token family) issued to it.

    Idempotent. Returns the client. Raises ``NotFoundError``.
    """
    client = get_client(client_id)
    now = utcnow()
    client.status = ClientStatus.DISABLED
    result = db.session.execute(
        update(Grant)
        .where(Grant.client_id == client.id, Grant.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason="client_disabled")
        .execution_options(synchronize_session=False)
    )
    revoked = int(getattr(result, "rowcount", 0) or 0)
    record(
        "clients:client:disable",
        actor=actor,
        subject=f"client:{client.client_id}",
        details={"grants_revoked": revoked},
    )
    db.session.commit()
    return client


def client_as_dict(client: Client) -> dict[str, Any]:
    """The client's registration as plain JSON-ready data; never its secret or secret hash."""
    return {
        "client_id": client.client_id,
        "name": client.name,
        "status": client.status.value,
        "profile": client.profile.value,
        "auth_method": client.auth_method.value,
        "has_secret": client.secret_hash is not None,
        "redirect_uris": list(client.redirect_uris),
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "jwks": client.jwks,
        "jwks_uri": client.jwks_uri,
        "scopes": list(client.scopes),
        "grant_types": list(client.grant_types),
        "id_token_alg": client.id_token_alg,
        "subject_type": client.subject_type.value,
        "sector_identifier": client.sector_identifier,
        "members_authorised_only": client.members_authorised_only,
        # RFC 9126 §6 client metadata: FAPI 2.0 clients must push their requests.
        "require_pushed_authorization_requests": client.profile is ClientProfile.FAPI2,
        "created_at": client.created_at.isoformat() if client.created_at else None,
        "updated_at": client.updated_at.isoformat() if client.updated_at else None,
    }
