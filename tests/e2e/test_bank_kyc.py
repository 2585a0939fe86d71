"""The demo bank's KYC journey in a real browser, against the real provider: a company admin
(signed in by the fixtures, as in test_demo_rp.py) starts at /demo-bank, Corp ID's consent page
names the bank, the company, the categories in plain words, the purpose and the expiry; Allow
brings the company's registered data back to the bank with its provenance, the granted details
and the verified consent receipt; Deny ends on a readable "not shared" page; a second run asks
again only when something new is requested."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from idp.demo import DEMO_BANK_CLIENT_NAME
from idp.demo_bank.services import PURPOSE
from tests.e2e.conftest import Live, Tab
from tests.e2e.test_demo_rp import signed_in_admin

BANK_PATH = "/demo-bank/"


@pytest.fixture
def fapi_provider(live: Live) -> None:
    """The journey needs the provider's side of issue 5; on a branch without PAR it is skipped
    (saying so) rather than failed."""
    if not any(rule.rule == "/par" for rule in live.app.url_map.iter_rules()):
        pytest.skip("this provider has no PAR endpoint (/par) yet")


def bank_url(live: Live) -> str:
    assert live.seed is not None
    return live.seed.demo_bank_url


def start(tab: Tab, live: Live, *, leave_out: tuple[str, ...] = ()) -> None:
    """Open the bank, untick ``leave_out`` and press Verify with Corp ID."""
    page = tab.page
    page.goto(bank_url(live))
    expect(
        page.get_by_role("heading", name="Open a business account — verify your company with")
    ).to_be_visible()
    for label in leave_out:
        page.get_by_label(label).uncheck()
    page.get_by_role("button", name="Verify with Corp ID").click()


def json_of(tab: Tab, element_id: str) -> Any:
    return json.loads(tab.page.locator(f"#{element_id}").text_content() or "")


@pytest.mark.usefixtures("fapi_provider")
def test_admin_shares_company_data_with_the_bank(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    signed_in_admin(live, tab)
    page = tab.page
    with page.expect_request(re.compile(r"/authorize\?")) as info:
        start(tab, live)
    # FAPI 2.0: the browser carries only client_id and request_uri (PAR).
    query = info.value.url.split("?", 1)[1]
    assert sorted(p.split("=", 1)[0] for p in query.split("&")) == ["client_id", "request_uri"]

    # Corp ID's consent page: the bank, the company, the categories, the purpose, the expiry.
    expect(page.get_by_role("heading", name=DEMO_BANK_CLIENT_NAME)).to_be_visible()
    main = page.locator("main")
    expect(main).to_contain_text("Demo Trading Limited")
    expect(main).to_contain_text("registered address")
    expect(main).to_contain_text("directors and secretary")
    expect(main).to_contain_text("Business Registration number")
    expect(page.locator("#purpose + ul")).to_contain_text(PURPOSE)
    expect(page.locator("#expires")).to_contain_text("This consent lasts until")
    page.get_by_role("button", name="Allow").click()

    # Back at the bank: the registered data with provenance, details and receipt.
    page.wait_for_url(bank_url(live))
    expect(
        page.get_by_role("heading", name="Your company is verified with Corp ID")
    ).to_be_visible()
    expect(page.locator("#verified-company")).to_contain_text("Demo Trading Limited")
    expect(page.locator("#verified-company")).to_contain_text("12345678")
    for category in ("corp_profile", "corp_address", "corp_officers"):
        section = page.locator(f"#data-{category}")
        expect(section).to_be_visible()
        expect(section.locator(".source")).not_to_have_text("not stated")
        expect(section.locator(".as-of")).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2}$"))
        expect(section.locator(".trust-framework")).not_to_be_empty()
    expect(page.locator("#data-corp_officers")).to_contain_text("Director")
    expect(page.locator("#token-type")).to_have_text("DPoP")
    details = json_of(tab, "authorization-details")
    assert [d["type"] for d in details] == ["corp_data"]
    assert set(details[0]["categories"]) == {"corp_profile", "corp_address", "corp_officers"}
    expect(page.locator("#receipt-verified")).to_be_visible()
    receipt = json_of(tab, "receipt-claims")
    assert receipt["iss"] == live.issuer
    expect(page.locator("#receipt-expires")).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2}$"))
    claims = json_of(tab, "id-token-claims")
    assert claims["aud"] == (live.seed.bank_client_id if live.seed else None)


@pytest.mark.usefixtures("fapi_provider")
def test_deny_ends_on_a_not_shared_page(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    signed_in_admin(live, tab)
    page = tab.page
    start(tab, live)
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_role("heading", name="Your company data was not shared")).to_be_visible()
    expect(page.locator("#bank-error")).to_have_attribute("data-kind", "denied")
    page.get_by_role("link", name="Start again").click()
    expect(page.get_by_role("button", name="Verify with Corp ID")).to_be_visible()


@pytest.mark.usefixtures("fapi_provider")
def test_a_second_run_asks_again_only_for_something_new(
    live: Live, new_tab: Callable[..., Tab]
) -> None:
    tab = new_tab()
    signed_in_admin(live, tab)
    page = tab.page
    start(tab, live, leave_out=("Directors and company secretary",))
    expect(page.locator("main")).not_to_contain_text("directors and secretary")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(bank_url(live))
    expect(page.locator("#data-corp_profile")).to_be_visible()
    expect(page.locator("#data-corp_officers")).to_have_count(0)

    # The same again: no consent page, straight back with the data.
    page.get_by_role("button", name="Start again").click()
    pages: list[tuple[str, int]] = []
    page.on("response", lambda r: pages.append((r.url, r.status)))
    start(tab, live, leave_out=("Directors and company secretary",))
    page.wait_for_url(bank_url(live))
    expect(page.locator("#data-corp_address")).to_be_visible()
    authorize = [status for url, status in pages if "/authorize?" in url]
    assert authorize, pages
    assert all(300 <= status < 400 for status in authorize), pages  # no consent page shown
    assert not page.get_by_role("button", name="Allow").count()

    # Something new (the officers): Corp ID asks again.
    page.get_by_role("button", name="Start again").click()
    start(tab, live)
    expect(page.get_by_role("button", name="Allow")).to_be_visible()
    expect(page.locator("main")).to_contain_text("directors and secretary")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(bank_url(live))
    expect(page.locator("#data-corp_officers")).to_be_visible()


def test_the_bank_in_traditional_chinese(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab(locale="zh-HK")
    tab.page.goto(bank_url(live))
    expect(tab.page.get_by_role("button", name="以 Corp ID 核實")).to_be_visible()
    expect(tab.page.get_by_label("董事及公司秘書")).to_be_checked()
    assert tab.page.locator("html").get_attribute("lang") == "zh-Hant-HK"


def test_a_forged_callback_is_refused(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    tab.allow_console_error("status of 400")
    page = tab.page
    page.goto(bank_url(live))
    page.goto(live.url(f"{BANK_PATH}callback?code=forged&state=forged&iss={live.issuer}"))
    expect(
        page.get_by_role("heading", name="This verification was not started here")
    ).to_be_visible()


@pytest.mark.usefixtures("fapi_provider")
def test_a_revoked_consent_is_asked_for_again(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    signed_in_admin(live, tab)
    page = tab.page
    start(tab, live, leave_out=("Registered office address", "Directors and company secretary"))
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(bank_url(live))
    expect(page.locator("#data-corp_profile")).to_be_visible()

    # The company's admin withdraws the consent on Corp ID.
    page.goto(live.url("/company/12345678/consents"))
    row = page.get_by_role("row").filter(has_text=DEMO_BANK_CLIENT_NAME)
    expect(row).to_contain_text("Live")
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("row").filter(has_text=DEMO_BANK_CLIENT_NAME)).to_contain_text(
        "Revoked"
    )

    # The bank asks again: Corp ID shows the consent page once more.
    page.goto(bank_url(live))
    page.get_by_role("button", name="Start again").click()
    start(tab, live, leave_out=("Registered office address", "Directors and company secretary"))
    expect(page.get_by_role("button", name="Allow")).to_be_visible()


@pytest.mark.usefixtures("fapi_provider")
def test_the_journey_in_traditional_chinese(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab(locale="zh-HK")
    signed_in_admin(live, tab)
    page = tab.page
    page.goto(bank_url(live))
    page.get_by_role("button", name="以 Corp ID 核實").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hant-HK")
    expect(page.locator("main")).to_contain_text("公司的董事及秘書")
    page.get_by_role("button", name="允許").click()
    page.wait_for_url(bank_url(live))
    expect(page.get_by_role("heading", name="您的公司已透過 Corp ID 核實")).to_be_visible()
    expect(page.locator("#data-corp_officers")).to_contain_text("公司秘書")
