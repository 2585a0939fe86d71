"""Consent records as a service: RAR validation and normalisation, what is asked again,
status (live / expired / revoked), a fresh consent after a revocation, receipts."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from idp.clients.models import Client
from idp.clients.services import create_client
from idp.consent import receipts
from idp.consent import services as consents
from idp.consent.models import ConsentReceipt
from idp.db import utcnow
from idp.extensions import db
from idp.keys import jws
from idp.oauth.rar import InvalidAuthorizationDetailsError, parse_authorization_details
from idp.orgs import members
from idp.orgs.models import Company, Membership, Person

pytestmark = pytest.mark.usefixtures("app_ctx")

_br = iter(range(40_000_001, 50_000_000, 7))
PURPOSE = "Customer due diligence"


def world() -> tuple[Person, Company, Client]:
    company = Company(br_number=str(next(_br)), name_en="Acme Trading Limited")
    person = Person(display_name="Chan Tai Man", email="tai.man@acme.example")
    db.session.add_all([company, person])
    db.session.flush()
    db.session.add(Membership(person_id=person.id, company_id=company.id, roles=["admin"]))
    db.session.commit()
    client, _ = create_client(
        name="Bank",
        redirect_uris=["https://bank.example/cb"],
        auth_method="none",
        actor="tests",
        scopes=["openid", "corp", "corp_profile", "corp_address", "corp_officers"],
    )
    return person, company, client


def details(*categories: str, purpose: str = PURPOSE, **extra: object) -> list[dict[str, object]]:
    raw = json.dumps(
        [{"type": "corp_data", "categories": list(categories), "purpose": purpose, **extra}]
    )
    parsed = parse_authorization_details(raw, ["corp_profile", "corp_address", "corp_officers"])
    assert parsed is not None
    return parsed  # type: ignore[return-value]


def test_details_are_normalised_with_the_default_duration(app_ctx: object) -> None:
    parsed = details("corp_profile", "corp_profile", "corp_address")
    assert parsed == [
        {
            "type": "corp_data",
            "categories": ["corp_profile", "corp_address"],
            "purpose": PURPOSE,
            "duration": 365 * 24 * 3600,
        }
    ]
    assert parse_authorization_details(None, []) is None
    with pytest.raises(InvalidAuthorizationDetailsError) as caught:
        parse_authorization_details('[{"type": "corp_data"}]', ["corp_profile"])
    assert caught.value.error == "invalid_authorization_details"


def test_what_is_asked_again() -> None:
    person, company, client = world()
    ask = consents.what_to_ask
    assert ask(person, company, client, scope="openid") is None
    first = ask(
        person, company, client, scope="openid corp", authorization_details=details("corp_profile")
    )
    assert first is not None
    assert first.scopes == ["corp"]
    assert first.categories == ["corp_profile"]
    assert first.purposes == [PURPOSE]
    consents.grant_consent(
        person=person,
        company=company,
        client=client,
        scopes=["corp"],
        authorization_details=details("corp_profile"),
    )
    assert (
        ask(
            person,
            company,
            client,
            scope="openid corp",
            authorization_details=details("corp_profile"),
        )
        is None
    )
    # Only a new scope: only it is shown.
    only = ask(person, company, client, scope="openid corp corp_address")
    assert only is not None
    assert only.scopes == ["corp_address"]
    assert (
        ask(person, company, client, scope="openid", authorization_details=details("corp_officers"))
        is not None
    )
    assert (
        ask(
            person,
            company,
            client,
            scope="openid",
            authorization_details=details("corp_profile", purpose="Another purpose"),
        )
        is not None
    )
    assert ask(person, company, client, scope="openid corp", purpose="A new purpose") is not None
    assert ask(person, company, client, scope="openid corp", force=True) is not None
    assert consents.granted_scopes(person, company, client) == {"corp", "corp_profile"}


def test_expired_and_revoked_consents_cover_nothing() -> None:
    person, company, client = world()
    given = consents.grant_consent(person=person, company=company, client=client, scopes=["corp"])
    first_id = given.consent_id
    assert consents.status(given) == consents.LIVE
    given.expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    assert consents.status(given) == consents.EXPIRED
    assert consents.granted_scopes(person, company, client) == set()
    assert consents.what_to_ask(person, company, client, scope="openid corp") is not None
    again = consents.grant_consent(
        person=person, company=company, client=client, scopes=["corp_address"]
    )
    assert again.consent_id != first_id  # a new consent, nothing carried over
    assert consents.granted_scopes(person, company, client) == {"corp_address"}
    consents.revoke_consent(again, actor="operator:tests")
    assert consents.status(again) == consents.REVOKED
    assert consents.granted_scopes(person, company, client) == set()
    with pytest.raises(Exception, match="already revoked"):
        consents.revoke_consent(again, actor="operator:tests")


def test_duration_sets_the_expiry_and_the_receipt_says_so(app: object) -> None:
    person, company, client = world()
    given = consents.grant_consent(
        person=person,
        company=company,
        client=client,
        scopes=[],
        authorization_details=details("corp_profile", duration=3600),
    )
    expires = (
        given.expires_at.replace(tzinfo=dt.UTC)
        if given.expires_at.tzinfo is None
        else (given.expires_at)
    )
    assert abs((expires - utcnow()).total_seconds() - 3600) < 5
    token = receipts.latest_receipt(given.id)
    assert token is not None
    claims = jws.verify(
        token,
        issuer=app.config["IDP"]["ISSUER"],  # type: ignore[attr-defined]
        typ=receipts.RECEIPT_TYP,
        verify_exp=False,
    )
    assert claims["event"] == "granted"
    assert claims["consent_id"] == given.consent_id
    assert claims["expires_at"] == int(expires.timestamp())


def test_ending_a_membership_issues_revocation_receipts() -> None:
    person, company, client = world()
    other = Person(display_name="Lee Ka Yan", email="lee@acme.example")
    db.session.add(other)
    db.session.flush()
    clerk = Membership(person_id=other.id, company_id=company.id, roles=["member"])
    db.session.add(clerk)
    db.session.commit()
    given = consents.grant_consent(person=other, company=company, client=client, scopes=["corp"])
    members.suspend_member(clerk, actor=person)
    db.session.expire_all()
    events = db.session.scalars(
        select(ConsentReceipt.event)
        .where(ConsentReceipt.consent_id == given.id)
        .order_by(ConsentReceipt.id)
    ).all()
    assert list(events) == ["granted", "revoked"]
    assert given.revoked_by == f"person:{person.subject}"
