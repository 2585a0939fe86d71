"""The company admin pages: members and invitations, their security keys, e-service and
third-party authorisations, consents, the company's audit log.

Thin views: parse, call a service (which checks the actor again), render or redirect with 303.
Another company's objects are answered 404 (``idp.admin.company``), a member who is not an
admin 403. Appointing or removing an admin, revoking a key and granting a third-party
authorisation need a fresh hardware-key assertion (``require_fresh_assertion``).
"""

from __future__ import annotations

from flask import Blueprint, Response, request, url_for

from idp.admin import company as scope
from idp.admin import pages
from idp.admin.pages import guarded, page, signed_in
from idp.admin.services import require_fresh_assertion
from idp.authn import keys_admin
from idp.consent import receipts
from idp.consent import services as consent
from idp.delegation import services as delegation
from idp.errors import NotFoundError
from idp.orgs import members
from idp.orgs.models import Company, Person, Role

bp = Blueprint("orgs", __name__, url_prefix="/company/<br>")

ROLES = [r.value for r in Role]


def _admin(br: str) -> tuple[Person, Company]:
    live = signed_in()
    return live.person, scope.company_for_admin(live.person, br)


def _sensitive() -> None:
    require_fresh_assertion(signed_in())


# --- members and invitations ------------------------------------------------------------------


@bp.get("/", endpoint="members")
@guarded
def members_page(br: str) -> Response:
    _, company = _admin(br)
    return page(
        "orgs/members.html",
        company=company,
        members=members.list_members(company),
        invitations=members.list_invitations(company),
        roles=ROLES,
    )


@bp.post("/invitations")
@guarded
def invite(br: str) -> Response:
    person, company = _admin(br)
    roles = request.form.getlist("roles")
    if Role.ADMIN.value in roles:
        _sensitive()
    _, token = members.invite_member(
        company, email=request.form.get("email", ""), roles=roles, actor=person
    )
    from idp.orgs import services as orgs

    # The link is shown once, on this answer (stored only hashed): a page, not a 303.
    return page(
        "orgs/invited.html",
        company=company,
        link=orgs.invite_url(token),
        email=request.form.get("email", ""),
    )


@bp.get("/members/<raw_id>")
@guarded
def member(br: str, raw_id: str) -> Response:
    _, company = _admin(br)
    membership = members.get_member(company, scope.parse_id(raw_id))
    return page(
        "orgs/member.html",
        company=company,
        member=membership,
        keys=keys_admin.member_keys(company, membership.person_id),
        roles=ROLES,
        clients=scope.active_clients(),
    )


@bp.post("/members/<raw_id>/roles")
@guarded
def member_roles(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    membership = members.get_member(company, scope.parse_id(raw_id))
    roles = request.form.getlist("roles")
    if scope.touches_admin(list(membership.roles), roles):
        _sensitive()
    members.change_roles(membership, roles, actor=person, origin=pages.origin())
    return pages.done("saved", url_for("orgs.member", br=br, raw_id=membership.id))


@bp.post("/members/<raw_id>/suspend")
@guarded
def member_suspend(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    membership = members.get_member(company, scope.parse_id(raw_id))
    if Role.ADMIN.value in membership.roles:
        _sensitive()
    members.suspend_member(membership, actor=person, origin=pages.origin())
    return pages.done("suspended", url_for("orgs.member", br=br, raw_id=membership.id))


@bp.post("/members/<raw_id>/reactivate")
@guarded
def member_reactivate(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    membership = members.get_member(company, scope.parse_id(raw_id))
    members.reactivate_member(membership, actor=person, origin=pages.origin())
    return pages.done("reactivated", url_for("orgs.member", br=br, raw_id=membership.id))


@bp.post("/members/<raw_id>/remove")
@guarded
def member_remove(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    membership = members.get_member(company, scope.parse_id(raw_id))
    if Role.ADMIN.value in membership.roles:
        _sensitive()
    members.remove_member(membership, actor=person, origin=pages.origin())
    return pages.done("removed", url_for("orgs.members", br=br))


# --- security keys ----------------------------------------------------------------------------


@bp.post("/keys/<raw_id>/revoke")
@guarded
def key_revoke(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    key = keys_admin.get_member_key(company, scope.parse_id(raw_id))
    _sensitive()
    keys_admin.revoke_security_key(key, actor=person, company=company, origin=pages.origin())
    return pages.done("revoked")


# --- authorisations ---------------------------------------------------------------------------


@bp.get("/authorisations")
@guarded
def authorisations(br: str) -> Response:
    _, company = _admin(br)
    eservice = delegation.list_eservice(company)
    granted = delegation.list_third_party(company)
    received = delegation.list_third_party(company, as_agent=True)
    client_ids = {a.client_id for a in eservice} | {a.client_id for a in [*granted, *received]}
    company_ids = {a.agent_company_id for a in granted} | {a.principal_company_id for a in received}
    return page(
        "orgs/authorisations.html",
        company=company,
        eservice=eservice,
        granted=granted,
        received=received,
        client_names=scope.client_names(client_ids),
        people=scope.people_names({a.person_id for a in eservice}),
        companies=scope.company_names(company_ids),
        clients=scope.active_clients(),
    )


@bp.post("/members/<raw_id>/eservice")
@guarded
def eservice_grant(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    membership = members.get_member(company, scope.parse_id(raw_id))
    delegation.grant_eservice(
        membership,
        scope.active_client(request.form.get("client")),
        role=request.form.get("role") or None,
        expires_at=scope.parse_end_date(request.form.get("expires"), required=False),
        actor=person,
        origin=pages.origin(),
    )
    return pages.done("granted", url_for("orgs.authorisations", br=br))


@bp.post("/eservice/<raw_id>/revoke")
@guarded
def eservice_revoke(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    authorisation = delegation.get_eservice(company, scope.parse_id(raw_id))
    delegation.revoke_eservice(authorisation, actor=person, origin=pages.origin())
    return pages.done("revoked", url_for("orgs.authorisations", br=br))


@bp.post("/third-party")
@guarded
def third_party_grant(br: str) -> Response:
    person, company = _admin(br)
    agent = scope.agent_company(request.form.get("agent"))
    client = scope.active_client(request.form.get("client"))
    _sensitive()
    delegation.grant_third_party(
        company,
        agent,
        client,
        expires_at=scope.parse_end_date(request.form.get("expires"), required=True),  # type: ignore[arg-type]
        actor=person,
        origin=pages.origin(),
    )
    return pages.done("granted", url_for("orgs.authorisations", br=br))


@bp.post("/third-party/<raw_id>/revoke")
@guarded
def third_party_revoke(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    authorisation = delegation.get_third_party(company, scope.parse_id(raw_id))
    delegation.revoke_third_party(authorisation, actor=person, origin=pages.origin())
    return pages.done("revoked", url_for("orgs.authorisations", br=br))


# --- consents and audit -----------------------------------------------------------------------


@bp.get("/consents")
@guarded
def consents(br: str) -> Response:
    _, company = _admin(br)
    return page(
        "orgs/consents.html", company=company, consents=consent.list_company_consents(company)
    )


@bp.get("/consents/<raw_id>/receipts")
@guarded
def consent_receipts(br: str, raw_id: str) -> Response:
    _, company = _admin(br)
    row = consent.company_consent_by_id(company, scope.parse_id(raw_id))
    return page(
        "orgs/consent_receipts.html",
        company=company,
        consent=row,
        receipts=receipts.consent_receipts(row),
    )


@bp.get("/consents/<raw_id>/receipts/<receipt_id>.jwt")
@guarded
def consent_receipt_download(br: str, raw_id: str, receipt_id: str) -> Response:
    _, company = _admin(br)
    row = receipts.get_receipt(
        consent.company_consent_by_id(company, scope.parse_id(raw_id)), scope.parse_id(receipt_id)
    )
    if row is None:
        raise NotFoundError("no such receipt")
    return Response(
        row.receipt,
        mimetype="application/jwt",
        headers={
            "Content-Disposition": f'attachment; filename="consent-receipt-{row.jti}.jwt"',
            "Cache-Control": "no-store",
        },
    )


@bp.post("/consents/<raw_id>/revoke")
@guarded
def consent_revoke(br: str, raw_id: str) -> Response:
    person, company = _admin(br)
    row = scope.get_consent(company, scope.parse_id(raw_id))
    consent.revoke_consent(row, actor=members.actor_name(person), origin=pages.origin())
    return pages.done("revoked", url_for("orgs.consents", br=br))


@bp.get("/audit")
@guarded
def audit(br: str) -> Response:
    _, company = _admin(br)
    events = scope.company_events(
        company, before_id=scope.audit_page_start(request.args.get("before"))
    )
    return page(
        "admin/audit.html", company=company, events=events, filters={}, page_size=scope.AUDIT_PAGE
    )
