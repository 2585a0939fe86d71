"""The one door of our resource endpoints (userinfo, the company data API): the access token
of a request, as a Bearer token (RFC 6750) or as a DPoP-bound token with its proof (RFC 9449
§7), and the 401/403 answers with the right ``WWW-Authenticate`` challenges.

A DPoP-bound token (``cnf.jkt``) is refused as a Bearer token, an unbound token is refused
with the DPoP scheme; with DPoP the proof must be by the bound key, for this method and URL,
and carry ``ath``; tokens of fapi2 clients also need a server nonce
(IDP_DPOP_REQUIRE_NONCE_FAPI2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Response, current_app, json

from idp.clients.models import ClientProfile
from idp.errors import API_HEADERS
from idp.oauth import dpop, tokens
from idp.oauth.discovery import DPOP_SIGNING_ALGS

REALM = "corp-id"
MAX_TOKEN_LENGTH = 8192


@dataclass
class ResourceError(Exception):
    """A refused resource request: HTTP ``status`` (401 or 403), the RFC ``error`` and its
    ``description``, and the response ``headers`` (challenges, ``DPoP-Nonce``)."""

    status: int
    error: str
    description: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.error}: {self.description}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _challenge(
    scheme: str,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    params = [f'realm="{REALM}"'] if scheme == "Bearer" else []
    if error:
        params.append(f'error="{error}"')
        if description:
            params.append(f'error_description="{_quote(description)}"')
    if scope:
        params.append(f'scope="{_quote(scope)}"')  # RFC 6750 §3: the scope that would do
    if scheme == "DPoP":
        params.append(f'algs="{" ".join(DPOP_SIGNING_ALGS)}"')
    return f"{scheme} {', '.join(params)}"


def refuse(
    scheme: str,
    status: int,
    error: str,
    description: str,
    nonce: str | None = None,
    *,
    scope: str | None = None,
) -> ResourceError:
    headers = [("WWW-Authenticate", _challenge(scheme, error, description, scope))]
    if scheme == "Bearer":
        # A client that can do DPoP learns that we accept it (RFC 9449 §7.1).
        headers.append(("WWW-Authenticate", _challenge("DPoP")))
    if nonce:
        headers.append(("DPoP-Nonce", nonce))
    return ResourceError(status, error, description, headers)


def protected_claims(flask_request: Any, *, required_scopes: Iterable[str] = ()) -> dict[str, Any]:
    """The claims of the request's active access token, presented as ``Bearer <token>`` (an
    unbound token) or as ``DPoP <token>`` with a valid proof by its bound key.

    Raises ``ResourceError`` (401 invalid_request / invalid_token / invalid_dpop_proof /
    use_dpop_nonce, 403 insufficient_scope); ``error_response`` turns it into the answer."""
    scheme, _, token = flask_request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    scheme = {"bearer": "Bearer", "dpop": "DPoP"}.get(scheme.lower(), "")
    if not scheme or not token or " " in token or len(token) > MAX_TOKEN_LENGTH:
        error = ResourceError(
            401,
            "invalid_request",
            "Send the access token in an Authorization header (Bearer, or DPoP with a proof).",
            [("WWW-Authenticate", _challenge("Bearer")), ("WWW-Authenticate", _challenge("DPoP"))],
        )
        raise error
    claims = tokens.check_access_token(token)
    if claims is None:
        raise refuse(scheme, 401, "invalid_token", "The access token is not active.")
    cnf = claims.get("cnf")
    bound = cnf.get("jkt") if isinstance(cnf, dict) else None
    if scheme == "Bearer" and bound:
        raise refuse(
            "Bearer",
            401,
            "invalid_token",
            "This access token is DPoP-bound: present it with the DPoP scheme and a proof.",
        )
    if scheme == "DPoP":
        if not isinstance(bound, str):
            raise refuse(
                "DPoP", 401, "invalid_token", "This access token is not DPoP-bound: use Bearer."
            )
        _check_proof(flask_request, token, claims, bound)
    missing = [s for s in required_scopes if s not in str(claims.get("scope", "")).split()]
    if missing:
        raise refuse(
            scheme,
            403,
            "insufficient_scope",
            f"The access token lacks the scope {missing[0]}.",
            scope=" ".join(required_scopes),
        )
    return claims


def _check_proof(flask_request: Any, token: str, claims: dict[str, Any], bound: str) -> None:
    from idp.oauth import authorization

    client = authorization.query_client(claims.get("client_id"))
    fapi2 = client is not None and client.profile is ClientProfile.FAPI2
    require_nonce = fapi2 and bool(current_app.config["IDP"]["DPOP_REQUIRE_NONCE_FAPI2"])
    try:
        proof = dpop.request_proof(
            flask_request,
            dpop.endpoint_url(flask_request),
            access_token=token,
            require_nonce=require_nonce,
        )
    except dpop.DPoPError as exc:
        raise refuse("DPoP", 401, exc.error, exc.description or exc.error, exc.nonce) from None
    if proof is None:
        raise refuse("DPoP", 401, "invalid_dpop_proof", "Send a DPoP proof with the token.")
    if proof.jkt != bound:
        raise refuse(
            "DPoP", 401, "invalid_token", "The DPoP proof key is not the key the token is bound to."
        )


def error_response(exc: ResourceError) -> Response:
    """The JSON answer for a refused resource request (no-store, its challenges)."""
    body = json.dumps({"error": exc.error, "error_description": exc.description})
    response = Response(body, status=exc.status, mimetype="application/json")
    response.headers.update(API_HEADERS)
    for name, value in exc.headers:
        response.headers.add(name, value)
    return response
