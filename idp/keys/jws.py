"""The one module that signs and verifies our own JWTs (PyJWT behind it).

Everything Corp ID signs — ID tokens, access tokens (RFC 9068), logout tokens — goes through
``sign``; our own tokens presented back to us (access tokens, ``id_token_hint``) go through
``verify``, which accepts only our published keys, only their registered algorithm, never
``none`` and never a key named by the token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

import jwt

from idp.keys import services

HASH_FOR_ALG = {
    "RS256": hashlib.sha256,
    "PS256": hashlib.sha256,
    "ES256": hashlib.sha256,
    "EdDSA": hashlib.sha512,
}


# The ``typ`` of our ID tokens (PyJWT's default header, "JWT"), compared in lower case: it
# tells an ID token presented back to us (id_token_hint) from an access token (at+jwt) or a
# logout token (logout+jwt).
ID_TOKEN_TYP = "jwt"  # noqa: S105 - a media type


class InvalidJWT(Exception):
    """The token is malformed, not signed by one of our keys, or its claims are wrong."""


def sign(claims: dict[str, Any], *, alg: str, typ: str | None = None) -> str:
    """Sign ``claims`` with the active key for ``alg``; the header names its ``kid``."""
    kid, key = services.signing_key(alg)
    headers: dict[str, Any] = {"kid": kid}
    if typ:
        headers["typ"] = typ
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def half_hash(value: str, *, alg: str) -> str:
    """``at_hash``/``c_hash``: left half of the hash of ``value`` (OIDC Core 3.1.3.6).

    For EdDSA over Ed25519 the hash is SHA-512, as the OpenID Foundation's errata say."""
    digest = HASH_FOR_ALG[alg](value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to choose the key: PyJWT reads and checks it again (and the
    signature covers it) when it decodes. Cheaper than a second full PyJWT parse."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidJWT("malformed header") from exc
    if not isinstance(header, dict):
        raise InvalidJWT("malformed header")
    return header


def verify(
    token: str,
    *,
    issuer: str,
    typ: str | None = None,
    audience: str | None = None,
    max_length: int = 8192,
    verify_exp: bool = True,
) -> dict[str, Any]:
    """Check a JWT we issued and return its claims, or raise ``InvalidJWT``."""
    if not isinstance(token, str) or len(token) > max_length or token.count(".") != 2:
        raise InvalidJWT("not a compact JWS")
    header = _header(token)
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidJWT("no kid")
    if typ is not None and str(header.get("typ", "")).lower() not in (typ, f"application/{typ}"):
        raise InvalidJWT("wrong typ")
    found = services.verification_key(kid)
    if found is None:
        raise InvalidJWT("unknown key")
    alg, key = found
    if header.get("alg") != alg:
        raise InvalidJWT("wrong alg")
    options: Any = {
        "verify_aud": audience is not None,
        "verify_exp": verify_exp,
        "require": ["iss", "iat"] + (["exp"] if verify_exp else []),
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            issuer=issuer,
            audience=audience,
            options=options,
            leeway=0,
        )
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidJWT(str(exc)) from exc
    return claims
