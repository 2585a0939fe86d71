"""The demo relying party's side of the code flow, as a relying party elsewhere would run it.

Authorization code flow with PKCE (S256), ``state`` and ``nonce``; the authorization response's
``iss`` is checked (RFC 9207); the code is redeemed by Authlib's requests client at the token
endpoint found by discovery; the ID token is verified against the published JWKS (signature,
``iss``, ``aud``, ``exp``, ``iat``, ``nonce``, ``azp``, ``at_hash``); userinfo is fetched with
the access token and must name the same ``sub``.

The demo client is public (``token_endpoint_auth_method: none``): PKCE binds the code to the
browser's transaction, and no secret has to be kept or shown.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

# Seconds the relying party waits for Corp ID on each call.
HTTP_TIMEOUT = 10
SCOPE = "openid profile email corp"
# The ID token algorithm the demo client registered (the default, OIDC Core).
ID_TOKEN_ALGS = ["RS256"]
# Clock skew allowed when checking the ID token's times, in seconds.
LEEWAY = 60


class DemoLoginError(Exception):
    """The login did not complete; the message says why, for the person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class RelyingParty:
    """What the relying party knows of itself and of its provider."""

    issuer: str
    client_id: str
    redirect_uri: str
    post_logout_redirect_uri: str


@dataclass(frozen=True)
class LoginResult:
    id_token: str
    claims: dict[str, Any]
    userinfo: dict[str, Any]
    scope: str
    end_session_endpoint: str | None


def _session(rp: RelyingParty, token: dict[str, Any] | None = None) -> OAuth2Session:
    return OAuth2Session(
        rp.client_id,
        None,
        token_endpoint_auth_method="none",  # noqa: S106 -- a method name
        scope=SCOPE,
        redirect_uri=rp.redirect_uri,
        code_challenge_method="S256",
        token=token,
        default_timeout=HTTP_TIMEOUT,
    )


def _get_json(session: OAuth2Session, url: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = session.get(url, **kwargs)
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise DemoLoginError(f"Corp ID did not answer {url} as expected ({exc}).") from None
    if not isinstance(body, dict):
        raise DemoLoginError(f"Corp ID answered {url} with something other than an object.")
    return body


def discover(rp: RelyingParty) -> dict[str, Any]:
    """The provider's metadata; its ``issuer`` must be the one configured (Discovery §4.3).
    Raises ``DemoLoginError``."""
    with _session(rp) as session:
        metadata = _get_json(
            session, f"{rp.issuer}/.well-known/openid-configuration", withhold_token=True
        )
    if metadata.get("issuer") != rp.issuer:
        raise DemoLoginError("The provider's metadata names another issuer.")
    return metadata


def start_login(rp: RelyingParty, *, ui_locales: str | None = None) -> tuple[str, dict[str, str]]:
    """Begin a login. Returns ``(authorization_url, transaction)``: the browser goes to the
    URL, the relying party keeps the transaction (state, nonce, PKCE verifier) for the
    callback. Raises ``DemoLoginError``."""
    metadata = discover(rp)
    transaction = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "code_verifier": secrets.token_urlsafe(48),
    }
    extra = {"ui_locales": ui_locales} if ui_locales else {}
    with _session(rp) as session:
        url, _ = session.create_authorization_url(
            metadata["authorization_endpoint"],
            state=transaction["state"],
            code_verifier=transaction["code_verifier"],
            nonce=transaction["nonce"],
            **extra,
        )
    return url, transaction


def finish_login(
    rp: RelyingParty, transaction: Mapping[str, str] | None, params: Mapping[str, str]
) -> LoginResult:
    """Complete a login from the authorization response ``params`` and the transaction kept
    since ``start_login``. Returns the verified ID token claims and the userinfo response;
    raises ``DemoLoginError`` on anything unexpected."""
    if not transaction or not params.get("state"):
        raise DemoLoginError("This login was not started here, or it has expired. Start again.")
    if not hmac.compare_digest(str(params["state"]), str(transaction.get("state", ""))):
        raise DemoLoginError("The answer does not belong to this login (state mismatch).")
    metadata = discover(rp)
    if (
        metadata.get("authorization_response_iss_parameter_supported")
        and params.get("iss") != metadata["issuer"]
    ):
        raise DemoLoginError("The answer does not come from the expected provider (iss).")
    if params.get("error"):
        description = params.get("error_description") or ""
        raise DemoLoginError(f"Corp ID answered {params['error']}: {description}".strip())
    code = params.get("code")
    if not code:
        raise DemoLoginError("The answer carries no authorization code.")
    with _session(rp) as session:
        try:
            token = dict(
                session.fetch_token(
                    metadata["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=transaction["code_verifier"],
                )
            )
        except (OAuthError, requests.RequestException) as exc:
            raise DemoLoginError(f"The token endpoint refused the code ({exc}).") from None
        if not token.get("id_token") or not token.get("access_token"):
            raise DemoLoginError("The token response has no ID token or access token.")
        jwks = _get_json(session, metadata["jwks_uri"], withhold_token=True)
    claims = verify_id_token(
        rp,
        token["id_token"],
        jwks=jwks,
        nonce=transaction["nonce"],
        access_token=token["access_token"],
    )
    with _session(rp, token) as session:
        userinfo = _get_json(session, metadata["userinfo_endpoint"])
    if userinfo.get("sub") != claims["sub"]:
        raise DemoLoginError("Userinfo names someone else than the ID token (sub).")
    return LoginResult(
        id_token=token["id_token"],
        claims=claims,
        userinfo=userinfo,
        scope=str(token.get("scope", "")),
        end_session_endpoint=metadata.get("end_session_endpoint") or None,
    )


def verify_id_token(
    rp: RelyingParty, id_token: str, *, jwks: dict[str, Any], nonce: str, access_token: str
) -> dict[str, Any]:
    """The claims of ``id_token`` once its signature (against ``jwks``), ``iss``, ``aud``,
    times, ``nonce``, ``azp`` and ``at_hash`` are checked. Raises ``DemoLoginError``."""
    try:
        decoded = jwt.decode(
            id_token,
            KeySet.import_key_set(jwks),  # type: ignore[arg-type]
            algorithms=ID_TOKEN_ALGS,
        )
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {
                "iss": {"essential": True, "value": rp.issuer},
                "aud": {"essential": True, "value": rp.client_id},
            },
            {"nonce": nonce, "client_id": rp.client_id, "access_token": access_token},
        )
        claims.validate(leeway=LEEWAY)
    except (JoseError, ValueError, TypeError) as exc:
        raise DemoLoginError(f"The ID token is not valid ({exc}).") from None
    if "nonce" not in claims:
        raise DemoLoginError("The ID token carries no nonce.")
    return dict(claims)


def logout_url(rp: RelyingParty, *, id_token: str | None, state: str) -> str | None:
    """The provider's end-session URL for RP-initiated logout, or None when the provider
    advertises none. Raises ``DemoLoginError``."""
    endpoint = discover(rp).get("end_session_endpoint")
    if not endpoint:
        return None
    params = {
        "client_id": rp.client_id,
        "post_logout_redirect_uri": rp.post_logout_redirect_uri,
        "state": state,
    }
    if id_token:
        params["id_token_hint"] = id_token
    return f"{endpoint}?{urlencode(params)}"
