"""Sign-in pages and the session cookie."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template, request

from idp.authn.models import LoginSession
from idp.authn.services import find_session

bp = Blueprint("authn", __name__)


def session_cookie_name() -> str:
    https = str(current_app.config["IDP"]["ISSUER"]).startswith("https://")
    return "__Host-corpid_session" if https else "corpid_session"


def current_login_session() -> LoginSession | None:
    """The live sign-in session of this browser, if any."""
    return find_session(request.cookies.get(session_cookie_name()))


def set_session_cookie(response: Response, secret: str) -> None:
    """Put a (renewed) session secret in the browser: HttpOnly, SameSite=Lax, Secure and
    ``__Host-`` on https."""
    https = str(current_app.config["IDP"]["ISSUER"]).startswith("https://")
    response.set_cookie(
        session_cookie_name(),
        secret,
        httponly=True,
        samesite="Lax",
        secure=https,
        path="/",
        max_age=int(current_app.config["IDP"]["SESSION_ABSOLUTE_TTL"]),
    )


@bp.get("/login")
def login() -> Response:
    """The hardware-key sign-in page for a pending authorization."""
    html = render_template("authn/login.html", handle=request.args.get("h", ""))
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response
