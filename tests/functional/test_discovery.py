"""Discovery (OIDC Discovery 1.0, RFC 8414) and the JWKS: every advertised value is true in
behaviour."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from tests.functional.conftest import (
    PRIVATE_MEMBERS,
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    authorize_url,
    callback,
    pkce_pair,
    redeem,
    userinfo,
    verify_jwt,
)

ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
             "introspection_endpoint", "revocation_endpoint")


def test_discovery_document_names_this_issuer(live: Live) -> None:
    response = requests.get(live.url("/.well-known/openid-configuration"), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    doc = response.json()
    assert doc["issuer"] == live.issuer
    for name in ENDPOINTS:
        assert doc[name].startswith(live.issuer + "/"), name
    as_meta = requests.get(live.url("/.well-known/oauth-authorization-server"), timeout=10)
    assert as_meta.status_code == 200
    assert as_meta.json()["issuer"] == live.issuer


@pytest.mark.parametrize("name", ENDPOINTS)
def test_every_advertised_endpoint_answers(live: Live, name: str) -> None:
    url = live.discovery()[name]
    if name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        response = requests.post(url, data={}, timeout=10)
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]
    elif name == "userinfo_endpoint":
        response = requests.get(url, timeout=10)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    elif name == "authorization_endpoint":
        response = requests.get(url, allow_redirects=False, timeout=10)
        assert response.status_code == 400
        assert "Location" not in response.headers
    else:
        response = requests.get(url, timeout=10)
        assert response.status_code == 200
        assert response.json()["keys"]


def test_jwks_carries_public_signing_keys_only(live: Live) -> None:
    jwks = live.jwks()
    advertised = set(live.discovery()["id_token_signing_alg_values_supported"])
    seen_algs = set()
    for key in jwks["keys"]:
        leaked = [m for m in PRIVATE_MEMBERS if m in key]
        assert not leaked, (key["kid"], leaked)
        assert key["kty"] in ("RSA", "EC", "OKP")
        assert key["use"] == "sig"
        assert key["kid"]
        seen_algs.add(key["alg"])
    assert advertised <= seen_algs
    kids = [k["kid"] for k in jwks["keys"]]
    assert len(kids) == len(set(kids))


def test_advertised_values(live: Live) -> None:
    doc = live.discovery()
    assert doc["response_types_supported"] == ["code"]
    assert set(doc["response_modes_supported"]) == {"query", "form_post"}
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token",
                                                 "client_credentials"}
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert "none" not in doc["id_token_signing_alg_values_supported"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt", "none"}
    assert "none" not in doc["token_endpoint_auth_signing_alg_values_supported"]
    assertion_algs = doc["token_endpoint_auth_signing_alg_values_supported"]
    assert not any(a.startswith("HS") for a in assertion_algs)
    assert doc["claims_parameter_supported"] is True
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert set(doc["subject_types_supported"]) == {"public", "pairwise"}


# --- what discovery says, the provider does ---------------------------------------------------

def test_every_advertised_id_token_alg_signs_id_tokens(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    doc = live.discovery()
    for alg in doc["id_token_signing_alg_values_supported"]:
        rp = make_client(id_token_alg=alg)
        result = get_code(b, rp)
        token = redeem(live, result).json()
        header, claims = verify_jwt(live, token["id_token"], alg=alg, audience=rp.client_id)
        assert header["alg"] == alg
        assert claims["acr"] in doc["acr_values_supported"]
        assert set(claims) <= set(doc["claims_supported"]), set(claims) - set(
            doc["claims_supported"])


def test_every_advertised_response_mode_and_auth_method_works(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    doc = live.discovery()
    for method in doc["token_endpoint_auth_methods_supported"]:
        for mode in doc["response_modes_supported"]:
            rp = make_client(method)
            result = get_code(b, rp, response_mode=mode)
            assert result.cb.mode == mode
            response = redeem(live, result)
            assert response.status_code == 200, (method, mode, response.text)
            assert response.json()["token_type"] == "Bearer"


def test_every_advertised_scope_is_usable(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    scopes = live.discovery()["scopes_supported"]
    rp = make_client(scopes=scopes)
    result = get_code(b, rp, scope=" ".join(scopes))
    body = redeem(live, result).json()
    assert set(body["scope"].split()) == set(scopes)
    info = userinfo(live, body["access_token"]).json()
    assert {"sub", "name", "email", "email_verified", "corp"} <= set(info)


def test_unsupported_request_objects_are_refused_as_advertised(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    doc = live.discovery()
    assert doc["request_parameter_supported"] is False
    assert doc["request_uri_parameter_supported"] is False
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    for name, error in (("request", "request_not_supported"),
                        ("request_uri", "request_uri_not_supported")):
        cb = callback(b.go(authorize_url(live, rp, challenge=challenge, **{name: "x.y.z"})))
        assert cb.params["error"] == error
        assert cb.params["iss"] == live.issuer


def test_advertised_end_session_endpoint_answers(live: Live) -> None:
    doc = live.discovery()
    response = requests.get(doc["end_session_endpoint"], allow_redirects=False, timeout=10)
    assert response.status_code != 404
