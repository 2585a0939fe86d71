"""Usernameless sign-in with a security key through the real ceremony (issue 3, Login).

People are enrolled through an invitation link (``enrolled``), then sign in from a *fresh*
browser with the same software key. Every rule of WebAuthn L3 §7.2, and each one py_webauthn
leaves to us (SECURITY.md), has a refusal here; a refusal is a JSON 4xx, audited, never a 500.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from sqlalchemy import select, update

from idp.audit.models import AuditEvent
from idp.authn.models import LoginSession, SecurityKey
from idp.db import utcnow
from idp.extensions import db
from idp.orgs.models import Person, PersonStatus
from tests.functional.conftest import (
    LOGIN_COOKIE,
    RP,
    Browser,
    KeyHolder,
    Live,
    as_redirect,
    authorize_url,
    callback,
    expire_challenges,
    key_sign_in,
    key_sign_in_to_client,
    oauth_session,
    page_kind,
    pkce_pair,
    verify_jwt,
)
from tests.support import ceremony
from tests.support.authenticator import SoftAuthenticator, b64url


@pytest.fixture
def holder(enrolled: Callable[..., KeyHolder]) -> KeyHolder:
    return enrolled()


@pytest.fixture
def login_page(live: Live, make_client: Callable[..., RP], browser: Callable[[], Browser]
               ) -> Callable[..., tuple[Browser, requests.Response]]:
    """A fresh browser on the login page of a new authorization request."""
    rp_holder: list[RP] = []

    def factory(b: Browser | None = None, **params: str) -> tuple[Browser, requests.Response]:
        if not rp_holder:
            rp_holder.append(make_client())
        b = b or browser()
        _, challenge = pkce_pair()
        page = b.go(authorize_url(live, rp_holder[0], challenge=challenge, **params))
        assert page.status_code == 200, (page.status_code, page.url)
        assert page_kind(page) == "login", page.url
        return b, page

    return factory


def _refused(answer: requests.Response, status: int = 400) -> dict[str, Any]:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert body["error"]
    assert body["error_description"]
    return body


def _failures() -> list[dict[str, Any]]:
    db.session.rollback()
    rows = db.session.scalars(
        select(AuditEvent).where(AuditEvent.tag == "authn:login:failure").order_by(AuditEvent.id))
    return [dict(r.details) for r in rows]


def _key() -> SecurityKey:
    db.session.rollback()
    return db.session.scalars(select(SecurityKey).order_by(SecurityKey.id)).first()  # type: ignore[return-value]


# --- the page and options ---------------------------------------------------------------------

def test_login_page_runs_the_external_script(holder: KeyHolder,
                                             login_page: Callable[..., Any]) -> None:
    _, page = login_page()
    assert page.headers["Cache-Control"] == "no-store"
    assert "/static/webauthn.js" in page.text
    assert "<script>" not in page.text
    info = ceremony.ceremony_of(page)
    assert info["mode"] == "login"
    assert info["handle"].startswith("cia_")
    script = requests.get(urljoin(page.url, "/static/webauthn.js"), timeout=10)
    assert script.status_code == 200
    assert "navigator.credentials.get" in script.text


def test_login_page_of_another_browser_is_refused(holder: KeyHolder, ctx: Live,
                                                  login_page: Callable[..., Any]) -> None:
    _, page = login_page()
    handle = ceremony.ceremony_of(page)["handle"]
    other = Browser(ctx)
    # Its sign-in page and its options belong to the browser that started the authorization.
    assert other.request("GET", ctx.url(f"/login?h={handle}")).status_code == 400
    _, own = login_page(other)  # a valid CSRF token of its own
    info = ceremony.ceremony_of(own)
    answer = ceremony.post_json(other.http, info["options"], {"h": handle}, csrf=info["csrf"])
    assert answer.status_code == 400
    assert "another browser" in answer.json()["error_description"]
    other.http.close()


def test_usernameless_options(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    _, answer = ceremony.options(b.http, page)
    assert answer.status_code == 200, answer.text
    options = answer.json()["publicKey"]
    assert options["allowCredentials"] == []
    assert options["userVerification"] == "required"
    assert options["rpId"] == "127.0.0.1"
    assert options["timeout"] == 120_000


def test_options_timeout_follows_the_setting(holder: KeyHolder, ctx: Live,
                                             login_page: Callable[..., Any]) -> None:
    ctx.config()["WEBAUTHN_TIMEOUT_MS"] = 5_000
    try:
        b, page = login_page()
        _, answer = ceremony.options(b.http, page)
        assert answer.json()["publicKey"]["timeout"] == 5_000
    finally:
        ctx.config()["WEBAUTHN_TIMEOUT_MS"] = 120_000


def test_login_hint_lists_the_persons_keys_and_only_those_pass(
        holder: KeyHolder, enrolled: Callable[..., KeyHolder],
        login_page: Callable[..., Any]) -> None:
    other = enrolled(name="Other", email="other@acme.example")
    b, page = login_page(login_hint="tai.man@acme.example")
    _, answer = ceremony.options(b.http, page)
    listed = answer.json()["publicKey"]["allowCredentials"]
    assert [c["id"] for c in listed] == [b64url(holder.authenticator.credentials[0]
                                                .credential_id)]
    assert listed[0]["transports"] == ["usb"]
    # Another person's key, answering these options, is refused.
    b2, page2 = login_page(login_hint="tai.man@acme.example")
    answer = ceremony.login(b2.http, page2, other.authenticator,
                            credential=other.authenticator.credentials[0])
    _refused(answer)
    assert _failures()[-1]["reason"] == "not_allowed"


def test_unknown_login_hint_gives_usernameless_options(holder: KeyHolder,
                                                       login_page: Callable[..., Any]) -> None:
    b, page = login_page(login_hint="nobody@acme.example")
    _, answer = ceremony.options(b.http, page)
    assert answer.json()["publicKey"]["allowCredentials"] == []


# --- success ----------------------------------------------------------------------------------

def test_the_sign_in_pages_own_options_sign_in_once(holder: KeyHolder,
                                                    login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    info = ceremony.ceremony_of(page)
    embedded = json.loads(info["public-key"])["publicKey"]
    assertion = holder.authenticator.get(embedded)
    body = {"h": info["handle"], "credential": assertion}
    answer = ceremony.post_json(b.http, info["verify"], body, csrf=info["csrf"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["next"].startswith("https://rp.example/cb?code=")  # nothing to ask
    # Its challenge answers once.
    again = ceremony.post_json(b.http, info["verify"], body, csrf=info["csrf"])
    assert "already used" in _refused(again)["error_description"]



def test_sign_in_for_a_form_post_response_goes_on_to_continue(
        holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page(response_mode="form_post")
    answer = ceremony.login(b.http, page, holder.authenticator)
    assert answer.status_code == 200, answer.text
    following = answer.json()["next"]
    assert following.startswith("/authorize/continue?h=cia_")  # the page that posts the answer
    assert page_kind(b.go(urljoin(page.url, following))) == "form_post"


def test_sign_in_starts_a_session_and_updates_the_key(holder: KeyHolder, ctx: Live,
                                                      login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    used_before = _key().last_used_at
    answer = ceremony.login(b.http, page, holder.authenticator)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    # "openid" alone asks no consent, one company asks no choice: straight back to the client
    # with the code, the state and the issuer (RFC 9207).
    back = callback(as_redirect(answer.json()["next"]))
    assert back.target == "https://rp.example/cb"
    assert back.params["code"]
    assert back.params["state"] == "st-123"
    assert back.params["iss"] == ctx.issuer
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{LOGIN_COOKIE}=cil_")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    key = _key()
    assert key.sign_count == holder.authenticator.credentials[0].sign_count == 1
    assert used_before is None
    assert key.last_used_at is not None
    session = db.session.scalars(select(LoginSession).order_by(LoginSession.id.desc())).first()
    assert session is not None
    assert (session.acr, session.amr, session.security_key_id) == ("phrh", ["hwk", "mfa"],
                                                                   key.id)
    tags = list(db.session.scalars(select(AuditEvent.tag)))
    assert "authn:login:success" in tags


def test_full_journey_with_authlib(holder: KeyHolder, ctx: Live, make_client: Callable[..., RP],
                                   browser: Callable[[], Browser]) -> None:
    """authorize -> login (real ceremony) -> consent -> code -> token; the ID token carries
    acr, amr, auth_time and sid of the session the assertion started."""
    rp = make_client()
    oauth = oauth_session(ctx, rp, scope="openid profile")
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(12)
    url, state = oauth.create_authorization_url(ctx.url("/authorize"), code_verifier=verifier,
                                                nonce=nonce)
    b = browser()
    page = key_sign_in(b, url, holder.authenticator)
    assert page_kind(page) == "consent", page.text[:300]
    cb = callback(b.follow(b.submit(page, decision="allow")))
    assert cb.params["state"] == state
    assert cb.params["iss"] == ctx.issuer
    token = oauth.fetch_token(ctx.url("/token"), authorization_response=cb.url(), state=state,
                              code_verifier=verifier)
    _, claims = verify_jwt(ctx, token["id_token"], alg="RS256", audience=rp.client_id)
    db.session.rollback()
    session = db.session.scalars(select(LoginSession).order_by(LoginSession.id.desc())).first()
    assert session is not None
    assert claims["sub"] == holder.person.subject
    assert claims["nonce"] == nonce
    assert claims["acr"] == "phrh"
    assert claims["amr"] == ["hwk", "mfa"]
    assert claims["sid"] == session.sid
    assert claims["auth_time"] == int(session.auth_time.timestamp())


def test_company_choice_after_sign_in(enrolled: Callable[..., KeyHolder],
                                      invite: Callable[..., str], ctx: Live,
                                      login_page: Callable[..., Any]) -> None:
    holder = enrolled()
    # A second company through a second invitation, accepted while signed in.
    page = holder.browser.go(invite(email="tai.man@acme.example"))
    _, answer = ceremony.options(holder.browser.http, page, key_name="Spare")
    spare = SoftAuthenticator(origin=ctx.issuer)
    info = ceremony.ceremony_of(page)
    done = ceremony.post_json(holder.browser.http, info["verify"],
                              {"credential": spare.create(answer.json()["publicKey"])},
                              csrf=info["csrf"])
    assert done.status_code == 200
    b, page = login_page()
    answer = ceremony.login(b.http, page, spare)
    assert answer.status_code == 200, answer.text
    assert page_kind(b.go(urljoin(page.url, answer.json()["next"]))) == "company"


def test_prompt_login_asks_again_and_a_fresh_assertion_satisfies_it(
        holder: KeyHolder, ctx: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client()
    b = holder.browser  # signed in by the enrolment
    _, challenge = pkce_pair()
    url = authorize_url(ctx, rp, challenge=challenge, prompt="login")
    page = key_sign_in_to_client(b, url, holder.authenticator)  # asserts the login page was shown
    assert "code" in callback(page).params  # "openid" alone asks no consent
    db.session.rollback()
    assert len(list(db.session.scalars(select(LoginSession)))) == 2  # a fresh session


def test_max_age_passed_asks_again_and_a_fresh_assertion_satisfies_it(
        holder: KeyHolder, ctx: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client()
    b = holder.browser
    db.session.execute(update(LoginSession).values(
        auth_time=utcnow() - dt.timedelta(minutes=10)))
    db.session.commit()
    _, challenge = pkce_pair()
    url = authorize_url(ctx, rp, challenge=challenge, max_age="60")
    page = key_sign_in_to_client(b, url, holder.authenticator)  # asserts the login page was shown
    assert "code" in callback(page).params


# --- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("breakage", "reason"), [
    ({"origin": "https://evil.example"}, "origin"),
    ({"rp_id": "evil.example"}, "rp_id"),
    ({"uv": False}, "user_verification"),
    ({"up": False}, "user_presence"),
    ({"cross_origin": True}, "origin"),
    ({"client_data_type": "webauthn.create"}, "ceremony_type"),
    ({"be": True}, "backup_eligible"),
    ({"challenge": b"\x01" * 32}, "challenge"),
])
def test_broken_assertion_refused(holder: KeyHolder, login_page: Callable[..., Any],
                                  breakage: dict[str, Any], reason: str) -> None:
    b, page = login_page()
    _refused(ceremony.login(b.http, page, holder.authenticator, **breakage))
    assert LOGIN_COOKIE not in b.http.cookies
    assert _failures()[-1]["reason"] == reason
    assert _key().last_used_at is None


def test_bad_signature_refused(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page()

    def tamper(assertion: dict[str, Any]) -> None:
        assertion["response"]["signature"] = b64url(b"\x30\x06\x02\x01\x01\x02\x01\x01")

    _refused(ceremony.login(b.http, page, holder.authenticator, tamper=tamper))
    assert _failures()[-1]["reason"] == "signature"


def test_replayed_assertion_refused(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    info, answer = ceremony.options(b.http, page)
    assertion = holder.authenticator.get(answer.json()["publicKey"])
    body = {"h": info["handle"], "credential": assertion}
    assert ceremony.post_json(b.http, info["verify"], body, csrf=info["csrf"]).status_code == 200
    _refused(ceremony.post_json(b.http, info["verify"], body, csrf=info["csrf"]))
    assert _failures()[-1]["reason"] == "challenge"


def test_expired_challenge_refused(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    info, answer = ceremony.options(b.http, page)
    expire_challenges()
    assertion = holder.authenticator.get(answer.json()["publicKey"])
    _refused(ceremony.post_json(b.http, info["verify"], {"h": info["handle"],
                                                         "credential": assertion},
                                csrf=info["csrf"]))
    assert _failures()[-1]["reason"] == "challenge"


def test_challenge_from_another_browser_refused(holder: KeyHolder,
                                                login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    _, answer = ceremony.options(b.http, page)
    assertion = holder.authenticator.get(answer.json()["publicKey"])
    thief, their_page = login_page()
    theirs = ceremony.ceremony_of(their_page)
    _refused(ceremony.post_json(thief.http, theirs["verify"],
                                {"h": theirs["handle"], "credential": assertion},
                                csrf=theirs["csrf"]))
    assert LOGIN_COOKIE not in thief.http.cookies


def test_challenge_of_another_pending_authorization_refused(
        holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    _, answer = ceremony.options(b.http, page)
    assertion = holder.authenticator.get(answer.json()["publicKey"])
    _, second = login_page(b)
    info = ceremony.ceremony_of(second)
    _refused(ceremony.post_json(b.http, info["verify"],
                                {"h": info["handle"], "credential": assertion},
                                csrf=info["csrf"]))


def test_challenge_of_the_enrolment_ceremony_refused(
        holder: KeyHolder, invite: Callable[..., str], login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    enrol_page = b.go(invite(email="x@acme.example"))
    _, created = ceremony.options(b.http, enrol_page, display_name="X")
    registration_challenge = created.json()["publicKey"]["challenge"]
    from tests.support.authenticator import unb64url

    _refused(ceremony.login(b.http, page, holder.authenticator,
                            challenge=unb64url(registration_challenge)))
    assert _failures()[-1]["reason"] == "challenge"


def test_unknown_credential_refused(holder: KeyHolder, ctx: Live,
                                    login_page: Callable[..., Any]) -> None:
    stranger = SoftAuthenticator(origin=ctx.issuer)
    stranger.create({"challenge": b64url(b"x" * 32), "rp": {"id": "127.0.0.1"},
                     "user": {"id": b64url(b"someone")}, "pubKeyCredParams": [{"alg": -7}]})
    b, page = login_page()
    body = _refused(ceremony.login(b.http, page, stranger))
    assert "not registered" in body["error_description"]
    assert _failures()[-1]["reason"] == "unknown_credential"


def test_user_handle_of_another_person_refused(holder: KeyHolder,
                                               enrolled: Callable[..., KeyHolder],
                                               login_page: Callable[..., Any]) -> None:
    other = enrolled(name="Other", email="other@acme.example")
    b, page = login_page()
    _refused(ceremony.login(b.http, page, holder.authenticator,
                            user_handle=other.person.subject.encode()))
    assert _failures()[-1]["reason"] == "user_handle"


def test_missing_user_handle_refused_without_allow_list(holder: KeyHolder,
                                                        login_page: Callable[..., Any]) -> None:
    b, page = login_page()

    def tamper(assertion: dict[str, Any]) -> None:
        assertion["response"]["userHandle"] = None

    _refused(ceremony.login(b.http, page, holder.authenticator, tamper=tamper))
    assert _failures()[-1]["reason"] == "user_handle"


def test_revoked_key_refused(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    db.session.execute(update(SecurityKey).values(revoked_at=utcnow()))
    db.session.commit()
    b, page = login_page()
    _refused(ceremony.login(b.http, page, holder.authenticator))
    assert _failures()[-1]["reason"] == "revoked"


def test_suspended_person_refused(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    db.session.execute(update(Person).values(status=PersonStatus.SUSPENDED))
    db.session.commit()
    b, page = login_page()
    _refused(ceremony.login(b.http, page, holder.authenticator))
    assert _failures()[-1]["reason"] == "inactive"


def test_backup_eligible_key_must_stay_so(enrolled: Callable[..., KeyHolder],
                                          login_page: Callable[..., Any]) -> None:
    holder = enrolled(be=True)
    assert _key().backup_eligible is True
    b, page = login_page()
    _refused(ceremony.login(b.http, page, holder.authenticator, be=False))
    assert _failures()[-1]["reason"] == "backup_eligible"
    b, page = login_page()
    assert ceremony.login(b.http, page, holder.authenticator).status_code == 200


@pytest.mark.parametrize(("stored", "presented"), [(5, 5), (5, 3), (5, 0)])
def test_regressed_counter_refused_and_key_marked(holder: KeyHolder,
                                                  login_page: Callable[..., Any],
                                                  stored: int, presented: int) -> None:
    db.session.execute(update(SecurityKey).values(sign_count=stored))
    db.session.commit()
    b, page = login_page()
    body = _refused(ceremony.login(b.http, page, holder.authenticator, sign_count=presented))
    assert "copied" in body["error_description"]
    key = _key()
    assert key.cloned_suspected_at is not None
    assert key.sign_count == stored
    events = list(db.session.scalars(select(AuditEvent).where(
        AuditEvent.tag == "webauthn:key:cloned")))
    assert len(events) == 1
    assert events[0].details == {"stored_sign_count": stored, "presented_sign_count": presented}
    assert _failures()[-1]["reason"] == "counter_regressed"


def test_counterless_authenticator_signs_in_repeatedly(holder: KeyHolder,
                                                       login_page: Callable[..., Any]) -> None:
    for _ in range(2):
        b, page = login_page()
        answer = ceremony.login(b.http, page, holder.authenticator, sign_count=0)
        assert answer.status_code == 200, answer.text
    assert _key().cloned_suspected_at is None


def test_concurrent_assertions_with_the_same_counter_only_one_passes(
        holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    """Two browsers, two challenges, two assertions carrying the same counter: the
    compare-and-set lets at most one through; the other is refused (race or regression)."""
    pairs = []
    for _ in range(2):
        b, page = login_page()
        info, answer = ceremony.options(b.http, page)
        assertion = holder.authenticator.get(answer.json()["publicKey"], sign_count=7)
        pairs.append((b, info, assertion))
    results: list[int] = []
    barrier = threading.Barrier(2)

    def go(b: Browser, info: dict[str, str], assertion: dict[str, Any]) -> None:
        barrier.wait()
        answer = ceremony.post_json(b.http, info["verify"],
                                    {"h": info["handle"], "credential": assertion},
                                    csrf=info["csrf"])
        results.append(answer.status_code)

    threads = [threading.Thread(target=go, args=p) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == [200, 400], results
    assert _key().sign_count == 7


def test_csrf_header_required(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    info = ceremony.ceremony_of(page)
    _refused(ceremony.post_json(b.http, info["options"], {"h": info["handle"]}, csrf=None))
    _refused(ceremony.post_json(b.http, info["verify"], {"h": info["handle"]}, csrf=None))


@pytest.mark.parametrize("credential", [
    None, "x", [], {"id": 1}, {"response": {}},
    {"id": "a", "rawId": "a", "type": "public-key",
     "response": {"clientDataJSON": "%%%", "authenticatorData": "", "signature": ""}},
])
def test_malformed_credentials_are_400(holder: KeyHolder, login_page: Callable[..., Any],
                                       credential: Any) -> None:
    b, page = login_page()
    info, _ = ceremony.options(b.http, page)
    _refused(ceremony.post_json(b.http, info["verify"], {"h": info["handle"],
                                                         "credential": credential},
                                csrf=info["csrf"]))


@pytest.mark.parametrize(("field", "value"), [
    ("clientDataJSON", b64url(b"\xff\xfe")),
    ("clientDataJSON", b64url(b'{"type": "webauthn.get"}')),
    ("authenticatorData", b64url(b"short")),
    ("authenticatorData", "!!!"),
    ("signature", "%%"),
    ("userHandle", "***"),
    ("userHandle", b64url(b"h" * 65)),
])
def test_malformed_fields_are_400(holder: KeyHolder, login_page: Callable[..., Any],
                                  field: str, value: str) -> None:
    b, page = login_page()

    def tamper(assertion: dict[str, Any]) -> None:
        assertion["response"][field] = value

    _refused(ceremony.login(b.http, page, holder.authenticator, tamper=tamper))


def test_non_json_bodies_are_400(holder: KeyHolder, login_page: Callable[..., Any]) -> None:
    b, page = login_page()
    info = ceremony.ceremony_of(page)
    for body in ("not json", "[1]", '{"h": 5}'):
        _refused(ceremony.post_json(b.http, info["verify"], body, csrf=info["csrf"]))
    answer = b.http.post(info["verify"], data={"h": info["handle"]},
                         headers={"X-CSRFToken": info["csrf"]}, timeout=10)
    _refused(answer)


def test_failures_rate_limited_per_person(holder: KeyHolder, ctx: Live,
                                          login_page: Callable[..., Any]) -> None:
    ctx.config()["LOGIN_FAILURES_PER_PERSON_PER_MINUTE"] = 2
    try:
        statuses = []
        for _ in range(5):
            b, page = login_page()
            statuses.append(ceremony.login(b.http, page, holder.authenticator, uv=False))
        codes = [r.status_code for r in statuses]
        assert codes[:2] == [400, 400], codes
        limited = next(r for r in statuses if r.status_code == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error_description"]
    finally:
        ctx.config()["LOGIN_FAILURES_PER_PERSON_PER_MINUTE"] = 10


def test_failures_rate_limited_per_source(holder: KeyHolder, ctx: Live,
                                          login_page: Callable[..., Any]) -> None:
    ctx.config()["LOGIN_FAILURES_PER_SOURCE_PER_MINUTE"] = 2
    stranger = SoftAuthenticator(origin=ctx.issuer)
    stranger.create({"challenge": b64url(b"x" * 32), "rp": {"id": "127.0.0.1"},
                     "user": {"id": b64url(b"someone")}, "pubKeyCredParams": [{"alg": -7}]})
    try:
        codes = []
        for _ in range(5):
            b, page = login_page()
            codes.append(ceremony.login(b.http, page, stranger).status_code)
        assert codes[:2] == [400, 400], codes
        assert 429 in codes, codes
    finally:
        ctx.config()["LOGIN_FAILURES_PER_SOURCE_PER_MINUTE"] = 30


def test_max_age_zero_is_satisfied_by_a_fresh_assertion(
        holder: KeyHolder, ctx: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client()
    b = holder.browser
    _, challenge = pkce_pair()
    url = authorize_url(ctx, rp, challenge=challenge, max_age="0")
    page = key_sign_in_to_client(b, url, holder.authenticator)
    assert "code" in callback(page).params
