"""What the company admin pages and the operator console share: who is signed in, the way
back after a step-up, and how a service's refusal is shown. Views stay thin: parse, call a
service, render or redirect (303 after a POST)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from flask import Response, flash, redirect, render_template, request, url_for

from idp.admin.services import StepUpRequired
from idp.audit.services import Origin
from idp.authn.models import LoginSession
from idp.authn.views import current_login_session
from idp.errors import IdpError, ValidationError, page_error

MAX_NEXT = 500


class SignInRequired(Exception):
    """No live sign-in session: the view answers with a redirect to the console sign-in."""


def page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(template, **context), status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def origin() -> Origin:
    return Origin(request.remote_addr, request.headers.get("User-Agent"))


def safe_next(value: object, default: str) -> str:
    """A same-site path to go back to (never another site: no scheme, no ``//``)."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or len(value) > MAX_NEXT
        or any(ord(c) < 0x20 for c in value)
    ):
        return default
    return value


def query_text(name: str, *, limit: int) -> str:
    """A search field from the query string, trimmed. Raises ``ValidationError`` (400) for
    control characters (PostgreSQL refuses NUL) or more than ``limit`` characters."""
    value = request.args.get(name, "").strip()
    if len(value) > limit or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValidationError(f"{name}: at most {limit} printable characters")
    return value


def see_other(location: str) -> Response:
    return redirect(location, code=303)  # type: ignore[return-value]


def signed_in() -> LoginSession:
    """The browser's live sign-in session. Raises ``SignInRequired``."""
    session = current_login_session()
    if session is None:
        raise SignInRequired()
    return session


def stepup_redirect(back: str) -> Response:
    return see_other(url_for("admin.stepup") + "?" + urlencode({"next": back}))


def guarded(view: Callable[..., Response]) -> Callable[..., Response]:
    """Turn the console's refusals into answers: no session -> sign in; a stale assertion ->
    step-up, then back; 403/404 -> the error page (a POST with bad input -> back, with the
    message)."""
    import functools

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except SignInRequired:
            back = request.full_path.rstrip("?") if request.method == "GET" else back_path()
            return see_other(url_for("admin.login") + "?" + urlencode({"next": back}))
        except StepUpRequired:
            return stepup_redirect(back_path())
        except IdpError as exc:
            if request.method == "POST" and exc.status in (400, 409):
                flash(exc.message, "error")
                return see_other(back_path())
            return page_error(exc.status, exc.code.replace("_", " ").capitalize(), exc.message)

    return wrapper


def back_path() -> str:
    """Where a POST goes back to: the form's ``back`` field, if it is a path of ours."""
    return safe_next(request.form.get("back"), url_for("admin.home"))


def done(message: str, back: str | None = None) -> Response:
    flash(message, "ok")
    return see_other(back or back_path())
