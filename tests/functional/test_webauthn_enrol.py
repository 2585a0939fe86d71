"""Enrolment through an invitation link with a software security key (issue 3, Enrolment).

Each refusal leaves nothing half-written: no person, no key, the invitation still unused.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update

from idp.audit.models import AuditEvent
from idp.authn.models import LoginSession, SecurityKey
from idp.db import utcnow
from idp.extensions import db
from idp.orgs.models import Invitation, Membership, Person
from tests.functional.conftest import (
    LOGIN_COOKIE,
    Browser,
    KeyHolder,
    Live,
    expire_challenges,
    stored_challenges,
)
from tests.support import ceremony
from tests.support.authenticator import EDDSA, ES256, SoftAuthenticator, b64url, unb64url


def _counts() -> tuple[int, int, int]:
    db.session.rollback()
    people = db.session.scalar(select(func.count(Person.id))) or 0
    keys = db.session.scalar(select(func.count(SecurityKey.id))) or 0
    used = db.session.scalar(
        select(func.count(Invitation.id)).where(Invitation.used_at.is_not(None))
    ) or 0
    return int(people), int(keys), int(used)


@pytest.fixture
def start(invite: Callable[..., str], browser: Callable[[], Browser],
          soft_key: Callable[..., SoftAuthenticator]
          ) -> Callable[..., tuple[Browser, requests.Response, SoftAuthenticator]]:
    """A fresh browser on a fresh invitation's enrolment page, and a software key."""

    def factory(**invite_kwargs: Any) -> tuple[Browser, requests.Response, SoftAuthenticator]:
        b = browser()
        page = b.go(invite(**invite_kwargs))
        assert page.status_code == 200, page.text[:300]
        return b, page, soft_key()

    return factory


# --- the page ---------------------------------------------------------------------------------

def test_enrolment_page_names_inviter_invitee_and_company(ctx: Live, invite: Callable[..., str],
                                                          browser: Callable[[], Browser]) -> None:
    page = browser().go(invite(email="mei@acme.example"))
    assert page.status_code == 200
    assert "operator:tests" in page.text
    assert "mei@acme.example" in page.text
    assert "Acme Trading Limited" in page.text
    assert 'name="display_name"' in page.text
    assert page.headers["Cache-Control"] == "no-store"
    # The ceremony script is external (CSP: no inline script) and carries the page's nonce.
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self' 'nonce-" in csp
    assert "/static/webauthn.js" in page.text
    assert "onclick" not in page.text
    assert "<script>" not in page.text


def test_enrolment_page_in_traditional_chinese(ctx: Live, invite: Callable[..., str],
                                              browser: Callable[[], Browser]) -> None:
    b = browser()
    page = b.http.get(invite(), headers={"Accept-Language": "zh-HK"}, timeout=10)
    assert page.status_code == 200
    assert "登記保安鑰匙" in page.text
    assert "頂尖貿易有限公司" in page.text


@pytest.mark.parametrize("state", ["used", "expired", "unknown"])
def test_invalid_invitation_page_is_404(ctx: Live, invite: Callable[..., str],
                                        browser: Callable[[], Browser], state: str) -> None:
    link = invite()
    if state == "used":
        db.session.execute(update(Invitation).values(used_at=utcnow()))
    elif state == "expired":
        db.session.execute(update(Invitation).values(
            expires_at=utcnow() - dt.timedelta(seconds=1)))
    else:
        link = link + "x"
    db.session.commit()
    page = browser().go(link)
    assert page.status_code == 404
    assert "not valid" in page.text


# --- success ----------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", [ES256, EDDSA])
@pytest.mark.parametrize("attestation", ["none", "self"])
def test_enrol_creates_person_key_membership_and_session(
        start: Callable[..., Any], ctx: Live, alg: int, attestation: str) -> None:
    b, page, key = start(email="mei@acme.example", roles=["signatory"])
    answer = ceremony.enrol(b.http, page, key, display_name="Wong Siu Mei", key_name="Blue key",
                            alg=alg, attestation=attestation)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    db.session.rollback()
    person = db.session.scalars(select(Person)).one()
    assert (person.display_name, person.email) == ("Wong Siu Mei", "mei@acme.example")
    stored = db.session.scalars(select(SecurityKey)).one()
    assert stored.person_id == person.id
    assert stored.credential_id == key.credentials[0].credential_id
    assert stored.name == "Blue key"
    assert stored.aaguid == key.aaguid
    assert stored.transports == ["usb"]
    assert stored.backup_eligible is False
    assert stored.created_at is not None
    assert stored.last_used_at is None
    membership = db.session.scalars(select(Membership)).one()
    assert membership.person_id == person.id
    assert membership.roles == ["signatory"]
    invitation = db.session.scalars(select(Invitation)).one()
    assert invitation.used_at is not None
    assert invitation.used_by_person_id == person.id
    # The user handle given to the key is the person's opaque subject.
    assert key.credentials[0].user_handle == person.subject.encode()
    # Signed in with a renewed cookie: acr phrh, amr hwk+mfa, the key recorded.
    session = db.session.scalars(select(LoginSession)).one()
    assert (session.acr, session.amr, session.security_key_id) == ("phrh", ["hwk", "mfa"],
                                                                   stored.id)
    assert LOGIN_COOKIE in answer.cookies
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    done = b.go(ctx.url(answer.json()["next"]))
    assert done.status_code == 200
    assert "Blue key" in done.text
    tags = set(db.session.scalars(select(AuditEvent.tag)))
    assert {"webauthn:key:register", "orgs:invitation:consume", "authn:session:start"} <= tags


def test_registration_options_follow_the_issue(start: Callable[..., Any], ctx: Live) -> None:
    b, page, _ = start()
    _, answer = ceremony.options(b.http, page, display_name="Chan Tai Man")
    assert answer.status_code == 200, answer.text
    options = answer.json()["publicKey"]
    assert options["rp"]["id"] == "127.0.0.1"
    assert options["attestation"] == "direct"
    selection = options["authenticatorSelection"]
    assert selection["residentKey"] == "required"
    assert selection["requireResidentKey"] is True
    assert selection["userVerification"] == "required"
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7, -8, -257]
    assert options["excludeCredentials"] == []
    assert options["user"]["name"] == "tai.man@acme.example"
    assert options["timeout"] == 120_000  # IDP_WEBAUTHN_TIMEOUT_MS; the challenge lives 300 s
    assert len(unb64url(options["challenge"])) == 32
    # Stored only as a digest, for 300 s.
    [stored] = stored_challenges()
    assert options["challenge"] not in json.dumps(stored["data"])
    assert options["challenge"] not in stored["key"]
    assert stored.get("ceremony", "register") == "register"
    assert 295 <= stored["ttl"] <= 300


def test_signed_in_person_adds_a_spare_key_and_excludes_theirs(
        enrolled: Callable[..., KeyHolder], invite: Callable[..., str], ctx: Live) -> None:
    holder = enrolled()
    first = holder.authenticator.credentials[0].credential_id
    page = holder.browser.go(invite(email="tai.man@acme.example", roles=["member"]))
    assert "signed in as" in page.text
    assert 'name="display_name"' not in page.text
    _, answer = ceremony.options(holder.browser.http, page, key_name="Spare")
    excluded = [unb64url(c["id"]) for c in answer.json()["publicKey"]["excludeCredentials"]]
    assert excluded == [first]
    spare = SoftAuthenticator(origin=ctx.issuer)
    created = spare.create(answer.json()["publicKey"])
    info = ceremony.ceremony_of(page)
    done = ceremony.post_json(holder.browser.http, info["verify"], {"credential": created},
                              csrf=info["csrf"])
    assert done.status_code == 200, done.text
    db.session.rollback()
    assert db.session.scalar(select(func.count(Person.id))) == 1
    names = sorted(db.session.scalars(select(SecurityKey.name)))
    assert names == ["Blue key", "Spare"]
    assert db.session.scalar(select(func.count(Membership.id))) == 2


# --- refusals: nothing half-written -----------------------------------------------------------

def _refused(answer: requests.Response, status: int = 400) -> dict[str, Any]:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert body["error"]
    assert body["error_description"]
    return body


@pytest.mark.parametrize("breakage", [
    {"origin": "https://evil.example"},
    {"rp_id": "evil.example"},
    {"uv": False},
    {"up": False},
    {"challenge": b"\x00" * 32},
    {"client_data_type": "webauthn.get"},
    {"cross_origin": True},
])
def test_broken_registration_refused(start: Callable[..., Any], ctx: Live,
                                     breakage: dict[str, Any]) -> None:
    b, page, key = start()
    _refused(ceremony.enrol(b.http, page, key, **breakage))
    assert _counts() == (0, 0, 0)
    assert LOGIN_COOKIE not in b.http.cookies


def test_used_invitation_refused_even_between_options_and_verify(
        start: Callable[..., Any], ctx: Live) -> None:
    b, page, key = start()
    _, answer = ceremony.options(b.http, page, display_name="Chan Tai Man")
    db.session.execute(update(Invitation).values(used_at=utcnow()))
    db.session.commit()
    info = ceremony.ceremony_of(page)
    created = key.create(answer.json()["publicKey"])
    _refused(ceremony.post_json(b.http, info["verify"], {"credential": created},
                                csrf=info["csrf"]), 404)
    assert _counts() == (0, 0, 1)


def test_expired_invitation_refused(start: Callable[..., Any], ctx: Live) -> None:
    b, page, _key = start()
    db.session.execute(update(Invitation).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    db.session.commit()
    _info, answer = ceremony.options(b.http, page, display_name="Chan Tai Man")
    _refused(answer, 404)
    assert _counts() == (0, 0, 0)


def test_invitation_used_by_a_racing_enrolment_writes_nothing(
        start: Callable[..., Any], ctx: Live) -> None:
    """Two browsers start on one link; the first to verify wins, the second writes nothing."""
    b1, page1, key1 = start()
    link = page1.url
    b2 = Browser(ctx)
    page2 = b2.go(link)
    _, a1 = ceremony.options(b1.http, page1, display_name="First")
    _, a2 = ceremony.options(b2.http, page2, display_name="Second")
    key2 = SoftAuthenticator(origin=ctx.issuer)
    info1, info2 = ceremony.ceremony_of(page1), ceremony.ceremony_of(page2)
    ok = ceremony.post_json(b1.http, info1["verify"],
                            {"credential": key1.create(a1.json()["publicKey"])},
                            csrf=info1["csrf"])
    assert ok.status_code == 200
    late = ceremony.post_json(b2.http, info2["verify"],
                              {"credential": key2.create(a2.json()["publicKey"])},
                              csrf=info2["csrf"])
    assert late.status_code in (404, 409)
    assert _counts() == (1, 1, 1)
    b2.http.close()


def test_credential_id_of_another_person_refused(enrolled: Callable[..., KeyHolder],
                                                 start: Callable[..., Any], ctx: Live) -> None:
    holder = enrolled()
    taken = holder.authenticator.credentials[0].credential_id
    b, page, key = start(email="other@acme.example")
    body = _refused(ceremony.enrol(b.http, page, key, credential_id=taken))
    assert "already registered" in body["error_description"]
    assert _counts() == (1, 1, 1)


def test_too_long_credential_id_refused(start: Callable[..., Any], ctx: Live) -> None:
    b, page, key = start()
    _refused(ceremony.enrol(b.http, page, key, credential_id=b"\x01" * 1024))
    assert _counts() == (0, 0, 0)


def test_challenge_is_single_use(start: Callable[..., Any], ctx: Live) -> None:
    b, page, key = start()
    info, answer = ceremony.options(b.http, page, display_name="Chan Tai Man")
    created = key.create(answer.json()["publicKey"], uv=False)
    _refused(ceremony.post_json(b.http, info["verify"], {"credential": created},
                                csrf=info["csrf"]))
    # The same challenge with a good response: already used.
    good = key.create(answer.json()["publicKey"])
    body = _refused(ceremony.post_json(b.http, info["verify"], {"credential": good},
                                       csrf=info["csrf"]))
    assert "already used" in body["error_description"]
    assert _counts() == (0, 0, 0)


def test_expired_challenge_refused(start: Callable[..., Any], ctx: Live) -> None:
    b, page, key = start()
    info, answer = ceremony.options(b.http, page, display_name="Chan Tai Man")
    expire_challenges()
    created = key.create(answer.json()["publicKey"])
    _refused(ceremony.post_json(b.http, info["verify"], {"credential": created},
                                csrf=info["csrf"]))
    assert _counts() == (0, 0, 0)


def test_challenge_from_another_browser_refused(start: Callable[..., Any], ctx: Live) -> None:
    b, page, key = start()
    _info, answer = ceremony.options(b.http, page, display_name="Chan Tai Man")
    created = key.create(answer.json()["publicKey"])
    thief = Browser(ctx)
    their_page = thief.go(page.url)
    theirs = ceremony.ceremony_of(their_page)
    _refused(ceremony.post_json(thief.http, theirs["verify"], {"credential": created},
                                csrf=theirs["csrf"]))
    assert _counts() == (0, 0, 0)
    thief.http.close()


def test_options_and_verify_need_the_csrf_header(start: Callable[..., Any], ctx: Live) -> None:
    b, page, _ = start()
    info = ceremony.ceremony_of(page)
    answer = ceremony.post_json(b.http, info["options"], {"display_name": "X"}, csrf=None)
    _refused(answer)
    answer = ceremony.post_json(b.http, info["verify"], {"credential": {}}, csrf=None)
    _refused(answer)


def test_name_is_required_for_a_new_person(start: Callable[..., Any], ctx: Live) -> None:
    b, page, _ = start()
    _, answer = ceremony.options(b.http, page, display_name="  ")
    _refused(answer)
    _, answer = ceremony.options(b.http, page, display_name="a\x00b")
    _refused(answer)


@pytest.mark.parametrize("body", [
    "not json", "[]", '{"credential": "x"}', '{"credential": {"id": 1}}',
    '{"credential": {"id": "!!", "rawId": "!!", "type": "public-key", "response": {}}}',
])
def test_malformed_bodies_are_400(start: Callable[..., Any], ctx: Live, body: str) -> None:
    b, page, _ = start()
    info, _ = ceremony.options(b.http, page, display_name="Chan Tai Man")
    _refused(ceremony.post_json(b.http, info["verify"], body, csrf=info["csrf"]))


@pytest.mark.parametrize(("field", "value"), [
    ("clientDataJSON", "%%%"),
    ("clientDataJSON", b64url(b"\xff\xfe not json")),
    ("attestationObject", b64url(b"\xff\x00\x01 not cbor")),
    ("attestationObject", "a" * 7),
    ("attestationObject", b64url(b"\xa1\x63fmt\x64none")),  # CBOR without authData
])
def test_malformed_base64_json_cbor_are_400(start: Callable[..., Any], ctx: Live, field: str,
                                           value: str) -> None:
    b, page, key = start()

    def tamper(created: dict[str, Any]) -> None:
        created["response"][field] = value

    _refused(ceremony.enrol(b.http, page, key, tamper=tamper))
    assert _counts() == (0, 0, 0)


def test_enrolment_rate_limited(start: Callable[..., Any], ctx: Live) -> None:
    ctx.config()["ENROL_RATE_LIMIT_SOURCE_PER_MINUTE"] = 3
    try:
        b, page, _ = start()
        # Eight tries: even across a minute boundary one window sees more than three.
        statuses = [ceremony.options(b.http, page, display_name="X")[1] for _ in range(8)]
        assert [r.status_code for r in statuses][:3] == [200, 200, 200]
        limited = next(r for r in statuses if r.status_code != 200)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error_description"]
    finally:
        ctx.config()["ENROL_RATE_LIMIT_SOURCE_PER_MINUTE"] = 60
