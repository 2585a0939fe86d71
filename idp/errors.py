"""Typed errors and the one error handler.

Services raise ``IdpError`` subclasses (or Authlib's ``OAuth2Error`` subclasses on protocol
paths). The handler answers JSON with ``Cache-Control: no-store`` to API endpoints and a
readable page to people; 4xx are logged at debug level, 5xx with the trace; internals are
never shown.
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Flask, Response, json, render_template, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("idp.errors")

API_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class IdpError(Exception):
    """Base of our own errors. ``code`` is machine-readable, the message is for people."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.details = details


class ValidationError(IdpError):
    """The input is not valid."""

    code = "invalid_request"


class NotFoundError(IdpError):
    """No such thing."""

    status = 404
    code = "not_found"


class ForbiddenError(IdpError):
    """You may not do this."""

    status = 403
    code = "forbidden"


class ConflictError(IdpError):
    """The thing already exists or is in a state that does not allow this."""

    status = 409
    code = "conflict"


class RateLimitedError(IdpError):
    """Too many requests; try again later."""

    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: int, message: str = "") -> None:
        super().__init__(message or "Too many requests; try again later.")
        self.retry_after = retry_after


def api_view(func: Any) -> Any:
    """Mark a view as an API endpoint: its errors are answered as JSON."""
    func.idp_api = True
    return func


def wants_json() -> bool:
    view = None
    if request.url_rule is not None:
        from flask import current_app

        view = current_app.view_functions.get(request.url_rule.endpoint)
    if view is not None:
        return bool(getattr(view, "idp_api", False))
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def json_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps({"error": error, "error_description": description})
    response = Response(body, status=status, mimetype="application/json")
    response.headers.update(API_HEADERS)
    if headers:
        response.headers.update(headers)
    return response


def page_error(status: int, title: str, description: str) -> Response:
    html = render_template("errors/error.html", status=status, title=title, description=description)
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _respond(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> Response:
    if status >= 500:
        log.error("server error %s: %s", error, description)
    else:
        log.debug("client error %s %s: %s", status, error, description)
    if wants_json():
        return json_error(status, error, description, headers)
    response = page_error(status, error.replace("_", " ").capitalize(), description)
    if headers:
        response.headers.update(headers)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(IdpError)
    def handle_idp_error(exc: IdpError) -> Response:
        headers = None
        if isinstance(exc, RateLimitedError):
            headers = {"Retry-After": str(exc.retry_after)}
        return _respond(exc.status, exc.code, exc.message, headers)

    @app.errorhandler(OAuth2Error)
    def handle_oauth_error(exc: OAuth2Error) -> Response:
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "www-authenticate"}
        return _respond(
            exc.status_code or 400,
            exc.error or "invalid_request",
            exc.get_error_description() or "",
            headers,
        )

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = {
            400: "invalid_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "request_too_large",
            415: "unsupported_media_type",
        }.get(status, "invalid_request" if status < 500 else "server_error")
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        return _respond(status, code, exc.description or code, headers)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _respond(500, "server_error", "The server could not complete the request.")
