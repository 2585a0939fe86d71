"""Signed authorization request objects (RFC 9101 JAR), accepted at the PAR endpoint only, with
the FAPI 2.0 Security Profile's rules (§5.3.2.1: ``exp`` and ``nbf`` required, ``nbf`` at most
60 minutes old, lifetime at most 60 minutes).

The signature is checked with the client's registered keys only (``jwks`` or ``jwks_uri``),
never with a key named by the object's own header, never ``none`` or HMAC. Client-signed JWTs
are verified with joserfc, as ``idp.oauth.grants.PrivateKeyJWT`` verifies client assertions.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

from idp.clients.models import Client, ClientProfile
from idp.oauth.discovery import CLIENT_ASSERTION_ALGS

TYP = "oauth-authz-req+jwt"
# FAPI 2.0 Security Profile §5.4.1 (request objects): PS256 or ES256 for bank clients.
FAPI2_ALGS = ("PS256", "ES256")
MAX_NBF_AGE = 3600
MAX_LIFETIME = 3600
# JWT claims that describe the object itself, not the authorization request.
JWT_CLAIMS = ("iss", "aud", "exp", "nbf", "iat", "jti", "sub")
HEADER_KEY_MEMBERS = ("jwk", "jku", "x5u", "x5c")


class InvalidRequestObject(Exception):
    """The ``request`` parameter is not an acceptable request object."""

    error = "invalid_request_object"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def allowed_algs(client: Client) -> tuple[str, ...]:
    """The request-object algorithms ``client`` may use."""
    return FAPI2_ALGS if client.profile is ClientProfile.FAPI2 else CLIENT_ASSERTION_ALGS


def verify_request_object(
    token: object, *, client: Client, issuer: str, max_length: int, leeway: int = 30
) -> dict[str, str]:
    """Verify a request object sent by the authenticated ``client`` and return its
    authorization request parameters, single-valued strings (objects and arrays as compact
    JSON). Raises ``InvalidRequestObject``."""
    if not isinstance(token, str) or not token:
        raise InvalidRequestObject("The 'request' parameter must be a signed JWT.")
    if len(token) > max_length:
        raise InvalidRequestObject("The request object is too large.")
    header = _header(token)
    alg = header.get("alg")
    algs = allowed_algs(client)
    if alg not in algs:
        raise InvalidRequestObject(
            f"Request objects must be signed with one of {', '.join(algs)} (got {alg!r})."
        )
    typ = header.get("typ")
    if typ is not None and typ != TYP:
        raise InvalidRequestObject(f"The request object's 'typ' must be '{TYP}'.")
    for member in HEADER_KEY_MEMBERS:
        if member in header:
            raise InvalidRequestObject(f"Request objects must not carry '{member}'.")
    claims = _verified_claims(token, client, algs)
    _check_claims(claims, client=client, issuer=issuer, leeway=leeway)
    return _as_params(claims)


def _header(token: str) -> dict[str, Any]:
    from joserfc import jws
    from joserfc.errors import JoseError

    if token.count(".") != 2:
        raise InvalidRequestObject("The request object is not a compact signed JWT.")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError):
        raise InvalidRequestObject("The request object is not a well-formed JWT.") from None
    if not isinstance(header, dict):
        raise InvalidRequestObject("The request object's header is not a JSON object.")
    return dict(header)


def _verified_claims(token: str, client: Client, algs: tuple[str, ...]) -> dict[str, Any]:
    from authlib.oauth2.rfc6749 import InvalidClientError
    from joserfc import jwt
    from joserfc.errors import JoseError, SecurityWarning

    from idp.oauth.grants import PrivateKeyJWT

    try:
        keys = PrivateKeyJWT().resolve_client_public_key(client)
    except (InvalidClientError, ValueError):
        raise InvalidRequestObject("The client has no usable registered keys.") from None
    try:
        with warnings.catch_warnings():
            # joserfc flags the "EdDSA" name as superseded by RFC 9864; it is what OIDC uses.
            warnings.filterwarnings("ignore", category=SecurityWarning, message="EdDSA")
            decoded = jwt.decode(token, keys, algorithms=list(algs))
    except (JoseError, ValueError, TypeError):
        raise InvalidRequestObject(
            "The request object's signature does not verify with the client's keys."
        ) from None
    claims = decoded.claims
    if not isinstance(claims, dict):
        raise InvalidRequestObject("The request object's payload is not a JSON object.")
    return dict(claims)


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if value is None:
        raise InvalidRequestObject(f"The request object must carry '{name}' (FAPI 2.0).")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestObject(f"The request object's '{name}' must be a number.")
    return float(value)


def _check_claims(claims: dict[str, Any], *, client: Client, issuer: str, leeway: int) -> None:
    if claims.get("iss") != client.client_id:
        raise InvalidRequestObject("The request object's 'iss' must be the client_id.")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if issuer not in audiences:
        raise InvalidRequestObject("The request object's 'aud' must be the issuer.")
    if claims.get("client_id") != client.client_id:
        raise InvalidRequestObject(
            "The request object's 'client_id' must be the authenticated client."
        )
    exp = _number(claims, "exp")
    nbf = _number(claims, "nbf")
    now = time.time()
    if exp <= now - leeway:
        raise InvalidRequestObject("The request object has expired.")
    if nbf > now + leeway:
        raise InvalidRequestObject("The request object is not valid yet ('nbf').")
    if nbf < now - MAX_NBF_AGE:
        raise InvalidRequestObject("The request object's 'nbf' is more than 60 minutes old.")
    if exp - nbf > MAX_LIFETIME:
        raise InvalidRequestObject("The request object may live at most 60 minutes (exp - nbf).")
    for nested in ("request", "request_uri"):
        if nested in claims:
            raise InvalidRequestObject(f"A request object must not contain '{nested}'.")


def _as_params(claims: dict[str, Any]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in claims.items():
        if name in JWT_CLAIMS or value is None:
            continue
        if isinstance(value, str):
            params[name] = value
        elif isinstance(value, bool):
            params[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            params[name] = str(int(value)) if float(value).is_integer() else str(value)
        else:
            params[name] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return params
