"""Discovery (OIDC Discovery 1.0, RFC 8414) and the JWKS: every advertised value is true in
behaviour."""

from __future__ import annotations

import pytest
import requests

from tests.functional.conftest import PRIVATE_MEMBERS, Live

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
