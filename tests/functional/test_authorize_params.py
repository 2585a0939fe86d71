"""Authorization request parameters (OIDC Core 3.1.2.1): prompt, max_age, login_hint,
id_token_hint, ui_locales, claims; consent and company choice; errors back to the client with
state and iss (RFC 9207)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    authorize_url,
    callback,
    oauth_session,
    page_kind,
    pkce_pair,
    userinfo,
    verify_jwt,
)
from tests.support import ceremony
from tests.support.authenticator import b64url

SignedIn = Callable[..., tuple[PersonInfo, Browser]]


def assert_error_callback(live: Live, rp: RP, response: object, error: str,
                          state: str = "st-123") -> None:
    cb = callback(response)  # type: ignore[arg-type]
    assert cb.target == rp.redirect_uri
    assert cb.params["error"] == error, cb.params
    assert cb.params["state"] == state
    assert cb.params["iss"] == live.issuer
    assert "code" not in cb.params


def fetch(live: Live, rp: RP, result: CodeResult) -> dict[str, str]:
    token: dict[str, str] = oauth_session(live, rp).fetch_token(
        live.url("/token"), code=result.code, code_verifier=result.verifier)
    return token


# --- consent ----------------------------------------------------------------------------------

def test_consent_page_then_silent_second_login(live: Live, signed_in: SignedIn,
                                               make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client(name="Hang Seng Portal")
    _, challenge = pkce_pair()
    first = b.go(authorize_url(live, rp, scope="openid email corp", challenge=challenge))
    assert page_kind(first) == "consent"
    assert "Hang Seng Portal" in first.text
    answered = b.submit(first, decision="allow")
    assert answered.status_code == 303  # 303 after POST
    assert "code" in callback(b.follow(answered)).params
    again = b.go(authorize_url(live, rp, scope="openid email corp", challenge=challenge))
    assert again.status_code == 303, page_kind(again)
    assert "code" in callback(again).params
    # Asking for more than was granted asks again, for the new scope only.
    more = b.go(authorize_url(live, rp, scope="openid email corp profile", challenge=challenge))
    assert page_kind(more) == "consent"
    assert "your name" in more.text
    assert "email address" not in more.text


def test_consent_deny_returns_access_denied(live: Live, signed_in: SignedIn,
                                            make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    response = b.run(authorize_url(live, rp, scope="openid corp", challenge=challenge),
                     decision="deny")
    assert_error_callback(live, rp, response, "access_denied")


@pytest.mark.parametrize("response_mode", ["query", "form_post"])
def test_prompt_none_without_session_is_login_required(live: Live, browser: Callable[[], Browser],
                                                       make_client: Callable[..., RP],
                                                       response_mode: str) -> None:
    rp = make_client()
    _, challenge = pkce_pair()
    response = browser().go(authorize_url(live, rp, challenge=challenge, prompt="none",
                                          response_mode=response_mode))
    assert_error_callback(live, rp, response, "login_required")
    assert callback(response).mode == response_mode


def test_prompt_none_without_consent_is_consent_required(live: Live, signed_in: SignedIn,
                                                         make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge,
                                  prompt="none"))
    assert_error_callback(live, rp, response, "consent_required")


def test_prompt_none_with_two_companies_is_account_selection_required(
        live: Live, signed_in: SignedIn, make_client: Callable[..., RP]) -> None:
    _, b = signed_in(companies=[{"name_en": "A Ltd"}, {"name_en": "B Ltd"}])
    rp = make_client()
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, challenge=challenge, prompt="none"))
    assert_error_callback(live, rp, response, "account_selection_required")


def test_prompt_none_after_consent_is_silent(live: Live, signed_in: SignedIn,
                                             make_client: Callable[..., RP],
                                             get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    rp = make_client()
    get_code(b, rp, scope="openid corp")
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge,
                                  prompt="none"))
    assert "code" in callback(response).params


def test_prompt_consent_asks_again(live: Live, signed_in: SignedIn,
                                   make_client: Callable[..., RP],
                                   get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    rp = make_client()
    get_code(b, rp, scope="openid corp")
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge,
                              prompt="consent"))
    assert page_kind(page) == "consent"
    cb = callback(b.follow(b.submit(page, decision="allow")))
    assert "code" in cb.params


def test_prompt_select_account_asks_even_with_one_company(
        live: Live, signed_in: SignedIn, make_client: Callable[..., RP]) -> None:
    who, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, challenge=challenge, prompt="select_account"))
    assert page_kind(page) == "company"
    assert who.companies[0].br_number in page.text
    answered = b.submit(page)
    assert answered.status_code == 303
    assert "code" in callback(b.follow(answered)).params


def test_company_choice_decides_the_corp_claim(live: Live, signed_in: SignedIn,
                                               make_client: Callable[..., RP]) -> None:
    who, b = signed_in(companies=[{"name_en": "Alpha Ltd", "roles": ["member"]},
                                  {"name_en": "Beta Ltd", "roles": ["admin"]}])
    rp = make_client()
    verifier, challenge = pkce_pair()
    beta = who.companies[1]
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge))
    assert page_kind(page) == "company"
    assert "Alpha Ltd" in page.text
    assert "Beta Ltd" in page.text
    response = b.run(authorize_url(live, rp, scope="openid corp", challenge=challenge),
                     company=beta.id)
    token = oauth_session(live, rp).fetch_token(live.url("/token"),
                                                code=callback(response).params["code"],
                                                code_verifier=verifier)
    _, claims = verify_jwt(live, token["id_token"], alg="RS256", audience=rp.client_id)
    assert claims["corp"] == {"br_number": beta.br_number, "name": "Beta Ltd",
                              "roles": ["admin"]}


def test_company_not_of_the_person_is_refused(live: Live, signed_in: SignedIn,
                                              make_person: Callable[..., PersonInfo],
                                              make_client: Callable[..., RP]) -> None:
    _, b = signed_in(companies=[{"name_en": "Alpha Ltd"}, {"name_en": "Beta Ltd"}])
    stranger = make_person(name="Other", companies=[{"name_en": "Gamma Ltd"}])
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, challenge=challenge))
    answered = b.submit(page, company=str(stranger.companies[0].id))
    assert answered.status_code in (400, 403)
    assert "Location" not in answered.headers


# --- ui_locales -------------------------------------------------------------------------------

def test_ui_locales_zh_hant_shows_chinese_consent(live: Live, signed_in: SignedIn,
                                                  make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge,
                              ui_locales="zh-Hant"))
    assert page_kind(page) == "consent"
    assert 'lang="zh-Hant-HK"' in page.text
    assert "允許" in page.text
    assert "拒絕" in page.text
    english = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge))
    assert "Allow" in english.text
    assert "允許" not in english.text


def test_ui_locales_survive_the_company_choice(live: Live, signed_in: SignedIn,
                                               make_client: Callable[..., RP]) -> None:
    """The consent page after the company POST (a new GET) is still in Chinese."""
    _, b = signed_in(companies=[{"name_en": "Alpha Ltd"}, {"name_en": "Beta Ltd"}])
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid corp", challenge=challenge,
                              ui_locales="zh-Hant en"))
    assert page_kind(page) == "company"
    assert "您代表哪間公司" in page.text
    consent_page = b.follow(b.submit(page))
    assert page_kind(consent_page) == "consent"
    assert "允許" in consent_page.text


# --- sign-in requirements ---------------------------------------------------------------------

def _sign_in_page(response: requests.Response) -> dict[str, Any]:
    """The sign-in page's ceremony: its handle and its embedded first request options."""
    assert response.status_code == 200, response.status_code
    assert page_kind(response) == "login"
    info = ceremony.ceremony_of(response)
    assert info["handle"].startswith("cia_")
    options: dict[str, Any] = json.loads(info["public-key"])["publicKey"]
    info["publicKey"] = options
    return info


def test_no_session_shows_the_sign_in_page(live: Live, browser: Callable[[], Browser],
                                           make_client: Callable[..., RP]) -> None:
    rp = make_client()
    _, challenge = pkce_pair()
    b = browser()
    response = b.request("GET", authorize_url(live, rp, challenge=challenge))
    # The authorization endpoint answers with the sign-in page itself, no redirect.
    info = _sign_in_page(response)
    options = info["publicKey"]
    assert options["userVerification"] == "required"
    assert options["rpId"] == urlsplit(live.issuer).hostname
    assert not options.get("allowCredentials")  # usernameless
    assert int(info["fresh-for"]) > 0


@pytest.mark.parametrize("extra", [{"max_age": "0"}, {"prompt": "login"}])
def test_max_age_zero_and_prompt_login_force_sign_in(live: Live, signed_in: SignedIn,
                                                     make_client: Callable[..., RP],
                                                     extra: dict[str, str]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    time.sleep(0.01)  # the session is strictly older than the request
    response = b.request("GET", authorize_url(live, rp, challenge=challenge, **extra))
    _sign_in_page(response)


def test_max_age_respected_when_recent(live: Live, signed_in: SignedIn,
                                       make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    response = b.request("GET", authorize_url(live, rp, challenge=challenge, max_age="3600"))
    assert response.status_code == 303
    assert "code" in callback(response).params


def test_login_hint_of_an_unknown_person_keeps_the_sign_in_usernameless(
        live: Live, browser: Callable[[], Browser], make_client: Callable[..., RP]) -> None:
    rp = make_client()
    _, challenge = pkce_pair()
    response = browser().request("GET", authorize_url(live, rp, challenge=challenge,
                                                      login_hint="nobody@acme.example"))
    assert not _sign_in_page(response)["publicKey"].get("allowCredentials")


def test_login_hint_of_a_known_person_lists_their_keys(
        live: Live, browser: Callable[[], Browser], make_client: Callable[..., RP],
        enrolled: Callable[..., Any]) -> None:
    holder = enrolled()
    rp = make_client()
    _, challenge = pkce_pair()
    response = browser().request("GET", authorize_url(live, rp, challenge=challenge,
                                                      login_hint=holder.person.email))
    listed = _sign_in_page(response)["publicKey"]["allowCredentials"]
    held = [b64url(c.credential_id) for c in holder.authenticator.credentials]
    assert [c["id"] for c in listed] == held


def _foreign_rsa_token(live: Live, rp: RP, kid: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    return pyjwt.encode({"iss": live.issuer, "aud": rp.client_id, "sub": "x", "iat": now,
                         "exp": now + 600}, key, algorithm="RS256", headers={"kid": kid})


@pytest.mark.parametrize("hint", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.",
                                  "foreign-key", "other-client",
                                  "access-token"])
def test_invalid_id_token_hint_is_invalid_request(live: Live, signed_in: SignedIn,
                                                  make_client: Callable[..., RP],
                                                  get_code: Callable[..., CodeResult],
                                                  hint: str) -> None:
    _, b = signed_in()
    rp = make_client()
    if hint == "foreign-key":
        kid = live.jwks()["keys"][0]["kid"]  # our kid, someone else's key
        hint = _foreign_rsa_token(live, rp, kid)
    elif hint == "other-client":
        other = make_client()
        hint = fetch(live, other, get_code(b, other))["id_token"]
    elif hint == "access-token":  # ours, for this client, but not an ID token
        hint = fetch(live, rp, get_code(b, rp))["access_token"]
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, challenge=challenge, id_token_hint=hint))
    assert_error_callback(live, rp, response, "invalid_request")


def test_id_token_hint_of_the_signed_in_person_is_silent(live: Live, signed_in: SignedIn,
                                                         make_client: Callable[..., RP],
                                                         get_code: Callable[..., CodeResult]
                                                         ) -> None:
    _, b = signed_in()
    rp = make_client()
    hint = fetch(live, rp, get_code(b, rp))["id_token"]
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, challenge=challenge, id_token_hint=hint,
                                  prompt="none"))
    assert "code" in callback(response).params


def test_id_token_hint_of_someone_else_needs_sign_in(live: Live, signed_in: SignedIn,
                                                     make_client: Callable[..., RP],
                                                     get_code: Callable[..., CodeResult]
                                                     ) -> None:
    rp = make_client()
    _, first = signed_in(name="First Person")
    hint = fetch(live, rp, get_code(first, rp))["id_token"]
    _, second = signed_in(name="Second Person")
    time.sleep(0.01)
    _, challenge = pkce_pair()
    response = second.go(authorize_url(live, rp, challenge=challenge, id_token_hint=hint,
                                       prompt="none"))
    assert_error_callback(live, rp, response, "login_required")


# --- the claims parameter ---------------------------------------------------------------------

def test_claims_parameter_releases_only_the_requested_claim(
        live: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    who, b = signed_in()
    rp = make_client()
    result = get_code(b, rp, scope="openid",
                      claims=json.dumps({"userinfo": {"email": None}}))
    token = fetch(live, rp, result)
    _, id_claims = verify_jwt(live, token["id_token"], alg="RS256", audience=rp.client_id)
    assert "email" not in id_claims  # asked for userinfo only
    info = userinfo(live, token['access_token']).json()
    assert info == {"sub": who.subject, "email": who.email}


def test_claims_parameter_for_the_id_token(live: Live, signed_in: SignedIn,
                                           make_client: Callable[..., RP],
                                           get_code: Callable[..., CodeResult]) -> None:
    who, b = signed_in()
    rp = make_client()
    result = get_code(b, rp, scope="openid",
                      claims=json.dumps({"id_token": {"name": {"essential": True}}}))
    _, id_claims = verify_jwt(live, fetch(live, rp, result)["id_token"], alg="RS256",
                              audience=rp.client_id)
    assert id_claims["name"] == who.display_name
    assert "email" not in id_claims


@pytest.mark.parametrize("claims", ["not json", "[]", '{"userinfo": []}',
                                    '{"access_token": {}}', '{"userinfo": {"email": 1}}'])
def test_malformed_claims_parameter_is_invalid_request(live: Live, signed_in: SignedIn,
                                                       make_client: Callable[..., RP],
                                                       claims: str) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, challenge=challenge, claims=claims))
    assert_error_callback(live, rp, response, "invalid_request")


def test_claims_parameter_does_not_bypass_consent(live: Live, signed_in: SignedIn,
                                                  make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    page = b.go(authorize_url(live, rp, scope="openid", challenge=challenge,
                              claims=json.dumps({"userinfo": {"corp": None}})))
    assert page_kind(page) == "consent"


def test_claims_parameter_limited_to_the_clients_scopes(
        live: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    rp = make_client(scopes=["openid"])
    result = get_code(b, rp, scope="openid",
                      claims=json.dumps({"userinfo": {"corp": None, "email": None}}))
    token = fetch(live, rp, result)
    info = userinfo(live, token['access_token']).json()
    assert "corp" not in info
    assert "email" not in info
