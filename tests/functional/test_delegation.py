"""Who may act for a company, end to end: "authorised members only" clients, e-service roles in
``corp``, agents acting for a client company ("B for A") with the RFC 8693 ``act`` claim, and
tokens ending at once when a member is suspended or an authorisation revoked."""

from __future__ import annotations

import datetime as dt
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
    authorize_url,
    callback,
    introspect,
    page_kind,
    parse_forms,
    pkce_pair,
    redeem,
    userinfo,
    verify_jwt,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]


def _company(company_id: int) -> Any:
    from idp.orgs.models import Company

    db.session.rollback()
    row = db.session.get(Company, company_id)
    assert row is not None
    return row


def _client(rp: RP) -> Any:
    from idp.clients.models import Client

    row = db.session.get(Client, rp.id)
    assert row is not None
    return row


def _membership(person_id: int, company_id: int) -> Any:
    from idp.orgs.models import Membership

    db.session.rollback()
    row = db.session.scalar(select(Membership).where(Membership.person_id == person_id,
                                                     Membership.company_id == company_id))
    assert row is not None
    return row


def _later(days: int = 30) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


# --- authorised members only -------------------------------------------------------------------

def test_members_only_client_refuses_a_member_without_authorisation(
        ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client(members_authorised_only=True)
    _, challenge = pkce_pair()
    cb = callback(b.run(authorize_url(ctx, rp, challenge=challenge, state="st-9")))
    assert cb.target == rp.redirect_uri
    assert cb.params["error"] == "access_denied"
    assert cb.params["state"] == "st-9"
    assert cb.params["iss"] == ctx.issuer
    assert "code" not in cb.params


def test_members_only_client_accepts_an_authorised_member_and_tokens_carry_the_roles(
        ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    from idp.delegation import services as delegation

    who, b = signed_in()
    rp = make_client(members_authorised_only=True)
    membership = _membership(who.id, who.companies[0].id)
    delegation.grant_eservice(membership, _client(rp), role="tax-filer", actor="operator:tests")
    response = redeem(ctx, get_code(b, rp, scope="openid corp"))
    assert response.status_code == 200, response.text
    tokens = response.json()
    _, claims = verify_jwt(ctx, tokens["id_token"], alg="RS256", audience=rp.client_id)
    assert claims["corp"] == {"br_number": who.companies[0].br_number,
                              "name": who.companies[0].name_en,
                              "roles": sorted(who.companies[0].roles),
                              "authorisations": ["tax-filer"]}
    assert "act" not in claims
    assert userinfo(ctx, tokens["access_token"]).json()["corp"]["authorisations"] == ["tax-filer"]
    assert introspect(ctx, rp, tokens["access_token"])["corp"]["authorisations"] == ["tax-filer"]


def test_members_only_client_with_several_companies_offers_only_authorised_ones(
        ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP]) -> None:
    from idp.delegation import services as delegation

    who, b = signed_in(companies=[{"name_en": "Alpha Ltd"}, {"name_en": "Beta Ltd"}])
    alpha, beta = who.companies
    rp = make_client(members_authorised_only=True)
    delegation.grant_eservice(_membership(who.id, beta.id), _client(rp), actor="operator:tests")
    _, challenge = pkce_pair()
    # One authorised company: chosen without asking (Alpha is not offered).
    response = b.go(authorize_url(ctx, rp, scope="openid corp", challenge=challenge))
    assert page_kind(response) == "consent", response.text[:300]
    assert "Beta Ltd" in response.text
    # Posting the other company's id anyway is refused.
    response = b.go(authorize_url(ctx, rp, challenge=challenge, prompt="select_account"))
    assert page_kind(response) == "company"
    refused = b.submit(response, company=str(alpha.id))
    assert refused.status_code == 403


def test_expired_authorisation_stops_working(
        ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    from idp.delegation import services as delegation

    who, b = signed_in()
    rp = make_client(members_authorised_only=True)
    grant = delegation.grant_eservice(_membership(who.id, who.companies[0].id), _client(rp),
                                      expires_at=_later(1), actor="operator:tests")
    tokens = redeem(ctx, get_code(b, rp, scope="openid corp")).json()
    grant.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    db.session.commit()
    _, challenge = pkce_pair()
    cb = callback(b.run(authorize_url(ctx, rp, challenge=challenge)))
    assert cb.params["error"] == "access_denied"
    # A refresh token of the earlier login no longer refreshes.
    from tests.functional.conftest import post

    refresh = post(ctx, "/token", rp, {"grant_type": "refresh_token",
                                       "refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_grant"


def test_revoking_an_eservice_authorisation_ends_the_members_tokens(
        ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    from idp.delegation import services as delegation

    who, b = signed_in()
    rp = make_client(members_authorised_only=True)
    grant = delegation.grant_eservice(_membership(who.id, who.companies[0].id), _client(rp),
                                      actor="operator:tests")
    tokens = redeem(ctx, get_code(b, rp, scope="openid corp")).json()
    assert introspect(ctx, rp, tokens["access_token"])["active"] is True
    delegation.revoke_eservice(grant, actor="operator:tests")
    assert introspect(ctx, rp, tokens["access_token"]) == {"active": False}


# --- suspension --------------------------------------------------------------------------------

def test_suspending_a_member_ends_their_tokens_at_once(
        ctx: Live, signed_in: SignedIn, make_person: Callable[..., PersonInfo],
        make_client: Callable[..., RP], get_code: Callable[..., CodeResult]) -> None:
    from idp.orgs import members
    from idp.orgs.models import Membership, Person

    who, b = signed_in(companies=[{"roles": ["member"]}])
    company_id = who.companies[0].id
    # An admin of the same company.
    boss = make_person(name="Boss", email="boss@acme.example", companies=[{"roles": ["admin"]}])
    db.session.add(Membership(person_id=boss.id, company_id=company_id, roles=["admin"]))
    db.session.commit()
    rp = make_client()
    tokens = redeem(ctx, get_code(b, rp, scope="openid corp")).json()
    assert introspect(ctx, rp, tokens["access_token"])["active"] is True
    admin = db.session.get(Person, boss.id)
    members.suspend_member(_membership(who.id, company_id), actor=admin)
    assert introspect(ctx, rp, tokens["access_token"]) == {"active": False}
    assert userinfo(ctx, tokens["access_token"]).status_code == 401


# --- agents ------------------------------------------------------------------------------------

@pytest.fixture
def agency(ctx: Live, make_person: Callable[..., PersonInfo], signed_in: SignedIn,
           make_client: Callable[..., RP]) -> dict[str, Any]:
    """Client company A (with its admin), agent company B with a member signed in, a client,
    and A's third-party authorisation of B at that client."""
    from idp.delegation import services as delegation
    from idp.orgs.models import Person

    boss = make_person(name="Boss of A", email="boss@a.example",
                       companies=[{"name_en": "Client Company Ltd", "name_zh": "客戶有限公司",
                                   "roles": ["admin"]}])
    agent, b = signed_in(name="Agent Clerk", email="clerk@b.example",
                         companies=[{"name_en": "Tax Agents Ltd", "name_zh": "稅務代理有限公司",
                                     "roles": ["member"]}])
    rp = make_client()
    principal, agent_company = boss.companies[0], agent.companies[0]
    admin = db.session.get(Person, boss.id)
    tpa = delegation.grant_third_party(_company(principal.id), _company(agent_company.id),
                                       _client(rp), expires_at=_later(), actor=admin)
    return {"boss": boss, "agent": agent, "b": b, "rp": rp, "principal": principal,
            "agent_company": agent_company, "tpa_id": tpa.id}


def _agent_login(live: Live, a: dict[str, Any], **extra: str) -> dict[str, Any]:
    b, rp = a["b"], a["rp"]
    verifier, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge, **extra))
    assert page_kind(page) == "company", page.text[:300]
    choice = f"{a['principal'].id}.{a['agent_company'].id}"
    assert f'value="{choice}"' in page.text
    page = b.follow(b.submit(page, company=choice))
    assert page_kind(page) == "consent", page.text[:300]
    cb = callback(b.follow(b.submit(page, decision="allow")))
    assert "code" in cb.params, cb.params
    response = redeem(live, CodeResult(rp, cb, verifier, None))
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def test_agent_chooses_agent_for_client_and_tokens_say_so(ctx: Live, agency: dict[str, Any]
                                                          ) -> None:
    a = agency
    rp, agent = a["rp"], a["agent"]
    page = a["b"].go(authorize_url(ctx, rp, scope="openid corp", challenge=pkce_pair()[1]))
    assert "Agent Tax Agents Ltd" in page.text
    assert "for client Client Company Ltd" in page.text
    zh = a["b"].go(authorize_url(ctx, rp, scope="openid corp", challenge=pkce_pair()[1],
                                 ui_locales="zh-HK"))
    assert "稅務代理有限公司" in zh.text
    assert "代表客戶" in zh.text

    tokens = _agent_login(ctx, a)
    corp = {"br_number": a["principal"].br_number, "name": "Client Company Ltd", "roles": []}
    act = {"sub": agent.subject,
           "corp": {"br_number": a["agent_company"].br_number, "name": "Tax Agents Ltd"}}
    _, id_claims = verify_jwt(ctx, tokens["id_token"], alg="RS256", audience=rp.client_id)
    assert id_claims["sub"] == agent.subject
    assert id_claims["corp"] == corp
    assert id_claims["act"] == act
    _, at_claims = verify_jwt(ctx, tokens["access_token"], alg="ES256")
    assert at_claims["act"] == act
    info = userinfo(ctx, tokens["access_token"]).json()
    assert info["corp"] == corp
    assert info["act"] == act
    answer = introspect(ctx, rp, tokens["access_token"])
    assert answer["active"] is True
    assert answer["act"] == act
    assert answer["corp"] == corp
    assert "act" in ctx.discovery()["claims_supported"]


def test_revoking_the_third_party_authorisation_ends_the_agents_tokens(
        ctx: Live, agency: dict[str, Any]) -> None:
    from idp.delegation import services as delegation
    from idp.delegation.models import ThirdPartyAuthorisation
    from idp.orgs.models import Person

    a = agency
    tokens = _agent_login(ctx, a)
    assert introspect(ctx, a["rp"], tokens["access_token"])["active"] is True
    db.session.rollback()
    tpa = db.session.get(ThirdPartyAuthorisation, a["tpa_id"])
    delegation.revoke_third_party(tpa, actor=db.session.get(Person, a["boss"].id))
    assert introspect(ctx, a["rp"], tokens["access_token"]) == {"active": False}
    # And "B for A" is no longer offered: B's member acts for no company at this client... but
    # their own company remains.
    page = a["b"].go(authorize_url(ctx, a["rp"], challenge=pkce_pair()[1]))
    assert "Client Company Ltd" not in page.text


@pytest.mark.parametrize("change", ["expired", "revoked_in_db", "member_suspended",
                                    "principal_dissolved", "agent_dissolved"])
def test_agent_tokens_end_when_anything_they_rest_on_ends(
        ctx: Live, agency: dict[str, Any], change: str) -> None:
    """Checked by the liveness query itself, even when no grant was revoked."""
    from idp.delegation.models import ThirdPartyAuthorisation
    from idp.orgs.models import CompanyStatus, MembershipStatus

    a = agency
    tokens = _agent_login(ctx, a)
    assert introspect(ctx, a["rp"], tokens["access_token"])["active"] is True
    db.session.rollback()
    tpa = db.session.get(ThirdPartyAuthorisation, a["tpa_id"])
    assert tpa is not None
    now = dt.datetime.now(dt.UTC)
    if change == "expired":
        tpa.expires_at = now - dt.timedelta(seconds=1)
    elif change == "revoked_in_db":
        tpa.revoked_at = now
    elif change == "member_suspended":
        _membership(a["agent"].id, a["agent_company"].id).status = MembershipStatus.SUSPENDED
    elif change == "principal_dissolved":
        _company(a["principal"].id).status = CompanyStatus.DISSOLVED
    else:
        _company(a["agent_company"].id).status = CompanyStatus.DEREGISTERED
    db.session.commit()
    assert introspect(ctx, a["rp"], tokens["access_token"]) == {"active": False}
    assert userinfo(ctx, tokens["access_token"]).status_code == 401


def test_agent_choice_for_a_pair_not_authorised_is_refused(
        ctx: Live, agency: dict[str, Any], make_person: Callable[..., PersonInfo]) -> None:
    a = agency
    other = make_person(name="Other", email="o@c.example", companies=[{"name_en": "Other Ltd"}])
    page = a["b"].go(authorize_url(ctx, a["rp"], challenge=pkce_pair()[1]))
    assert page_kind(page) == "company"
    for forged in (f"{other.companies[0].id}.{a['agent_company'].id}",
                   f"{a['principal'].id}.{other.companies[0].id}",
                   f"{a['principal'].id}"):
        refused = a["b"].submit(page, company=forged)
        assert refused.status_code == 403, forged
    for malformed in ("1.2.3", "x", ".5", "²", "9" * 40):
        refused = a["b"].submit(page, company=malformed)
        assert refused.status_code == 400, malformed
    assert parse_forms(page.text)
