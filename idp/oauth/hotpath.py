"""The two busiest API requests, answered before Flask and Authlib are entered.

A government back-end asks for a ``client_credentials`` token, and a resource server
introspects one of our JWT access tokens, thousands of times a second. Their success case is
served here, with the same checks the full path makes, each one a call to the same function
(client lookup and secret check on the ``Client``, scope rule, token signing, liveness,
introspection payload): only Flask's request machinery and Authlib's dispatch are skipped.

Anything that is not exactly that shape — another grant or parameter, a DPoP proof, another
client authentication method, a repeated parameter, a failed check, a rate limit reached, a token
that is not active — is handed unchanged to the full Flask + Authlib path, which answers it
(errors, ``WWW-Authenticate``, audit events) as it always did. So this module never answers
an error, and never decides one.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, current_app

from idp import cache
from idp.clients.models import Client, ClientProfile
from idp.errors import RateLimitedError
from idp.oauth import active_cache, tokens
from idp.oauth.endpoints import access_token_introspection
from idp.oauth.grants import client_credentials_scope_allowed, generate_token
from idp.security import REFRESH_TOKEN_PREFIX

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Form = dict[str, str]

# Larger bodies are never this shape; the full path reads (and limits) them.
MAX_BODY = 4096
FORM_TYPE = "application/x-www-form-urlencoded"
TOKEN_PARAMS = frozenset(("grant_type", "scope", "client_id", "client_secret"))
INTROSPECTION_PARAMS = frozenset(("token", "token_type_hint", "client_id", "client_secret"))
HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
]


class HotPath:
    """WSGI middleware: serves the success case of ``POST /token`` (client_credentials) and
    ``POST /introspect`` (an access token), hands everything else to ``wsgi_app``."""

    def __init__(self, app: Flask, wsgi_app: WSGIApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.handlers: dict[str, Callable[[dict[str, Any], Form], dict[str, Any] | None]] = {
            "/token": client_credentials_token,
            "/introspect": access_token_introspection_answer,
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        handler = self.handlers.get(environ.get("PATH_INFO", ""))
        if (
            handler is None
            or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("QUERY_STRING")
            or "HTTP_DPOP" in environ  # proofs are checked (and tokens bound) on the full path
        ):
            return self.wsgi_app(environ, start_response)
        form = read_form(environ)
        answer = None
        if form is not None:
            with self.app.app_context():
                try:
                    answer = handler(environ, form)
                except RateLimitedError:
                    answer = None  # the full path counts again and answers 429
        if answer is None:
            return self.wsgi_app(environ, start_response)
        body = json.dumps(answer, separators=(",", ":")).encode()
        start_response("200 OK", [*HEADERS, ("Content-Length", str(len(body)))])
        return [body]


def read_form(environ: dict[str, Any]) -> Form | None:
    """The form body as a dict, or None when it is not a small, clean, unrepeated form. The
    body is put back in ``wsgi.input`` so the full path can read it again."""
    if environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower() != FORM_TYPE:
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    if not 0 < length <= MAX_BODY:
        return None
    raw = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(raw)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    pairs = parse_qsl(text, keep_blank_values=True)
    form = dict(pairs)
    if len(form) != len(pairs) or any("\x00" in k or "\x00" in v for k, v in pairs):
        return None
    return form


def authenticated_client(environ: dict[str, Any], form: Form, *, endpoint: str) -> Client | None:
    """The client, when it authenticated with its registered secret method (Basic or post)
    and nothing else; else None."""
    auth = environ.get("HTTP_AUTHORIZATION")
    if auth is not None:
        if "client_id" in form or "client_secret" in form:
            return None
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return None
        client_id, colon, secret = decoded.partition(":")
        if not colon or "%" in decoded:  # percent-encoded credentials: the full path
            return None
        method = "client_secret_basic"
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        method = "client_secret_post"
    if not client_id or not secret:
        return None
    from idp.oauth import authorization

    client: Client | None = authorization.query_client(client_id)
    if (
        client is None
        or not client.check_endpoint_auth_method(method, endpoint)
        or not client.check_client_secret(secret)
    ):
        return None
    return client


def _count(environ: dict[str, Any], client: Client, *, read: str | None = None) -> bytes | None:
    """The rate limits the full path applies (per source, per client), in one Redis round
    trip, with the value of the key ``read`` read alongside. The request is then marked
    counted: if the full path answers it after all, it does not count it again."""
    cfg = current_app.config["IDP"]
    value = cache.hit_all(
        [
            ("source", environ.get("REMOTE_ADDR") or "-", int(cfg["RATE_LIMIT_SOURCE_PER_MINUTE"])),
            ("client", client.client_id, int(cfg["RATE_LIMIT_CLIENT_PER_MINUTE"])),
        ],
        read=read,
    )
    environ[cache.COUNTED] = True
    return value


def client_credentials_token(environ: dict[str, Any], form: Form) -> dict[str, Any] | None:
    """A token response for a valid client_credentials request, else None."""
    if form.get("grant_type") != "client_credentials" or not form.keys() <= TOKEN_PARAMS:
        return None
    client = authenticated_client(environ, form, endpoint="token")
    scope = form.get("scope")
    if (
        client is None
        or client.profile is ClientProfile.FAPI2  # must be sender-constrained: the full path
        or not client.check_grant_type("client_credentials")
        or not client_credentials_scope_allowed(client, scope)
    ):
        return None
    _count(environ, client)
    return generate_token("client_credentials", client, None, scope, include_refresh_token=False)


def access_token_introspection_answer(environ: dict[str, Any], form: Form) -> dict[str, Any] | None:
    """The introspection answer for a live access token of the asking client, else None."""
    token = form.get("token", "")
    if (
        not form.keys() <= INTROSPECTION_PARAMS
        or not token
        or token.startswith(REFRESH_TOKEN_PREFIX)
        or form.get("token_type_hint", "access_token") != "access_token"
    ):
        return None
    client = authenticated_client(environ, form, endpoint="introspection")
    if client is None:
        return None
    # The revocation epoch is read before the token is checked, as active_cache requires;
    # with the rate limits when they are counted (one Redis round trip for both).
    cfg = current_app.config["IDP"]
    counting = any(
        int(cfg[name]) > 0
        for name in ("RATE_LIMIT_SOURCE_PER_MINUTE", "RATE_LIMIT_CLIENT_PER_MINUTE")
    )
    if counting and active_cache.enabled():
        epoch = active_cache.epoch_from(_count(environ, client, read=active_cache.epoch_key()))
    else:
        _count(environ, client)
        epoch = active_cache.current_epoch()
    claims = tokens.check_access_token(token, epoch=epoch)
    if claims is None or claims.get("client_id") != client.client_id:
        return None
    return access_token_introspection(claims)
