"""Authlib's authorization server, adapted: our request objects, client lookup, JSON answers
with ``Cache-Control: no-store``, and one client-authentication method per request."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer as FlaskAuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload
from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from flask import Response, current_app, g
from flask import request as flask_request
from sqlalchemy import event, select

from idp import cache
from idp.clients.models import Client, ClientProfile
from idp.extensions import db

NO_STORE = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]

_CLIENT_CACHE_MAX = 10_000
_client_cache: dict[str, tuple[float, Client]] = {}


def forget_client(client_id: str) -> None:
    """Drop a client from this worker's cache (after it changed)."""
    _client_cache.pop(client_id, None)


@event.listens_for(Client, "after_update")
@event.listens_for(Client, "after_delete")
def _client_changed(mapper: Any, connection: Any, target: Client) -> None:
    forget_client(target.client_id)


class StoredOAuth2Request(OAuth2Request):
    """An authorization request replayed from its server-side record (after login/consent)."""

    def __init__(self, params: dict[str, str], uri: str) -> None:
        super().__init__("GET", uri, headers={})
        self.payload = BasicOAuth2Payload(params)
        self._params = params

    @property
    def args(self) -> dict[str, str]:
        return self._params

    @property
    def form(self) -> dict[str, str]:
        return {}


class IssuerOAuth2Request(OAuth2Request):
    """The current Flask request, addressed by our issuer URL rather than the URL the WSGI
    server saw (which is http behind a TLS-terminating proxy)."""

    def __init__(self) -> None:
        issuer = current_app.config["IDP"]["ISSUER"]
        super().__init__(
            flask_request.method, issuer + flask_request.path, headers=flask_request.headers
        )
        self._request = flask_request
        self.payload = FlaskOAuth2Payload(flask_request)

    @property
    def args(self) -> Any:
        return self._request.args

    @property
    def form(self) -> Any:
        return self._request.form


class AuthorizationServer(FlaskAuthorizationServer):
    def query_client(self, client_id: Any) -> Client | None:
        """The client, from this worker's short cache or one indexed query."""
        if (
            not isinstance(client_id, str)
            or not client_id
            or len(client_id) > 64
            or "\x00" in client_id
        ):
            return None
        ttl = float(current_app.config["IDP"]["CLIENT_CACHE_TTL"])
        if ttl > 0:
            hit = _client_cache.get(client_id)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        client = db.session.scalars(select(Client).where(Client.client_id == client_id)).first()
        if client is not None and ttl > 0:
            # Detached: the cached copy is read-only and shared by this worker's requests.
            db.session.expunge(client)
            if len(_client_cache) >= _CLIENT_CACHE_MAX:
                _client_cache.clear()
            _client_cache[client_id] = (time.monotonic() + ttl, client)
        return client

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        # Access tokens are self-contained JWTs; refresh tokens are saved by the token
        # generator with their grant (idp.oauth.tokens).
        return None

    def create_token_response(self, request: Any = None) -> Response:
        """Check the DPoP proof (RFC 9449 §5) first, spending its ``jti`` before anything of
        the grant is claimed; grants.DPoPBinding applies it once the client is known."""
        from idp.oauth import dpop

        try:
            g.idp_dpop_proof = dpop.request_proof(flask_request, dpop.endpoint_url(flask_request))
        except dpop.DPoPError as error:
            return self.handle_error_response(None, error)
        return super().create_token_response(request)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return IssuerOAuth2Request()

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Response:
        if isinstance(payload, dict):
            if "error" in payload and not payload.get("error_description"):
                payload["error_description"] = DEFAULT_DESCRIPTIONS.get(
                    str(payload["error"]), "The request failed."
                )
            payload = json.dumps(payload, separators=(",", ":"))
        response = Response(payload, status=status_code, headers=headers)
        if response.mimetype == "application/json":
            for name, value in NO_STORE:
                response.headers[name] = value
        return response

    def authenticate_client(
        self, request: OAuth2Request, methods: list[str], endpoint: str = "token"
    ) -> Client:
        _check_basic_header(request)
        presented = _presented_auth_methods(request)
        if len(presented) > 1:
            raise InvalidRequestError(
                "Use exactly one client authentication method per request "
                f"(found {', '.join(sorted(presented))})."
            )
        try:
            client: Client = super().authenticate_client(request, methods, endpoint)
            if not client.is_active:
                raise InvalidClientError(description="The client is disabled.")
            if client.profile is ClientProfile.FAPI2 and presented != {"private_key_jwt"}:
                # FAPI 2.0 Security Profile §5.3.1.2, at every endpoint, whatever was registered.
                raise InvalidClientError(
                    status_code=401 if "client_secret_basic" in presented else 400,
                    description="FAPI 2.0 clients must authenticate with private_key_jwt.",
                )
        except InvalidClientError as error:
            _audit_client_auth_failure(request, presented, endpoint, error)
            raise
        if not flask_request.environ.get(cache.COUNTED):  # the hot path counted it already
            cache.hit(
                "client",
                client.client_id,
                limit=int(current_app.config["IDP"]["RATE_LIMIT_CLIENT_PER_MINUTE"]),
            )
        return client

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


def _audit_client_auth_failure(
    request: OAuth2Request, presented: set[str], endpoint: str, error: InvalidClientError
) -> None:
    """Record a failed client authentication, committed on its own: the endpoint's
    transaction is rolled back on an error response, the audit event must stay."""
    from idp.audit.services import Origin, record

    client_id = request.payload.client_id if request.payload else None
    if not isinstance(client_id, str) or "\x00" in client_id:
        client_id = None
    record(
        "oauth:client_auth:failure",
        actor=f"client:{str(client_id)[:100]}" if client_id else "anonymous",
        subject=f"client:{str(client_id)[:100]}" if client_id else None,
        origin=Origin(flask_request.remote_addr, flask_request.headers.get("User-Agent")),
        details={
            "endpoint": endpoint,
            "methods": sorted(presented) or ["none"],
            "reason": error.get_error_description() or "invalid_client",
        },
    )
    db.session.commit()


def _check_basic_header(request: OAuth2Request) -> None:
    """Refuse malformed HTTP Basic credentials with invalid_client (Authlib would raise)."""
    auth = request.headers.get("Authorization", "") if request.headers else ""
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() != "basic":
        return
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        decoded = ""
    if ":" not in decoded:
        raise InvalidClientError(
            status_code=401, description="Malformed HTTP Basic client credentials."
        )


DEFAULT_DESCRIPTIONS = {
    "invalid_grant": "The grant (code or refresh token) is invalid, expired or revoked.",
    "unsupported_grant_type": "This grant type is not supported.",
    "invalid_client": "Client authentication failed.",
    "invalid_request": "The request is invalid.",
    "invalid_scope": "The requested scope is invalid.",
    "unauthorized_client": "The client may not use this grant type.",
    "unsupported_token_type": "This token type is not supported.",
}


def _presented_auth_methods(request: OAuth2Request) -> set[str]:
    found = set()
    auth = request.headers.get("Authorization", "") if request.headers else ""
    if auth.lower().startswith("basic "):
        found.add("client_secret_basic")
    form = request.form
    if form.get("client_secret"):
        found.add("client_secret_post")
    if form.get("client_assertion") or form.get("client_assertion_type"):
        found.add("private_key_jwt")
    return found
