"""Sign-in pages and the session cookie."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, json, render_template, request, session, url_for

from idp import cache
from idp.audit.services import Origin
from idp.authn import ceremonies
from idp.authn.models import LoginSession
from idp.authn.services import find_session
from idp.errors import IdpError, ValidationError, api_view, page_error
from idp.extensions import db
from idp.orgs import services as orgs
from idp.orgs.models import Person

if TYPE_CHECKING:
    from idp.oauth.authorize import Pending

bp = Blueprint("authn", __name__)

# Flask-session key of this browser's WebAuthn binding secret (see ceremonies: challenges).
BINDING_KEY = "webauthn"


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


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(template, **context), status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _json(body: dict[str, Any], status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _origin() -> Origin:
    return Origin(request.remote_addr, request.headers.get("User-Agent"))


def _binding() -> str:
    """This browser's binding secret (created on first use, kept in the signed session)."""
    value = session.get(BINDING_KEY)
    if not isinstance(value, str) or len(value) < 32:
        value = ceremonies.new_binding()
        session[BINDING_KEY] = value
    return value


def _body() -> dict[str, Any]:
    """The JSON object of an API request. Raises ``ValidationError``."""
    if request.mimetype != "application/json":
        raise ValidationError("Send the request as application/json.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("The request body is not a JSON object.")
    return body


def _bound_handle(handle: object) -> str:
    """The handle of a pending authorization this browser started (its Flask session lists
    it), else ``ValidationError``. Whether the authorization is still live is for the step
    that needs its record: the sign-in options (``_pending_handle``) and what follows the
    sign-in."""
    from idp.oauth import authorize as flow
    from idp.oauth.views import bound_handle

    try:
        return bound_handle(handle)
    except flow.AuthorizationPageError as exc:
        raise ValidationError(exc.description) from None


def _pending_handle(handle: object) -> tuple[str, Pending]:
    """A pending authorization this browser started and that is still live: ``(handle,
    pending)``, the row read once per request."""
    from idp.oauth import authorize as flow

    handle = _bound_handle(handle)
    try:
        pending = flow.find_pending(handle)
    except flow.AuthorizationPageError as exc:
        raise ValidationError(exc.description) from None
    return handle, pending


def _limit_enrolment() -> None:
    cache.hit(
        "enrol-source",
        request.remote_addr or "-",
        limit=int(current_app.config["IDP"]["ENROL_RATE_LIMIT_SOURCE_PER_MINUTE"]),
    )


# --- sign-in ----------------------------------------------------------------------------------


def login_page(handle: str, login_hint: str | None) -> Response:
    """The sign-in page for the pending authorization ``handle``, shown where the
    authorization asked for a sign-in (no redirect). It carries its first request options
    (a challenge for this browser and this authorization), so the key is asked for without
    another round trip; a retry, or a page older than the challenge, asks ``/login/options``."""
    options = ceremonies.begin_login(
        binding=_binding(), scope=f"authz:{handle}", login_hint=login_hint
    )
    return _page(
        "authn/login.html",
        handle=handle,
        options=json.dumps({"publicKey": options}),
        # Seconds the embedded challenge stays usable, with a margin for the round trip.
        fresh_for=max(0, ceremonies.challenge_ttl() - 30),
    )


@bp.get("/login")
def login() -> Response:
    """The hardware-key sign-in page for a pending authorization (from ``/authorize``)."""
    try:
        handle = _bound_handle(request.args.get("h"))
    except ValidationError as exc:
        return page_error(400, "Invalid request", exc.message)
    _binding()
    return _page("authn/login.html", handle=handle)


@bp.post("/login/options")
@api_view
def login_options() -> Response:
    """PublicKeyCredentialRequestOptions for the pending authorization ``h``."""
    handle, pending = _pending_handle(_body().get("h"))
    hint = pending.params.get("login_hint")
    options = ceremonies.begin_login(
        binding=_binding(),
        scope=f"authz:{handle}",
        login_hint=hint if isinstance(hint, str) else None,
    )
    return _json({"publicKey": options})


@bp.post("/login/verify")
@api_view
def login_verify() -> Response:
    """Verify the assertion; on success renew the session cookie and continue the authorization."""
    body = _body()
    # The challenge is bound to this browser and this handle; /authorize/continue checks that
    # the authorization is still live.
    handle = _bound_handle(body.get("h"))
    done = ceremonies.finish_login(
        credential=body.get("credential"),
        binding=_binding(),
        scope=f"authz:{handle}",
        origin=_origin(),
        commit=False,
    )
    from idp.oauth.views import next_after_sign_in

    following = next_after_sign_in(handle, done.session)
    # The session, with the code when one was issued (that commit took the session too).
    db.session.commit()
    response = _json({"next": following})
    set_session_cookie(response, done.secret)
    return response


# --- enrolment --------------------------------------------------------------------------------


def _signed_in_person() -> Person | None:
    live = current_login_session()
    if live is None:
        return None
    return live.person if live.person.is_active else None


@bp.get("/enrol/<token>")
def enrol(token: str) -> Response:
    """The enrolment page of an invitation: who invited whom for which company."""
    try:
        invitation = orgs.find_valid_invitation(token)
    except IdpError as exc:
        return page_error(exc.status, "Invitation not valid", exc.message)
    _binding()
    return _page("authn/enrol.html", invitation=invitation, token=token, person=_signed_in_person())


@bp.post("/enrol/<token>/options")
@api_view
def enrol_options(token: str) -> Response:
    """PublicKeyCredentialCreationOptions for the invitation."""
    _limit_enrolment()
    body = _body()
    options = ceremonies.begin_enrolment(
        token=token,
        binding=_binding(),
        person=_signed_in_person(),
        display_name=body.get("display_name"),
        key_name=body.get("key_name"),
    )
    return _json({"publicKey": options})


@bp.post("/enrol/<token>/verify")
@api_view
def enrol_verify(token: str) -> Response:
    """Verify the new key, create the person and membership, sign them in."""
    _limit_enrolment()
    body = _body()
    done = ceremonies.finish_enrolment(
        token=token, credential=body.get("credential"), binding=_binding(), origin=_origin()
    )
    response = _json({"next": url_for("authn.enrolled")})
    set_session_cookie(response, done.secret)
    return response


@bp.get("/enrolled")
def enrolled() -> Response:
    """After enrolment: the person's keys and what to do next."""
    live = current_login_session()
    keys = ceremonies.keys_of(live.person_id) if live is not None else []
    return _page("authn/enrolled.html", person=live.person if live else None, keys=keys)
