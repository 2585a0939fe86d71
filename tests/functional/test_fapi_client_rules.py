"""The FAPI 2.0 Security Profile's client rules, enforced at run time for ``fapi2`` clients:
PAR required, private_key_jwt only, ES256/PS256 assertions with aud = the issuer, pairwise
subjects by default. Basic clients keep their wider choices."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import jwskate
import pytest
import requests

from idp.extensions import db
from tests.functional.conftest import (
    ASSERTION_TYPE,
    RP,
    Browser,
    Live,
    PersonInfo,
    assert_json_error,
    assertion_for,
    authorize_url,
    callback,
    pkce_pair,
)
from tests.functional.test_par import fapi_client, request_params
from tests.support.dpop import ProofKey


def with_assertion(live: Live, path: str, rp: RP, data: dict[str, Any], assertion: str
                   ) -> requests.Response:
    body = {**data, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    return requests.post(live.url(path), data=body, allow_redirects=False, timeout=15)


def assert_refused(response: requests.Response, path: str) -> dict[str, Any]:
    """invalid_client: always 401 at PAR; at the token endpoint 401 when an Authorization
    header was sent, else 400 (as test_client_auth)."""
    status = 401 if path == "/par" or response.request.headers.get("Authorization") else 400
    return assert_json_error(response, status, "invalid_client")


def par_body(rp: RP) -> dict[str, Any]:
    _, challenge = pkce_pair()
    return request_params(rp, challenge)


# --- PAR required -----------------------------------------------------------------------------

def test_fapi2_client_must_push(live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
                                make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    cb = callback(b.go(authorize_url(live, rp, challenge=challenge, state="s-1")))
    assert cb.target == rp.redirect_uri
    assert cb.params["error"] == "invalid_request"
    assert "PAR" in cb.params["error_description"]
    assert cb.params["state"] == "s-1"
    assert cb.params["iss"] == live.issuer


def test_fapi2_without_par_and_unregistered_redirect_is_not_redirected(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    response = b.go(authorize_url(live, rp, challenge=challenge,
                                  redirect_uri="https://evil.example/cb"))
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_basic_client_need_not_push(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client("private_key_jwt")
    _, challenge = pkce_pair()
    assert "code" in callback(b.run(authorize_url(live, rp, challenge=challenge))).params


# --- private_key_jwt only ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/par", "/token", "/introspect", "/revoke"])
def test_fapi2_client_secret_auth_is_refused(ctx: Live, make_client: Callable[..., RP],
                                             path: str) -> None:
    """Even when the registration was changed behind the service's back (registration refuses
    it): the rule holds at run time."""
    from idp.clients.models import AuthMethod, Client
    from idp.oauth.server import forget_client
    from idp.security import digest

    rp = fapi_client(make_client)
    secret = "cis_" + secrets.token_urlsafe(32)
    row = db.session.get(Client, rp.id)
    assert row is not None
    row.auth_method = AuthMethod.CLIENT_SECRET_BASIC
    row.secret_hash = digest(secret)
    db.session.commit()
    forget_client(rp.client_id)
    data: dict[str, Any] = {"/par": par_body(rp), "/token": {"grant_type": "authorization_code",
                                                          "code": "cic_x"},
                            "/introspect": {"token": "x"}, "/revoke": {"token": "x"}}[path]
    response = requests.post(ctx.url(path), data=data, auth=(rp.client_id, secret), timeout=15)
    body = assert_refused(response, path)
    assert response.status_code == 401
    assert "private_key_jwt" in body["error_description"]


def test_fapi2_client_secret_post_is_refused(live: Live, make_client: Callable[..., RP]) -> None:
    rp = fapi_client(make_client)
    data = {**par_body(rp), "client_secret": "cis_guess"}
    assert_json_error(requests.post(live.url("/par"), data=data, timeout=15), 401,
                      "invalid_client")


# --- assertion algorithm and audience ---------------------------------------------------------

def signed_assertion(rp: RP, key: jwskate.Jwk, alg: str, aud: Any) -> str:
    now = int(time.time())
    claims = {"iss": rp.client_id, "sub": rp.client_id, "aud": aud, "iat": now,
              "exp": now + 60, "jti": secrets.token_urlsafe(16)}
    return str(jwskate.Jwt.sign(claims, key, alg=alg))


@pytest.mark.parametrize("path", ["/par", "/token"])
def test_fapi2_rs256_assertion_is_refused(live: Live, make_client: Callable[..., RP],
                                          key_source: Callable[[str], jwskate.Jwk],
                                          path: str) -> None:
    key = jwskate.Jwk({k: v for k, v in key_source("RS256").to_dict().items() if k != "alg"})
    rp = make_client("private_key_jwt", profile="fapi2",
                     jwks={"keys": [key.public_jwk().to_dict()]})
    data = par_body(rp) if path == "/par" else {"grant_type": "client_credentials"}
    refused = with_assertion(live, path, rp, data, signed_assertion(rp, key, "RS256", live.issuer))
    body = assert_refused(refused, path)
    assert "ES256 or PS256" in body["error_description"]
    if path == "/par":
        # The same key with PS256 is fine.
        accepted = with_assertion(live, path, rp, data,
                                  signed_assertion(rp, key, "PS256", live.issuer))
        assert accepted.status_code == 201, accepted.text


def test_fapi2_eddsa_assertion_is_refused(live: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client("private_key_jwt", profile="fapi2", key_alg="EdDSA")
    assert rp.private_jwk is not None
    refused = with_assertion(live, "/par", rp, par_body(rp),
                             signed_assertion(rp, rp.private_jwk, "EdDSA", live.issuer))
    assert_json_error(refused, 401, "invalid_client")


@pytest.mark.parametrize("aud_kind", ["token_endpoint", "par_endpoint", "list-with-issuer"])
def test_fapi2_assertion_aud_must_be_the_issuer(live: Live, make_client: Callable[..., RP],
                                                aud_kind: str) -> None:
    rp = fapi_client(make_client)
    aud: Any = {"token_endpoint": live.url("/token"), "par_endpoint": live.url("/par"),
                "list-with-issuer": [live.issuer]}[aud_kind]
    for path, data in (("/par", par_body(rp)), ("/token", {"grant_type": "authorization_code",
                                                           "code": "cic_x"})):
        response = with_assertion(live, path, rp, data, assertion_for(rp, aud=aud))
        body = assert_refused(response, path)
        assert "issuer" in body["error_description"]


@pytest.mark.parametrize("aud_kind", ["issuer", "token_endpoint", "par_endpoint"])
def test_basic_client_assertion_audiences_at_par(live: Live, make_client: Callable[..., RP],
                                                 aud_kind: str) -> None:
    """RFC 9126 §2: the issuer, the token endpoint or the PAR endpoint identify us."""
    rp = make_client("private_key_jwt", key_alg="RS256")
    aud = {"issuer": live.issuer, "token_endpoint": live.url("/token"),
           "par_endpoint": live.url("/par")}[aud_kind]
    response = with_assertion(live, "/par", rp, par_body(rp), assertion_for(rp, aud=aud))
    assert response.status_code == 201, response.text


def test_fapi2_full_flow_by_hand(live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
                                 make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client("private_key_jwt", profile="fapi2", key_alg="PS256")
    verifier, challenge = pkce_pair()
    pushed = with_assertion(live, "/par", rp, request_params(rp, challenge),
                            assertion_for(rp, aud=live.issuer))
    assert pushed.status_code == 201, pushed.text
    url = live.url("/authorize?" + urlencode({"client_id": rp.client_id,
                                              "request_uri": pushed.json()["request_uri"]}))
    cb = callback(b.run(url))
    token = ProofKey().post(live.url("/token"), lambda: {
        "grant_type": "authorization_code", "code": cb.params["code"],
        "redirect_uri": rp.redirect_uri, "code_verifier": verifier,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion_for(rp, aud=live.issuer)})
    assert token.status_code == 200, token.text
    assert token.json()["token_type"] == "DPoP"


# --- registration: pairwise by default --------------------------------------------------------

def test_fapi2_registration_defaults_to_pairwise(ctx: Live, make_client: Callable[..., RP]
                                                 ) -> None:
    from idp.clients import services
    from idp.clients.models import SubjectType

    bank = services.get_client(fapi_client(make_client).client_id)
    assert bank.subject_type is SubjectType.PAIRWISE
    assert bank.sector_identifier == "rp.example"
    public = services.get_client(fapi_client(make_client, subject_type="public").client_id)
    assert public.subject_type is SubjectType.PUBLIC
    basic = services.get_client(make_client().client_id)
    assert basic.subject_type is SubjectType.PUBLIC
