"""Page plumbing shared by every domain: security headers, CSRF, locale."""

from __future__ import annotations

import secrets

from flask import Flask, Response, g, request
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()

SUPPORTED_LOCALES = ("en", "zh-Hant-HK")


def init_app(app: Flask) -> None:
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", 3600)
    app.config["WTF_CSRF_SSL_STRICT"] = True
    csrf.init_app(app)

    @app.before_request
    def _nonce() -> None:
        g.csp_nonce = secrets.token_urlsafe(16)

    @app.after_request
    def _security_headers(response: Response) -> Response:
        nonce = getattr(g, "csp_nonce", "")
        response.headers.setdefault(
            "Content-Security-Policy",
            f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self' https: http:; "
            "frame-ancestors 'none'; base-uri 'none'",
        )
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.is_secure:
            response.headers.setdefault(
                "Strict-Transport-Security", "max-age=63072000; includeSubDomains"
            )
        return response

    @app.context_processor
    def _page_context() -> dict[str, object]:
        return {"csp_nonce": getattr(g, "csp_nonce", ""), "locale": current_locale()}


def use_ui_locales(ui_locales: str | None) -> None:
    """Choose the page language from an authorization request's ``ui_locales``."""
    if ui_locales:
        g.idp_locale = None
        current_locale(ui_locales)


def current_locale(ui_locales: str | None = None) -> str:
    """The page language: the first supported one in ``ui_locales``, else Accept-Language."""
    cached = getattr(g, "idp_locale", None)
    if cached:
        return str(cached)
    locale = "en"
    # Query string only: reading the form here would re-raise on an oversized body while an
    # error page is being rendered.
    requested = (ui_locales or request.args.get("ui_locales") or "").split()
    for tag in requested:
        if tag.lower().startswith("zh"):
            locale = "zh-Hant-HK"
            break
        if tag.lower().startswith("en"):
            break
    else:
        best = request.accept_languages.best_match(["en", "zh-HK", "zh-TW", "zh"])
        if best and best.startswith("zh"):
            locale = "zh-Hant-HK"
    g.idp_locale = locale
    return locale
