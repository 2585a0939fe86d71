"""Authorization request checks beyond Authlib's: small functions, each raising one OAuth
error. Run as a hook after Authlib has validated the client and the redirect URI, so their
errors go back to the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError
from flask import current_app

from idp.keys import jws
from idp.oauth.claims import parse_claims_request
from idp.oauth.rar import check_purpose_param, parse_authorization_details

MAX_PARAM_LENGTH = 2048
KNOWN_PROMPTS = {"none", "login", "consent", "select_account"}


def check_lengths(params: dict[str, Any], client: Any) -> None:
    for name, value in params.items():
        if isinstance(value, str) and len(value) > MAX_PARAM_LENGTH:
            raise InvalidRequestError(f"The '{name}' parameter is too long.")


def check_request_object(params: dict[str, Any], client: Any) -> None:
    if "request" in params:
        raise RequestNotSupportedError()
    if "request_uri" in params:
        raise RequestURINotSupportedError()


def check_response_mode(params: dict[str, Any], client: Any) -> None:
    mode = params.get("response_mode")
    if mode is not None and mode not in ("query", "form_post"):
        raise InvalidRequestError("Unsupported 'response_mode'; use 'query' or 'form_post'.")


def check_prompt(params: dict[str, Any], client: Any) -> None:
    prompts = params.get("prompt", "").split()
    if "none" in prompts and len(prompts) > 1:
        raise InvalidRequestError("'prompt=none' cannot be combined with other values.")
    unknown = [p for p in prompts if p not in KNOWN_PROMPTS]
    if unknown:
        raise InvalidRequestError(f"Unsupported prompt value: {unknown[0]}.")


def check_max_age(params: dict[str, Any], client: Any) -> None:
    raw = params.get("max_age")
    if raw is None:
        return
    if not raw.isdigit() or len(raw) > 10:
        raise InvalidRequestError("'max_age' must be a non-negative integer.")


def check_claims(params: dict[str, Any], client: Any) -> None:
    parse_claims_request(params.get("claims"))


def check_id_token_hint(params: dict[str, Any], client: Any) -> None:
    hint = params.get("id_token_hint")
    if not hint:
        return
    try:
        claims = jws.verify(
            hint,
            issuer=current_app.config["IDP"]["ISSUER"],
            typ=jws.ID_TOKEN_TYP,
            verify_exp=False,
            max_length=int(current_app.config["IDP"]["MAX_JWT_LENGTH"]),
        )
    except jws.InvalidJWT:
        raise InvalidRequestError("The 'id_token_hint' is not an ID token we issued.") from None
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client.client_id not in audiences:
        raise InvalidRequestError("The 'id_token_hint' was issued to another client.")


def check_dpop_jkt(params: dict[str, Any], client: Any) -> None:
    """RFC 9449 §10: ``dpop_jkt`` is the base64url SHA-256 thumbprint of the client's DPoP key;
    the code is then redeemable only with a proof by that key (grants.DPoPBinding)."""
    from idp.oauth.dpop import is_jkt

    if "dpop_jkt" in params and not is_jkt(params["dpop_jkt"]):
        raise InvalidRequestError("'dpop_jkt' must be a base64url SHA-256 JWK thumbprint.")


def check_authorization_details(params: dict[str, Any], client: Any) -> None:
    # RFC 9396 §2 and §5: corp_data entries only, for categories the client is registered for.
    parse_authorization_details(params.get("authorization_details"), client.scopes)


def check_purpose(params: dict[str, Any], client: Any) -> None:
    check_purpose_param(params.get("purpose"))


CHECKS: tuple[Callable[[dict[str, Any], Any], None], ...] = (
    check_lengths,
    check_request_object,
    check_response_mode,
    check_prompt,
    check_max_age,
    check_claims,
    check_id_token_hint,
    check_dpop_jkt,
    check_authorization_details,
    check_purpose,
)


class AuthorizationChecks:
    """Authlib grant extension running ``CHECKS`` after its own payload validation."""

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.run)

    def run(self, grant: Any, redirect_uri: str) -> None:
        params = dict(grant.request.payload.data)
        for check in CHECKS:
            check(params, grant.request.client)
