"""The company admin pages through the live server: members and invitations, security keys
with revoke (step-up), authorisations, consents, audit; and every authorization rule refused
(another company's objects by guessing IDs: 404; a member is not an admin: 403; no CSRF: 400;
a stale assertion: step-up first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from idp.audit.models import AuditEvent
from idp.authn.models import SecurityKey
from idp.consent.models import Consent
from idp.extensions import db
from idp.orgs.models import Company, Invitation, Membership, Person
from tests.functional.conftest import RP, Browser, KeyHolder, Live, PersonInfo
from tests.functional.console_support import age_assertions, path_of, post_form, step_up
from tests.support import ceremony


def _member_of(ctx: Live, admin: KeyHolder, invite: Callable[..., str],
               browser: Callable[[], Browser], soft_key: Callable[..., Any], *,
               email: str = "clerk@acme.example", roles: list[str] | None = None
               ) -> tuple[Browser, Any, Person]:
    """Enrol a member into the admin's company through an invitation link."""
    link = invite(company=admin.person.companies[0].br_number, email=email,
                  roles=roles or ["member"])
    b, key = browser(), soft_key()
    page = b.go(link)
    assert ceremony.enrol(b.http, page, key, display_name="Wong Siu Ming").status_code == 200
    db.session.rollback()
    person = db.session.scalars(select(Person).where(Person.email == email)).one()
    return b, key, person


def _membership(person_id: int, company_id: int) -> Membership:
    db.session.rollback()
    return db.session.scalars(select(Membership).where(
        Membership.person_id == person_id, Membership.company_id == company_id)).one()


def _other_company(make_person: Callable[..., PersonInfo]) -> tuple[PersonInfo, SecurityKey]:
    """Company B with an admin who has a key."""
    other = make_person(name="Lee Ka Yan", email="lee@other.example",
                        companies=[{"name_en": "Other Holdings Limited", "roles": ["admin"]}])
    key = SecurityKey(person_id=other.id, credential_id=b"other-key", public_key=b"x",
                      name="Other key")
    db.session.add(key)
    db.session.commit()
    return other, key


def _csrf(b: Browser, live: Live) -> str:
    return ceremony.ceremony_of(b.go(live.url("/console/login")))["csrf"]


def test_pages_need_sign_in(ctx: Live, browser: Callable[[], Browser]) -> None:
    answer = browser().request("GET", ctx.url("/company/12345678/"))
    assert answer.status_code == 303
    assert path_of(answer) == "/console/login"
    assert "next=%2Fcompany%2F12345678%2F" in answer.headers["Location"]


def test_admin_sees_members_and_invites(ctx: Live, enrolled: Callable[..., KeyHolder]) -> None:
    admin = enrolled()
    b, br = admin.browser, admin.person.companies[0].br_number
    home = b.go(ctx.url("/console/"))
    assert f"/company/{br}/" in home.text
    page = b.go(ctx.url(f"/company/{br}/"))
    assert page.status_code == 200
    assert "Chan Tai Man" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self' 'nonce-" in page.headers["Content-Security-Policy"]
    invited = post_form(b, page, "/invitations", {"email": "clerk@acme.example",
                                                  "roles": ["member", "signatory"]})
    assert invited.status_code == 200
    assert "/enrol/cii_" in invited.text
    db.session.rollback()
    invitation = db.session.scalars(select(Invitation).where(
        Invitation.email == "clerk@acme.example")).one()
    assert invitation.roles == ["member", "signatory"]
    assert invitation.token_hash not in invited.text
    assert "clerk@acme.example" in b.go(ctx.url(f"/company/{br}/")).text
    zh = b.request("GET", ctx.url(f"/company/{br}/"), headers={"Accept-Language": "zh-HK"})
    assert "邀請成員" in zh.text


def test_appointing_an_admin_needs_a_fresh_assertion(ctx: Live,
                                                     enrolled: Callable[..., KeyHolder]) -> None:
    admin = enrolled()
    b, br = admin.browser, admin.person.companies[0].br_number
    age_assertions(admin.person.id)
    page = b.go(ctx.url(f"/company/{br}/"))
    stale = post_form(b, page, "/invitations", {"email": "boss2@acme.example",
                                                "roles": ["admin"]})
    assert stale.status_code == 303
    assert path_of(stale) == "/console/stepup"
    db.session.rollback()
    assert db.session.scalar(select(Invitation.id).where(
        Invitation.email == "boss2@acme.example")) is None
    assert step_up(b, admin.authenticator, next_path=f"/company/{br}/").status_code == 200
    done = post_form(b, page, "/invitations", {"email": "boss2@acme.example", "roles": ["admin"]})
    assert done.status_code == 200


def test_a_member_is_not_an_admin(ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]]
                                  ) -> None:
    who, b = signed_in(companies=[{"roles": ["member", "signatory"]}])
    br = who.companies[0].br_number
    for path in ("/", "/authorisations", "/consents", "/audit"):
        assert b.go(ctx.url(f"/company/{br}{path}")).status_code == 403, path
    token = _csrf(b, ctx)
    answer = b.request("POST", ctx.url(f"/company/{br}/invitations"),
                       data={"csrf_token": token, "email": "x@acme.example", "roles": "admin"})
    assert answer.status_code == 403
    db.session.rollback()
    assert db.session.scalar(select(Invitation.id)) is None


def test_another_companys_objects_are_404(ctx: Live, enrolled: Callable[..., KeyHolder],
                                          make_person: Callable[..., PersonInfo],
                                          make_client: Callable[..., RP]) -> None:
    from idp.clients.services import get_client
    from idp.consent.services import grant_consent

    admin = enrolled()
    b, mine = admin.browser, admin.person.companies[0]
    other, other_key = _other_company(make_person)
    theirs = other.companies[0]
    other_membership = _membership(other.id, theirs.id)
    rp = make_client()
    consent = grant_consent(person=db.session.get(Person, other.id),
                            company=db.session.get(Company, theirs.id),
                            client=get_client(rp.client_id), scopes=["openid"])
    # Their company's pages: 404 (not 403: a company cannot be probed).
    for path in ("/", "/authorisations", "/consents", "/audit"):
        assert b.go(ctx.url(f"/company/{theirs.br_number}{path}")).status_code == 404, path
    assert b.go(ctx.url("/company/00000000/")).status_code == 404
    assert b.go(ctx.url("/company/not-a-br/")).status_code == 404
    # Their objects through my company's URLs, by guessed IDs: 404, nothing changed.
    assert b.go(ctx.url(f"/company/{mine.br_number}/members/{other_membership.id}")
                ).status_code == 404
    for raw in ("abc", "99999999999999", "\uff11\uff12"):
        assert b.go(ctx.url(f"/company/{mine.br_number}/members/{raw}")).status_code == 404
    token = _csrf(b, ctx)
    for path in (f"/members/{other_membership.id}/suspend",
                 f"/members/{other_membership.id}/remove",
                 f"/members/{other_membership.id}/roles",
                 f"/keys/{other_key.id}/revoke",
                 f"/consents/{consent.id}/revoke",
                 f"/eservice/{other_membership.id}/revoke",
                 f"/third-party/{other_membership.id}/revoke"):
        answer = b.request("POST", ctx.url(f"/company/{mine.br_number}{path}"),
                           data={"csrf_token": token, "roles": "member"})
        assert answer.status_code == 404, (path, answer.status_code)
    db.session.rollback()
    assert db.session.get(SecurityKey, other_key.id).revoked_at is None
    assert db.session.get(Consent, consent.id).revoked_at is None
    assert _membership(other.id, theirs.id).is_active


def test_forms_without_csrf_are_refused(ctx: Live, enrolled: Callable[..., KeyHolder]) -> None:
    admin = enrolled()
    b, br = admin.browser, admin.person.companies[0].br_number
    page = b.go(ctx.url(f"/company/{br}/"))
    answer = post_form(b, page, "/invitations", {"email": "x@acme.example",
                                                 "roles": ["member"]}, csrf=False)
    assert answer.status_code == 400
    db.session.rollback()
    assert db.session.scalar(select(Invitation.id).where(
        Invitation.email == "x@acme.example")) is None


def test_revoking_a_members_key_needs_step_up_and_is_audited(
        ctx: Live, enrolled: Callable[..., KeyHolder], invite: Callable[..., str],
        browser: Callable[[], Browser], soft_key: Callable[..., Any]) -> None:
    admin = enrolled()
    b, org = admin.browser, admin.person.companies[0]
    member_browser, _, member = _member_of(ctx, admin, invite, browser, soft_key)
    membership = _membership(member.id, org.id)
    key = db.session.scalars(select(SecurityKey).where(SecurityKey.person_id == member.id)).one()
    page = b.go(ctx.url(f"/company/{org.br_number}/members/{membership.id}"))
    assert page.status_code == 200
    assert "Blue key" in page.text
    age_assertions(admin.person.id)
    stale = post_form(b, page, f"/keys/{key.id}/revoke")
    assert path_of(stale) == "/console/stepup"
    db.session.rollback()
    assert db.session.get(SecurityKey, key.id).revoked_at is None
    step_up(b, admin.authenticator)
    revoked = post_form(b, page, f"/keys/{key.id}/revoke")
    assert revoked.status_code == 303
    assert path_of(revoked) == f"/company/{org.br_number}/members/{membership.id}"
    db.session.rollback()
    assert db.session.get(SecurityKey, key.id).revoked_at is not None
    assert db.session.scalar(select(AuditEvent.id).where(
        AuditEvent.tag == "webauthn:key:revoke")) is not None
    # The member's session (made with that key) ended at once.
    assert member_browser.request("GET", ctx.url("/console/")).status_code == 303


def test_roles_suspend_and_the_last_admin(ctx: Live, enrolled: Callable[..., KeyHolder],
                                          invite: Callable[..., str],
                                          browser: Callable[[], Browser],
                                          soft_key: Callable[..., Any]) -> None:
    admin = enrolled()
    b, org = admin.browser, admin.person.companies[0]
    _, _, member = _member_of(ctx, admin, invite, browser, soft_key)
    membership = _membership(member.id, org.id)
    page = b.go(ctx.url(f"/company/{org.br_number}/members/{membership.id}"))
    changed = post_form(b, page, "/roles", {"roles": ["member", "signatory"]})
    assert changed.status_code == 303
    assert _membership(member.id, org.id).roles == ["member", "signatory"]
    suspended = post_form(b, page, "/suspend")
    assert suspended.status_code == 303
    assert not _membership(member.id, org.id).is_active
    # The only admin cannot demote themselves: refused with the reason, nothing changed.
    mine = _membership(admin.person.id, org.id)
    own = b.go(ctx.url(f"/company/{org.br_number}/members/{mine.id}"))
    refused = post_form(b, own, "/roles", {"roles": ["member"]})
    assert refused.status_code == 303
    assert "at least one active admin" in b.follow(refused).text
    assert "admin" in _membership(admin.person.id, org.id).roles


def test_consents_listed_and_revoked(ctx: Live, enrolled: Callable[..., KeyHolder],
                                     make_client: Callable[..., RP]) -> None:
    from idp.clients.services import get_client
    from idp.consent.services import grant_consent

    admin = enrolled()
    b, org = admin.browser, admin.person.companies[0]
    rp = make_client(name="<b>Bank</b>")
    consent = grant_consent(person=db.session.get(Person, admin.person.id),
                            company=db.session.get(Company, org.id),
                            client=get_client(rp.client_id), scopes=["openid", "corp"])
    page = b.go(ctx.url(f"/company/{org.br_number}/consents"))
    assert "&lt;b&gt;Bank&lt;/b&gt;" in page.text
    assert "<b>Bank</b>" not in page.text
    revoked = post_form(b, page, f"/consents/{consent.id}/revoke")
    assert revoked.status_code == 303
    db.session.rollback()
    assert db.session.get(Consent, consent.id).revoked_at is not None
    audit = b.go(ctx.url(f"/company/{org.br_number}/audit"))
    assert "consent:consent:revoke" in audit.text
    assert "clients:client:create" not in audit.text  # not this company's event


def test_authorisations_page_and_grants(ctx: Live, enrolled: Callable[..., KeyHolder],
                                        make_person: Callable[..., PersonInfo],
                                        make_client: Callable[..., RP]) -> None:
    from idp.delegation.models import EServiceAuthorisation, ThirdPartyAuthorisation

    admin = enrolled()
    b, org = admin.browser, admin.person.companies[0]
    agent, _ = _other_company(make_person)
    rp = make_client(name="Tax e-service")
    db.session.rollback()
    from idp.clients.services import get_client

    client_pk = get_client(rp.client_id).id
    mine = _membership(admin.person.id, org.id)
    member_page = b.go(ctx.url(f"/company/{org.br_number}/members/{mine.id}"))
    granted = post_form(b, member_page, "/eservice", {"client": str(client_pk),
                                                      "role": "filer", "expires": ""})
    assert granted.status_code == 303
    page = b.go(ctx.url(f"/company/{org.br_number}/authorisations"))
    assert "Tax e-service" in page.text
    assert "filer" in page.text
    age_assertions(admin.person.id)
    stale = post_form(b, page, "/third-party", {"agent": agent.companies[0].br_number,
                                                "client": str(client_pk),
                                                "expires": "2099-12-31"})
    assert path_of(stale) == "/console/stepup"
    step_up(b, admin.authenticator)
    done = post_form(b, page, "/third-party", {"agent": agent.companies[0].br_number,
                                               "client": str(client_pk),
                                               "expires": "2099-12-31"})
    assert done.status_code == 303
    bad_date = post_form(b, page, "/third-party", {"agent": agent.companies[0].br_number,
                                                   "client": str(client_pk), "expires": "soon"})
    assert bad_date.status_code == 303
    db.session.rollback()
    assert db.session.scalar(select(EServiceAuthorisation.id)) is not None
    assert len(db.session.scalars(select(ThirdPartyAuthorisation)).all()) == 1
    page = b.go(ctx.url(f"/company/{org.br_number}/authorisations"))
    assert "Other Holdings Limited" in page.text
