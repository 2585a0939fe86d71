"""Protocol endpoints. Thin: parse the request, call Authlib or a service, answer."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    json,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from idp import cache
from idp.audit.services import Origin
from idp.authn.models import LoginSession
from idp.authn.views import current_login_session, login_page, session_cookie_name
from idp.errors import api_view, json_error, page_error
from idp.extensions import db
from idp.oauth import authorize as flow
from idp.oauth import logout, resource
from idp.oauth.endpoints import userinfo_for
from idp.web import csrf, use_ui_locales

bp = Blueprint("oauth", __name__)

PENDING_SESSION_KEY = "authz"
MAX_PENDING_PER_BROWSER = 5


# --- authorization endpoint -------------------------------------------------------------------


@bp.route("/authorize", methods=["GET", "POST"])
@csrf.exempt
def authorize() -> Response:
    if request.method == "POST" and request.mimetype != "application/x-www-form-urlencoded":
        return page_error(400, "Invalid request", "Send the authorization request as a form.")
    source = request.args if request.method == "GET" else request.form
    values = {k: source.getlist(k) for k in source}
    try:
        # With Redis, the pending authorization and the sign-in page's challenge are written
        # together (one round trip), and not at all when the request fails.
        with cache.batch():
            started = flow.start(values)
            if isinstance(started, flow.ClientRedirect):
                return _client_redirect(started)
            handle, pending = started
            _remember_pending(handle)
            response = _render(flow.resume(handle, current_login_session(), pending=pending))
            # The pending authorization, committed with what it led to (the sign-in page's
            # challenge, a code) or here.
            db.session.commit()
        return response
    except flow.AuthorizationPageError as exc:
        return page_error(exc.status, _title(exc.error), exc.description)


@bp.get("/authorize/continue")
def authorize_continue() -> Response:
    try:
        handle = bound_handle(request.args.get("h"))
        return _render(flow.resume(handle, current_login_session()))
    except flow.AuthorizationPageError as exc:
        return page_error(exc.status, _title(exc.error), exc.description)


@bp.post("/authorize/company")
def authorize_company() -> Response:
    try:
        handle = bound_handle(request.form.get("h"))
        # "<company id>" or, acting as an agent, "<company id>.<agent company id>".
        company, _, agent = request.form.get("company", "").partition(".")
        if not _is_id(company) or (agent and not _is_id(agent)):
            raise flow.AuthorizationPageError("invalid_request", "Choose a company.")
        outcome = flow.choose_company(
            handle, current_login_session(), int(company), int(agent) if agent else None
        )
        return _render(outcome, after_post=True)
    except flow.AuthorizationPageError as exc:
        return page_error(exc.status, _title(exc.error), exc.description)


@bp.post("/authorize/consent")
def authorize_consent() -> Response:
    try:
        handle = bound_handle(request.form.get("h"))
        decision = request.form.get("decision")
        if decision not in ("allow", "deny"):
            raise flow.AuthorizationPageError("invalid_request", "Choose Allow or Deny.")
        outcome = flow.decide_consent(
            handle, current_login_session(), allow=decision == "allow", origin=_origin()
        )
        return _render(outcome, after_post=True)
    except flow.AuthorizationPageError as exc:
        return page_error(exc.status, _title(exc.error), exc.description)


def _is_id(value: str) -> bool:
    return 0 < len(value) <= 18 and value.isascii() and value.isdigit()


def _title(error: str) -> str:
    return error.replace("_", " ").capitalize()


def _origin() -> Origin:
    return Origin(request.remote_addr, request.headers.get("User-Agent"))


def _remember_pending(handle: str) -> None:
    handles = [h for h in session.get(PENDING_SESSION_KEY, []) if isinstance(h, str)]
    session[PENDING_SESSION_KEY] = [*handles[-(MAX_PENDING_PER_BROWSER - 1) :], handle]


def bound_handle(handle: object) -> str:
    """The handle, if this browser started that authorization (binding to the session);
    else ``AuthorizationPageError``."""
    if not isinstance(handle, str) or handle not in session.get(PENDING_SESSION_KEY, []):
        raise flow.AuthorizationPageError(
            "invalid_request",
            "This sign-in request belongs to another browser window or has "
            "expired. Start again from the site you came from.",
        )
    return handle


def _render(outcome: flow.Outcome, *, after_post: bool = False) -> Response:
    if isinstance(outcome, flow.ClientRedirect):
        return _client_redirect(outcome)
    if isinstance(outcome, flow.NeedLogin):
        if not after_post:
            # The sign-in page right here: one redirect and one request fewer.
            use_ui_locales(outcome.ui_locales)
            return login_page(outcome.handle, outcome.login_hint)
        args: dict[str, Any] = {"h": outcome.handle}
        if outcome.login_hint:
            args["login_hint"] = outcome.login_hint
        if outcome.ui_locales:
            args["ui_locales"] = outcome.ui_locales
        target = url_for("authn.login", **args)
        return redirect(target, 303)  # type: ignore[return-value]
    if after_post:
        # 303 after a POST: the page is shown by a GET.
        return redirect(url_for("oauth.authorize_continue", h=outcome.handle), 303)  # type: ignore[return-value]
    use_ui_locales(outcome.ui_locales)
    if isinstance(outcome, flow.NeedCompany):
        html = render_template("oauth/choose_company.html", outcome=outcome)
    else:
        html = render_template("oauth/consent.html", outcome=outcome)
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _client_redirect(outcome: flow.ClientRedirect) -> Response:
    if outcome.response_mode == "form_post":
        params = [*outcome.params, ("iss", current_app.config["IDP"]["ISSUER"])]
        html = render_template("oauth/form_post.html", action=outcome.redirect_uri, params=params)
        response = Response(html, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response
    return Response(
        status=303,
        headers={"Location": _query_redirect_url(outcome), "Cache-Control": "no-store"},
    )


def _query_redirect_url(outcome: flow.ClientRedirect) -> str:
    """The client's redirect URI with the response parameters and ``iss`` in its query."""
    params = [*outcome.params, ("iss", current_app.config["IDP"]["ISSUER"])]
    parts = urlsplit(outcome.redirect_uri)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params])
    return urlunsplit(parts._replace(query=query))


def next_after_sign_in(handle: str, session: LoginSession) -> str:
    """Where the browser goes once the person signed in for the authorization ``handle``:
    straight back to the client when nothing more is asked (one company, consent given,
    query response mode), saving the browser a request; else ``/authorize/continue``, which
    shows what is asked (company, consent, an error page) or posts the answer (form_post)."""
    continue_url = url_for("oauth.authorize_continue", h=handle)
    try:
        pending = flow.find_pending(handle)
        if (pending.params.get("response_mode") or "query") != "query":
            return continue_url
        outcome = flow.resume(handle, session, pending=pending)
    except flow.AuthorizationPageError:
        return continue_url  # which shows the error to the person
    if isinstance(outcome, flow.ClientRedirect) and outcome.response_mode == "query":
        return _query_redirect_url(outcome)
    return continue_url


# --- token, introspection, revocation ---------------------------------------------------------


def _check_form_post() -> Response | None:
    """RFC 6749 §3.2: form-encoded body, no parameter twice, nothing in the query."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return json_error(
            400, "invalid_request", "Send the request as application/x-www-form-urlencoded."
        )
    if request.args:
        return json_error(400, "invalid_request", "Send parameters in the body, not the URL.")
    if any("\x00" in k or "\x00" in v for k, v in request.form.items(multi=True)):
        return json_error(400, "invalid_request", "The request contains a NUL character.")
    repeated = sorted(k for k in request.form if len(request.form.getlist(k)) > 1)
    if repeated:
        return json_error(
            400, "invalid_request", f"Parameters must not be repeated: {', '.join(repeated)}."
        )
    if not request.environ.get(cache.COUNTED):  # the hot path counted it already
        cache.hit(
            "source",
            request.remote_addr or "-",
            limit=int(current_app.config["IDP"]["RATE_LIMIT_SOURCE_PER_MINUTE"]),
        )
    return None


def _finish(response: Response) -> Response:
    if response.status_code == 200:
        db.session.commit()
    else:
        db.session.rollback()
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.post("/token")
@csrf.exempt
@api_view
def token() -> Response:
    from idp.oauth import authorization

    return _check_form_post() or _finish(authorization.create_token_response())


@bp.post("/introspect")
@csrf.exempt
@api_view
def introspect() -> Response:
    from idp.oauth import authorization

    return _check_form_post() or _finish(authorization.create_endpoint_response("introspection"))


@bp.post("/revoke")
@csrf.exempt
@api_view
def revoke() -> Response:
    from idp.oauth import authorization

    return _check_form_post() or _finish(authorization.create_endpoint_response("revocation"))


@bp.post("/par")
@csrf.exempt
@api_view
def pushed_authorization() -> Response:
    """RFC 9126 §2: push an authorization request; 201 with its single-use request_uri."""
    from idp.oauth import authorization, dpop, par

    refused = _check_form_post()
    if refused is not None:
        return refused
    try:
        # DPoP at PAR (RFC 9449 §10.1): a proof sent with the push binds the code to its key.
        proof_jkt = dpop.proof_jkt_at(request, dpop.endpoint_url(request))
    except dpop.DPoPError as exc:
        db.session.rollback()
        nonce = {"DPoP-Nonce": exc.nonce} if exc.nonce else None
        return json_error(400, exc.error, exc.get_error_description() or exc.error, nonce)
    try:
        pushed = par.push(
            authorization.create_oauth2_request(None), proof_jkt=proof_jkt, origin=_origin()
        )
    except par.PushError as exc:
        db.session.rollback()
        return json_error(exc.status, exc.error, exc.description, exc.headers)
    body = json.dumps({"request_uri": pushed.request_uri, "expires_in": pushed.expires_in})
    response = Response(body, status=201, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


# --- userinfo ---------------------------------------------------------------------------------


@bp.route("/userinfo", methods=["GET", "POST"])
@csrf.exempt
@api_view
def userinfo() -> Response:
    try:
        token_claims = resource.protected_claims(request)
    except resource.ResourceError as exc:
        return resource.error_response(exc)
    claims = userinfo_for(token_claims)
    if claims is None:
        scheme = "DPoP" if "cnf" in token_claims else "Bearer"
        return resource.error_response(
            resource.refuse(scheme, 401, "invalid_token", "The access token is not active.")
        )
    response = Response(json.dumps(claims), mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


# --- RP-initiated logout (end_session_endpoint) -----------------------------------------------

LOGOUT_SESSION_KEY = "logout"


@bp.route("/logout", methods=["GET", "POST"])
@csrf.exempt
def end_session() -> Response:
    """RP-Initiated Logout 1.0 §2: GET with a query, or POST with a form.

    A POST from the relying party's page is cross-site, so the browser sends no (SameSite)
    session cookie with it: the checked request is kept and decided on the GET that follows."""
    if request.method == "POST" and request.mimetype != "application/x-www-form-urlencoded":
        return page_error(400, "Invalid request", "Send the logout request as a form.")
    source = request.args if request.method == "GET" else request.form
    try:
        checked = logout.parse_request({k: source.getlist(k) for k in source})
    except logout.LogoutError as exc:
        return page_error(exc.status, "Invalid request", exc.description)
    if request.method == "POST":
        session[LOGOUT_SESSION_KEY] = checked.as_dict()
        return redirect(url_for("oauth.end_session_continue"), 303)  # type: ignore[return-value]
    return _logout_outcome(checked)


@bp.get("/logout/continue")
def end_session_continue() -> Response:
    checked = logout.recheck(logout.LogoutRequest.from_dict(session.get(LOGOUT_SESSION_KEY)))
    return _logout_outcome(checked)


@bp.post("/logout/confirm")
def end_session_confirm() -> Response:
    checked = logout.recheck(logout.LogoutRequest.from_dict(session.pop(LOGOUT_SESSION_KEY, None)))
    # The page shown next keeps the language the relying party asked for.
    shown: dict[str, Any] = {"ui_locales": checked.ui_locales} if checked.ui_locales else {}
    if request.form.get("decision") == "stay":
        target = logout.redirect_target(checked)
        return redirect(target or url_for("oauth.logged_out", stayed=1, **shown), 303)  # type: ignore[return-value]
    done = logout.log_out(checked, current_login_session(), confirmed=True, origin=_origin())
    response = redirect(done.redirect_to or url_for("oauth.logged_out", **shown), 303)
    return _forget_login(response)  # type: ignore[arg-type]


@bp.get("/logout/done")
def logged_out() -> Response:
    html = render_template("oauth/logged_out.html", stayed=request.args.get("stayed") == "1")
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _logout_outcome(checked: logout.LogoutRequest) -> Response:
    use_ui_locales(checked.ui_locales)
    outcome = logout.decide(checked, current_login_session(), origin=_origin())
    if isinstance(outcome, logout.Confirm):
        session[LOGOUT_SESSION_KEY] = checked.as_dict()
        html = render_template("oauth/logout_confirm.html", client=outcome.client)
        response = Response(html, mimetype="text/html")
    else:
        session.pop(LOGOUT_SESSION_KEY, None)
        if outcome.redirect_to:
            response = redirect(outcome.redirect_to, 303)  # type: ignore[assignment]
        else:
            html = render_template("oauth/logged_out.html", stayed=False)
            response = Response(html, mimetype="text/html")
        _forget_login(response)
    response.headers["Cache-Control"] = "no-store"
    return response


def _forget_login(response: Response) -> Response:
    """Drop the sign-in cookie and this browser's pending authorizations."""
    https = str(current_app.config["IDP"]["ISSUER"]).startswith("https://")
    response.delete_cookie(
        session_cookie_name(), path="/", secure=https, httponly=True, samesite="Lax"
    )
    session.pop(PENDING_SESSION_KEY, None)
    return response
