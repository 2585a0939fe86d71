"""Bad input gets a fast 4xx, never a 500 (SECURITY.md): wrong content types, duplicate
parameters, huge bodies, bad UTF-8, malformed JWTs everywhere a JWT is read; and every JSON
error is RFC-shaped (error, error_description, Cache-Control: no-store)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.functional.conftest import (
    ASSERTION_TYPE,
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    assert_json_error,
    authorize_url,
    b64json,
    callback,
    pkce_pair,
    post,
    redeem,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]

MALFORMED_JWTS = [
    "", ".", "..", "...", "a.b.c", "a.b", "a.b.c.d", "a.b.c.d.e",
    "eyJ.eyJ.", "!!!.???.***",
    f"{b64json(b'not json')}.{b64json({})}.c2ln",
    f"{b64json([1, 2])}.{b64json({})}.c2ln",
    f"{b64json('string')}.{b64json({})}.c2ln",
    f"{b64json({'alg': 'RS256'})}.{b64json(b'not json')}.c2ln",
    f"{b64json({'alg': 'RS256'})}.{b64json([1])}.c2ln",
    f"{b64json({'alg': 'RS256', 'kid': 123})}.{b64json({})}.c2ln",
    f"{b64json({'alg': 'RS256', 'kid': ['a']})}.{b64json({})}.c2ln",
    f"{b64json({'alg': None})}.{b64json({'sub': {'x': 1}})}.",
    f"{b64json({'alg': 'none'})}.{b64json({'iss': 1, 'sub': [], 'aud': {}, 'exp': 'x'})}.",
    f"{b64json({'alg': 'ES256', 'crit': ['exp']})}.{b64json({})}.c2ln",
    f"{b64json({'alg': 'RS256'})}.{b64json({})}.{'A' * 20_000}",
    "a" * 9000 + ".b.c",
    "\u00e9\u00e9.\u00e9.\u00e9",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.%%%",
]


def malformed_ids() -> list[str]:
    return [f"jwt{i}" for i in range(len(MALFORMED_JWTS))]


@pytest.fixture
def rp(make_client: Callable[..., RP]) -> RP:
    return make_client()


# --- the token endpoint -----------------------------------------------------------------------

def test_json_body_is_invalid_request(live: Live, rp: RP) -> None:
    response = requests.post(live.url("/token"), json={"grant_type": "client_credentials"},
                             auth=(rp.client_id, str(rp.secret)), timeout=10)
    assert_json_error(response, 400, "invalid_request")


@pytest.mark.parametrize("content_type", [None, "text/plain", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded; charset=bogus"])
def test_wrong_content_types_are_4xx(live: Live, rp: RP, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(live.url("/token"), data=b"grant_type=client_credentials",
                             headers=headers, auth=(rp.client_id, str(rp.secret)), timeout=10)
    assert 400 <= response.status_code < 500, response.status_code
    if content_type is None or not content_type.startswith("application/x-www"):
        assert_json_error(response, response.status_code)


@pytest.mark.parametrize("path", ["/token", "/introspect", "/revoke"])
def test_duplicate_parameters_are_400(live: Live, rp: RP, path: str) -> None:
    body = "grant_type=client_credentials&grant_type=authorization_code&token=a&token=b"
    response = requests.post(live.url(path), data=body, auth=(rp.client_id, str(rp.secret)),
                             headers={"Content-Type": "application/x-www-form-urlencoded"},
                             timeout=10)
    assert_json_error(response, 400, "invalid_request")


def test_parameters_in_the_query_are_refused(live: Live, rp: RP) -> None:
    response = requests.post(live.url("/token?grant_type=client_credentials"),
                             data={"x": "y"}, auth=(rp.client_id, str(rp.secret)), timeout=10)
    assert_json_error(response, 400, "invalid_request")


@pytest.mark.parametrize("path", ["/token", "/introspect", "/revoke"])
def test_get_is_405(live: Live, path: str) -> None:
    response = requests.get(live.url(path), timeout=10,
                            headers={"Accept": "application/json"})
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert_json_error(response, 405)


# Fixed: a 413 on a page endpoint used to re-raise while rendering the error page.
HTML_413_BUG: tuple[()] = ()


@pytest.mark.parametrize("path", [
    "/token", "/introspect", "/revoke",
    pytest.param("/authorize", marks=HTML_413_BUG),
    pytest.param("/authorize/consent", marks=HTML_413_BUG),
    pytest.param("/authorize/company", marks=HTML_413_BUG),
])
def test_huge_body_is_413(live: Live, path: str) -> None:
    body = b"x=" + b"a" * (65 * 1024)
    response = requests.post(live.url(path), data=body, timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    if path in ("/token", "/introspect", "/revoke"):
        assert_json_error(response, 413)


@pytest.mark.parametrize("body", [
    b"grant_type=client_credentials&scope=%ff%fe",
    b"grant_type=client_credentials&scope=\xff\xfe",
    b"grant_type=%C0%AFclient_credentials",
    b"grant_type=client_credentials&scope=\xed\xa0\x80",
    b"grant_type=client_credentials&scope=a%00b",
    b"grant_type=authorization_code&code=%ff&redirect_uri=%ff&code_verifier=%ff",
    b"grant_type=refresh_token&refresh_token=cir_%ff%fe",
    b"%ff=%ff",
])
def test_bad_utf8_is_4xx(live: Live, rp: RP, body: bytes) -> None:
    response = requests.post(live.url("/token"), data=body, timeout=10,
                             auth=(rp.client_id, str(rp.secret)),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
    # unsupported_grant_type comes without a description: see the xfail below.
    assert_json_error(response, response.status_code, described=False)


# Fixed: malformed Basic credentials used to raise inside Authlib.
BASIC_BUG: tuple[()] = ()


@pytest.mark.parametrize("header", [
    pytest.param("Basic " + base64.b64encode(b"id:%ff").decode(), id="percent"),
    pytest.param("Basic " + base64.b64encode(b"id:" + b"x" * 5000).decode(), id="long"),
    pytest.param("Basic !!notbase64!!", id="not-base64"),
    pytest.param("Basic " + base64.b64encode(b"no-colon").decode(), id="no-colon"),
    pytest.param("Basic", id="scheme-only"),
    pytest.param("Basic ", id="scheme-space", marks=BASIC_BUG),
    pytest.param("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), id="not-utf8",
                 marks=BASIC_BUG),
])
def test_bad_basic_credentials_are_4xx(live: Live, header: str) -> None:
    response = requests.post(live.url("/token"), data={"grant_type": "client_credentials"},
                             headers={"Authorization": header}, timeout=10)
    assert response.status_code in (400, 401), response.status_code
    assert_json_error(response, response.status_code)


@pytest.mark.parametrize("assertion", MALFORMED_JWTS, ids=malformed_ids())
def test_malformed_client_assertion_is_4xx(live: Live, assertion: str) -> None:
    response = requests.post(live.url("/token"), timeout=10, data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion})
    assert response.status_code in (400, 401), (response.status_code, response.text[:200])
    assert_json_error(response, response.status_code)


@pytest.mark.parametrize("token", MALFORMED_JWTS, ids=malformed_ids())
def test_malformed_token_to_introspect_is_inactive(live: Live, rp: RP, token: str) -> None:
    response = post(live, "/introspect", rp, {"token": token})
    if token == "":
        assert response.status_code in (200, 400)
    else:
        assert response.status_code == 200, response.text[:200]
        assert response.json() == {"active": False}
    revoke = post(live, "/revoke", rp, {"token": token})
    assert revoke.status_code in (200, 400)


@pytest.mark.parametrize("token", [t for t in MALFORMED_JWTS if t],
                         ids=malformed_ids()[1:])
def test_malformed_bearer_token_at_userinfo_is_401(live: Live, token: str) -> None:
    response = requests.get(live.url("/userinfo"), timeout=10,
                            headers={"Authorization": f"Bearer {token}".encode().decode(
                                "latin-1")})
    assert response.status_code in (400, 401), response.status_code
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_json_error(response, response.status_code)


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic abc", "bearer", "Token x",
                                    "Bearer a b", "Bearer " + "x" * 20_000])
def test_bad_authorization_header_at_userinfo_is_401(live: Live, header: str) -> None:
    response = requests.get(live.url("/userinfo"), headers={"Authorization": header},
                            timeout=10)
    assert response.status_code in (400, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("hint", [t for t in MALFORMED_JWTS if t], ids=malformed_ids()[1:])
def test_malformed_id_token_hint_is_invalid_request(live: Live, signed_in: SignedIn, rp: RP,
                                                    hint: str) -> None:
    _, b = signed_in()
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, challenge=challenge, id_token_hint=hint))
    assert response.status_code in (303, 400), response.status_code
    if response.status_code == 303:
        cb = callback(response)
        assert cb.params["error"] == "invalid_request"
        assert cb.params["iss"] == live.issuer


# --- the authorization endpoint ---------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "client_id={cid}&client_id={cid}&redirect_uri={ru}&response_type=code",
    "client_id={cid}&redirect_uri={ru}&redirect_uri={ru}&response_type=code",
    "client_id=unknown&redirect_uri={ru}&response_type=code",
    "redirect_uri={ru}&response_type=code",
    "client_id=&redirect_uri={ru}&response_type=code",
    "client_id={long}&redirect_uri={ru}&response_type=code",
    "client_id=%ff%fe&redirect_uri={ru}&response_type=code",
    "client_id={cid}&redirect_uri=%ff&response_type=code",
    "client_id={cid}%00&redirect_uri={ru}&response_type=code",
    "",
])
def test_untrusted_authorization_requests_get_an_error_page(live: Live, rp: RP,
                                                            query: str) -> None:
    from urllib.parse import quote

    url = live.url("/authorize?" + query.format(cid=rp.client_id, ru=quote(rp.redirect_uri, ""),
                                                long="c" * 5000))
    response = requests.get(url, allow_redirects=False, timeout=10)
    assert response.status_code == 400, response.status_code
    assert "Location" not in response.headers
    assert "text/html" in response.headers["Content-Type"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("extra", [
    "&state=a&state=b", "&scope=openid&scope=openid", "&response_type=code",
    "&state=" + "s" * 5000, "&nonce=" + "n" * 5000, "&response_mode=fragment",
    "&response_mode=jwt", "&prompt=none%20login", "&prompt=bogus", "&max_age=-1",
    "&max_age=abc", "&max_age=99999999999", "&request=eyJ.e30.", "&request_uri=urn:x",
    "&claims=%ff", "&ui_locales=%ff",
])
def test_bad_parameters_go_back_to_the_client(live: Live, signed_in: SignedIn, rp: RP,
                                              extra: str) -> None:
    _, b = signed_in()
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, challenge=challenge, state=None) + extra)
    assert response.status_code in (200, 303), (extra, response.status_code)
    cb = callback(response)
    assert cb.target == rp.redirect_uri
    assert cb.params["iss"] == live.issuer
    if extra in ("&ui_locales=%ff",):
        return  # a hint, not an error
    assert cb.params["error"] in ("invalid_request", "request_not_supported",
                                  "request_uri_not_supported"), (extra, cb.params)


def test_unsupported_response_type_goes_back_to_the_client(live: Live, signed_in: SignedIn,
                                                           rp: RP) -> None:
    _, b = signed_in()
    _, challenge = pkce_pair()
    for response_type in ("token", "id_token", "code id_token", "none"):
        url = authorize_url(live, rp, challenge=challenge).replace(
            "response_type=code", f"response_type={response_type.replace(' ', '+')}")
        cb = callback(b.go(url))
        assert cb.params["error"] == "unsupported_response_type", (response_type, cb.params)
        assert cb.params["iss"] == live.issuer
        assert cb.params["state"] == "st-123"


def test_authorize_post_with_json_is_an_error_page(live: Live, rp: RP) -> None:
    response = requests.post(live.url("/authorize"), json={"client_id": rp.client_id},
                             allow_redirects=False, timeout=10)
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_pending_handles_that_do_not_exist(live: Live, browser: Callable[[], Browser]) -> None:
    b = browser()
    for handle in ("", "x", "cia_unknown", "cia_" + "a" * 500, "%ff"):
        response = b.request("GET", live.url(f"/authorize/continue?h={handle}"))
        assert response.status_code == 400
        assert "Location" not in response.headers


# --- JSON errors are RFC-shaped ---------------------------------------------------------------

def test_every_json_error_is_rfc_shaped(live: Live, signed_in: SignedIn,
                                        make_client: Callable[..., RP],
                                        get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    rp = make_client()
    result = get_code(b, rp)
    assert redeem(live, result).status_code == 200
    answers: list[requests.Response] = [
        redeem(live, result),  # reused code
        post(live, "/token", rp, {"grant_type": "authorization_code"}),
        post(live, "/token", None, {"grant_type": "client_credentials"}),
        post(live, "/introspect", None, {"token": "x"}),
        post(live, "/revoke", None, {"token": "x"}),
        post(live, "/token", rp, {"grant_type": "client_credentials"}),
        requests.get(live.url("/userinfo"), timeout=10),
        requests.get(live.url("/userinfo"), timeout=10, headers={"Authorization": "Bearer x"}),
        requests.post(live.url("/token"), json={}, timeout=10),
        post(live, "/token", rp, {}),  # no grant_type
    ]
    for response in answers:
        assert 400 <= response.status_code < 500, response.text
        body: dict[str, Any] = assert_json_error(response, response.status_code)
        assert body["error"] in (
            "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
            "unsupported_grant_type", "invalid_scope", "invalid_token"), body
        if response.status_code == 401:
            assert response.headers.get("WWW-Authenticate")


@pytest.mark.parametrize("data", [
    {"grant_type": "password", "username": "a", "password": "b"},
    {"grant_type": "refresh_token", "refresh_token": "cir_unknown"},
], ids=["unsupported-grant", "unknown-refresh-token"])
def test_grant_errors_are_described(live: Live, rp: RP, data: dict[str, str]) -> None:
    response = post(live, "/token", rp, data)
    assert_json_error(response, 400)


# --- NUL bytes (PostgreSQL refuses them in text: they must not reach a query) ------------------

NUL = "\x00"


@pytest.mark.parametrize("field", ["client_id", "redirect_uri", "state", "scope", "nonce",
                                   "login_hint", "code_challenge", "id_token_hint"])
def test_nul_bytes_in_authorization_requests(live: Live, signed_in: SignedIn, rp: RP,
                                             field: str) -> None:
    _, b = signed_in()
    _, challenge = pkce_pair()
    params = {"client_id": rp.client_id, "redirect_uri": rp.redirect_uri, "state": "s",
              "scope": "openid", "nonce": "n", "login_hint": "x", "code_challenge": challenge,
              "id_token_hint": "a.b.c"}
    params[field] = params[field] + NUL
    url = live.url("/authorize?" + urlencode({**params, "response_type": "code",
                                                "code_challenge_method": "S256"}))
    response = b.go(url)
    assert response.status_code in (200, 303, 400), response.status_code


@pytest.mark.parametrize("data", [
    {"grant_type": "authorization_code", "code": "cic_" + NUL, "redirect_uri": "x",
     "code_verifier": "v" * 43},
    {"grant_type": "refresh_token", "refresh_token": "cir_" + NUL},
    {"grant_type": "client_credentials", "scope": NUL},
    {"grant_type": "client_credentials", "client_id": "a" + NUL, "client_secret": "b"},
    {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
     "client_assertion": f"{b64json({'alg': 'ES256'})}.{b64json({'sub': 'a' + NUL})}.c2ln"},
], ids=["code", "refresh", "scope", "client_id", "assertion-sub"])
def test_nul_bytes_at_the_token_endpoint(live: Live, rp: RP, data: dict[str, str]) -> None:
    auth = None if "client_id" in data or "client_assertion" in data else (
        rp.client_id, str(rp.secret))
    response = requests.post(live.url("/token"), data=data, auth=auth, timeout=10)
    assert 400 <= response.status_code < 500, response.status_code
    basic = requests.post(live.url("/token"), data={"grant_type": "client_credentials"},
                          auth=(rp.client_id + NUL, "x"), timeout=10)
    assert basic.status_code in (400, 401)


@pytest.mark.parametrize("token", ["cir_" + NUL, NUL, "a" + NUL + ".b.c"])
def test_nul_bytes_at_introspection_revocation_userinfo(live: Live, rp: RP, token: str) -> None:
    assert post(live, "/introspect", rp, {"token": token}).status_code in (200, 400)
    assert post(live, "/revoke", rp, {"token": token}).status_code in (200, 400)


def test_nul_bytes_in_cookies_and_handles(live: Live, rp: RP,
                                          browser: Callable[[], Browser]) -> None:
    b = browser()
    b.http.cookies.set("corpid_session", "cil_" + "%00", domain="127.0.0.1", path="/")
    _, challenge = pkce_pair()
    # No session from a NUL cookie: the sign-in page.
    assert b.request("GET", authorize_url(live, rp, challenge=challenge)).status_code == 200
    response = b.request("GET", live.url("/authorize/continue?h=cia_%00"))
    assert response.status_code == 400
