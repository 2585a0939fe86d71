"""E-service and third-party authorisations: who may grant them, their checks, what revoking
ends, and the liveness of an agent's tokens (one query, ordinary tokens unchanged)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from idp.clients.models import Client
from idp.clients.services import create_client
from idp.db import utcnow
from idp.delegation import services as delegation
from idp.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from idp.extensions import db
from idp.oauth import tokens
from idp.oauth.claims import Principal
from idp.oauth.models import Grant
from idp.orgs.models import Company, CompanyStatus, Membership, MembershipStatus, Person

pytestmark = pytest.mark.usefixtures("app_ctx")

_br = iter(range(40_000_000, 50_000_000, 7))


def company(name: str) -> Company:
    row = Company(br_number=str(next(_br)), name_en=name)
    db.session.add(row)
    db.session.commit()
    return row


def member(of: Company, roles: list[str], name: str) -> Membership:
    who = Person(display_name=name, email=f"{name.split()[0].lower()}@x.example")
    db.session.add(who)
    db.session.flush()
    row = Membership(person_id=who.id, company_id=of.id, roles=roles)
    db.session.add(row)
    db.session.commit()
    return row


def client(name: str = "Tax e-service") -> Client:
    row, _ = create_client(
        name=name, redirect_uris=["https://rp.example/cb"], auth_method="none", actor="tests"
    )
    return row


def later(days: int = 30) -> dt.datetime:
    return utcnow() + dt.timedelta(days=days)


def grant(
    m: Membership, rp: Client, *, company_id: int | None = None, agent: int | None = None
) -> Grant:
    row = tokens.create_grant(
        client=rp,
        person=m.person,
        company=db.session.get(Company, company_id or m.company_id),  # type: ignore[arg-type]
        scope="openid corp",
        session_id=None,
        security_key_id=None,
        auth_time=utcnow(),
        acr="phrh",
        amr=["hwk"],
        claims_request=None,
        agent_company_id=agent,
    )
    db.session.commit()
    return row


def access_claims(rp: Client, g: Grant) -> dict[str, Any]:
    principal = tokens.principal_for_grant(g)
    assert principal is not None
    token, _ = tokens.issue_access_token(client=rp, scope="openid corp", principal=principal)
    claims = tokens.decode_access_token(token)
    assert claims is not None
    return claims


# --- e-service authorisations -----------------------------------------------------------------


def test_admin_grants_and_tokens_carry_the_roles() -> None:
    acme = company("Acme")
    boss = member(acme, ["admin"], "Boss One")
    clerk = member(acme, ["member"], "Clerk Two")
    rp = client()
    delegation.grant_eservice(clerk, rp, role="tax-filer", actor=boss.person)
    delegation.grant_eservice(clerk, rp, role="tax-viewer", expires_at=later(), actor=boss.person)
    assert delegation.eservice_roles(clerk.person_id, acme.id, rp.id) == ["tax-filer", "tax-viewer"]
    principal = tokens.principal_for_grant(grant(clerk, rp))
    assert isinstance(principal, Principal)
    assert principal.authorisations == ["tax-filer", "tax-viewer"]
    assert [a.role for a in delegation.list_eservice(acme)] == ["tax-filer", "tax-viewer"]


def test_a_non_admin_or_another_companys_admin_cannot_grant() -> None:
    a, b = company("A"), company("B")
    member(a, ["admin"], "Admin A")
    clerk_a = member(a, ["signatory"], "Clerk A")
    admin_b = member(b, ["admin"], "Admin B")
    rp = client()
    with pytest.raises(ForbiddenError):
        delegation.grant_eservice(clerk_a, rp, actor=clerk_a.person)
    with pytest.raises(ForbiddenError):
        delegation.grant_eservice(clerk_a, rp, actor=admin_b.person)
    row = delegation.grant_eservice(clerk_a, rp, actor="operator:tests")
    with pytest.raises(ForbiddenError):
        delegation.revoke_eservice(row, actor=admin_b.person)
    with pytest.raises(NotFoundError):
        delegation.get_eservice(b, row.id)  # guessing A's authorisation id from B's pages
    assert delegation.get_eservice(a, row.id) is row


@pytest.mark.parametrize("role", ["Tax Filer", "-x", "x" * 65, "tax\nfiler", 7])
def test_roles_are_checked(role: Any) -> None:
    acme = company("Acme")
    clerk = member(acme, ["member"], "Clerk")
    with pytest.raises(ValidationError):
        delegation.grant_eservice(clerk, client(), role=role, actor="operator:tests")


def test_end_dates_and_duplicates_are_checked() -> None:
    acme = company("Acme")
    clerk = member(acme, ["member"], "Clerk")
    rp = client()
    with pytest.raises(ValidationError):
        delegation.grant_eservice(
            clerk, rp, expires_at=utcnow() - dt.timedelta(seconds=1), actor="operator:tests"
        )
    with pytest.raises(ValidationError):
        delegation.grant_eservice(
            clerk,
            rp,
            expires_at=dt.datetime(2999, 1, 1),  # naive
            actor="operator:tests",
        )
    delegation.grant_eservice(clerk, rp, role="tax-filer", actor="operator:tests")
    with pytest.raises(ConflictError):
        delegation.grant_eservice(clerk, rp, role="tax-filer", actor="operator:tests")


def test_an_expired_authorisation_counts_for_nothing() -> None:
    acme = company("Acme")
    clerk = member(acme, ["member"], "Clerk")
    rp = client()
    row = delegation.grant_eservice(
        clerk, rp, role="tax-filer", expires_at=later(1), actor="operator:tests"
    )
    rp.members_authorised_only = True
    db.session.commit()
    g = grant(clerk, rp)
    assert tokens.principal_for_grant(g) is not None
    row.expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    assert delegation.eservice_roles(clerk.person_id, acme.id, rp.id) is None
    assert delegation.authorised_company_ids(clerk.person, rp) == set()
    assert tokens.principal_for_grant(g) is None  # a members-only client: no refresh
    assert delegation.list_eservice(acme) == []


def test_revoking_ends_that_clients_grants_only() -> None:
    acme = company("Acme")
    clerk = member(acme, ["member"], "Clerk")
    tax, other = client("Tax"), client("Other")
    row = delegation.grant_eservice(clerk, tax, actor="operator:tests")
    at_tax, at_other = grant(clerk, tax), grant(clerk, other)
    delegation.revoke_eservice(row, actor="operator:tests")
    db.session.expire_all()
    assert at_tax.revoked_at is not None
    assert at_tax.revoked_reason == "authorisation_revoked"
    assert at_other.revoked_at is None


# --- third-party authorisations ---------------------------------------------------------------


@pytest.fixture
def pair() -> dict[str, Any]:
    a, b = company("Client Co"), company("Agent Co")
    return {
        "a": a,
        "b": b,
        "admin_a": member(a, ["admin"], "Admin A"),
        "admin_b": member(b, ["admin"], "Admin B"),
        "clerk_b": member(b, ["member"], "Clerk B"),
        "rp": client(),
    }


def test_only_the_principals_admin_grants_a_third_party(pair: dict[str, Any]) -> None:
    a, b, rp = pair["a"], pair["b"], pair["rp"]
    for actor in (pair["admin_b"].person, pair["clerk_b"].person):
        with pytest.raises(ForbiddenError):
            delegation.grant_third_party(a, b, rp, expires_at=later(), actor=actor)
    with pytest.raises(ValidationError):
        delegation.grant_third_party(a, a, rp, expires_at=later(), actor=pair["admin_a"].person)
    with pytest.raises(ValidationError):
        delegation.grant_third_party(
            a,
            b,
            rp,
            expires_at=None,  # type: ignore[arg-type]
            actor=pair["admin_a"].person,
        )
    row = delegation.grant_third_party(a, b, rp, expires_at=later(), actor=pair["admin_a"].person)
    with pytest.raises(ConflictError):
        delegation.grant_third_party(a, b, rp, expires_at=later(), actor=pair["admin_a"].person)
    with pytest.raises(NotFoundError):
        delegation.get_third_party(b, row.id)  # the agent cannot manage it as if it were its own
    with pytest.raises(ForbiddenError):
        delegation.revoke_third_party(row, actor=pair["admin_b"].person)
    assert delegation.list_third_party(b, as_agent=True) == [row]
    assert delegation.list_third_party(a) == [row]


def test_agent_options(pair: dict[str, Any]) -> None:
    a, b, rp = pair["a"], pair["b"], pair["rp"]
    clerk = pair["clerk_b"]
    row = delegation.grant_third_party(a, b, rp, expires_at=later(), actor="operator:tests")
    options = delegation.agent_options(clerk.person, rp)
    assert [(o.principal.id, o.agent.id) for o in options] == [(a.id, b.id)]
    assert delegation.agent_options(clerk.person, client("Elsewhere")) == []
    assert delegation.agent_options(pair["admin_a"].person, rp) == []  # A's own people
    clerk.status = MembershipStatus.SUSPENDED
    db.session.commit()
    assert delegation.agent_options(clerk.person, rp) == []
    clerk.status = MembershipStatus.ACTIVE
    row.expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    assert delegation.agent_options(clerk.person, rp) == []


@pytest.fixture
def count_queries() -> Iterator[list[str]]:
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", listen)
    yield seen
    event.remove(db.engine, "before_cursor_execute", listen)


def test_agent_token_liveness_is_one_query_and_ordinary_tokens_are_unchanged(
    pair: dict[str, Any], count_queries: list[str]
) -> None:
    a, b, rp, clerk = pair["a"], pair["b"], pair["rp"], pair["clerk_b"]
    row = delegation.grant_third_party(a, b, rp, expires_at=later(), actor="operator:tests")
    agent_claims = access_claims(rp, grant(clerk, rp, company_id=a.id, agent=b.id))
    assert agent_claims["act"]["corp"]["br_number"] == b.br_number
    own_claims = access_claims(rp, grant(pair["admin_a"], rp))
    assert "act" not in own_claims

    count_queries.clear()
    assert tokens.is_access_token_live(own_claims)
    assert len(count_queries) == 1
    assert "third_party_authorisations" not in count_queries[0]
    count_queries.clear()
    assert tokens.is_access_token_live(agent_claims)
    assert len(count_queries) == 1
    assert "third_party_authorisations" in count_queries[0]

    # Revoking ends the agent's grants (and the liveness check would refuse them anyway).
    delegation.revoke_third_party(row, actor=pair["admin_a"].person)
    assert not tokens.is_access_token_live(agent_claims)
    assert tokens.is_access_token_live(own_claims)


@pytest.mark.parametrize("change", ["member_suspended", "principal_dissolved", "agent_dissolved"])
def test_agent_tokens_end_with_what_they_rest_on(pair: dict[str, Any], change: str) -> None:
    a, b, rp, clerk = pair["a"], pair["b"], pair["rp"], pair["clerk_b"]
    delegation.grant_third_party(a, b, rp, expires_at=later(), actor="operator:tests")
    g = grant(clerk, rp, company_id=a.id, agent=b.id)
    claims = access_claims(rp, g)
    assert tokens.is_access_token_live(claims)
    if change == "member_suspended":
        clerk.status = MembershipStatus.SUSPENDED
    elif change == "principal_dissolved":
        a.status = CompanyStatus.DISSOLVED
    else:
        b.status = CompanyStatus.DEREGISTERED
    db.session.commit()
    assert not tokens.is_access_token_live(claims)
    assert tokens.principal_for_grant(g) is None


def test_an_ordinary_token_does_not_pass_for_an_agents_grant(pair: dict[str, Any]) -> None:
    """The agent is no member of A: the ordinary check (membership in A) refuses the grant."""
    a, b, rp, clerk = pair["a"], pair["b"], pair["rp"], pair["clerk_b"]
    delegation.grant_third_party(a, b, rp, expires_at=later(), actor="operator:tests")
    claims = access_claims(rp, grant(clerk, rp, company_id=a.id, agent=b.id))
    del claims["act"]
    assert not tokens.is_access_token_live(claims)


def test_measure_liveness_cost(pair: dict[str, Any]) -> None:
    """In-process cost of the liveness check, ordinary vs agent tokens (printed with -s)."""
    a, b, rp, clerk = pair["a"], pair["b"], pair["rp"], pair["clerk_b"]
    delegation.grant_third_party(a, b, rp, expires_at=later(), actor="operator:tests")
    agent_claims = access_claims(rp, grant(clerk, rp, company_id=a.id, agent=b.id))
    own_claims = access_claims(rp, grant(pair["admin_a"], rp))
    timings = {}
    for label, claims in (("ordinary", own_claims), ("agent", agent_claims)):
        for _ in range(20):
            tokens.is_access_token_live(claims)
        start = time.perf_counter()
        for _ in range(300):
            assert tokens.is_access_token_live(claims)
        timings[label] = (time.perf_counter() - start) / 300 * 1e6
    print(
        f"liveness per check: ordinary {timings['ordinary']:.0f} us, "
        f"agent {timings['agent']:.0f} us"
    )
