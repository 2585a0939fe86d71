"""Consent as a record: Rich Authorization Requests (RFC 9396) for company data, the purpose
parameter, expiry, asking again only for what is new, signed receipts, and revocation by the
company's admins (pages and API) ending every token at once."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest
import requests
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from idp.consent.models import Consent, ConsentReceipt
from idp.extensions import db
from tests.functional.conftest import (
    RP,
    Browser,
    KeyHolder,
    Live,
    PersonInfo,
    authorize_url,
    callback,
    introspect,
    oauth_session,
    page_kind,
    pkce_pair,
    post,
    verify_jwt,
)
from tests.functional.console_support import post_form

BANK_SCOPES = ["openid", "corp", "corp_profile", "corp_address", "corp_officers", "corp_consents"]
PURPOSE = "Customer due diligence for a business account"


def rar(categories: list[str] | None = None, **members: Any) -> str:
    entry: dict[str, Any] = {"type": "corp_data", "categories": categories or ["corp_profile"],
                             "purpose": PURPOSE}
    entry.update(members)
    return json.dumps([{k: v for k, v in entry.items() if v is not None}])


@pytest.fixture
def bank(make_client: Callable[..., RP]) -> RP:
    return make_client(name="Bank of Examples", scopes=BANK_SCOPES)


def start(live: Live, b: Browser, rp: RP, *, scope: str = "openid",
          **extra: str) -> tuple[requests.Response, str]:
    """Send an authorization request; the first page (or redirect to the RP) and the verifier."""
    verifier, challenge = pkce_pair()
    url = authorize_url(live, rp, scope=scope, challenge=challenge, **extra)
    return b.go(url), verifier


def tokens_for(live: Live, b: Browser, rp: RP, *, scope: str = "openid",
               **extra: str) -> dict[str, Any]:
    """Run the flow (consenting) and redeem the code with Authlib's client."""
    verifier, challenge = pkce_pair()
    url = authorize_url(live, rp, scope=scope, challenge=challenge, **extra)
    cb = callback(b.run(url))
    assert "code" in cb.params, cb.params
    token: dict[str, Any] = oauth_session(live, rp, scope=scope).fetch_token(
        live.url("/token"), code=cb.params["code"], code_verifier=verifier)
    return token


def verify_receipt(live: Live, receipt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a consent receipt independently (joserfc) against the published JWKS."""
    keyset = KeySet.import_key_set(live.jwks())
    token = jose_jwt.decode(receipt, keyset, algorithms=["ES256", "RS256", "PS256"])
    header, claims = dict(token.header), dict(token.claims)
    assert header["typ"] == "consent-receipt+jwt"
    assert claims["iss"] == live.issuer
    return header, claims


def consent_row(person_id: int, company_id: int) -> Consent:
    db.session.rollback()
    row = db.session.query(Consent).filter_by(person_id=person_id, company_id=company_id).one()
    return row


# --- RAR accepted -----------------------------------------------------------------------------


def test_discovery_names_the_rar_type_and_the_scopes(live: Live) -> None:
    meta = live.discovery()
    assert meta["authorization_details_types_supported"] == ["corp_data"]
    for scope in ("corp_profile", "corp_address", "corp_officers", "corp_consents"):
        assert scope in meta["scopes_supported"]


def test_granted_details_reach_token_introspection_and_access_token(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP) -> None:
    who, b = signed_in()
    details = rar(["corp_profile", "corp_officers"], duration=30 * 24 * 3600)
    page, verifier = start(live, b, bank, scope="openid", authorization_details=details)
    assert page_kind(page) == "consent"
    # Plain words: who, for which company, what, why and until when.
    assert "Bank of Examples" in page.text
    assert who.companies[0].name_en in page.text
    assert "names, type, status and date of incorporation" in page.text
    assert "directors and secretary" in page.text
    assert PURPOSE in page.text
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%d %B %Y")
    assert until in page.text
    cb = callback(b.follow(b.submit(page, decision="allow")))
    token = oauth_session(live, bank).fetch_token(live.url("/token"), code=cb.params["code"],
                                                  code_verifier=verifier)
    granted = token["authorization_details"]
    assert granted == [{"type": "corp_data", "categories": ["corp_profile", "corp_officers"],
                        "purpose": PURPOSE, "duration": 30 * 24 * 3600}]
    _, claims = verify_jwt(live, token["access_token"], alg="ES256", audience=bank.client_id)
    assert claims["authorization_details"] == granted
    assert introspect(live, bank, token["access_token"])["authorization_details"] == granted
    assert introspect(live, bank, token["refresh_token"])["authorization_details"] == granted
    # The receipt of the grant, verifiable by anyone against our JWKS.
    _, receipt = verify_receipt(live, token["consent_receipt"])
    assert receipt["event"] == "granted"
    assert receipt["company"] == {"br_number": who.companies[0].br_number,
                                  "name": who.companies[0].name_en}
    assert receipt["client"] == {"client_id": bank.client_id, "name": "Bank of Examples"}
    assert receipt["sub"] == who.subject
    assert receipt["authorization_details"] == granted
    assert receipt["purpose"] == PURPOSE
    assert receipt["expires_at"] - receipt["granted_at"] == pytest.approx(30 * 24 * 3600, abs=5)
    # Refresh keeps the details.
    refreshed = oauth_session(live, bank).refresh_token(live.url("/token"),
                                                        refresh_token=token["refresh_token"])
    assert refreshed["authorization_details"] == granted
    _, claims = verify_jwt(live, refreshed["access_token"], alg="ES256")
    assert claims["authorization_details"] == granted


def test_purpose_parameter_is_shown_and_recorded(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP) -> None:
    who, b = signed_in()
    page, _ = start(live, b, bank, scope="openid corp_address", purpose="Pre-filling a form")
    assert page_kind(page) == "consent"
    assert "Pre-filling a form" in page.text
    assert "registered address" in page.text
    b.follow(b.submit(page, decision="allow"))
    row = consent_row(who.id, who.companies[0].id)
    assert row.purpose == "Pre-filling a form"
    assert row.consent_id
    assert row.expires_at is not None


# --- RAR refused ------------------------------------------------------------------------------

REFUSED = {
    "malformed JSON": "[{",
    "not an array": json.dumps({"type": "corp_data"}),
    "empty array": "[]",
    "entry not an object": json.dumps(["corp_data"]),
    "unknown type": rar(type="payment_initiation"),
    "no type": json.dumps([{"categories": ["corp_profile"], "purpose": PURPOSE}]),
    "unknown member": rar(locations=["https://api.example"]),
    "empty categories": rar().replace('["corp_profile"]', "[]"),
    "categories not a list": rar().replace('["corp_profile"]', '"corp_profile"'),
    "category not a string": rar().replace('["corp_profile"]', "[1]"),
    "unknown category": rar(["corp_secrets"]),
    "category not registered": rar(["corp_officers"]),
    "no purpose": rar(purpose=None),
    "purpose too short": rar(purpose="ab"),
    "purpose too long": rar(purpose="x" * 301),
    "purpose not a string": rar(purpose=42),
    "duration zero": rar(duration=0),
    "duration too long": rar(duration=10 * 365 * 24 * 3600),
    "duration a string": rar(duration="3600"),
    "duration a boolean": rar(duration=True),
    "duration a float": rar(duration=3600.5),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_authorization_details_are_refused(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], case: str) -> None:
    _, b = signed_in()
    rp = make_client(scopes=["openid", "corp_profile"])
    page, _ = start(live, b, rp, authorization_details=REFUSED[case], state="st-rar")
    cb = callback(page)
    assert cb.target == rp.redirect_uri
    assert cb.params["error"] == "invalid_authorization_details", cb.params
    assert cb.params["error_description"]
    assert cb.params["state"] == "st-rar"
    assert cb.params["iss"] == live.issuer


@pytest.mark.parametrize("purpose", ["ab", "x" * 301, "bad\x01purpose"])
def test_bad_purpose_parameter_is_refused(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP,
        purpose: str) -> None:
    _, b = signed_in()
    page, _ = start(live, b, bank, scope="openid corp", purpose=purpose)
    cb = callback(page)
    assert cb.params["error"] == "invalid_request"
    assert cb.params["iss"] == live.issuer


# --- asked again only for what is new ---------------------------------------------------------


def test_asked_again_for_a_new_category_or_purpose_only(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP) -> None:
    who, b = signed_in()
    tokens_for(live, b, bank, authorization_details=rar(["corp_profile"]))
    # Same request: covered, straight back to the RP.
    page, _ = start(live, b, bank, authorization_details=rar(["corp_profile"]))
    assert "code" in callback(page).params
    # A new category: asked again.
    page, _ = start(live, b, bank, authorization_details=rar(["corp_profile", "corp_officers"]))
    assert page_kind(page) == "consent"
    assert "directors and secretary" in page.text
    b.follow(b.submit(page, decision="allow"))
    page, _ = start(live, b, bank, authorization_details=rar(["corp_officers"]))
    assert "code" in callback(page).params
    # A new purpose: asked again.
    page, _ = start(live, b, bank, authorization_details=rar(["corp_profile"],
                                                             purpose="Opening a loan account"))
    assert page_kind(page) == "consent"
    assert "Opening a loan account" in page.text
    from idp.clients.services import get_client
    from idp.consent.services import granted_scopes
    from idp.orgs.models import Company, Person

    db.session.rollback()
    granted = granted_scopes(db.session.get(Person, who.id),
                             db.session.get(Company, who.companies[0].id),
                             get_client(bank.client_id))
    assert granted == {"corp_profile", "corp_officers"}


def test_consent_of_company_a_never_covers_company_b(
        live: Live, make_person: Callable[..., PersonInfo],
        browser: Callable[[], Browser], bank: RP) -> None:
    from idp.clients.services import get_client
    from idp.consent.services import granted_scopes
    from idp.orgs.models import Company, Person

    who = make_person(companies=[{"name_en": "Alpha Limited"}, {"name_en": "Beta Limited"}])
    a, b_co = who.companies
    b = browser()
    b.sign_in(who)
    _, challenge = pkce_pair()
    url = authorize_url(live, bank, scope="openid corp_profile", challenge=challenge)
    cb = callback(b.run(url, company=a.id))
    assert "code" in cb.params
    db.session.rollback()
    person, client = db.session.get(Person, who.id), get_client(bank.client_id)
    assert granted_scopes(person, db.session.get(Company, a.id), client) == {"corp_profile"}
    assert granted_scopes(person, db.session.get(Company, b_co.id), client) == set()
    # The same request for company B is asked.
    page = b.go(url)
    assert page_kind(page) == "company"
    page = b.follow(b.submit(page, company=str(b_co.id)))
    assert page_kind(page) == "consent"
    assert "Beta Limited" in page.text


# --- expiry -----------------------------------------------------------------------------------


def test_expired_consent_asks_again_and_refresh_is_refused(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP) -> None:
    who, b = signed_in()
    token = tokens_for(live, b, bank, authorization_details=rar(duration=120))
    assert 0 < token["expires_in"] <= 120
    row = consent_row(who.id, who.companies[0].id)
    from idp.oauth.models import Grant

    grant = db.session.query(Grant).filter_by(consent_id=row.id).one()
    assert grant.expires_at <= row.expires_at  # the family ends with the consent
    # Time passes: the consent (and with it the grant) expire.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    row.expires_at = past
    grant.expires_at = past
    db.session.commit()
    refused = post(live, "/token", bank, {"grant_type": "refresh_token",
                                          "refresh_token": token["refresh_token"]})
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    assert introspect(live, bank, token["access_token"]) == {"active": False}
    page, _ = start(live, b, bank, authorization_details=rar())
    assert page_kind(page) == "consent"


def test_code_of_a_consent_revoked_before_redemption_releases_nothing(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP) -> None:
    from idp.consent.services import revoke_consent

    who, b = signed_in()
    verifier, challenge = pkce_pair()
    url = authorize_url(live, bank, scope="openid corp_profile", challenge=challenge)
    cb = callback(b.run(url))
    revoke_consent(consent_row(who.id, who.companies[0].id), actor="tests")
    answer = post(live, "/token", bank, {"grant_type": "authorization_code",
                                         "code": cb.params["code"],
                                         "redirect_uri": bank.redirect_uri,
                                         "code_verifier": verifier})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


# --- revocation by the company's admins -------------------------------------------------------


def _assert_ended(live: Live, rp: RP, token: dict[str, Any]) -> None:
    assert introspect(live, rp, token["access_token"]) == {"active": False}
    refused = post(live, "/token", rp, {"grant_type": "refresh_token",
                                        "refresh_token": token["refresh_token"]})
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


def test_admin_page_lists_and_revokes_with_a_receipt(
        ctx: Live, enrolled: Callable[..., KeyHolder], bank: RP) -> None:
    admin = enrolled()
    b, org = admin.browser, admin.person.companies[0]
    token = tokens_for(ctx, b, bank, scope="openid corp", authorization_details=rar())
    assert introspect(ctx, bank, token["access_token"])["active"] is True
    page = b.go(ctx.url(f"/company/{org.br_number}/consents"))
    assert page.status_code == 200
    assert "Bank of Examples" in page.text
    assert PURPOSE in page.text
    assert "Live" in page.text
    row = consent_row(admin.person.id, org.id)
    assert post_form(b, page, f"/consents/{row.id}/revoke", csrf=False).status_code == 400
    answer = post_form(b, page, f"/consents/{row.id}/revoke")
    assert answer.status_code == 303
    _assert_ended(ctx, bank, token)
    row = consent_row(admin.person.id, org.id)
    assert row.revoked_at is not None
    assert row.revoked_by == f"person:{admin.person.subject}"
    page = b.go(ctx.url(f"/company/{org.br_number}/consents"))
    assert "Revoked" in page.text
    # Receipts: granted and revoked, downloadable, verifiable.
    listing = b.go(ctx.url(f"/company/{org.br_number}/consents/{row.id}/receipts"))
    assert listing.status_code == 200
    receipts = db.session.query(ConsentReceipt).filter_by(consent_id=row.id).all()
    assert sorted(r.event for r in receipts) == ["granted", "revoked"]
    revoked = next(r for r in receipts if r.event == "revoked")
    download = b.go(ctx.url(f"/company/{org.br_number}/consents/{row.id}/receipts/"
                            f"{revoked.id}.jwt"))
    assert download.status_code == 200
    assert download.headers["Content-Type"].startswith("application/jwt")
    assert "attachment" in download.headers["Content-Disposition"]
    _, claims = verify_receipt(ctx, download.text)
    assert claims["event"] == "revoked"
    assert claims["consent_id"] == row.consent_id
    assert claims["revoked_by"] == f"person:{admin.person.subject}"
    assert isinstance(claims["revoked_at"], int)


def test_admin_api_lists_and_revokes(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP) -> None:
    who, b = signed_in()
    org = who.companies[0]
    data = tokens_for(live, b, bank, scope="openid corp_profile")
    admin = tokens_for(live, b, bank, scope="openid corp_consents")
    headers = {"Authorization": f"Bearer {admin['access_token']}"}
    listed = requests.get(live.url(f"/api/companies/{org.br_number}/consents"),
                          headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert listed.headers["Cache-Control"] == "no-store"
    consents = listed.json()["consents"]
    assert len(consents) == 1
    entry = consents[0]
    assert entry["status"] == "live"
    assert entry["client"]["client_id"] == bank.client_id
    assert "corp_profile" in entry["scopes"]
    revoked = requests.post(
        live.url(f"/api/companies/{org.br_number}/consents/{entry['consent_id']}/revoke"),
        headers=headers, timeout=10)
    assert revoked.status_code == 200, revoked.text
    _, claims = verify_receipt(live, revoked.json()["receipt"])
    assert claims["event"] == "revoked"
    _assert_ended(live, bank, data)
    # The admin's own token came from the same consent: it ended too.
    again = requests.post(
        live.url(f"/api/companies/{org.br_number}/consents/{entry['consent_id']}/revoke"),
        headers=headers, timeout=10)
    assert again.status_code == 401
    assert "invalid_token" in again.headers["WWW-Authenticate"]


def test_admin_api_refuses_others(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_person: Callable[..., PersonInfo], browser: Callable[[], Browser],
        bank: RP) -> None:
    who, b = signed_in()
    org = who.companies[0]
    tokens_for(live, b, bank, scope="openid corp_profile")
    consent_id = consent_row(who.id, org.id).consent_id
    url = live.url(f"/api/companies/{org.br_number}/consents")
    revoke_url = f"{url}/{consent_id}/revoke"
    # No token, a bad token.
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.json()["error"] == "invalid_request"
    answer = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    # A token without the scope.
    plain = tokens_for(live, b, bank, scope="openid corp")
    answer = requests.get(url, headers={"Authorization": f"Bearer {plain['access_token']}"},
                          timeout=10)
    assert answer.status_code == 403
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
    # A member who is not an admin.
    member = _member_token(live, browser, make_person, bank, org, roles=["member"])
    for method, target in (("GET", url), ("POST", revoke_url)):
        answer = requests.request(method, target, headers=member, timeout=10)
        assert answer.status_code == 403, answer.text
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # Another company's admin.
    outsider = make_person(name="Other Admin", email="other@other.example",
                           companies=[{"name_en": "Other Limited", "roles": ["admin"]}])
    ob = browser()
    ob.sign_in(outsider)
    theirs = tokens_for(live, ob, bank, scope="openid corp_consents")
    other_headers = {"Authorization": f"Bearer {theirs['access_token']}"}
    for method, target in (("GET", url), ("POST", revoke_url)):
        answer = requests.request(method, target, headers=other_headers, timeout=10)
        assert answer.status_code == 403
    # Their own company's URL with my consent id: not found.
    answer = requests.post(
        live.url(f"/api/companies/{outsider.companies[0].br_number}/consents/{consent_id}/revoke"),
        headers=other_headers, timeout=10)
    assert answer.status_code == 404
    assert consent_row(who.id, org.id).revoked_at is None


def _member_token(live: Live, browser: Callable[[], Browser],
                  make_person: Callable[..., PersonInfo], rp: RP, org: Any, *,
                  roles: list[str]) -> dict[str, str]:
    """A Bearer header for a new person with ``roles`` in ``org``'s company."""
    from idp.orgs.models import Membership

    person = make_person(name="Clerk", email=f"clerk-{secrets.token_hex(3)}@acme.example",
                         companies=[{"name_en": "Scratch Limited"}])
    db.session.add(Membership(person_id=person.id, company_id=org.id, roles=roles))
    db.session.commit()
    b = browser()
    b.sign_in(person)
    verifier, challenge = pkce_pair()
    url = authorize_url(live, rp, scope="openid corp_consents", challenge=challenge)
    cb = callback(b.run(url, company=org.id))
    token = oauth_session(live, rp).fetch_token(live.url("/token"), code=cb.params["code"],
                                                code_verifier=verifier)
    return {"Authorization": f"Bearer {token['access_token']}"}


# --- the relying party's receipts -------------------------------------------------------------


def test_receipts_are_listed_for_their_client_only(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], bank: RP) -> None:
    from idp.consent.services import revoke_consent

    who, b = signed_in()
    other = make_client("private_key_jwt", name="Other Bank", scopes=BANK_SCOPES)
    tokens_for(live, b, bank, scope="openid corp_profile")
    revoke_consent(consent_row(who.id, who.companies[0].id), actor="tests")
    tokens_for(live, b, bank, scope="openid corp_address")
    mine = post(live, "/consent/receipts", bank)
    assert mine.status_code == 200, mine.text
    assert mine.headers["Cache-Control"] == "no-store"
    listed = mine.json()
    assert [r["event"] for r in listed] == ["granted", "revoked", "granted"]
    for item in listed:
        _, claims = verify_receipt(live, item["receipt"])
        assert claims["client"]["client_id"] == bank.client_id
    # The revocation ended the first consent; granting again started a new one.
    assert listed[0]["consent_id"] == listed[1]["consent_id"] != listed[2]["consent_id"]
    # Paging by id.
    page = post(live, "/consent/receipts", bank, {"after": str(listed[0]["id"]), "limit": "1"})
    assert [r["id"] for r in page.json()] == [listed[1]["id"]]
    # Another client (private_key_jwt) sees none of them.
    theirs = post(live, "/consent/receipts", other)
    assert theirs.status_code == 200, theirs.text
    assert theirs.json() == []
    # Without client authentication: refused.
    anonymous = post(live, "/consent/receipts", None, {"client_id": bank.client_id})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"
    bad = post(live, "/consent/receipts", bank, {"after": "x"})
    assert bad.status_code == 400


def test_consent_page_in_traditional_chinese(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]], bank: RP) -> None:
    who, b = signed_in()
    page, _ = start(live, b, bank, ui_locales="zh-Hant-HK",
                    authorization_details=rar(["corp_officers", "corp_address"]))
    assert page_kind(page) == "consent"
    assert who.companies[0].name_zh in page.text
    assert "公司的董事及秘書" in page.text
    assert "公司的註冊地址" in page.text
    assert "用途" in page.text
    assert PURPOSE in page.text
    assert "此同意有效至" in page.text
