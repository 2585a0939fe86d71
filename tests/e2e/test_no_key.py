"""A browser with no security key at all: the ceremony ends at its timeout (a short
``WEBAUTHN_TIMEOUT_MS`` here; Chromium waits at least 10 s whatever is asked) and the page says
clearly what to do and offers "Try again", instead of leaving the person waiting; plugging a
key in and trying again then works."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import AUTHENTICATOR, Live, Tab, wait_for_sign_in
from tests.e2e.test_journeys import enrol, key_of, start_demo_login

TIMED_OUT = "No security key answered in time"
TIMED_OUT_ZH = "未能及時使用保安鑰匙"
# Chromium stretches any shorter timeout to 10 s; leave room on two busy cores.
WAIT_MS = 45_000


@pytest.fixture
def short_timeout(live: Live) -> Iterator[int]:
    config: dict[str, Any] = live.app.config["IDP"]
    before = config["WEBAUTHN_TIMEOUT_MS"]
    config["WEBAUTHN_TIMEOUT_MS"] = 1_000
    yield 1_000
    config["WEBAUTHN_TIMEOUT_MS"] = before


def plug_in_key(tab: Tab, credential: dict[str, Any]) -> None:
    """Give a browser that had no authenticator one holding ``credential``."""
    tab.cdp.send("WebAuthn.enable")
    result = tab.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    tab.authenticator_id = result["authenticatorId"]
    tab.cdp.send(
        "WebAuthn.addCredential",
        {"authenticatorId": tab.authenticator_id, "credential": credential},
    )


def test_sign_in_without_any_key_times_out_and_says_what_to_do(
    live: Live, new_tab: Callable[..., Tab], short_timeout: int
) -> None:
    enrolment = new_tab()
    enrol(live, enrolment)
    credential = key_of(enrolment)

    tab = new_tab(authenticator=None)
    page = tab.page
    start_demo_login(live, tab)
    wait_for_sign_in(page)
    # The page carries its first options: the first try asks the server nothing more.
    embedded = json.loads(page.locator("#webauthn").get_attribute("data-public-key") or "{}")
    assert embedded["publicKey"]["timeout"] == short_timeout
    page.get_by_role("button", name="Sign in").click()
    status = page.locator("#webauthn-status")
    expect(status).to_contain_text("Insert your security key")
    expect(status).to_contain_text(TIMED_OUT, timeout=WAIT_MS)
    expect(status).to_contain_text("Try again")
    retry = page.get_by_role("button", name="Try again")
    expect(retry).to_be_enabled()

    # The person plugs their key in and tries again: signed in, on to consent.
    plug_in_key(tab, credential)
    # A retry asks for a new challenge (the page's own was used by the first try).
    with page.expect_response(re.compile(r"/login/options")) as info:
        retry.click()
    assert info.value.status == 200
    expect(page.get_by_role("button", name="Allow")).to_be_visible()


def test_enrolment_without_any_key_times_out_in_traditional_chinese(
    live: Live, new_tab: Callable[..., Tab], short_timeout: int
) -> None:
    tab = new_tab(authenticator=None, locale="zh-HK")
    page = tab.page
    page.goto(live.invite_url)
    page.get_by_label("您的姓名").fill("陳大文")
    page.get_by_role("button", name="登記鑰匙").click()
    expect(page.locator("#webauthn-status")).to_contain_text(TIMED_OUT_ZH, timeout=WAIT_MS)
    expect(page.get_by_role("button", name="再試一次")).to_be_enabled()
