"""The hardware-key journeys in headless Chromium with a CDP virtual authenticator:
enrolment through the admin's invitation link, a first login to the demo relying party
(usernameless, company choice, consent), a silent returning login, and a browser without a
usable key that is told so instead of left waiting."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from idp.extensions import db
from idp.orgs import services as orgs
from idp.orgs.models import Person
from tests.e2e.conftest import Live, Tab, wait_for_sign_in

NAME = "Chan Tai Man"
NO_KEY_MESSAGE = "No security key was used"


def enrol(live: Live, tab: Tab, *, name: str = NAME) -> None:
    """(a) Open the admin invitation, name yourself, register the key."""
    page = tab.page
    page.goto(live.invite_url)
    expect(page.get_by_text("Demo Trading Limited").first).to_be_visible()
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Register key").click()
    expect(page.get_by_role("heading", name="Your security key is registered")).to_be_visible()
    expect(page.get_by_text(name).first).to_be_visible()


def key_of(tab: Tab) -> dict[str, Any]:
    [credential] = tab.credentials()
    return credential


def with_key(new_tab: Callable[..., Tab], credential: dict[str, Any], **options: Any) -> Tab:
    """A fresh browser (no cookies) whose authenticator holds ``credential``."""
    tab = new_tab(**options)
    tab.cdp.send(
        "WebAuthn.addCredential",
        {"authenticatorId": tab.authenticator_id, "credential": credential},
    )
    return tab


def start_demo_login(live: Live, tab: Tab) -> None:
    tab.page.goto(live.demo_rp_url)
    tab.page.get_by_role("link", name="Login with Corp ID").click()


def sign_in_with_key(tab: Tab) -> None:
    page = tab.page
    wait_for_sign_in(page)
    page.get_by_role("button", name="Sign in").click()


def claims_page(live: Live, tab: Tab) -> dict[str, Any]:
    tab.page.wait_for_url(live.demo_rp_url)
    claims: dict[str, Any] = json.loads(tab.page.locator("#id-token-claims").inner_text())
    return claims


def add_second_company(live: Live, name: str = NAME) -> None:
    """Make the enrolled person a member of a second company too (so they must choose)."""
    with live.app.app_context():
        person = db.session.scalars(select(Person).where(Person.display_name == name)).one()
        company = orgs.create_company(
            br_number="87654321", name_en="Second Trading Limited", actor="tests"
        )
        invitation, _ = orgs.create_invitation(
            company=company,
            email="second@demo-trading.example",
            roles=["member"],
            invited_by="tests",
        )
        orgs.consume_invitation(invitation, person)
        db.session.remove()


def first_login(
    live: Live, new_tab: Callable[..., Tab], *, choose: bool
) -> tuple[Tab, dict[str, Any]]:
    """Enrol in one browser, then log in to the demo RP from another holding the key:
    usernameless key sign-in, company choice (when ``choose``), consent."""
    enrolment = new_tab()
    enrol(live, enrolment)
    credential = key_of(enrolment)
    assert credential["isResidentCredential"] is True
    if choose:
        add_second_company(live)
    tab = with_key(new_tab, credential)
    start_demo_login(live, tab)
    sign_in_with_key(tab)
    page = tab.page
    if choose:
        expect(
            page.get_by_role("heading", name="Which company are you acting for?")
        ).to_be_visible()
        page.get_by_label(re.compile("Demo Trading Limited")).check()
        page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("button", name="Allow")).to_be_visible()
    expect(page.get_by_text("Demo Trading Limited").first).to_be_visible()
    page.get_by_role("button", name="Allow").click()
    return tab, claims_page(live, tab)


def test_enrol_through_the_admin_invitation(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    enrol(live, tab)
    credential = key_of(tab)
    assert credential["isResidentCredential"] is True
    assert credential["rpId"] == "localhost"
    # The link is single use.
    tab.allow_console_error("status of 404")
    tab.page.goto(live.invite_url)
    expect(tab.page.get_by_role("button", name="Register key")).to_have_count(0)


@pytest.mark.parametrize("choose", [False, True], ids=["one-company", "two-companies"])
def test_first_login_with_the_key_company_choice_and_consent(
    live: Live, new_tab: Callable[..., Tab], choose: bool
) -> None:
    _, claims = first_login(live, new_tab, choose=choose)
    assert claims["iss"] == live.issuer
    assert claims["acr"] == "phrh"
    assert isinstance(claims["amr"], list)
    assert claims["amr"]
    assert claims["name"] == NAME
    assert claims["corp"] == {
        "br_number": "12345678",
        "name": "Demo Trading Limited",
        "roles": ["admin"],
    }


def test_returning_login_is_silent(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab, first = first_login(live, new_tab, choose=False)
    credential = key_of(tab)

    # Same browser, the RP forgot its login: no key, no consent, straight back with claims.
    page = tab.page
    page.context.clear_cookies(name="corpid_demo_rp")
    committed: list[str] = []
    page.on("framenavigated", lambda frame: committed.append(frame.url))
    start_demo_login(live, tab)
    again = claims_page(live, tab)
    assert again["sub"] == first["sub"]
    assert again["corp"]["br_number"] == "12345678"
    assert not [u for u in committed if u.startswith(live.issuer + "/authorize")]
    assert not [u for u in committed if "/login" in u]

    # Another browser with the same key: the key is asked for, consent is not.
    other = with_key(new_tab, credential)
    shown: list[str] = []
    other.page.on("framenavigated", lambda frame: shown.append(frame.url))
    start_demo_login(live, other)
    sign_in_with_key(other)
    third = claims_page(live, other)
    assert third["sub"] == first["sub"]
    # The sign-in page is the authorization endpoint's; no company or consent page follows.
    assert not [u for u in shown if u.startswith(live.issuer + "/authorize/")], shown


@pytest.mark.parametrize(
    "authenticator",
    [{"isUserVerified": False}, {}],
    ids=["user-not-verified", "no-registered-key"],
)
def test_login_without_a_usable_key_says_so(
    live: Live, new_tab: Callable[..., Tab], authenticator: dict[str, Any]
) -> None:
    enrolment = new_tab()
    enrol(live, enrolment)
    if authenticator:
        tab = with_key(new_tab, key_of(enrolment), authenticator=authenticator)
    else:
        tab = new_tab()  # an authenticator that holds no key for Corp ID
    start_demo_login(live, tab)
    sign_in_with_key(tab)
    expect(tab.page.locator("#webauthn-status")).to_contain_text(NO_KEY_MESSAGE)
    expect(tab.page.get_by_role("button", name="Try again")).to_be_enabled()


def test_enrolment_without_user_verification_says_so(
    live: Live, new_tab: Callable[..., Tab]
) -> None:
    tab = new_tab(authenticator={"isUserVerified": False})
    tab.page.goto(live.invite_url)
    tab.page.get_by_label("Your name").fill(NAME)
    tab.page.get_by_role("button", name="Register key").click()
    expect(tab.page.locator("#webauthn-status")).to_contain_text(NO_KEY_MESSAGE)
    assert tab.credentials() == []
