"""Member administration: who may administer, the last-admin rule, and what suspending or
removing a member ends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from idp.audit.models import AuditEvent
from idp.authn.models import LoginSession, SecurityKey
from idp.clients.services import create_client
from idp.consent.models import Consent
from idp.db import utcnow
from idp.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from idp.extensions import db
from idp.oauth import tokens
from idp.oauth.models import Grant
from idp.orgs import members
from idp.orgs.models import Company, Invitation, Membership, MembershipStatus, Person

pytestmark = pytest.mark.usefixtures("app_ctx")

_br = iter(range(30_000_000, 40_000_000, 7))


def company(name: str = "Acme Trading Limited") -> Company:
    row = Company(br_number=str(next(_br)), name_en=name)
    db.session.add(row)
    db.session.commit()
    return row


def person(name: str = "Chan Tai Man") -> Person:
    row = Person(display_name=name, email=f"{name.split()[0].lower()}@acme.example")
    db.session.add(row)
    db.session.commit()
    return row


def member(of: Company, roles: list[str], name: str = "Chan Tai Man") -> Membership:
    who = person(name)
    row = Membership(person_id=who.id, company_id=of.id, roles=roles)
    db.session.add(row)
    db.session.commit()
    return row


def grant_for(m: Membership, **extra: Any) -> Grant:
    client, _ = create_client(
        name="RP", redirect_uris=["https://rp.example/cb"], auth_method="none", actor="tests"
    )
    grant = tokens.create_grant(
        client=client,
        person=m.person,
        company=db.session.get(Company, extra.pop("company_id", m.company_id)),
        scope="openid",
        session_id=None,
        security_key_id=extra.pop("security_key_id", None),
        auth_time=utcnow(),
        acr="phrh",
        amr=["hwk"],
        claims_request=None,
        **extra,
    )
    db.session.commit()
    return grant


def tags() -> list[str]:
    return list(db.session.scalars(select(AuditEvent.tag).order_by(AuditEvent.id)))


# --- who may administer -----------------------------------------------------------------------


def test_admin_invites_a_member() -> None:
    acme = company()
    boss = member(acme, ["admin"])
    invitation, token = members.invite_member(
        acme, email="clerk@acme.example", roles=["member"], actor=boss.person
    )
    assert token
    assert invitation.invited_by == f"person:{boss.person.subject}"
    assert invitation.company_id == acme.id


@pytest.mark.parametrize("roles", [["member"], ["signatory"]])
def test_a_non_admin_cannot_administer(roles: list[str]) -> None:
    acme = company()
    member(acme, ["admin"], "Boss One")
    clerk = member(acme, roles, "Clerk Two")
    other = member(acme, ["member"], "Other Three")
    with pytest.raises(ForbiddenError):
        members.invite_member(acme, email="x@acme.example", roles=["admin"], actor=clerk.person)
    with pytest.raises(ForbiddenError):
        members.change_roles(other, ["admin"], actor=clerk.person)
    with pytest.raises(ForbiddenError):
        members.suspend_member(other, actor=clerk.person)
    with pytest.raises(ForbiddenError):
        members.remove_member(other, actor=clerk.person)
    with pytest.raises(ForbiddenError):
        members.change_roles(clerk, ["admin"], actor=clerk.person)  # no self-promotion
    assert db.session.scalar(select(Invitation.id)) is None


def test_a_suspended_admin_cannot_administer() -> None:
    acme = company()
    member(acme, ["admin"], "Boss One")
    boss = member(acme, ["admin"], "Boss Two")
    boss.status = MembershipStatus.SUSPENDED
    db.session.commit()
    with pytest.raises(ForbiddenError):
        members.invite_member(acme, email="x@acme.example", roles=["member"], actor=boss.person)


def test_an_admin_of_a_cannot_touch_bs_members() -> None:
    a, b = company("A Ltd"), company("B Ltd")
    admin_a = member(a, ["admin"], "Admin A")
    member(b, ["admin"], "Admin B")
    clerk_b = member(b, ["member"], "Clerk B")
    for call in (
        lambda: members.change_roles(clerk_b, ["admin"], actor=admin_a.person),
        lambda: members.suspend_member(clerk_b, actor=admin_a.person),
        lambda: members.reactivate_member(clerk_b, actor=admin_a.person),
        lambda: members.remove_member(clerk_b, actor=admin_a.person),
        lambda: members.invite_member(
            b, email="x@b.example", roles=["admin"], actor=admin_a.person
        ),
    ):
        with pytest.raises(ForbiddenError):
            call()
    # Guessing B's membership id through A's pages: not found, like an unknown id.
    for guess in (clerk_b.id, 999_999, "1", True, None):
        with pytest.raises(NotFoundError):
            members.get_member(a, guess)
    assert members.get_member(b, clerk_b.id) is clerk_b


@pytest.mark.parametrize("actor", ["", "person:someone", "operator", "system"])
def test_only_operator_names_are_accepted_as_text_actors(actor: str) -> None:
    acme = company()
    with pytest.raises(ForbiddenError):
        members.invite_member(acme, email="x@acme.example", roles=["admin"], actor=actor)


def test_an_operator_appoints_and_administers() -> None:
    acme = company()
    clerk = member(acme, ["member"])
    members.change_roles(clerk, ["admin", "signatory"], actor="operator:console")
    assert clerk.roles == ["admin", "signatory"]
    assert "orgs:member:roles" in tags()


# --- roles and the last admin -----------------------------------------------------------------


@pytest.mark.parametrize("roles", [[], ["owner"], ["admin", "root"], "admin"])
def test_roles_are_checked(roles: Any) -> None:
    acme = company()
    boss = member(acme, ["admin"], "Boss One")
    clerk = member(acme, ["member"], "Clerk Two")
    with pytest.raises(ValidationError):
        members.change_roles(clerk, roles, actor=boss.person)
    assert clerk.roles == ["member"]


def test_the_last_admin_cannot_demote_suspend_or_remove_themselves() -> None:
    acme = company()
    boss = member(acme, ["admin", "signatory"])
    member(acme, ["member"], "Clerk Two")
    with pytest.raises(ConflictError):
        members.change_roles(boss, ["signatory"], actor=boss.person)
    with pytest.raises(ConflictError):
        members.suspend_member(boss, actor=boss.person)
    with pytest.raises(ConflictError):
        members.remove_member(boss, actor=boss.person)
    # Not even an operator leaves the company without an active admin.
    with pytest.raises(ConflictError):
        members.suspend_member(boss, actor="operator:console")
    db.session.rollback()
    assert boss.is_active
    assert "admin" in boss.roles


def test_a_suspended_admin_does_not_count_as_the_other_admin() -> None:
    acme = company()
    boss = member(acme, ["admin"], "Boss One")
    other = member(acme, ["admin"], "Boss Two")
    members.suspend_member(other, actor=boss.person)
    with pytest.raises(ConflictError):
        members.change_roles(boss, ["member"], actor=boss.person)


def test_with_two_admins_one_may_step_down() -> None:
    acme = company()
    boss = member(acme, ["admin"], "Boss One")
    member(acme, ["admin"], "Boss Two")
    members.change_roles(boss, ["member"], actor=boss.person)
    assert boss.roles == ["member"]


# --- suspending and removing ------------------------------------------------------------------


def test_suspending_ends_grants_agent_grants_and_consents_for_that_company_only() -> None:
    acme, other = company("Acme"), company("Other")
    boss = member(acme, ["admin"], "Boss One")
    clerk = member(acme, ["member"], "Clerk Two")
    db.session.add(Membership(person_id=clerk.person_id, company_id=other.id, roles=["member"]))
    db.session.commit()
    here = grant_for(clerk)
    elsewhere = grant_for(clerk, company_id=other.id)
    as_agent = grant_for(clerk, company_id=other.id, agent_company_id=acme.id)
    consent = Consent(
        person_id=clerk.person_id, company_id=acme.id, client_id=here.client_id, scopes="corp"
    )
    db.session.add(consent)
    db.session.commit()
    members.suspend_member(clerk, actor=boss.person)
    db.session.expire_all()
    assert clerk.status is MembershipStatus.SUSPENDED
    assert here.revoked_at is not None
    assert here.revoked_reason == "membership_suspended"
    assert as_agent.revoked_at is not None
    assert elsewhere.revoked_at is None
    assert consent.revoked_at is not None
    assert {"orgs:member:suspend", "consent:consent:revoke"} <= set(tags())
    members.reactivate_member(clerk, actor=boss.person)
    assert clerk.is_active
    db.session.expire_all()
    assert here.revoked_at is not None  # earlier tokens stay revoked


def test_removing_deletes_the_membership_and_its_authorisations() -> None:
    from idp.delegation import services as delegation
    from idp.delegation.models import EServiceAuthorisation

    acme = company()
    boss = member(acme, ["admin"], "Boss One")
    clerk = member(acme, ["member"], "Clerk Two")
    grant = grant_for(clerk)
    client = db.session.get(Grant, grant.id).client_id  # type: ignore[union-attr]
    from idp.clients.models import Client

    authorisation = delegation.grant_eservice(
        clerk, db.session.get(Client, client), role="tax-filer", actor=boss.person
    )
    person_id = clerk.person_id
    members.remove_member(clerk, actor=boss.person)
    db.session.expire_all()
    assert db.session.scalar(select(Membership).where(Membership.person_id == person_id)) is None
    assert grant.revoked_at is not None
    assert db.session.get(EServiceAuthorisation, authorisation.id).revoked_at is not None  # type: ignore[union-attr]
    assert "orgs:member:remove" in tags()
    assert [m.id for m in members.list_members(acme)] == [boss.id]


# --- security keys ----------------------------------------------------------------------------


def _key(owner: Person) -> SecurityKey:
    key = SecurityKey(
        person_id=owner.id,
        credential_id=b"cred-" + str(owner.id).encode(),
        public_key=b"pk",
        name="YubiKey",
    )
    db.session.add(key)
    db.session.commit()
    return key


def _session(owner: Person, key: SecurityKey) -> LoginSession:
    now = utcnow()
    session = LoginSession(
        sid=f"sid-{key.id}",
        secret_hash=f"{key.id:064d}",
        person_id=owner.id,
        security_key_id=key.id,
        auth_time=now,
        acr="phrh",
        amr=["hwk"],
        expires_at=now + dt.timedelta(hours=1),
    )
    db.session.add(session)
    db.session.commit()
    return session


def test_an_admin_revokes_a_members_key_ending_grants_and_sessions(app: Flask) -> None:
    from idp.authn.keys_admin import get_member_key, revoke_security_key

    acme = company()
    boss = member(acme, ["admin"], "Boss One")
    clerk = member(acme, ["member"], "Clerk Two")
    key = _key(clerk.person)
    session = _session(clerk.person, key)
    grant = grant_for(clerk, security_key_id=key.id)
    assert get_member_key(acme, key.id) is key
    assert revoke_security_key(key, actor=boss.person, company=acme) == 1
    db.session.expire_all()
    assert key.revoked_at is not None
    assert grant.revoked_at is not None
    assert session.ended_at is not None
    assert "webauthn:key:revoke" in tags()


def test_an_admin_of_another_company_cannot_revoke_a_key() -> None:
    from idp.authn.keys_admin import get_member_key, revoke_security_key

    a, b = company("A"), company("B")
    admin_a = member(a, ["admin"], "Admin A")
    clerk_b = member(b, ["member"], "Clerk B")
    key = _key(clerk_b.person)
    with pytest.raises(NotFoundError):
        get_member_key(a, key.id)
    with pytest.raises(ForbiddenError):
        revoke_security_key(key, actor=admin_a.person, company=a)
    with pytest.raises(ForbiddenError):
        revoke_security_key(key, actor=admin_a.person, company=b)
    with pytest.raises(ForbiddenError):
        revoke_security_key(key, actor=admin_a.person)
    db.session.expire_all()
    assert key.revoked_at is None
