"""Company data released with consent: category claims (plain and IDA verified_claims) in ID
tokens and userinfo, and the company data API, driven by Authlib's OAuth2Session."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import Any

import requests
from sqlalchemy import select

from idp.data.categories import CATEGORIES
from idp.db import utcnow
from idp.extensions import db
from tests.functional.conftest import (
    RP,
    Browser,
    Live,
    PersonInfo,
    callback,
    oauth_session,
    post,
    verify_jwt,
)

ALL = " ".join(CATEGORIES)
API = "/api/company-data"


def register_data(br_number: str, *, address: str = "Unit 1A, 10 Fictional Street",
                  director: str = "Cheung Chi Keung") -> None:
    """Give a test company register data and provenance."""
    from idp.orgs.models import Company, CompanyOfficer, OfficerRole

    company = db.session.scalars(select(Company).where(Company.br_number == br_number)).one()
    company.address = address
    company.incorporated_on = dt.date(1975, 1, 1)
    company.company_type = "Private company limited by shares"
    company.source = "Companies Registry extract"
    company.as_of = dt.date(2025, 6, 30)
    company.officers = [
        CompanyOfficer(role=OfficerRole.DIRECTOR, name_en=director,
                       appointed_on=dt.date(1975, 1, 1)),
        CompanyOfficer(role=OfficerRole.SECRETARY, name_en="Wong Kin Wah"),
    ]
    db.session.commit()


def data_client(make_client: Callable[..., RP]) -> RP:
    return make_client("client_secret_basic", scopes=["openid", "corp", *CATEGORIES])


def login(live: Live, b: Browser, rp: RP, scope: str, *, company: int | None = None
          ) -> tuple[dict[str, Any], Any]:
    """Run the code flow (consenting) and redeem the code with Authlib."""
    oauth = oauth_session(live, rp, scope=scope)
    verifier = secrets.token_urlsafe(48)
    url, state = oauth.create_authorization_url(live.url("/authorize"), code_verifier=verifier,
                                                nonce="n-1")
    cb = callback(b.run(url, company=company))
    assert "code" in cb.params, cb.params
    token = oauth.fetch_token(live.url("/token"), authorization_response=cb.url(), state=state,
                              code_verifier=verifier)
    return token, oauth


def api(live: Live, access_token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {access_token}"} if access_token is not None else {}
    return requests.get(live.url(API), headers=headers, timeout=10)


def edit_consent(live: Live, **values: Any) -> None:
    from idp.consent.models import Consent

    with live.app.app_context():
        for consent in db.session.scalars(select(Consent)):
            for name, value in values.items():
                setattr(consent, name, value)
        db.session.commit()
        db.session.remove()


def test_discovery_advertises_categories_and_identity_assurance(live: Live) -> None:
    meta = requests.get(live.url("/.well-known/openid-configuration"), timeout=10).json()
    assert set(CATEGORIES) <= set(meta["scopes_supported"])
    assert {*CATEGORIES, "verified_claims"} <= set(meta["claims_supported"])
    assert meta["verified_claims_supported"] is True
    assert meta["trust_frameworks_supported"] == ["corp_id_register"]
    assert meta["evidence_supported"] == ["electronic_record"]
    assert meta["electronic_records_supported"] == ["company_register"]
    assert meta["claims_in_verified_claims_supported"] == list(CATEGORIES)


def test_consented_categories_in_id_token_and_userinfo(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    who, b = signed_in()
    br = who.companies[0].br_number
    register_data(br)
    rp = data_client(make_client)
    token, oauth = login(ctx, b, rp, f"openid {ALL}")
    _, id_claims = verify_jwt(ctx, token["id_token"], alg="RS256", audience=rp.client_id)
    info = oauth.get(ctx.url("/userinfo"), timeout=10).json()
    for claims in (id_claims, info):
        assert claims["corp_profile"]["br_number"] == br
        assert claims["corp_profile"]["incorporated_on"] == "1975-01-01"
        assert claims["corp_address"] == {"formatted": "Unit 1A, 10 Fictional Street"}
        assert [o["role"] for o in claims["corp_officers"]["officers"]] == [
            "director", "secretary"]
        [verified] = claims["verified_claims"]
        assert set(verified["claims"]) == set(CATEGORIES)
        assert verified["claims"]["corp_profile"] == claims["corp_profile"]
        verification = verified["verification"]
        assert verification["trust_framework"] == "corp_id_register"
        [evidence] = verification["evidence"]
        assert evidence["type"] == "electronic_record"
        assert evidence["record"] == {"type": "company_register",
                                      "source": {"name": "Companies Registry extract"}}
        assert evidence["time"] == "2025-06-30T00:00:00Z"


def test_basic_scopes_release_no_company_data(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    who, b = signed_in()
    register_data(who.companies[0].br_number)
    rp = data_client(make_client)
    token, oauth = login(ctx, b, rp, "openid corp")
    _, id_claims = verify_jwt(ctx, token["id_token"], alg="RS256", audience=rp.client_id)
    info = oauth.get(ctx.url("/userinfo"), timeout=10).json()
    for claims in (id_claims, info):
        assert not {*CATEGORIES, "verified_claims"} & set(claims)
    answer = api(ctx, token["access_token"])
    assert answer.status_code == 403
    assert answer.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
    # RFC 6750 §3: the challenge names the scopes that would do, once.
    assert answer.headers["WWW-Authenticate"].count('scope="corp_profile corp_address') == 1
    assert answer.headers["Cache-Control"] == "no-store"


def test_data_api_returns_exactly_the_consented_categories(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    from idp.audit.models import AuditEvent

    who, b = signed_in()
    br = who.companies[0].br_number
    register_data(br)
    rp = data_client(make_client)
    _, oauth = login(ctx, b, rp, "openid corp_profile corp_officers")
    answer = oauth.get(ctx.url(API), timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["br_number"] == br
    assert set(body["categories"]) == {"corp_profile", "corp_officers"}
    for name, item in body["categories"].items():
        assert item["provenance"] == {"source": "Companies Registry extract",
                                      "as_of": "2025-06-30"}
        assert item["verified_claims"]["claims"] == {name: item["values"]}
        assert item["verified_claims"]["verification"]["evidence"][0]["type"] == (
            "electronic_record")
    assert body["categories"]["corp_officers"]["values"]["officers"][0]["name_en"] == (
        "Cheung Chi Keung")
    db.session.rollback()
    [event] = db.session.scalars(
        select(AuditEvent).where(AuditEvent.tag == "data:company:release")).all()
    assert event.actor == f"client:{rp.client_id}"
    assert event.subject == f"company:{br}"
    assert event.details["categories"] == ["corp_officers", "corp_profile"]
    assert event.details["person"] == who.subject


def test_category_in_token_but_not_in_consent_is_not_released(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    who, b = signed_in()
    register_data(who.companies[0].br_number)
    rp = data_client(make_client)
    token, oauth = login(ctx, b, rp, f"openid {ALL}")
    # The consent no longer covers the address (e.g. narrowed by the company).
    edit_consent(ctx, scopes="openid corp_profile corp_officers")
    body = api(ctx, token["access_token"]).json()
    assert set(body["categories"]) == {"corp_profile", "corp_officers"}
    info = oauth.get(ctx.url("/userinfo"), timeout=10).json()
    assert "corp_address" not in info
    assert "corp_address" not in info["verified_claims"][0]["claims"]


def test_revoked_or_expired_consent_releases_nothing(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    who, b = signed_in()
    register_data(who.companies[0].br_number)
    rp = data_client(make_client)
    token, oauth = login(ctx, b, rp, f"openid {ALL}")
    assert api(ctx, token["access_token"]).status_code == 200
    for change in ({"revoked_at": utcnow()},
                   {"revoked_at": None, "expires_at": utcnow() - dt.timedelta(seconds=1)}):
        edit_consent(ctx, **change)
        answer = api(ctx, token["access_token"])
        assert answer.status_code == 403, change
        assert answer.json()["error"] == "insufficient_scope"
        info = oauth.get(ctx.url("/userinfo"), timeout=10).json()
        assert not {*CATEGORIES, "verified_claims"} & set(info)


def test_token_for_company_a_never_returns_company_b(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    who, b = signed_in(companies=[{"name_en": "Alpha Limited"}, {"name_en": "Beta Limited"}])
    alpha, beta = who.companies
    register_data(alpha.br_number, address="Alpha House", director="Alpha Director")
    register_data(beta.br_number, address="Beta House", director="Beta Director")
    rp = data_client(make_client)
    token, _ = login(ctx, b, rp, f"openid {ALL}", company=alpha.id)
    body = api(ctx, token["access_token"]).json()
    assert body["br_number"] == alpha.br_number
    assert body["categories"]["corp_profile"]["values"]["name_en"] == "Alpha Limited"
    assert body["categories"]["corp_address"]["values"] == {"formatted": "Alpha House"}
    assert "Beta" not in str(body)
    # Company B's consent does not open company A's token to anything either.
    from idp.consent.models import Consent

    db.session.rollback()
    consent = db.session.scalars(select(Consent)).one()
    assert consent.company_id == alpha.id
    consent.company_id = beta.id
    db.session.commit()
    assert api(ctx, token["access_token"]).status_code == 403


def test_authorization_details_release_consented_categories(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    """A grant's corp_data authorization details (RFC 9396) count as its categories, still
    only within the consent."""
    from idp.oauth.models import Grant

    who, b = signed_in()
    register_data(who.companies[0].br_number)
    rp = data_client(make_client)
    token, _ = login(ctx, b, rp, "openid corp corp_profile")
    db.session.rollback()
    grant = db.session.scalars(select(Grant)).one()
    grant.authorization_details = [{"type": "corp_data",
                                    "categories": ["corp_address", "corp_officers"]}]
    db.session.commit()
    edit_consent(ctx, scopes="openid corp corp_profile corp_address")
    body = api(ctx, token["access_token"]).json()
    assert set(body["categories"]) == {"corp_profile", "corp_address"}


def test_inactive_or_missing_token_is_refused(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    who, b = signed_in()
    register_data(who.companies[0].br_number)
    rp = data_client(make_client)
    token, oauth = login(ctx, b, rp, f"openid {ALL}")
    missing = api(ctx, None)
    assert missing.status_code == 401
    # RFC 6750 §3.1: no error code when no token was sent; both schemes are offered.
    assert missing.headers["WWW-Authenticate"].startswith('Bearer realm="corp-id", DPoP')
    assert missing.headers["Cache-Control"] == "no-store"
    forged = api(ctx, token["access_token"][:-4] + "AAAA")
    assert forged.status_code == 401
    assert 'error="invalid_token"' in forged.headers["WWW-Authenticate"]
    assert forged.json()["error"] == "invalid_token"
    oauth.revoke_token(ctx.url("/revoke"), token["access_token"],
                       token_type_hint="access_token")
    revoked = api(ctx, token["access_token"])
    assert revoked.status_code == 401
    assert revoked.json()["error"] == "invalid_token"


def test_suspended_membership_ends_data_access(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    from idp.orgs.models import Membership, MembershipStatus

    who, b = signed_in()
    register_data(who.companies[0].br_number)
    rp = data_client(make_client)
    token, _ = login(ctx, b, rp, f"openid {ALL}")
    db.session.rollback()
    db.session.scalars(select(Membership)).one().status = MembershipStatus.SUSPENDED
    db.session.commit()
    assert api(ctx, token["access_token"]).status_code == 401


def test_client_credentials_may_not_ask_for_company_data(
        ctx: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client("client_secret_basic", scopes=["corp_profile"],
                     grant_types=["client_credentials"])
    answer = post(ctx, "/token", rp, {"grant_type": "client_credentials",
                                      "scope": "corp_profile"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_scope"
