"""RP-Initiated Logout 1.0 at the end_session_endpoint: the hint, client_id, the registered
post_logout_redirect_uri with state, the confirmation page, and what ends with the session."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.functional.conftest import (
    LOGIN_COOKIE,
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    authorize_url,
    b64json,
    introspect,
    page_kind,
    parse_forms,
    pkce_pair,
    post,
    redeem,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]
AFTER = "https://rp.example/logged-out"


@pytest.fixture
def rp(make_client: Callable[..., RP]) -> RP:
    return make_client(name="Tax e-service", post_logout_redirect_uris=[AFTER])


def tokens_for(live: Live, b: Browser, rp: RP, get_code: Callable[..., CodeResult],
               scope: str = "openid offline_access") -> dict[str, Any]:
    response = redeem(live, get_code(b, rp, scope=scope))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def logout_url(live: Live, **params: str) -> str:
    return live.url("/logout") + ("?" + urlencode(params) if params else "")


def session_ended(live: Live, b: Browser) -> bool:
    from idp.authn.models import LoginSession
    from idp.extensions import db

    db.session.rollback()
    row = db.session.get(LoginSession, b.session_id)
    assert row is not None
    return row.ended_at is not None


def assert_error_page(response: requests.Response, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers.get("Cache-Control") == "no-store"


def cookie_cleared(response: requests.Response) -> bool:
    header = response.headers.get("Set-Cookie", "")
    return f"{LOGIN_COOKIE}=;" in header and "Expires=Thu, 01 Jan 1970" in header


# --- logging out with a hint for this session ---------------------------------------------------

def test_hint_for_this_session_logs_out_and_redirects_with_state(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
        get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    issued = tokens_for(live, b, rp, get_code)
    response = b.request("GET", logout_url(live, id_token_hint=issued["id_token"],
                                           post_logout_redirect_uri=AFTER, state="s-1"))
    assert response.status_code == 303
    assert response.headers["Location"] == f"{AFTER}?state=s-1"
    assert response.headers["Cache-Control"] == "no-store"
    assert cookie_cleared(response)
    assert session_ended(live, b)
    # Everything issued under the session ends with it.
    assert introspect(live, rp, issued["access_token"])["active"] is False
    assert introspect(live, rp, issued["refresh_token"])["active"] is False
    refreshed = post(live, "/token", rp, {"grant_type": "refresh_token",
                                          "refresh_token": issued["refresh_token"]})
    assert refreshed.status_code == 400
    # The browser has to sign in again.
    _, challenge = pkce_pair()
    again = b.request("GET", authorize_url(live, rp, challenge=challenge))
    assert page_kind(again) == "login"


def test_state_is_added_to_a_registered_uri_with_a_query(
        live: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    target = "https://rp.example/bye?lang=en"
    rp = make_client(post_logout_redirect_uris=[target])
    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    response = b.request("GET", logout_url(live, id_token_hint=hint,
                                           post_logout_redirect_uri=target, state="a b&c"))
    assert response.status_code == 303
    parts = urlsplit(response.headers["Location"])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://rp.example/bye"
    assert parse_qsl(parts.query) == [("lang", "en"), ("state", "a b&c")]


def test_hint_without_redirect_uri_shows_the_signed_out_page(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
        get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    response = b.request("GET", logout_url(live, id_token_hint=hint, state="ignored"))
    assert response.status_code == 200
    assert "You are signed out" in response.text
    assert "ignored" not in response.text
    assert cookie_cleared(response)
    assert session_ended(live, b)


def test_expired_hint_is_still_accepted(live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
                                        get_code: Callable[..., CodeResult]) -> None:
    from idp.keys import jws

    _, b = signed_in()
    claims = pyjwt.decode(tokens_for(live, b, rp, get_code)["id_token"],
                          options={"verify_signature": False})
    claims.update(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    expired = jws.sign(claims, alg=rp.id_token_alg)
    response = b.request("GET", logout_url(live, id_token_hint=expired,
                                           post_logout_redirect_uri=AFTER))
    assert response.status_code == 303
    assert response.headers["Location"] == AFTER
    assert session_ended(live, b)


def test_logout_is_audited(live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
                           get_code: Callable[..., CodeResult]) -> None:
    from sqlalchemy import select

    from idp.audit.models import AuditEvent
    from idp.extensions import db

    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    b.request("GET", logout_url(live, id_token_hint=hint))
    db.session.rollback()
    events = {e.tag: e for e in db.session.scalars(
        select(AuditEvent).where(AuditEvent.subject == f"sid:{b.sid}")).all()}
    assert events["oauth:logout:rp_initiated"].details == {"client_id": rp.client_id,
                                                           "confirmed": False}
    assert events["authn:session:end"].details == {"reason": "logout"}
    assert hint not in str([e.details for e in events.values()])


def test_post_form_is_accepted(live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
                               get_code: Callable[..., CodeResult]) -> None:
    """§2: the RP may POST the parameters as a form; the decision is made on the GET that
    follows (a cross-site POST carries no SameSite=Lax cookie)."""
    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    posted = b.request("POST", live.url("/logout"), data={
        "id_token_hint": hint, "post_logout_redirect_uri": AFTER, "state": "p"})
    assert posted.status_code == 303
    assert posted.headers["Location"].endswith("/logout/continue")
    assert not session_ended(live, b)
    final = b.request("GET", live.url("/logout/continue"))
    assert final.status_code == 303
    assert final.headers["Location"] == f"{AFTER}?state=p"
    assert session_ended(live, b)


# --- the confirmation page ---------------------------------------------------------------------

def test_no_hint_asks_first_then_logs_out_with_303(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP) -> None:
    _, b = signed_in()
    page = b.request("GET", logout_url(live, client_id=rp.client_id,
                                       post_logout_redirect_uri=AFTER, state="c"))
    assert page.status_code == 200
    assert "Sign out of Corp ID?" in page.text
    assert "Tax e-service" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert not session_ended(live, b)
    form = parse_forms(page.text)[0]
    assert form.method == "post"
    assert form.value("csrf_token")
    done = b.submit(page, decision="logout")
    assert done.status_code == 303
    assert done.headers["Location"] == f"{AFTER}?state=c"
    assert cookie_cleared(done)
    assert session_ended(live, b)


def test_confirmation_without_client_ends_on_the_signed_out_page(
        live: Live, ctx: Live, signed_in: SignedIn) -> None:
    _, b = signed_in()
    page = b.request("GET", logout_url(live))
    assert page.status_code == 200
    done = b.submit(page, decision="logout")
    assert done.status_code == 303
    shown = b.follow(done)
    assert shown.status_code == 200
    assert "You are signed out" in shown.text
    assert session_ended(live, b)


def test_confirmation_page_speaks_chinese(live: Live, signed_in: SignedIn, rp: RP) -> None:
    _, b = signed_in()
    page = b.request("GET", logout_url(live, client_id=rp.client_id, ui_locales="zh-HK en"))
    assert page.status_code == 200
    assert "要登出 Corp ID 嗎？" in page.text  # noqa: RUF001 - Chinese punctuation
    assert 'lang="zh-Hant-HK"' in page.text


def test_signed_out_page_keeps_the_requested_language(live: Live, ctx: Live,
                                                     signed_in: SignedIn) -> None:
    _, b = signed_in()
    page = b.request("GET", logout_url(live, ui_locales="zh-Hant-HK"))
    shown = b.follow(b.submit(page, decision="logout"))
    assert shown.status_code == 200
    assert "您已登出" in shown.text
    assert session_ended(live, b)


def test_stay_signed_in(live: Live, ctx: Live, signed_in: SignedIn, rp: RP) -> None:
    _, b = signed_in()
    page = b.request("GET", logout_url(live, client_id=rp.client_id,
                                       post_logout_redirect_uri=AFTER, state="k"))
    kept = b.submit(page, decision="stay")
    assert kept.status_code == 303
    assert kept.headers["Location"] == f"{AFTER}?state=k"
    assert not session_ended(live, b)


def test_hint_of_another_session_asks_first(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
        get_code: Callable[..., CodeResult]) -> None:
    who, b = signed_in()
    old_hint = tokens_for(live, b, rp, get_code)["id_token"]
    old_session = b.session_id
    b.sign_in(who)  # a new session in the same browser
    assert b.session_id != old_session
    page = b.request("GET", logout_url(live, id_token_hint=old_hint,
                                       post_logout_redirect_uri=AFTER))
    assert page.status_code == 200
    assert "Sign out of Corp ID?" in page.text
    assert not session_ended(live, b)


def test_logout_hint_of_someone_else_asks_first(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
        get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    page = b.request("GET", logout_url(live, id_token_hint=hint,
                                       logout_hint="someone.else@acme.example"))
    assert page.status_code == 200
    assert "Sign out of Corp ID?" in page.text
    assert not session_ended(live, b)
    same = b.request("GET", logout_url(live, id_token_hint=hint,
                                       logout_hint="TAI.MAN@acme.example"))
    assert same.status_code == 200
    assert "You are signed out" in same.text


def test_confirmation_post_without_csrf_token_is_refused(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP) -> None:
    _, b = signed_in()
    page = b.request("GET", logout_url(live, client_id=rp.client_id))
    form = parse_forms(page.text)[0]
    fields = [(k, v) for k, v in form.fields if k != "csrf_token"]
    refused = b.request("POST", live.url("/logout/confirm"), data=[*fields, ("decision", "logout")])
    assert_error_page(refused)
    assert not session_ended(live, b)
    forged = b.request("POST", live.url("/logout/confirm"),
                       data={"csrf_token": "forged", "decision": "logout"})
    assert_error_page(forged)
    assert not session_ended(live, b)


# --- no session ---------------------------------------------------------------------------------

def test_logout_without_session_still_redirects_a_known_rp(
        live: Live, browser: Callable[[], Browser], rp: RP) -> None:
    b = browser()
    response = b.request("GET", logout_url(live, client_id=rp.client_id,
                                           post_logout_redirect_uri=AFTER, state="n"))
    assert response.status_code == 303
    assert response.headers["Location"] == f"{AFTER}?state=n"
    plain = b.request("GET", logout_url(live))
    assert plain.status_code == 200
    assert "You are signed out" in plain.text


def test_logging_out_twice_is_fine(live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
                                   get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    url = logout_url(live, id_token_hint=hint, post_logout_redirect_uri=AFTER, state="t")
    first = b.request("GET", url)
    second = b.request("GET", url)
    assert first.status_code == second.status_code == 303
    assert second.headers["Location"] == f"{AFTER}?state=t"


# --- refusals: an error page, never a redirect --------------------------------------------------

def test_unregistered_redirect_uri_is_never_redirected_to(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
        get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    for uri in ("https://evil.example/", AFTER + "/", AFTER + "?x=1", AFTER.upper(),
                "https://rp.example/cb"):
        response = b.request("GET", logout_url(live, id_token_hint=hint,
                                               post_logout_redirect_uri=uri, state="x"))
        assert_error_page(response)
        assert "evil.example" not in response.text
    assert not session_ended(live, b)


def test_redirect_uri_without_client_is_refused(live: Live, ctx: Live, signed_in: SignedIn,
                                                rp: RP) -> None:
    _, b = signed_in()
    response = b.request("GET", logout_url(live, post_logout_redirect_uri=AFTER))
    assert_error_page(response)
    assert not session_ended(live, b)


def test_redirect_uri_of_another_client_is_refused(
        live: Live, signed_in: SignedIn, rp: RP, make_client: Callable[..., RP]) -> None:
    other = make_client(post_logout_redirect_uris=["https://other.example/bye"])
    _, b = signed_in()
    response = b.request("GET", logout_url(live, client_id=rp.client_id,
                                           post_logout_redirect_uri="https://other.example/bye"))
    assert_error_page(response)
    assert other.client_id


def test_hint_of_another_client_than_client_id_is_refused(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    other = make_client(post_logout_redirect_uris=["https://other.example/bye"])
    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    response = b.request("GET", logout_url(live, id_token_hint=hint, client_id=other.client_id,
                                           post_logout_redirect_uri="https://other.example/bye"))
    assert_error_page(response)
    assert not session_ended(live, b)


def test_unknown_or_disabled_client_is_refused(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
        get_code: Callable[..., CodeResult]) -> None:
    from idp.clients.services import disable_client

    _, b = signed_in()
    hint = tokens_for(live, b, rp, get_code)["id_token"]
    assert_error_page(b.request("GET", logout_url(live, client_id="no-such-client")))
    disable_client(rp.client_id, actor="tests")
    assert_error_page(b.request("GET", logout_url(live, id_token_hint=hint,
                                                  post_logout_redirect_uri=AFTER)))
    assert not session_ended(live, b)


def test_access_token_as_hint_is_refused(live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
                                         get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    access_token = tokens_for(live, b, rp, get_code)["access_token"]
    response = b.request("GET", logout_url(live, id_token_hint=access_token,
                                           post_logout_redirect_uri=AFTER))
    assert_error_page(response)
    assert not session_ended(live, b)


def _foreign_token(live: Live, rp: RP, kid: str, sid: str | None) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    return pyjwt.encode({"iss": live.issuer, "aud": rp.client_id, "sub": "x", "iat": now,
                         "exp": now + 600, "sid": sid}, key, algorithm="RS256",
                        headers={"kid": kid})


@pytest.mark.parametrize("hint", ["garbage", "a.b.c", "a.b", "e30.e30.e30",
                                  "eyJhbGciOiJub25lIn0.e30.", "alg-none-ours", "foreign-key",
                                  "tampered", "huge", "bad-utf8", "wrong-issuer"])
def test_forged_or_garbage_hint_gives_an_error_page(
        live: Live, ctx: Live, signed_in: SignedIn, rp: RP,
        get_code: Callable[..., CodeResult], hint: str) -> None:
    _, b = signed_in()
    real = tokens_for(live, b, rp, get_code)["id_token"]
    header, body, signature = real.split(".")
    claims = pyjwt.decode(real, options={"verify_signature": False})
    if hint == "alg-none-ours":
        hint = b64json({"alg": "none", "typ": "JWT"}) + "." + body + "."
    elif hint == "foreign-key":
        hint = _foreign_token(live, rp, pyjwt.get_unverified_header(real)["kid"], b.sid)
    elif hint == "tampered":
        hint = header + "." + b64json({**claims, "sub": "someone-else"}) + "." + signature
    elif hint == "huge":
        hint = header + "." + "A" * 20_000 + "." + signature
    elif hint == "bad-utf8":
        hint = header + "." + b64json(b"\xff\xfe\xfa") + "." + signature
    elif hint == "wrong-issuer":
        from idp.keys import jws

        hint = jws.sign({**claims, "iss": "https://elsewhere.example"}, alg=rp.id_token_alg)
    response = b.request("GET", logout_url(live, id_token_hint=hint,
                                           post_logout_redirect_uri=AFTER))
    assert 400 <= response.status_code < 500
    assert "Location" not in response.headers
    assert not session_ended(live, b)
    posted = b.request("POST", live.url("/logout"), data={"id_token_hint": hint})
    assert 400 <= posted.status_code < 500


def test_repeated_or_nul_parameters_are_refused(live: Live, signed_in: SignedIn, rp: RP) -> None:
    _, b = signed_in()
    repeated = live.url("/logout") + "?" + urlencode(
        [("client_id", rp.client_id), ("post_logout_redirect_uri", AFTER),
         ("post_logout_redirect_uri", AFTER)])
    assert_error_page(b.request("GET", repeated))
    assert_error_page(b.request("GET", logout_url(live, client_id=rp.client_id,
                                                  state="a\x00b")))
    assert_error_page(b.request("GET", logout_url(live, client_id=rp.client_id,
                                                  state="s" * 5000)))
    json_post = b.request("POST", live.url("/logout"), json={"client_id": rp.client_id})
    assert_error_page(json_post)


def test_logout_endpoint_answers_as_discovery_says(live: Live) -> None:
    doc = live.discovery()
    assert doc["end_session_endpoint"] == live.url("/logout")
    response = requests.get(doc["end_session_endpoint"], allow_redirects=False, timeout=10)
    assert response.status_code == 200
    assert page_kind(response) == "page"
