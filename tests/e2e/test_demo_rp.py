"""The demo relying party in a real browser, with a sign-in session made by the fixtures (the
hardware-key journeys are in test_journeys.py): discovery, PKCE, state, nonce, the ID token
verified against the JWKS, consent once, then silent logins."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from idp.authn.services import start_session
from idp.demo import DEMO_ADMIN_EMAIL
from idp.extensions import db
from idp.orgs import services as orgs
from idp.orgs.models import Person
from tests.e2e.conftest import Live, Tab, wait_for_sign_in


def signed_in_admin(live: Live, tab: Tab) -> str:
    """Make the demo company's admin (through its invitation) and sign them in in ``tab``'s
    browser, as the hardware-key login would. Returns the person's subject."""
    with live.app.app_context():
        invitation = orgs.find_valid_invitation(live.invite_url.rsplit("/", 1)[1])
        person = Person(display_name="Chan Tai Man", email=DEMO_ADMIN_EMAIL)
        db.session.add(person)
        orgs.consume_invitation(invitation, person)
        _, secret = start_session(
            person=person, security_key_id=None, acr="phrh", amr=["hwk", "user", "pin"]
        )
        subject = person.subject
        db.session.remove()
    tab.page.context.add_cookies([{"name": "corpid_session", "value": secret, "url": live.issuer}])
    return subject


def claims_on(tab: Tab, element_id: str) -> dict[str, Any]:
    text = tab.page.locator(f"#{element_id}").inner_text()
    data: dict[str, Any] = json.loads(text)
    return data


def test_home_offers_login_with_corp_id(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    response = tab.page.goto(live.demo_rp_url)
    assert response is not None
    assert response.status == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    expect(tab.page.get_by_role("link", name="Login with Corp ID")).to_be_visible()


def test_home_in_traditional_chinese(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab(locale="zh-HK")
    tab.page.goto(live.demo_rp_url)
    expect(tab.page.get_by_role("link", name="以 Corp ID 登入")).to_be_visible()
    assert tab.page.locator("html").get_attribute("lang") == "zh-Hant-HK"


def test_login_button_starts_a_code_flow_with_pkce_state_and_nonce(
    live: Live, new_tab: Callable[..., Tab]
) -> None:
    tab = new_tab()
    tab.page.goto(live.demo_rp_url)
    with tab.page.expect_request(re.compile(r"/authorize\?")) as info:
        tab.page.get_by_role("link", name="Login with Corp ID").click()
    url = info.value.url
    assert url.startswith(live.url("/authorize?"))
    for part in (
        "response_type=code",
        f"client_id={live.seed.client_id}" if live.seed else "client_id=",
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "scope=openid+profile+email+corp",
    ):
        assert part in url, (part, url)
    # No session yet: Corp ID asks for the security key.
    wait_for_sign_in(tab.page)


def test_signed_in_person_consents_once_then_logs_in_silently(
    live: Live, new_tab: Callable[..., Tab]
) -> None:
    tab = new_tab()
    subject = signed_in_admin(live, tab)
    page = tab.page
    page.goto(live.demo_rp_url)
    page.get_by_role("link", name="Login with Corp ID").click()
    page.wait_for_url(re.compile(r"/authorize"))
    expect(page.get_by_text("Demo Trading Limited").first).to_be_visible()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(live.demo_rp_url)
    claims = claims_on(tab, "id-token-claims")
    assert claims["sub"] == subject
    assert claims["iss"] == live.issuer
    assert claims["aud"] == live.seed.client_id if live.seed else False
    assert claims["acr"] == "phrh"
    assert claims["amr"] == ["hwk", "user", "pin"]
    assert claims["corp"] == {
        "br_number": "12345678",
        "name": "Demo Trading Limited",
        "roles": ["admin"],
    }
    userinfo = claims_on(tab, "userinfo")
    assert userinfo["sub"] == subject
    assert userinfo["corp"]["br_number"] == "12345678"
    expect(page.locator("#signed-in")).to_contain_text("Demo Trading Limited")

    # Returning: the relying party forgets its login; Corp ID asks nothing.
    page.context.clear_cookies(name="corpid_demo_rp")
    page.goto(live.demo_rp_url)
    seen: list[str] = []
    page.on("framenavigated", lambda frame: seen.append(frame.url))
    page.get_by_role("link", name="Login with Corp ID").click()
    page.wait_for_url(live.demo_rp_url)
    expect(page.locator("#id-token-claims")).to_be_visible()
    assert not [u for u in seen if "/authorize" in u], seen  # no consent page shown


def test_declined_consent_is_shown_by_the_relying_party(
    live: Live, new_tab: Callable[..., Tab]
) -> None:
    tab = new_tab()
    signed_in_admin(live, tab)
    tab.allow_console_error("status of 400")
    page = tab.page
    page.goto(live.demo_rp_url)
    page.get_by_role("link", name="Login with Corp ID").click()
    page.get_by_role("button", name="Deny").click()
    expect(page.locator("#rp-error")).to_contain_text("access_denied")
    expect(page.get_by_role("link", name="Login with Corp ID")).to_be_visible()


def test_a_forged_callback_is_refused(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    tab.allow_console_error("status of 400")
    page = tab.page
    page.goto(live.demo_rp_url)
    page.goto(live.url(f"/demo-rp/callback?code=forged&state=forged&iss={live.issuer}"))
    expect(page.locator("#rp-error")).to_contain_text("not started here")


def test_rp_initiated_logout_ends_the_corp_id_session(
    live: Live, new_tab: Callable[..., Tab]
) -> None:
    tab = new_tab()
    signed_in_admin(live, tab)
    page = tab.page
    page.goto(live.demo_rp_url)
    page.get_by_role("link", name="Login with Corp ID").click()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(live.demo_rp_url)

    with page.expect_request(re.compile(r"/logout\?")) as info:
        page.get_by_role("button", name="Log out").click()
    assert "id_token_hint=" in info.value.url
    # The hint names the session: no confirmation, straight back to the relying party.
    page.wait_for_url(re.compile(re.escape(live.demo_rp_url) + r"\?state="))
    expect(page.locator("#signed-out")).to_be_visible()

    # Corp ID's session is over: logging in again needs the key.
    page.get_by_role("link", name="Login with Corp ID").click()
    wait_for_sign_in(page)
