"""The demo relying party's pages: home (the "Login with Corp ID" button, then the claims),
login, callback and logout. Registered by ``create_app`` only in demo mode.

The relying party keeps its state in a cookie of its own (signed, HttpOnly, path
``/demo-rp/``), never in the provider's session: it stands for a site elsewhere.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from itsdangerous import BadData, URLSafeTimedSerializer

from idp.demo import DEMO_RP_PATH, demo_rp_urls, find_demo_client
from idp.demo_rp import services as rp_services
from idp.demo_rp.services import DemoLoginError, RelyingParty

bp = Blueprint("demo_rp", __name__, url_prefix=DEMO_RP_PATH)

COOKIE = "corpid_demo_rp"
# Seconds a login may take from the button to the callback.
TRANSACTION_TTL = 10 * 60
# Seconds the relying party remembers a completed login.
LOGIN_TTL = 60 * 60


def _serializer() -> URLSafeTimedSerializer:
    from idp.keys.services import derive_secret

    return URLSafeTimedSerializer(
        derive_secret(current_app.config["IDP"], "demo-rp"), salt="corp-id/demo-rp"
    )


def _state(max_age: int) -> dict[str, Any]:
    raw = request.cookies.get(COOKIE)
    if not raw or len(raw) > 4096:
        return {}
    try:
        value = _serializer().loads(raw, max_age=max_age)
    except BadData:
        return {}
    return value if isinstance(value, dict) else {}


def _keep(response: Response, value: dict[str, Any] | None, max_age: int) -> Response:
    https = str(current_app.config["IDP"]["ISSUER"]).startswith("https://")
    if value is None:
        response.delete_cookie(COOKIE, path=f"{DEMO_RP_PATH}/", secure=https, httponly=True)
        return response
    response.set_cookie(
        COOKIE,
        _serializer().dumps(value),
        max_age=max_age,
        path=f"{DEMO_RP_PATH}/",
        secure=https,
        httponly=True,
        samesite="Lax",
    )
    return response


def _relying_party() -> RelyingParty:
    client = find_demo_client()
    if client is None:
        raise DemoLoginError("The demo client is not registered: run `idp demo`.")
    _, redirect_uri, logout_uri = demo_rp_urls()
    return RelyingParty(
        issuer=str(current_app.config["IDP"]["ISSUER"]),
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        post_logout_redirect_uri=logout_uri,
    )


def _page(status: int = 200, **context: Any) -> Response:
    response = Response(
        render_template("demo_rp/index.html", **context), status=status, mimetype="text/html"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def index() -> Response:
    login = _state(LOGIN_TTL).get("login")
    signed_out = request.args.get("state") is not None and not login
    return _page(login=login, signed_out=signed_out)


@bp.get("/login")
def login() -> Response:
    try:
        url, transaction = rp_services.start_login(
            _relying_party(), ui_locales=request.args.get("ui_locales")
        )
    except DemoLoginError as exc:
        return _page(502, error=exc.message)
    response = redirect(url, 303)
    return _keep(response, {"transaction": transaction}, TRANSACTION_TTL)  # type: ignore[arg-type]


@bp.get("/callback")
def callback() -> Response:
    transaction = _state(TRANSACTION_TTL).get("transaction")
    params = {k: v for k, v in request.args.items() if isinstance(v, str)}
    try:
        result = rp_services.finish_login(_relying_party(), transaction, params)
    except DemoLoginError as exc:
        return _keep(_page(400, error=exc.message), None, 0)
    login = {
        "claims": result.claims,
        "userinfo": result.userinfo,
        "id_token": result.id_token,
        "scope": result.scope,
        "can_log_out": bool(result.end_session_endpoint),
    }
    response = redirect(url_for("demo_rp.index"), 303)
    return _keep(response, {"login": login}, LOGIN_TTL)  # type: ignore[arg-type]


@bp.post("/logout")
def logout() -> Response:
    login = _state(LOGIN_TTL).get("login") or {}
    try:
        url = rp_services.logout_url(
            _relying_party(), id_token=login.get("id_token"), state=secrets.token_urlsafe(16)
        )
    except DemoLoginError:
        url = None
    response = redirect(url or url_for("demo_rp.index"), 303)
    return _keep(response, None, 0)  # type: ignore[arg-type]
