"""Companies and single-use invitations."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from idp.audit.models import AuditEvent
from idp.db import utcnow
from idp.errors import ConflictError, NotFoundError, ValidationError
from idp.extensions import db
from idp.orgs import services
from idp.orgs.models import Company, CompanyStatus, Invitation, Membership, MembershipStatus, Person
from idp.security import digest

BR = "12345678"


def person(name: str = "Chan Tai Man") -> Person:
    someone = Person(display_name=name, email=f"{name.split()[0].lower()}@acme.example")
    db.session.add(someone)
    db.session.commit()
    return someone


def company(br: str = BR) -> Company:
    return services.create_company(br_number=br, name_en="Acme Trading Limited", actor="tests")


def invite(target: Company | None = None, **overrides: Any) -> tuple[Invitation, str]:
    settings: dict[str, Any] = {
        "company": target or company(),
        "email": "chan@acme.example",
        "roles": ["member"],
        "invited_by": "operator:cli",
    }
    settings.update(overrides)
    return services.create_invitation(**settings)


def count(model: Any) -> int:
    return int(db.session.scalar(select(func.count()).select_from(model)) or 0)


def tags() -> list[str]:
    return list(db.session.scalars(select(AuditEvent.tag).order_by(AuditEvent.id)))


# --- BR numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["12345678", "00000000", "99999999"])
def test_br_number_of_eight_digits(value: str) -> None:
    assert services.validate_br_number(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "1234567",
        "123456789",
        "1234567a",
        "1234-678",
        " 12345678",
        "12345678\n",
        "",
        "".join(chr(0xFF11 + i) for i in range(8)),  # fullwidth digits: str.isdigit() is True
        "".join(chr(0x0661 + i) for i in range(8)),  # Arabic-Indic digits
        "\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078",  # superscripts
        12345678,
        None,
    ],
)
def test_br_number_other_than_eight_ascii_digits_is_refused(value: Any) -> None:
    with pytest.raises(ValidationError, match="8 digits"):
        services.validate_br_number(value)


# --- companies --------------------------------------------------------------------------------


@pytest.mark.usefixtures("app_ctx")
def test_create_company_records_it_and_an_audit_event() -> None:
    created = services.create_company(
        br_number=BR,
        name_en=" Acme Trading Limited ",
        name_zh="頂峰貿易有限公司",
        actor="operator:cli",
    )
    assert created.id is not None
    assert created.name_en == "Acme Trading Limited"
    assert created.name_zh == "頂峰貿易有限公司"
    assert created.status is CompanyStatus.LIVE
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.tag == "orgs:company:create"))
    assert event is not None
    assert event.subject == f"company:{BR}"
    assert event.company_id == created.id
    assert services.get_company_by_br(BR) is created


@pytest.mark.usefixtures("app_ctx")
def test_duplicate_br_number_is_a_conflict() -> None:
    company()
    with pytest.raises(ConflictError, match=BR):
        company()
    assert count(Company) == 1


@pytest.mark.usefixtures("app_ctx")
def test_create_company_refuses_a_bad_br_number() -> None:
    with pytest.raises(ValidationError):
        services.create_company(br_number="1234567", name_en="Acme", actor="tests")
    assert count(Company) == 0


@pytest.mark.usefixtures("app_ctx")
@pytest.mark.parametrize("name", ["", "  ", None, "x" * 301, "Acme\x07"])
def test_create_company_refuses_a_bad_name(name: Any) -> None:
    with pytest.raises(ValidationError, match="name_en"):
        services.create_company(br_number=BR, name_en=name, actor="tests")


@pytest.mark.usefixtures("app_ctx")
def test_get_company_by_br_unknown_and_malformed() -> None:
    with pytest.raises(NotFoundError):
        services.get_company_by_br("87654321")
    with pytest.raises(ValidationError):
        services.get_company_by_br("8765432x")


# --- invitations ------------------------------------------------------------------------------


@pytest.mark.usefixtures("app_ctx")
def test_invitation_token_is_prefixed_and_stored_only_as_digest() -> None:
    invitation, token = invite()
    assert token.startswith("cii_")
    assert len(token) > 40
    assert invitation.token_hash == digest(token)
    row = db.session.execute(select(Invitation.__table__)).one()
    assert token not in " ".join(map(str, row))
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.tag == "orgs:invitation:create"))
    assert event is not None
    assert token not in str(event.details)


def test_invitation_expires_after_the_configured_ttl(make_app: Callable[..., Flask]) -> None:
    app = make_app(INVITE_TTL=120)
    with app.app_context():
        before = utcnow()
        invitation, _ = invite()
        assert before + dt.timedelta(seconds=119) <= invitation.expires_at
        assert invitation.expires_at <= utcnow() + dt.timedelta(seconds=120)


@pytest.mark.usefixtures("app_ctx")
def test_invitation_ttl_can_be_given() -> None:
    invitation, _ = invite(ttl=60)
    assert invitation.expires_at <= utcnow() + dt.timedelta(seconds=60)
    with pytest.raises(ValidationError, match="lifetime"):
        invite(target=invitation.company, ttl=0)


@pytest.mark.usefixtures("app_ctx")
def test_invitation_email_domain_is_lowercased() -> None:
    invitation, _ = invite(email="  Chan.TaiMan@ACME.Example ")
    assert invitation.email == "Chan.TaiMan@acme.example"


@pytest.mark.usefixtures("app_ctx")
@pytest.mark.parametrize(
    "email",
    [
        "",
        "chan",
        "chan@",
        "@acme.example",
        "chan@acme",
        "chan tai@acme.example",
        "a@b@acme.example",
        None,
        "x" * 320 + "@acme.example",
    ],
)
def test_invitation_refuses_a_bad_email(email: Any) -> None:
    with pytest.raises(ValidationError, match="email"):
        invite(email=email)


@pytest.mark.usefixtures("app_ctx")
@pytest.mark.parametrize("roles", [[], ["owner"], ["admin", "root"], "admin"])
def test_invitation_refuses_bad_roles(roles: Any) -> None:
    with pytest.raises(ValidationError, match="roles"):
        invite(roles=roles)


@pytest.mark.usefixtures("app_ctx")
def test_invitation_to_an_inactive_company_is_refused() -> None:
    target = company()
    target.status = CompanyStatus.DISSOLVED
    db.session.commit()
    with pytest.raises(ConflictError, match="dissolved"):
        invite(target=target)


@pytest.mark.usefixtures("app_ctx")
def test_invite_url_hangs_off_the_issuer() -> None:
    _, token = invite()
    assert services.invite_url(token) == f"http://localhost:5000/enrol/{token}"


@pytest.mark.usefixtures("app_ctx")
def test_find_valid_invitation() -> None:
    invitation, token = invite()
    assert services.find_valid_invitation(token) is invitation


@pytest.mark.usefixtures("app_ctx")
def test_unknown_used_and_expired_invitations_look_the_same() -> None:
    used, used_token = invite()
    services.consume_invitation(used, person())
    expired, expired_token = invite(target=used.company, email="lee@acme.example")
    expired.expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    messages = set()
    for token in (
        used_token,
        expired_token,
        "cii_unknown",
        used_token + "x",
        "",
        "x" * 201,
        None,
        42,
    ):
        with pytest.raises(NotFoundError) as info:
            services.find_valid_invitation(token)
        messages.add(info.value.message)
    assert messages == {services.INVALID_INVITATION}


@pytest.mark.usefixtures("app_ctx")
def test_invitation_of_a_deregistered_company_is_not_valid() -> None:
    invitation, token = invite()
    invitation.company.status = CompanyStatus.DEREGISTERED
    db.session.commit()
    with pytest.raises(NotFoundError):
        services.find_valid_invitation(token)


@pytest.mark.usefixtures("app_ctx")
def test_consume_makes_a_membership_and_marks_the_invitation_used() -> None:
    invitation, token = invite(roles=["signatory", "member"])
    someone = person()
    membership = services.consume_invitation(invitation, someone)
    assert membership.person_id == someone.id
    assert membership.company_id == invitation.company_id
    assert membership.roles == ["signatory", "member"]
    assert membership.status is MembershipStatus.ACTIVE
    assert invitation.used_at is not None
    assert invitation.used_by_person_id == someone.id
    assert "orgs:invitation:consume" in tags()
    with pytest.raises(NotFoundError):
        services.find_valid_invitation(token)


@pytest.mark.usefixtures("app_ctx")
def test_consume_twice_is_a_conflict() -> None:
    invitation, _ = invite()
    services.consume_invitation(invitation, person())
    with pytest.raises(ConflictError):
        services.consume_invitation(invitation, person("Lee Siu Ming"))
    assert count(Membership) == 1


@pytest.mark.usefixtures("app_ctx")
def test_consume_after_expiry_is_a_conflict() -> None:
    invitation, token = invite()
    assert services.find_valid_invitation(token) is invitation
    invitation.expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    with pytest.raises(ConflictError):
        services.consume_invitation(invitation, person())
    assert count(Membership) == 0


@pytest.mark.usefixtures("app_ctx")
def test_consume_adds_roles_to_an_existing_membership() -> None:
    target = company()
    someone = person()
    first, _ = invite(target=target, roles=["member"])
    services.consume_invitation(first, someone)
    membership = db.session.scalar(select(Membership))
    assert membership is not None
    membership.status = MembershipStatus.SUSPENDED
    db.session.commit()
    second, _ = invite(target=target, roles=["admin", "member"])
    again = services.consume_invitation(second, someone)
    assert again.id == membership.id
    assert again.roles == ["member", "admin"]
    assert again.status is MembershipStatus.ACTIVE


def test_consume_is_single_use_when_two_people_race(app: Flask) -> None:
    with app.app_context():
        invitation, _ = invite()
        invitation_id = invitation.id
        people = [person("Chan Tai Man").id, person("Lee Siu Ming").id]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def enrol(person_id: int) -> None:
        with app.app_context():
            found = db.session.get(Invitation, invitation_id)
            someone = db.session.get(Person, person_id)
            assert found is not None
            assert someone is not None
            barrier.wait()
            try:
                services.consume_invitation(found, someone)
                outcomes.append("ok")
            except ConflictError:
                outcomes.append("conflict")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=enrol, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["conflict", "ok"]
    with app.app_context():
        assert count(Membership) == 1


# --- organisation with its first admin --------------------------------------------------------


@pytest.mark.usefixtures("app_ctx")
def test_create_org_with_admin() -> None:
    created, invitation, token = services.create_org_with_admin(
        br_number=BR,
        name="Acme Trading Limited",
        admin_email="boss@acme.example",
        actor="operator:cli",
    )
    assert created.br_number == BR
    assert invitation.company_id == created.id
    assert invitation.roles == ["admin"]
    assert invitation.email == "boss@acme.example"
    assert services.find_valid_invitation(token) is invitation
    assert tags() == ["orgs:company:create", "orgs:invitation:create"]
    assert not services.has_admin(created)
    services.consume_invitation(invitation, person())
    assert services.has_admin(created)


@pytest.mark.usefixtures("app_ctx")
def test_create_org_with_admin_duplicate_creates_nothing() -> None:
    services.create_org_with_admin(
        br_number=BR, name="Acme", admin_email="a@acme.example", actor="tests"
    )
    with pytest.raises(ConflictError):
        services.create_org_with_admin(
            br_number=BR, name="Acme", admin_email="b@acme.example", actor="tests"
        )
    assert count(Invitation) == 1


@pytest.mark.usefixtures("app_ctx")
def test_create_org_with_admin_bad_email_creates_nothing() -> None:
    with pytest.raises(ValidationError):
        services.create_org_with_admin(
            br_number=BR, name="Acme", admin_email="not-an-email", actor="tests"
        )
    db.session.rollback()
    assert count(Company) == 0
