"""The company admin and operator journeys in headless Chromium with a virtual authenticator
per tab: an admin invites and a member enrols; the admin revokes the member's key and the
member's access token turns inactive at introspection; two operators rotate a signing key with
four eyes (the second confirming with a step-up); an operator imports a register CSV and finds
an imported company on the companies page."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from playwright.sync_api import expect
from sqlalchemy import select, update

from idp.admin import services as admin
from idp.admin.models import ApprovalStatus, KeyChangeRequest
from idp.authn.models import LoginSession
from idp.clients.services import create_client
from idp.extensions import db
from idp.keys.models import SigningKey
from idp.orgs.models import Person
from tests.e2e.conftest import Live, Tab

RP_CALLBACK = "https://rp.example/cb"


def enrol_admin(live: Live, tab: Tab) -> None:
    page = tab.page
    page.goto(live.invite_url)
    page.get_by_label("Your name").fill("Chan Tai Man")
    page.get_by_role("button", name="Register key").click()
    expect(page.get_by_role("heading", name="Your security key is registered")).to_be_visible()


def invite_member(live: Live, tab: Tab, email: str) -> str:
    """As the signed-in admin: open the company's members page and invite ``email``."""
    page = tab.page
    page.goto(live.url("/console/"))
    page.get_by_role("link", name="Demo Trading Limited").click()
    expect(page.get_by_role("heading", name=re.compile("Demo Trading Limited"))).to_be_visible()
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Create invitation link").click()
    link = page.locator("#invite-link").inner_text().strip()
    assert "/enrol/cii_" in link
    return link


def enrol_member(tab: Tab, link: str, name: str = "Wong Siu Ming") -> None:
    page = tab.page
    page.goto(link)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Register key").click()
    expect(page.get_by_role("heading", name="Your security key is registered")).to_be_visible()


def test_admin_invites_and_member_enrols(live: Live, new_tab: Callable[..., Tab]) -> None:
    boss = new_tab()
    enrol_admin(live, boss)
    link = invite_member(live, boss, "clerk@demo-trading.example")
    clerk = new_tab()
    enrol_member(clerk, link)
    boss.page.get_by_role("link", name="Back to members").click()
    expect(boss.page.locator("#members")).to_contain_text("Wong Siu Ming")
    # The used link is dead.
    again = new_tab(authenticator=None)
    again.allow_console_error("404")
    again.page.goto(link)
    expect(again.page.get_by_text("not valid").first).to_be_visible()


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_revoking_a_members_key_ends_their_token(live: Live, new_tab: Callable[..., Tab]) -> None:
    with live.app.app_context():
        client, secret = create_client(name="Tax e-service", redirect_uris=[RP_CALLBACK],
                                       auth_method="client_secret_basic", actor="tests")
        client_id = client.client_id
        db.session.remove()
    assert secret is not None
    boss = new_tab()
    enrol_admin(live, boss)
    link = invite_member(live, boss, "clerk@demo-trading.example")
    clerk = new_tab()
    enrol_member(clerk, link)

    # The member signs in to a relying party with the key; the RP's callback is caught here.
    verifier, challenge = _pkce()
    query = urlencode({"response_type": "code", "client_id": client_id,
                       "redirect_uri": RP_CALLBACK, "scope": "openid", "state": "s",
                       "nonce": "n", "code_challenge": challenge,
                       "code_challenge_method": "S256", "prompt": "login"})
    clerk.page.goto(live.url("/authorize?" + query))
    # The RP's host does not resolve: the redirect to it is caught as the browser asks for it.
    with clerk.page.expect_request(re.compile(r"^https://rp\.example/cb")) as caught:
        clerk.page.get_by_role("button", name="Sign in").click()  # scope openid: no consent
    [code] = parse_qs(urlsplit(caught.value.url).query)["code"]
    token = requests.post(live.url("/token"), auth=(client_id, secret), timeout=15, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": RP_CALLBACK,
        "code_verifier": verifier}).json()["access_token"]

    def active() -> bool:
        answer = requests.post(live.url("/introspect"), auth=(client_id, secret), timeout=15,
                               data={"token": token})
        assert answer.status_code == 200
        return bool(answer.json()["active"])

    assert active()
    # The admin opens the member's page and revokes the key (their sign-in is fresh: no step-up).
    page = boss.page
    page.goto(live.url("/console/"))
    page.get_by_role("link", name="Demo Trading Limited").click()
    page.get_by_role("link", name="Wong Siu Ming").click()
    expect(page.locator("#keys")).to_contain_text("Security key")
    page.get_by_role("button", name=re.compile("^Revoke")).click()
    expect(page.locator("#keys")).to_contain_text("revoked")
    assert not active()


def _operator_tab(live: Live, new_tab: Callable[..., Tab], email: str, name: str) -> Tab:
    with live.app.app_context():
        _, token = admin.create_operator_invitation(email=email, created_by="operator:cli")
        link = admin.operator_enrol_url(token)
        db.session.remove()
    tab = new_tab()
    tab.page.goto(link)
    tab.page.get_by_label("Your name").fill(name)
    tab.page.get_by_role("button", name="Register key").click()
    expect(tab.page.get_by_role("heading", name="Operator console")).to_be_visible()
    return tab


def test_two_operators_rotate_a_signing_key(live: Live, new_tab: Callable[..., Tab]) -> None:
    first = _operator_tab(live, new_tab, "ops1@corpid.example", "Operator One")
    second = _operator_tab(live, new_tab, "ops2@corpid.example", "Operator Two")
    with live.app.app_context():
        before = set(db.session.scalars(select(SigningKey.kid)))
        db.session.remove()

    page = first.page
    page.get_by_role("link", name="Signing keys").click()
    page.get_by_label("Algorithm").select_option("ES256")
    page.get_by_role("button", name="Ask to rotate").click()
    row = page.locator("#key-requests tbody tr").first
    expect(row.locator(".status")).to_have_text("pending")
    expect(row.get_by_role("button", name="Approve")).to_have_count(0)  # not one's own

    # The second operator's sign-in is made stale: the approval asks for the key again.
    with live.app.app_context():
        person = db.session.scalars(select(Person).where(
            Person.email == "ops2@corpid.example")).one()
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
        db.session.execute(update(LoginSession).where(LoginSession.person_id == person.id)
                           .values(auth_time=past))
        db.session.commit()
        db.session.remove()
    page = second.page
    page.get_by_role("link", name="Signing keys").click()
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", name="Confirm it is you")).to_be_visible()
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(r"/operator/keys$"))
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#key-requests tbody tr").first.locator(".status")).to_have_text("done")

    with live.app.app_context():
        change = db.session.scalars(select(KeyChangeRequest)).one()
        assert change.status is ApprovalStatus.DONE
        new = set(db.session.scalars(select(SigningKey.kid))) - before
        db.session.remove()
    assert len(new) == 1
    expect(page.get_by_text(next(iter(new)), exact=True)).to_be_visible()


def test_operator_imports_a_register(live: Live, new_tab: Callable[..., Tab]) -> None:
    tab = _operator_tab(live, new_tab, "ops@corpid.example", "Operator One")
    page = tab.page
    page.get_by_role("link", name="Companies").click()
    page.get_by_role("link", name="Import the register (CSV)").click()
    csv_text = (
        "br_number,name_en,name_zh,status\n"
        "32000001,Lantau Cable Cars Limited,大嶼山纜車有限公司,live\n"
        "32000002,Lantau Fisheries Limited,,dormant\n"
        "12AB,Broken Number Limited,,live\n"
    )
    page.get_by_label(re.compile("^Register file")).set_input_files(
        files=[{"name": "register.csv", "mimeType": "text/csv",
                "buffer": csv_text.encode()}])
    page.get_by_role("button", name="Import").click()
    expect(page.locator("#import-inserted")).to_have_text("2")
    expect(page.locator("#import-rejected")).to_have_text("1")
    expect(page.locator("#import-rejects")).to_contain_text("bad_br_number")
    expect(page.locator("#import-audit")).to_contain_text("orgs:register:import")

    page.get_by_role("link", name="Companies").click()
    page.get_by_label("BR number or start of the name").fill("lantau c")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name="32000001")).to_be_visible()
    expect(page.locator("table")).to_contain_text("Lantau Cable Cars Limited")
    expect(page.locator("table")).not_to_contain_text("Lantau Fisheries Limited")
