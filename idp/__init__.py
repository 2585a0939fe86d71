"""Corp ID: an OpenID Connect provider for companies, with hardware-key sign-in."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine

from idp.config import ROOT, load_config
from idp.extensions import db


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app factory. ``config`` overrides settings (keys as in ``idp.config.DEFAULTS``)."""
    settings = load_config(config)
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(ROOT / "instance"),
    )
    app.config["IDP"] = settings
    app.config["SQLALCHEMY_DATABASE_URI"] = settings["DATABASE_URL"]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = _engine_options(settings["DATABASE_URL"])
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_CONTENT_LENGTH"]
    app.config["MAX_FORM_MEMORY_SIZE"] = settings["MAX_CONTENT_LENGTH"]
    app.config["MAX_FORM_PARTS"] = 200
    app.config["JSON_SORT_KEYS"] = False
    https = settings["ISSUER"].startswith("https://")
    app.config["SESSION_COOKIE_SECURE"] = https
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_NAME"] = "__Host-corpid" if https else "corpid"
    logging.getLogger("idp").setLevel(settings["LOG_LEVEL"])
    # Authlib logs whole token responses at debug level: never let secrets reach the logs.
    logging.getLogger("authlib").setLevel(max(logging.INFO, logging.getLogger("authlib").level))

    if settings["DATABASE_URL"].startswith("sqlite:///"):
        (ROOT / "instance").mkdir(exist_ok=True)

    from idp.keys import services as keys

    db.init_app(app)
    keys.init_app(app)
    app.secret_key = keys.derive_secret(settings, "flask")

    from idp import cache, web
    from idp.errors import register_error_handlers
    from idp.oauth import init_oauth

    cache.init_app(app)
    init_oauth(app)
    web.init_app(app)
    register_error_handlers(app)
    from idp.data.views import bp as data_bp

    app.register_blueprint(data_bp)
    if settings["DEMO"]:
        from idp.demo_rp.views import bp as demo_rp_bp

        app.register_blueprint(demo_rp_bp)
        from idp.demo_bank.views import bp as demo_bank_bp

        app.register_blueprint(demo_bank_bp)

    from idp.fastpath import StaticDocuments
    from idp.oauth.hotpath import HotPath

    app.wsgi_app = StaticDocuments(app, HotPath(app, app.wsgi_app))  # type: ignore[method-assign]
    return app


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 15}}
    return {"pool_size": 10, "max_overflow": 20, "pool_pre_ping": False, "pool_recycle": 3600}


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    module = type(dbapi_connection).__module__
    if module.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.close()
