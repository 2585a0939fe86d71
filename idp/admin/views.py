"""The console: sign-in with a hardware key (the same ceremony as the login page, scope
``console``), step-up, operator enrolment, and the operator console. Thin views: parse, call
a service, render or redirect (303 after a POST)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, json, request, session, url_for

from idp.admin import pages
from idp.admin import services as admin
from idp.admin.pages import guarded, page, see_other, signed_in
from idp.authn import ceremonies
from idp.authn.services import end_session
from idp.authn.views import _binding, _body, current_login_session, set_session_cookie
from idp.clients import services as clients
from idp.clients.models import AuthMethod, ClientProfile
from idp.errors import IdpError, ValidationError, api_view, page_error
from idp.keys import services as keys
from idp.orgs import services as orgs
from idp.orgs.models import CompanyStatus
from idp.web import csrf

bp = Blueprint("admin", __name__)

CONSOLE_SCOPE = "console"
NEXT_KEY = "console_next"
STEPUP_NEXT_KEY = "stepup_next"


def _json(body: dict[str, Any], status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _operator() -> admin.Operator:
    return admin.require_operator(signed_in())


# --- sign-in, step-up, sign-out ---------------------------------------------------------------


@bp.get("/console/")
@guarded
def home() -> Response:
    """Where a signed-in person finds their companies' admin pages and, for operators, the
    operator console."""
    live = signed_in()
    companies = admin.administered_companies(live.person)
    return page(
        "admin/home.html",
        person=live.person,
        companies=companies,
        operator=admin.find_operator(live.person_id),
    )


@bp.get("/console/login")
def login() -> Response:
    """Sign in to the console with a security key."""
    session[NEXT_KEY] = pages.safe_next(request.args.get("next"), url_for("admin.home"))
    _binding()
    return page("admin/login.html", mode="login", handle=CONSOLE_SCOPE)


@bp.post("/console/login/options")
@api_view
def login_options() -> Response:
    options = ceremonies.begin_login(binding=_binding(), scope=CONSOLE_SCOPE)
    return _json({"publicKey": options})


@bp.post("/console/login/verify")
@api_view
def login_verify() -> Response:
    body = _body()
    done = ceremonies.finish_login(
        credential=body.get("credential"),
        binding=_binding(),
        scope=CONSOLE_SCOPE,
        origin=pages.origin(),
    )
    target = pages.safe_next(session.pop(NEXT_KEY, None), url_for("admin.home"))
    response = _json({"next": target})
    set_session_cookie(response, done.secret)
    return response


@bp.get("/console/stepup")
@guarded
def stepup() -> Response:
    """Confirm a sensitive action: touch the key again (within 5 minutes of the action)."""
    signed_in()
    session[STEPUP_NEXT_KEY] = pages.safe_next(request.args.get("next"), url_for("admin.home"))
    _binding()
    return page("admin/login.html", mode="stepup", handle=admin.STEPUP)


@bp.post("/console/stepup/options")
@api_view
def stepup_options() -> Response:
    live = current_login_session()
    if live is None:
        raise ValidationError("Sign in first.")
    return _json({"publicKey": admin.begin_stepup(session=live, binding=_binding())})


@bp.post("/console/stepup/verify")
@api_view
def stepup_verify() -> Response:
    live = current_login_session()
    if live is None:
        raise ValidationError("Sign in first.")
    body = _body()
    admin.finish_stepup(
        session=live, credential=body.get("credential"), binding=_binding(), origin=pages.origin()
    )
    target = pages.safe_next(session.pop(STEPUP_NEXT_KEY, None), url_for("admin.home"))
    return _json({"next": target})


@bp.post("/console/signout")
def signout() -> Response:
    live = current_login_session()
    if live is not None:
        end_session(
            live, reason="signout", actor=f"person:{live.person.subject}", origin=pages.origin()
        )
    return see_other(url_for("admin.login"))


# --- operator enrolment -----------------------------------------------------------------------


@bp.get("/console/enrol/<token>")
def enrol(token: str) -> Response:
    """The enrolment page of an operator invitation."""
    try:
        invitation = admin.find_operator_invitation(token)
    except IdpError as exc:
        return page_error(exc.status, "Invitation not valid", exc.message)
    _binding()
    return page("admin/enrol.html", invitation=invitation, token=token)


@bp.post("/console/enrol/<token>/options")
@api_view
def enrol_options(token: str) -> Response:
    from idp.authn.views import _limit_enrolment

    _limit_enrolment()
    body = _body()
    options = admin.begin_operator_enrolment(
        token=token,
        binding=_binding(),
        display_name=body.get("display_name"),
        key_name=body.get("key_name"),
    )
    return _json({"publicKey": options})


@bp.post("/console/enrol/<token>/verify")
@api_view
def enrol_verify(token: str) -> Response:
    from idp.authn.views import _limit_enrolment

    _limit_enrolment()
    body = _body()
    done = admin.finish_operator_enrolment(
        token=token, credential=body.get("credential"), binding=_binding(), origin=pages.origin()
    )
    response = _json({"next": url_for("admin.operator_home")})
    set_session_cookie(response, done.secret)
    return response


# --- operator console: relying parties --------------------------------------------------------


def _lines(name: str) -> list[str]:
    raw = request.form.get(name, "")
    return [line.strip() for line in raw.splitlines() if line.strip()]


def _optional(name: str) -> str | None:
    value = request.form.get(name, "").strip()
    return value or None


@bp.get("/operator/")
@guarded
def operator_home() -> Response:
    operator = _operator()
    return page("admin/operator_home.html", operator=operator)


@bp.get("/operator/clients")
@guarded
def clients_list() -> Response:
    _operator()
    return page("admin/clients.html", clients=clients.list_clients())


@bp.get("/operator/clients/new")
@guarded
def client_new() -> Response:
    _operator()
    return page(
        "admin/client_form.html",
        client=None,
        auth_methods=[m.value for m in AuthMethod],
        profiles=[p.value for p in ClientProfile],
    )


@bp.post("/operator/clients")
@guarded
def client_create() -> Response:
    operator = _operator()
    client, secret = clients.create_client(
        name=request.form.get("name", ""),
        redirect_uris=_lines("redirect_uris"),
        auth_method=request.form.get("auth_method", ""),
        post_logout_redirect_uris=_lines("post_logout_redirect_uris"),
        backchannel_logout_uri=_optional("backchannel_logout_uri"),
        profile=request.form.get("profile", "basic"),
        jwks_uri=_optional("jwks_uri"),
        actor=admin.actor_of(operator),
    )
    # The secret is shown once, on this answer, never stored in plaintext nor in a cookie:
    # the one POST answered with a page instead of a 303.
    return page("admin/client_secret.html", client=client, secret=secret)


@bp.get("/operator/clients/<client_id>")
@guarded
def client_show(client_id: str) -> Response:
    _operator()
    return page(
        "admin/client_form.html",
        client=clients.get_client(client_id),
        auth_methods=[m.value for m in AuthMethod],
        profiles=[p.value for p in ClientProfile],
    )


@bp.post("/operator/clients/<client_id>")
@guarded
def client_update(client_id: str) -> Response:
    operator = _operator()
    clients.update_client(
        client_id,
        actor=admin.actor_of(operator),
        name=request.form.get("name", ""),
        redirect_uris=_lines("redirect_uris"),
        post_logout_redirect_uris=_lines("post_logout_redirect_uris"),
        backchannel_logout_uri=_optional("backchannel_logout_uri"),
        profile=request.form.get("profile", "basic"),
    )
    return pages.done("saved", url_for("admin.client_show", client_id=client_id))


@bp.post("/operator/clients/<client_id>/rotate-secret")
@guarded
def client_rotate_secret(client_id: str) -> Response:
    operator = _operator()
    secret = clients.rotate_secret(client_id, actor=admin.actor_of(operator))
    return page("admin/client_secret.html", client=clients.get_client(client_id), secret=secret)


@bp.post("/operator/clients/<client_id>/disable")
@guarded
def client_disable(client_id: str) -> Response:
    operator = _operator()
    clients.disable_client(client_id, actor=admin.actor_of(operator))
    return pages.done("disabled", url_for("admin.client_show", client_id=client_id))


# --- operator console: signing keys (four eyes) -----------------------------------------------


@bp.get("/operator/keys")
@guarded
def keys_list() -> Response:
    operator = _operator()
    return page(
        "admin/keys.html",
        operator=operator,
        keys=keys.list_keys(include_removed=True),
        requests=admin.list_key_change_requests(),
        algs=keys.SUPPORTED_ALGS,
    )


@bp.post("/operator/keys/requests")
@guarded
def key_change_request() -> Response:
    operator = _operator()
    action = request.form.get("action", "")
    alg = _optional("alg")
    admin.request_key_change(
        operator=operator,
        session=signed_in(),
        action=action,
        alg=alg,
        kid=_optional("kid"),
        origin=pages.origin(),
    )
    return pages.done("requested", url_for("admin.keys_list"))


def _request_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise ValidationError("no such request")
    return int(raw)


@bp.post("/operator/keys/requests/<raw_id>/approve")
@guarded
def key_change_approve(raw_id: str) -> Response:
    operator = _operator()
    change = admin.approve_key_change(
        operator=operator,
        session=signed_in(),
        request_id=_request_id(raw_id),
        origin=pages.origin(),
    )
    return pages.done(change.status.value, url_for("admin.keys_list"))


@bp.post("/operator/keys/requests/<raw_id>/cancel")
@guarded
def key_change_cancel(raw_id: str) -> Response:
    operator = _operator()
    admin.cancel_key_change(
        operator=operator, request_id=_request_id(raw_id), origin=pages.origin()
    )
    return pages.done("cancelled", url_for("admin.keys_list"))


# --- operator console: companies --------------------------------------------------------------


@bp.get("/operator/companies")
@guarded
def companies() -> Response:
    _operator()
    from idp.orgs import register

    query = pages.query_text("q", limit=300)
    found = register.search_companies(query, limit=50) if query else []
    return page("admin/companies.html", query=query, companies=found)


def _import_page(status: int = 200, **context: Any) -> Response:
    limit = int(current_app.config["IDP"]["REGISTER_UPLOAD_MAX_BYTES"])
    context.setdefault("report", None)
    context.setdefault("error", None)
    return page("admin/companies_import.html", status=status, max_bytes=limit, **context)


@bp.get("/operator/companies/import")
@guarded
def companies_import_form() -> Response:
    """Upload a register CSV (step-up first, so that the upload is not lost to one)."""
    _operator()
    try:
        admin.require_fresh_assertion(signed_in())
    except admin.StepUpRequired:
        return pages.stepup_redirect(url_for("admin.companies_import_form"))
    return _import_page()


@bp.post("/operator/companies/import")
@csrf.exempt  # checked below, once this route's larger body limit is set
@guarded
def companies_import() -> Response:
    """Import an uploaded register CSV; the report is the answer (a page, not a 303)."""
    from idp.admin import imports

    limit = int(current_app.config["IDP"]["REGISTER_UPLOAD_MAX_BYTES"])
    request.max_content_length = limit
    csrf.protect()
    operator = _operator()
    admin.require_fresh_assertion(signed_in())
    upload = request.files.get("file")
    try:
        if upload is None or not upload.filename:
            raise ValidationError("Choose a CSV file.")
        report = imports.import_upload(
            upload.read(limit + 1), filename=upload.filename, actor=admin.actor_of(operator)
        )
    except IdpError as exc:
        return _import_page(exc.status, error=exc.message)
    return _import_page(report=report)


@bp.get("/operator/companies/<br>")
@guarded
def company_show(br: str) -> Response:
    _operator()
    company = orgs.get_company_by_br(br)
    return page(
        "admin/company.html",
        company=company,
        has_admin=orgs.has_admin(company),
        statuses=[s.value for s in CompanyStatus],
    )


@bp.post("/operator/companies/<br>/admins")
@guarded
def company_appoint_admin(br: str) -> Response:
    operator = _operator()
    admin.require_fresh_assertion(signed_in())
    company = orgs.get_company_by_br(br)
    _, token = orgs.create_invitation(
        company=company,
        email=request.form.get("email", ""),
        roles=["admin"],
        invited_by=admin.actor_of(operator),
    )
    # The link is shown once (as the CLI prints it): a page, not a 303.
    return page("admin/company_invited.html", company=company, link=orgs.invite_url(token))


@bp.post("/operator/companies/<br>/status")
@guarded
def company_status(br: str) -> Response:
    """Suspend (deregistered, dissolved: memberships suspended, sessions, tokens and consents
    ended) or restore a company."""
    from idp.orgs import register

    operator = _operator()
    admin.require_fresh_assertion(signed_in())
    company = orgs.get_company_by_br(br)
    register.apply_company_status(
        company,
        request.form.get("status", ""),
        actor=admin.actor_of(operator),
        origin=pages.origin(),
    )
    return pages.done("saved", url_for("admin.company_show", br=br))


# --- operator console: audit ------------------------------------------------------------------


@bp.get("/operator/audit")
@guarded
def audit() -> Response:
    """Search the audit log: by tag prefix, actor, subject, company (BR number)."""
    from idp.admin import company as scope
    from idp.audit.services import search_events

    _operator()
    names = ("tag", "actor", "subject", "br")
    filters = {name: pages.query_text(name, limit=200) for name in names}
    company_id = None
    if filters["br"]:
        company_id = orgs.get_company_by_br(filters["br"]).id
    events = search_events(
        tag_prefix=filters["tag"] or None,
        actor=filters["actor"] or None,
        subject=filters["subject"] or None,
        company_id=company_id,
        limit=scope.AUDIT_PAGE,
        before_id=scope.audit_page_start(request.args.get("before")),
    )
    return page(
        "admin/audit.html", events=events, filters=filters, company=None, page_size=scope.AUDIT_PAGE
    )
