"""Answers the static documents (discovery, AS metadata, JWKS) before Flask is entered.

They are the most requested URLs of an OpenID provider and change rarely: serialising them
once and skipping the framework per request is what lets a few workers serve many relying
parties. Everything else goes to the Flask app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from idp.keys import services as keys
from idp.oauth.discovery import AS_METADATA_PATH, DISCOVERY_PATH, PATHS, metadata_document

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_COMMON = [
    ("Content-Type", "application/json"),
    ("Access-Control-Allow-Origin", "*"),
    ("X-Content-Type-Options", "nosniff"),
]


class StaticDocuments:
    def __init__(self, app: Flask, wsgi_app: WSGIApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        with app.app_context():  # the metadata reads settings (identity assurance)
            self.metadata = metadata_document(app.config["IDP"]["ISSUER"])
        self.jwks_path = PATHS["jwks_uri"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in (DISCOVERY_PATH, AS_METADATA_PATH):
            body, max_age = self.metadata, 3600
        elif path == self.jwks_path:
            body, max_age = self._jwks(), 60
        else:
            return self.wsgi_app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return self.wsgi_app(environ, start_response)
        start_response(
            "200 OK",
            [
                *_COMMON,
                ("Content-Length", str(len(body))),
                ("Cache-Control", f"public, max-age={max_age}"),
            ],
        )
        return [b""] if method == "HEAD" else [body]

    def _jwks(self) -> bytes:
        cached = keys.cached_jwks()
        if cached is not None:
            return cached
        with self.app.app_context():
            return keys.jwks_document()
