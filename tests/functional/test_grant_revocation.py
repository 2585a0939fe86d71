"""All grants die when the person, session, membership, company, client or consent ends
(SECURITY.md): existing access tokens become inactive at once, refresh tokens stop working."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from idp.extensions import db
from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    assert_json_error,
    authorize_url,
    introspect,
    page_kind,
    pkce_pair,
    post,
    redeem,
    userinfo,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]


@pytest.fixture
def login(ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
          get_code: Callable[..., CodeResult]
          ) -> tuple[PersonInfo, Browser, RP, dict[str, Any]]:
    """A person signed in, a client, and the tokens of one code flow (checked live)."""
    who, b = signed_in()
    rp = make_client()
    response = redeem(ctx, get_code(b, rp, scope="openid corp"))
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert introspect(ctx, rp, tokens["access_token"])["active"] is True
    assert userinfo(ctx, tokens["access_token"]).status_code == 200
    return who, b, rp, tokens


def assert_family_dead(live: Live, rp: RP, tokens: dict[str, Any]) -> None:
    db.session.rollback()
    assert introspect(live, rp, tokens["access_token"]) == {"active": False}
    assert introspect(live, rp, tokens["refresh_token"]) == {"active": False}
    info = userinfo(live, tokens["access_token"])
    assert info.status_code == 401
    assert 'error="invalid_token"' in info.headers["WWW-Authenticate"]
    refresh = post(live, "/token", rp, {"grant_type": "refresh_token",
                                        "refresh_token": tokens["refresh_token"]})
    assert_json_error(refresh, 400, "invalid_grant", described=False)


def test_revoking_the_persons_grants(ctx: Live, login: Any) -> None:
    from idp.oauth.tokens import revoke_grants

    who, _, rp, tokens = login
    assert revoke_grants(reason="person_suspended", actor="tests", person_id=who.id) == 1
    db.session.commit()
    assert_family_dead(ctx, rp, tokens)


def test_ending_the_session(ctx: Live, login: Any) -> None:
    from idp.authn.models import LoginSession
    from idp.authn.services import end_session

    _, b, rp, tokens = login
    session = db.session.get(LoginSession, b.session_id)
    assert session is not None
    end_session(session, reason="logout", actor="tests")
    assert_family_dead(ctx, rp, tokens)
    # And the browser is no longer signed in.
    _, challenge = pkce_pair()
    response = b.request("GET", authorize_url(ctx, rp, challenge=challenge))
    assert page_kind(response) == "login"


def test_revoking_consent(ctx: Live, login: Any) -> None:
    from idp.consent.models import Consent
    from idp.consent.services import revoke_consent

    _, b, rp, tokens = login
    consent = db.session.scalars(select(Consent).where(Consent.client_id == rp.id)).one()
    revoke_consent(consent, actor="tests")
    assert_family_dead(ctx, rp, tokens)
    # The next authorization asks again.
    _, challenge = pkce_pair()
    page = b.go(authorize_url(ctx, rp, scope="openid corp", challenge=challenge))
    assert page_kind(page) == "consent"


def test_disabling_the_client(ctx: Live, login: Any) -> None:
    from idp.clients.services import disable_client

    _, _, rp, tokens = login
    disable_client(rp.client_id, actor="tests")
    db.session.rollback()
    # Introspection by the disabled client itself is refused; userinfo and refresh too.
    info = userinfo(ctx, tokens["access_token"])
    assert info.status_code == 401
    refresh = post(ctx, "/token", rp, {"grant_type": "refresh_token",
                                       "refresh_token": tokens["refresh_token"]})
    assert refresh.status_code in (400, 401)


def _change_status(who: PersonInfo, what: str) -> None:
    from idp.orgs.models import (
        Company,
        CompanyStatus,
        Membership,
        MembershipStatus,
        Person,
        PersonStatus,
    )

    if what == "person":
        person = db.session.get(Person, who.id)
        assert person is not None
        person.status = PersonStatus.SUSPENDED
    elif what == "membership":
        membership = db.session.scalars(select(Membership).where(
            Membership.person_id == who.id)).one()
        membership.status = MembershipStatus.SUSPENDED
    else:
        company = db.session.get(Company, who.companies[0].id)
        assert company is not None
        company.status = CompanyStatus.DEREGISTERED
    db.session.commit()


STATUS_CHANGES = ["person", "membership", "company"]


@pytest.mark.parametrize("what", STATUS_CHANGES)
def test_status_change_stops_userinfo_and_refresh(ctx: Live, login: Any, what: str) -> None:
    who, _, rp, tokens = login
    _change_status(who, what)
    info = userinfo(ctx, tokens["access_token"])
    assert info.status_code == 401
    assert 'error="invalid_token"' in info.headers["WWW-Authenticate"]
    refresh = post(ctx, "/token", rp, {"grant_type": "refresh_token",
                                       "refresh_token": tokens["refresh_token"]})
    assert_json_error(refresh, 400, "invalid_grant")


@pytest.mark.parametrize("what", STATUS_CHANGES)
def test_status_change_ends_tokens_at_introspection(ctx: Live, login: Any, what: str) -> None:
    who, _, rp, tokens = login
    _change_status(who, what)
    db.session.rollback()
    assert introspect(ctx, rp, tokens["access_token"]) == {"active": False}
