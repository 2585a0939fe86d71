"""The demo bank exists only in demo mode; its seed is idempotent; its pages are bilingual,
never 500 on bad input, and explain each failure in words."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from idp.demo import DEMO_BANK_CLIENT_NAME, find_demo_bank_client, seed_demo_bank
from idp.demo_bank import services
from idp.demo_bank import views as bank_views
from idp.demo_bank.services import BankError


def test_not_served_outside_demo_mode(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/demo-bank/").status_code == 404
    assert client.get("/demo-bank/callback?code=x&state=y").status_code == 404


def test_home_offers_the_kyc_in_english_and_chinese(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    response = client.get("/demo-bank/")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    assert "Open a business account — verify your company with Corp ID" in page
    assert "Directors and company secretary" in page
    assert page.count('type="checkbox"') == 3
    chinese = client.get("/demo-bank/", headers={"Accept-Language": "zh-HK"})
    text = chinese.get_data(as_text=True)
    assert '<html lang="zh-Hant-HK">' in text
    assert "開立商業戶口" in text
    assert "董事及公司秘書" in text


def test_starting_with_nothing_chosen_asks_for_something(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    response = client.get("/demo-bank/start?category=not-a-category")
    assert response.status_code == 400
    assert b"Choose at least one" in response.data


def test_starting_without_the_registration_says_so(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    response = client.get("/demo-bank/start?category=corp_profile")
    assert response.status_code == 503
    assert b"The demo bank is not set up" in response.data
    assert b"idp demo" in response.data


def test_a_callback_not_started_here_is_refused_in_words(make_app: Callable[..., Flask]) -> None:
    app = make_app(DEMO=True)
    with app.app_context():
        seed_demo_bank()
    client = app.test_client()
    response = client.get("/demo-bank/callback?code=x&state=y&iss=http://localhost:5000")
    assert response.status_code == 400
    assert b"This verification was not started here" in response.data
    assert b"Start again" in response.data


def test_a_tampered_cookie_is_ignored(make_app: Callable[..., Flask]) -> None:
    app = make_app(DEMO=True)
    with app.app_context():
        seed_demo_bank()
    client = app.test_client()
    client.set_cookie("corpid_demo_bank", "eyJhY2NvdW50Ijp7fX0.forged.sig", path="/demo-bank/")
    for name in ("corpid_demo_bank_tx", *(f"corpid_demo_bank_tx.{i}" for i in range(1, 4))):
        client.set_cookie(name, "x" * 3900, path="/demo-bank/")
    assert b"Verify with Corp ID" in client.get("/demo-bank/").data
    response = client.get("/demo-bank/callback?code=x&state=y")
    assert response.status_code == 400
    assert b"not started here" in response.data


def test_forget_needs_csrf(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    assert client.post("/demo-bank/forget").status_code == 400


@pytest.mark.parametrize(
    ("kind", "status", "words"),
    [
        ("denied", 200, b"Your company data was not shared"),
        ("state", 400, b"does not belong to this verification"),
        ("iss", 400, b"does not come from Corp ID"),
        ("token", 502, b"We could not obtain access"),
        ("receipt", 502, b"The consent receipt is not valid"),
    ],
)
def test_each_failure_has_its_page(
    make_app: Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    status: int,
    words: bytes,
) -> None:
    app = make_app(DEMO=True)
    with app.app_context():
        seed_demo_bank()

    def fail(*args: object) -> None:
        raise BankError(kind, "what <b>happened</b>")

    monkeypatch.setattr(services, "finish_kyc", fail)
    response = app.test_client().get("/demo-bank/callback?code=x&state=y")
    assert response.status_code == status
    assert words in response.data
    assert b"what &lt;b&gt;happened&lt;/b&gt;" in response.data  # inert
    assert response.headers["Cache-Control"] == "no-store"


ACCOUNT = services.KycResult(
    claims={"sub": "pairwise-1", "iss": "http://localhost:5000"},
    company_data={
        "br_number": "12345678",
        "categories": {
            "corp_profile": {
                "values": {"br_number": "12345678", "name_en": "Demo Trading Limited"},
                "provenance": {"source": "Companies Registry", "as_of": "2026-11-30"},
                "verified_claims": {"verification": {"trust_framework": "hk_cr"}},
            },
            "corp_officers": {
                "values": {
                    "officers": [
                        {"role": "director", "name_en": secrets.token_urlsafe(24)}
                        for _ in range(150)
                    ]
                },
                "provenance": {"source": "Companies Registry", "as_of": "2026-11-30"},
            },
        },
    },
    authorization_details=[
        {
            "type": "corp_data",
            "categories": ["corp_profile", "corp_officers"],
            "purpose": services.PURPOSE,
            "duration": services.DURATION,
        }
    ],
    receipt={"header": {"alg": "PS256", "kid": "k1"}, "claims": {"consent_id": "cns_1"}},
    scope="openid",
    token_type="DPoP",
)


def test_a_verified_company_is_shown_with_provenance_and_kept(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(DEMO=True)
    with app.app_context():
        seed_demo_bank()
    monkeypatch.setattr(services, "finish_kyc", lambda *args: ACCOUNT)
    client = app.test_client()
    response = client.get("/demo-bank/callback?code=x&state=y")
    assert response.status_code == 303
    cookies = [
        h
        for h in response.headers.getlist("Set-Cookie")
        if "corpid_demo_bank=" in h or "corpid_demo_bank." in h
    ]
    assert len(cookies) >= 2  # more than one cookie's worth, spread over several
    assert all("HttpOnly" in c and "Path=/demo-bank/" in c for c in cookies)
    page = client.get("/demo-bank/").get_data(as_text=True)
    assert "Your company is verified with Corp ID" in page
    assert "Demo Trading Limited" in page
    assert "Companies Registry" in page
    assert "2026-11-30" in page
    assert 'trust framework <code class="trust-framework">hk_cr</code>' in page
    assert "Directors and company secretary" in page
    assert "Signature verified" in page
    assert "cns_1" in page
    assert "365 days" in page
    # Start again: the bank forgets it.
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    forgotten = client.post("/demo-bank/forget", data={"csrf_token": token.group(1)})
    assert forgotten.status_code == 303
    assert b"Verify with Corp ID" in client.get("/demo-bank/").data


def test_seed_is_idempotent_and_follows_the_keys(make_app: Callable[..., Flask]) -> None:
    app = make_app(DEMO=True)
    keys_dir = Path(app.config["IDP"]["KEYS_DIR"])
    with app.app_context():
        client, created = seed_demo_bank()
        again, created_again = seed_demo_bank()
        assert created
        assert not created_again
        assert again.client_id == client.client_id
        assert client.name == DEMO_BANK_CLIENT_NAME
        assert client.profile.value == "fapi2"
        assert client.auth_method.value == "private_key_jwt"
        assert client.subject_type.value == "pairwise"
        key = json.loads((keys_dir / services.CLIENT_KEY_FILE).read_text())
        (registered,) = client.jwks["keys"]
        assert registered["kid"] == key["kid"]
        assert "d" not in registered
        # New keys (the folder was wiped): the registration follows.
        (keys_dir / services.CLIENT_KEY_FILE).unlink()
        (keys_dir / services.DPOP_KEY_FILE).unlink()
        moved, _ = seed_demo_bank()
        assert moved.client_id == client.client_id
        assert moved.jwks["keys"][0]["kid"] != registered["kid"]
        assert find_demo_bank_client() is not None


def test_cookie_chunks_have_a_ceiling() -> None:
    assert bank_views.CHUNK * bank_views.MAX_CHUNKS < 20000


@pytest.mark.parametrize(
    "query",
    [
        "category=corp_profile&category=corp_profile&category=" + "x" * 5000,
        "category=%ff%fe",
        "category=corp_profile&ui_locales=" + "zh" * 3000,
        "category=corp_profile&ui_locales=%0d%0aX:1",
    ],
)
def test_bad_start_input_is_never_a_500(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    app = make_app(DEMO=True)
    with app.app_context():
        seed_demo_bank()
    seen: dict[str, object] = {}

    def start(bank: object, *, categories: list[str], ui_locales: str | None) -> tuple[str, dict]:
        seen.update(categories=categories, ui_locales=ui_locales)
        return "http://localhost:5000/authorize?client_id=c&request_uri=u", {"state": "s"}

    monkeypatch.setattr(services, "start_kyc", start)
    response = app.test_client().get(f"/demo-bank/start?{query}")
    assert response.status_code in (303, 400)
    if response.status_code == 303:
        assert seen["categories"] == ["corp_profile"]
        assert seen["ui_locales"] is None


@pytest.mark.parametrize(
    "query",
    [
        "code=x&code=y&state=s&state=t",
        "code=%ff&state=%fe&iss=%00",
        "error=" + "x" * 5000,
        "",
    ],
)
def test_bad_callback_input_is_never_a_500(make_app: Callable[..., Flask], query: str) -> None:
    app = make_app(DEMO=True)
    with app.app_context():
        seed_demo_bank()
    response = app.test_client().get(f"/demo-bank/callback?{query}")
    assert response.status_code == 400
    assert b"not started here" in response.data
