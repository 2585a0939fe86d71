"""Consent APIs: the relying party's receipts (client-authenticated) and the company admins'
consents API (a Corp ID access token with scope ``corp_consents``).

Thin: authenticate, call ``idp.consent.services`` / ``receipts``, answer JSON with
``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, json, request
from sqlalchemy import select

from idp.audit.services import Origin
from idp.consent import receipts
from idp.consent import services as consents
from idp.errors import API_HEADERS, IdpError, api_view, json_error
from idp.extensions import db
from idp.oauth import resource, tokens
from idp.oauth.models import Grant
from idp.orgs import members
from idp.orgs import services as orgs
from idp.orgs.models import Company, Person
from idp.web import csrf

bp = Blueprint("consent", __name__)

ADMIN_SCOPE = "corp_consents"


def _json(payload: Any, status: int = 200) -> Response:
    response = Response(json.dumps(payload), status=status, mimetype="application/json")
    response.headers.update(API_HEADERS)
    return response


def _origin() -> Origin:
    return Origin(request.remote_addr, request.headers.get("User-Agent"))


# --- the relying party's receipts -------------------------------------------------------------


@bp.post("/consent/receipts")
@csrf.exempt
@api_view
def client_receipts() -> Response:
    """The authenticated client's consent receipts, oldest first; ``after=<id>`` pages."""
    from idp.oauth import authorization
    from idp.oauth.endpoints import Introspection
    from idp.oauth.server import IssuerOAuth2Request
    from idp.oauth.views import _check_form_post

    # An empty body (basic auth, first page) is fine; anything else must be a proper form.
    empty = not request.content_length and not request.mimetype and not request.args
    refused = None if empty else _check_form_post()
    if refused is not None:
        return refused
    client = authorization.authenticate_client(
        IssuerOAuth2Request(), Introspection.CLIENT_AUTH_METHODS, "receipts"
    )
    raw = request.form.get("after")
    if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return json_error(400, "invalid_request", "'after' must be a receipt id.")
    raw_limit = request.form.get("limit")
    if raw_limit is not None and not (raw_limit.isascii() and raw_limit.isdigit()):
        return json_error(400, "invalid_request", "'limit' must be a positive integer.")
    limit = min(int(raw_limit or receipts.PAGE_SIZE), receipts.PAGE_SIZE) or 1
    found = receipts.client_receipts(client, after=int(raw) if raw else None, limit=limit)
    db.session.rollback()
    return _json(found)


# --- the company admins' API ------------------------------------------------------------------


def token_admin(br: str) -> tuple[Person, Company]:
    """The one door for the consents API: a live Corp ID access token (Bearer, or DPoP-bound
    with its proof: idp.oauth.resource) with scope ``corp_consents``, issued for this very
    company to a person who is an active admin of it. Returns ``(person, company)``; raises
    ``resource.ResourceError``."""
    claims = resource.protected_claims(request, required_scopes=(ADMIN_SCOPE,))
    scheme = "DPoP" if "cnf" in claims else "Bearer"
    grant = None
    if isinstance(claims.get("gid"), str):
        grant = db.session.scalars(select(Grant).where(Grant.gid == claims["gid"])).first()
    principal = tokens.principal_for_grant(grant) if grant is not None else None
    if principal is None or principal.agent is not None:
        raise resource.refuse(scheme, 401, "invalid_token", "The access token is not active.")
    try:
        company = orgs.get_company_by_br(br)
    except IdpError:  # unknown or malformed: answered like a company not yours
        company = None
    if company is None or company.id != principal.company.id:
        raise resource.refuse(
            scheme, 403, "insufficient_scope", "The token was not issued for this company."
        )
    if not members.is_admin(principal.person, company):
        raise resource.refuse(
            scheme, 403, "insufficient_scope", "Only the company's admins may do this."
        )
    return principal.person, company


@bp.get("/api/companies/<br>/consents")
@api_view
def api_consents(br: str) -> Response:
    try:
        _, company = token_admin(br)
    except resource.ResourceError as exc:
        return resource.error_response(exc)
    rows = consents.list_company_consents(company)
    return _json({"consents": [row.as_json() for row in rows]})


@bp.post("/api/companies/<br>/consents/<consent_id>/revoke")
@csrf.exempt
@api_view
def api_revoke(br: str, consent_id: str) -> Response:
    try:
        person, company = token_admin(br)
    except resource.ResourceError as exc:
        return resource.error_response(exc)
    row = consents.get_company_consent(company, consent_id)
    consents.revoke_consent(row, actor=members.actor_name(person), origin=_origin())
    latest = receipts.latest_receipt(row.id)
    return _json({"consent_id": row.consent_id, "status": consents.REVOKED, "receipt": latest})
