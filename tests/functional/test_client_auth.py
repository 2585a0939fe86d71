"""Client authentication at the token and introspection endpoints: one method per request,
secrets, and private_key_jwt (RFC 7523) with every check SECURITY.md names."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwskate
import pytest
import requests
from requests_oauth2client import OAuth2Client, PrivateKeyJwt

from tests.functional.conftest import (
    ASSERTION_TYPE,
    RP,
    Live,
    assert_json_error,
    assertion_for,
    b64json,
    post,
)

CC = {"grant_type": "client_credentials"}


@pytest.fixture
def service(make_client: Callable[..., RP]) -> Callable[..., RP]:
    """A client_credentials client with the given auth method."""

    def factory(auth_method: str = "client_secret_basic", **kw: Any) -> RP:
        return make_client(auth_method, grant_types=["client_credentials"], redirect_uris=None,
                           scopes=["corp"], **kw)

    return factory


def token_with_assertion(live: Live, assertion: str, path: str = "/token",
                         **extra: str) -> requests.Response:
    return requests.post(live.url(path), timeout=10, data={
        **CC, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion, **extra})


def assert_invalid_client(response: requests.Response) -> None:
    """invalid_client: 401 with WWW-Authenticate, or 400 when no Authorization header was sent
    (RFC 6749 §5.2 requires 401 only then)."""
    assert response.status_code in (400, 401), response.text
    assert_json_error(response, response.status_code, "invalid_client")
    if response.status_code == 401:
        assert response.headers.get("WWW-Authenticate")
    assert "access_token" not in response.json()


# --- secrets ----------------------------------------------------------------------------------

def test_wrong_secret_basic_is_401_with_www_authenticate(live: Live,
                                                         service: Callable[..., RP]) -> None:
    rp = service()
    response = requests.post(live.url("/token"), data=CC, auth=(rp.client_id, "cis_wrong"),
                             timeout=10)
    assert_invalid_client(response)
    assert response.headers["WWW-Authenticate"].lower().startswith("basic")


@pytest.mark.parametrize("case", ["wrong", "empty", "other-clients", "unknown-client"])
def test_wrong_secret_post_is_401(live: Live, service: Callable[..., RP], case: str) -> None:
    rp = service("client_secret_post")
    other = service("client_secret_post")
    client_id, secret = {
        "wrong": (rp.client_id, "cis_wrong"), "empty": (rp.client_id, ""),
        "other-clients": (rp.client_id, other.secret),
        "unknown-client": ("no-such-client", rp.secret)}[case]
    response = requests.post(live.url("/token"), timeout=10,
                             data={**CC, "client_id": client_id, "client_secret": secret})
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("invalid_client", "invalid_request")
    assert "access_token" not in response.json()


def test_only_the_registered_method_is_accepted(live: Live, service: Callable[..., RP]) -> None:
    basic = service("client_secret_basic")
    as_post = requests.post(live.url("/token"), timeout=10, data={
        **CC, "client_id": basic.client_id, "client_secret": basic.secret})
    assert_invalid_client(as_post)
    jwt_client = service("private_key_jwt")
    as_basic = requests.post(live.url("/token"), data=CC, auth=(jwt_client.client_id, "x"),
                             timeout=10)
    assert_invalid_client(as_basic)


@pytest.mark.parametrize("combo", ["basic+post", "basic+assertion", "post+assertion"])
def test_two_methods_in_one_request_is_invalid_request(live: Live, service: Callable[..., RP],
                                                       combo: str) -> None:
    rp = service("client_secret_basic")
    keyed = service("private_key_jwt")
    data: dict[str, str] = dict(CC)
    auth = None
    if "basic" in combo:
        auth = (rp.client_id, rp.secret)
    if "post" in combo:
        data.update(client_id=rp.client_id, client_secret=str(rp.secret))
    if "assertion" in combo:
        data.update(client_assertion_type=ASSERTION_TYPE,
                    client_assertion=assertion_for(keyed, aud=live.url("/token")))
    response = requests.post(live.url("/token"), data=data, auth=auth, timeout=10)
    assert_json_error(response, 400, "invalid_request")


def test_disabled_client_cannot_authenticate(ctx: Live, service: Callable[..., RP]) -> None:
    from idp.clients.services import disable_client

    rp = service()
    assert post(ctx, "/token", rp, CC).status_code == 200
    disable_client(rp.client_id, actor="tests")
    response = post(ctx, "/token", rp, CC)
    assert_invalid_client(response)


# --- private_key_jwt --------------------------------------------------------------------------

@pytest.mark.parametrize("alg", [
    "ES256", "RS256", "PS256",
    pytest.param("EdDSA", marks=[
        pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")]),
])
def test_every_advertised_assertion_alg_works(live: Live, service: Callable[..., RP],
                                              alg: str) -> None:
    assert alg in live.discovery()["token_endpoint_auth_signing_alg_values_supported"]
    rp = service("private_key_jwt", key_alg=alg)
    assert rp.private_jwk is not None
    client = OAuth2Client(live.url("/token"), auth=PrivateKeyJwt(
        rp.client_id, rp.private_jwk, alg=alg), testing=True)
    assert client.client_credentials(scope="corp").access_token


@pytest.mark.parametrize("aud_kind", ["issuer", "token_endpoint", "list-with-issuer"])
def test_assertion_audiences_accepted(live: Live, service: Callable[..., RP],
                                      aud_kind: str) -> None:
    rp = service("private_key_jwt")
    aud: Any = {"issuer": live.issuer, "token_endpoint": live.url("/token"),
                "list-with-issuer": [live.issuer, "https://other.example"]}[aud_kind]
    response = token_with_assertion(live, assertion_for(rp, aud=aud))
    assert response.status_code == 200, response.text


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64json(mac)}"


def _claims(live: Live, rp: RP, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": rp.client_id, "sub": rp.client_id, "aud": live.url("/token"), "iat": now,
              "exp": now + 60, "jti": secrets.token_urlsafe(16)}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


BAD_ASSERTIONS = [
    "iss-not-sub", "sub-other-client", "wrong-aud", "aud-introspection-of-other-server",
    "no-aud", "expired", "no-exp", "exp-far-future", "no-jti", "no-iss", "alg-none",
    "alg-none-uppercase", "hs256-public-pem", "hs256-public-jwk-json", "own-jwk-header",
    "jku-header", "x5u-header", "unregistered-key-registered-kid", "tampered-payload",
    "empty-signature",
]


@pytest.mark.parametrize("case", BAD_ASSERTIONS)
@pytest.mark.parametrize("path", ["/token", "/introspect"])
def test_bad_client_assertions_are_refused(live: Live, service: Callable[..., RP], case: str,
                                           path: str,
                                           key_source: Callable[[str], jwskate.Jwk]) -> None:
    rp = service("private_key_jwt", key_alg="RS256")
    other = service("private_key_jwt")
    key = rp.private_jwk
    assert key is not None
    attacker = jwskate.Jwk({**key_source("RS256").to_dict(), "kid": key.kid})
    now = int(time.time())
    signed: Callable[[dict[str, Any]], str] = lambda c: str(jwskate.Jwt.sign(c, key, alg="RS256"))  # noqa: E731
    if case == "iss-not-sub":
        assertion = signed(_claims(live, rp, iss=other.client_id))
    elif case == "sub-other-client":
        assertion = signed(_claims(live, rp, iss=other.client_id, sub=other.client_id))
    elif case == "wrong-aud":
        assertion = signed(_claims(live, rp, aud="https://evil.example/token"))
    elif case == "aud-introspection-of-other-server":
        assertion = signed(_claims(live, rp, aud=live.issuer + ".evil.example/token"))
    elif case == "no-aud":
        assertion = signed(_claims(live, rp, aud=None))
    elif case == "expired":
        assertion = signed(_claims(live, rp, iat=now - 600, exp=now - 120))
    elif case == "no-exp":
        assertion = signed(_claims(live, rp, exp=None))
    elif case == "exp-far-future":
        assertion = signed(_claims(live, rp, exp=now + 30 * 24 * 3600))
    elif case == "no-jti":
        assertion = signed(_claims(live, rp, jti=None))
    elif case == "no-iss":
        assertion = signed(_claims(live, rp, iss=None))
    elif case in ("alg-none", "alg-none-uppercase"):
        alg = "none" if case == "alg-none" else "NONE"
        assertion = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(_claims(live, rp))}."
    elif case == "hs256-public-pem":
        assertion = _hs256({"alg": "HS256", "typ": "JWT", "kid": key.kid}, _claims(live, rp),
                           key.public_jwk().to_pem().encode())
    elif case == "hs256-public-jwk-json":
        public = json.dumps(key.public_jwk().to_dict()).encode()
        assertion = _hs256({"alg": "HS256", "typ": "JWT"}, _claims(live, rp), public)
    elif case in ("own-jwk-header", "jku-header", "x5u-header"):
        member = {"own-jwk-header": ("jwk", attacker.public_jwk().to_dict()),
                  "jku-header": ("jku", "https://evil.example/jwks.json"),
                  "x5u-header": ("x5u", "https://evil.example/cert.pem")}[case]
        assertion = str(jwskate.Jwt.sign(_claims(live, rp), attacker, alg="RS256",
                                         extra_headers=dict([member])))
    elif case == "unregistered-key-registered-kid":
        assertion = str(jwskate.Jwt.sign(_claims(live, rp), attacker, alg="RS256"))
    elif case == "tampered-payload":
        good = signed(_claims(live, rp))
        head, _, sig = good.split(".")
        assertion = f"{head}.{b64json(_claims(live, rp, scope='admin'))}.{sig}"
    else:
        head, body, _ = signed(_claims(live, rp)).split(".")
        assertion = f"{head}.{body}."
    data = {"token": "anything"} if path == "/introspect" else {}
    response = requests.post(live.url(path), timeout=10, data={
        **({} if path == "/introspect" else CC), **data,
        "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})
    assert response.status_code in (400, 401), (case, response.status_code, response.text)
    assert response.json()["error"] in ("invalid_client", "invalid_request"), response.text
    assert "access_token" not in response.json()
    assert "active" not in response.json()


def test_replayed_assertion_jti_is_refused(live: Live, service: Callable[..., RP]) -> None:
    rp = service("private_key_jwt")
    assertion = assertion_for(rp, aud=live.url("/token"))
    assert token_with_assertion(live, assertion).status_code == 200
    assert_invalid_client(token_with_assertion(live, assertion))
    # Replay elsewhere is a replay too.
    again = token_with_assertion(live, assertion, path="/introspect", token="x")
    assert_invalid_client(again)


def test_jti_is_per_client(live: Live, service: Callable[..., RP]) -> None:
    """Another client using the same jti value is not a replay."""
    a, b = service("private_key_jwt"), service("private_key_jwt")
    jti = secrets.token_urlsafe(16)
    assert token_with_assertion(live, assertion_for(a, aud=live.issuer, jti=jti)).status_code == 200
    assert token_with_assertion(live, assertion_for(b, aud=live.issuer, jti=jti)).status_code == 200
