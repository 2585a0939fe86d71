"""The pages people see: security headers, CSRF on every form POST, 303 after POST, the
consent transaction bound to its browser and acting only on server-side state, inert
client-supplied text."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import requests

from tests.functional.conftest import (
    RP,
    Browser,
    Live,
    PersonInfo,
    authorize_url,
    callback,
    page_kind,
    parse_forms,
    pkce_pair,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]


def assert_page_headers(response: requests.Response) -> None:
    csp = response.headers["Content-Security-Policy"]
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";") if d.strip()}
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"
    assert "'unsafe-inline'" not in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture
def consent_page(live: Live, signed_in: SignedIn, make_client: Callable[..., RP]
                 ) -> tuple[Browser, RP, requests.Response]:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge))
    assert page_kind(page) == "consent"
    return b, rp, page


def test_every_page_carries_the_security_headers(live: Live, signed_in: SignedIn,
                                                 browser: Callable[[], Browser],
                                                 make_client: Callable[..., RP]) -> None:
    _, b = signed_in(companies=[{"name_en": "A Ltd"}, {"name_en": "B Ltd"}])
    rp = make_client()
    _, challenge = pkce_pair()
    company = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge))
    assert page_kind(company) == "company"
    consent = b.follow(b.submit(company))
    assert page_kind(consent) == "consent"
    form_post = b.follow(b.submit(consent, decision="allow"))
    assert form_post.status_code == 303  # query mode; now a form_post one:
    form_post = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge,
                                   response_mode="form_post"))
    if page_kind(form_post) == "company":
        form_post = b.follow(b.submit(form_post))
    assert page_kind(form_post) == "form_post"
    error = requests.get(live.url("/authorize?client_id=nope"), timeout=10)
    login = browser().go(authorize_url(live, rp, challenge=challenge))
    assert page_kind(login) == "login"
    for page in (company, consent, form_post, error, login):
        assert "text/html" in page.headers["Content-Type"]
        assert_page_headers(page)
    for page in (company, consent, form_post, error, login):
        assert "no-store" in page.headers["Cache-Control"], page.url


def test_form_post_page_script_runs_under_the_csp(live: Live, signed_in: SignedIn,
                                                  make_client: Callable[..., RP]) -> None:
    """The auto-submit script carries the nonce the CSP allows, and the CSP lets the form
    post to the client."""
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.run(authorize_url(live, rp, challenge=challenge, response_mode="form_post"))
    assert page_kind(page) == "form_post"
    csp = page.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce is not None
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts
    assert all(f'nonce="{nonce.group(1)}"' in s for s in scripts)
    form_action = next(d for d in csp.split(";") if d.strip().startswith("form-action"))
    assert "https:" in form_action or "https://rp.example" in form_action
    cb = callback(page)
    assert cb.target == rp.redirect_uri
    assert set(cb.params) == {"code", "state", "iss"}


def test_cookies_are_httponly_and_samesite(live: Live, signed_in: SignedIn,
                                           make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    response = b.request("GET", authorize_url(live, rp, scope="openid corp",
                                              challenge=challenge))
    cookies = response.raw.headers.getlist("Set-Cookie")
    assert cookies
    for cookie in cookies:
        attributes = cookie.lower()
        assert "httponly" in attributes
        assert "samesite=lax" in attributes or "samesite=strict" in attributes


# --- CSRF and the 303 after POST --------------------------------------------------------------

@pytest.mark.parametrize("csrf", ["missing", "wrong", "empty"])
def test_consent_post_without_a_valid_csrf_token_is_400(live: Live, consent_page: tuple[
        Browser, RP, requests.Response], csrf: str) -> None:
    b, _, page = consent_page
    form = parse_forms(page.text)[0]
    data = dict(form.fields)
    data["decision"] = "allow"
    if csrf == "missing":
        del data["csrf_token"]
    else:
        data["csrf_token"] = "" if csrf == "empty" else data["csrf_token"][:-4] + "AAAA"
    response = b.request("POST", live.url("/authorize/consent"), data=data)
    assert response.status_code == 400
    assert "Location" not in response.headers
    # The transaction is untouched: the real form still works.
    assert "code" in callback(b.follow(b.submit(page, decision="allow"))).params


def test_company_post_without_csrf_token_is_400(live: Live, signed_in: SignedIn,
                                                make_client: Callable[..., RP]) -> None:
    _, b = signed_in(companies=[{"name_en": "A Ltd"}, {"name_en": "B Ltd"}])
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, challenge=challenge))
    data = dict(parse_forms(page.text)[0].fields)
    del data["csrf_token"]
    response = b.request("POST", live.url("/authorize/company"), data=data)
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_consent_and_company_posts_answer_303(live: Live, signed_in: SignedIn,
                                              make_client: Callable[..., RP]) -> None:
    _, b = signed_in(companies=[{"name_en": "A Ltd"}, {"name_en": "B Ltd"}])
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge))
    company_answer = b.submit(page)
    assert company_answer.status_code == 303
    assert company_answer.headers["Location"].startswith(("/authorize/continue",
                                                          live.url("/authorize/continue")))
    consent = b.follow(company_answer)
    consent_answer = b.submit(consent, decision="allow")
    assert consent_answer.status_code == 303


def test_consent_pages_are_not_reached_by_get(live: Live,
                                              consent_page: tuple[Browser, RP, requests.Response]
                                              ) -> None:
    b, _, _ = consent_page
    for path in ("/authorize/consent", "/authorize/company"):
        assert b.request("GET", live.url(path)).status_code == 405


# --- the transaction belongs to its browser and to the server ---------------------------------

def test_consent_post_with_another_browsers_handle_is_refused(
        live: Live, consent_page: tuple[Browser, RP, requests.Response],
        signed_in: SignedIn) -> None:
    victim, rp, page = consent_page
    handle = parse_forms(page.text)[0].value("h")
    assert handle
    # The attacker is signed in too and has a CSRF token of their own.
    _, attacker = signed_in(name="Attacker")
    _, challenge = pkce_pair()
    own = attacker.go(authorize_url(live, rp, scope="openid corp", challenge=challenge))
    assert page_kind(own) == "consent"
    response = attacker.submit(own, h=handle, decision="allow")
    assert response.status_code in (400, 403)
    assert "Location" not in response.headers
    # The victim's transaction is still the victim's, and still pending.
    assert "code" in callback(victim.follow(victim.submit(page, decision="allow"))).params


def test_consent_post_ignores_parameters_sent_back(live: Live,
                                                   consent_page: tuple[Browser, RP,
                                                                       requests.Response]
                                                   ) -> None:
    """Only the server-side transaction counts: no redirect_uri, scope or client_id from
    the POST."""
    b, rp, page = consent_page
    response = b.follow(b.submit(page, decision="allow", redirect_uri="https://evil.example/cb",
                                 scope="openid corp email profile", client_id="other",
                                 state="forged", response_mode="form_post"))
    cb = callback(response)
    assert cb.mode == "query"
    assert cb.target == rp.redirect_uri
    assert cb.params["state"] == "st-123"


def test_completed_transaction_cannot_be_replayed(live: Live,
                                                  consent_page: tuple[Browser, RP,
                                                                      requests.Response]
                                                  ) -> None:
    b, _, page = consent_page
    first = b.follow(b.submit(page, decision="allow"))
    assert "code" in callback(first).params
    again = b.submit(page, decision="allow")
    assert again.status_code == 400
    assert "Location" not in again.headers
    handle = parse_forms(page.text)[0].value("h")
    continued = b.request("GET", live.url(f"/authorize/continue?h={handle}"))
    assert continued.status_code == 400
    assert "Location" not in continued.headers


def test_expired_transaction_is_refused(live: Live,
                                       consent_page: tuple[Browser, RP, requests.Response]
                                       ) -> None:
    """A pending authorization past its lifetime is refused, wherever it is kept (the
    database, or Redis when configured)."""
    import datetime as dt

    from idp.db import utcnow
    from idp.extensions import db
    from idp.oauth import authorize as flow
    from idp.security import digest

    b, _, page = consent_page
    handle = parse_forms(page.text)[0].value("h")
    assert handle is not None
    pending = flow.find_pending(handle)
    assert pending.handle_hash == digest(handle)  # only the digest is kept
    pending.expires_at = utcnow() - dt.timedelta(seconds=1)
    flow.save(pending)
    db.session.commit()
    refused = b.submit(page, decision="allow")
    assert refused.status_code == 400
    assert "expired" in refused.text
    assert "Location" not in refused.headers


def test_client_supplied_name_is_rendered_inert(live: Live, signed_in: SignedIn,
                                                make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    name = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    rp = make_client(name=name)
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge))
    assert page_kind(page) == "consent"
    assert "<script>alert(1)" not in page.text
    assert "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
