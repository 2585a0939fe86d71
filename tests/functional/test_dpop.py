"""DPoP (RFC 9449) sender-constrained tokens, driven by requests-oauth2client and by hand:
binding at the token endpoint (client_credentials, code with dpop_jkt, refresh), nonces,
the hot path falling through, introspection, and userinfo as a DPoP resource."""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jwskate
import pytest
import requests
from requests_oauth2client import ClientSecretBasic, DPoPKey, DPoPToken, OAuth2Client, PrivateKeyJwt

from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    assert_json_error,
    callback,
    introspect,
    post,
    redeem,
)

CC = {"grant_type": "client_credentials", "scope": "corp"}


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def proof(url: str, *, key: jwskate.Jwk, method: str = "POST", alg: str = "ES256",
          header: dict[str, Any] | None = None, signer: jwskate.Jwk | None = None,
          **claims: Any) -> str:
    """A DPoP proof for ``method url`` by ``key``; ``header``/``claims`` override (None drops)."""
    body = {"jti": secrets.token_urlsafe(12), "htm": method, "htu": url, "iat": int(time.time())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    head: dict[str, Any] = {"typ": "dpop+jwt", "alg": alg}
    head.update(header or {})
    if "jwk" not in head:
        head["jwk"] = key.public_jwk().to_dict()
    head = {k: v for k, v in head.items() if v is not None}
    signing_input = f"{b64(head)}.{b64(body)}".encode()
    if alg == "none":
        return f"{signing_input.decode()}."
    signature = (signer or key).sign(signing_input, alg=alg)
    return f"{signing_input.decode()}.{b64(bytes(signature))}"


def ath(token: str) -> str:
    import hashlib

    return b64(hashlib.sha256(token.encode()).digest())


def jkt(key: jwskate.Jwk) -> str:
    return str(key.public_jwk().thumbprint())


def token_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return result


@pytest.fixture
def service(make_client: Callable[..., RP]) -> Callable[..., RP]:
    def factory(auth_method: str = "client_secret_basic", **settings: Any) -> RP:
        return make_client(auth_method, grant_types=["client_credentials"], scopes=["corp"],
                           **settings)

    return factory


@pytest.fixture
def dpop_key() -> Callable[..., jwskate.Jwk]:
    made: list[jwskate.Jwk] = []

    def factory(alg: str = "ES256") -> jwskate.Jwk:
        made.append(jwskate.Jwk.generate(alg=alg))
        return made[-1]

    return factory


def oauth_client(live: Live, rp: RP, **kwargs: Any) -> OAuth2Client:
    auth: Any
    if rp.auth_method == "private_key_jwt":
        assert rp.private_jwk is not None
        auth = PrivateKeyJwt(rp.client_id, rp.private_jwk, alg=rp.private_jwk.alg, aud=live.issuer)
        kwargs.setdefault("id_token_signed_response_alg", rp.id_token_alg)
    else:
        auth = ClientSecretBasic(rp.client_id, str(rp.secret))
    return OAuth2Client.from_discovery_endpoint(
        live.url("/.well-known/openid-configuration"), issuer=live.issuer, testing=True,
        auth=auth, redirect_uri=rp.redirect_uri, **kwargs)


def fapi2_client(make_client: Callable[..., RP], **settings: Any) -> RP:
    return make_client("private_key_jwt", key_alg="ES256", profile="fapi2", **settings)


# --- with a real client library ---------------------------------------------------------------

def test_discovery_advertises_dpop_algs(live: Live) -> None:
    algs = live.discovery()["dpop_signing_alg_values_supported"]
    assert set(algs) >= {"ES256", "PS256", "EdDSA"}
    assert "none" not in algs
    assert not any(a.startswith("HS") for a in algs)


def test_client_credentials_with_dpop_is_bound(live: Live, service: Callable[..., RP]) -> None:
    rp = service()
    client = oauth_client(live, rp)
    key = DPoPKey.generate(alg="ES256")
    token = client.client_credentials(scope="corp", dpop=True, dpop_key=key)
    assert isinstance(token, DPoPToken)
    assert token.token_type == "DPoP"
    assert token_claims(token.access_token)["cnf"] == {"jkt": key.dpop_jkt}
    # Introspection (hot path: no DPoP header) and the full path (a DPoP header) agree.
    hot = introspect(live, rp, token.access_token)
    full = post(live, "/introspect", rp, {"token": token.access_token},
                headers={"DPoP": "x"}).json()
    assert hot == full
    assert hot["active"] is True
    assert hot["token_type"] == "DPoP"
    assert hot["cnf"] == {"jkt": key.dpop_jkt}


def test_client_credentials_without_dpop_stays_bearer(live: Live,
                                                      service: Callable[..., RP]) -> None:
    rp = service()
    response = post(live, "/token", rp, CC)
    assert response.status_code == 200
    assert response.json()["token_type"] == "Bearer"
    assert "cnf" not in token_claims(response.json()["access_token"])
    assert introspect(live, rp, response.json()["access_token"])["token_type"] == "Bearer"


def test_fapi2_client_credentials_needs_a_proof_and_a_nonce(
        live: Live, make_client: Callable[..., RP]) -> None:
    """The library gets use_dpop_nonce with DPoP-Nonce, retries with the nonce, succeeds."""
    rp = fapi2_client(make_client, grant_types=["client_credentials"], scopes=["corp"])
    client = oauth_client(live, rp)
    key = DPoPKey.generate(alg="ES256")
    token = client.client_credentials(scope="corp", dpop=True, dpop_key=key)
    assert token.token_type == "DPoP"
    assert key.as_nonce  # the server asked for one
    assert token_claims(token.access_token)["cnf"] == {"jkt": key.dpop_jkt}
    # Without a proof: refused (FAPI 2.0: sender-constrained tokens only).
    missing = post(live, "/token", rp, CC)
    assert_json_error(missing, 400, "invalid_dpop_proof")


def test_code_flow_with_dpop_then_userinfo_and_refresh(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    """A fapi2 client: dpop_jkt on the authorization request (PAR when the provider has it),
    the code redeemed with a proof (nonce round trip), userinfo with the DPoP token (the
    resource's nonce round trip), refresh with the same key."""
    who, b = signed_in()
    rp = fapi2_client(make_client)
    client = oauth_client(live, rp)
    key = DPoPKey.generate(alg="ES256")
    azr = client.authorization_request(scope="openid corp", dpop=True, dpop_key=key)
    assert azr.dpop_jkt == key.dpop_jkt
    start: Any = azr
    if client.pushed_authorization_request_endpoint:
        start = client.pushed_authorization_request(azr)
    cb = callback(b.run(str(start.uri)))
    # validate=False: requests-oauth2client 1.8's validate_id_token rebuilds a DPoPToken
    # without its key (TypeError); the ID token is checked in test_code_flow.
    token = client.authorization_code(azr.validate_callback(cb.url()), validate=False)
    assert isinstance(token, DPoPToken)
    assert token.dpop_key is key
    assert token_claims(token.access_token)["cnf"] == {"jkt": key.dpop_jkt}
    info = client.userinfo(token)
    assert info["corp"]["br_number"] == who.companies[0].br_number
    assert key.rs_nonce  # userinfo asked for a nonce and the library complied
    refreshed = client.refresh_token(token)
    assert isinstance(refreshed, DPoPToken)
    assert token_claims(refreshed.access_token)["cnf"] == {"jkt": key.dpop_jkt}
    assert introspect(live, rp, refreshed.refresh_token or "")["cnf"] == {"jkt": key.dpop_jkt}


# --- the token endpoint, by hand --------------------------------------------------------------

def _mutations(live: Live, key: jwskate.Jwk) -> dict[str, str]:
    url = live.url("/token")
    hs = jwskate.Jwk.generate(alg="HS256")
    return {
        "wrong_htm": proof(url, key=key, htm="GET"),
        "wrong_htu": proof(live.url("/introspect"), key=key),
        "other_host_htu": proof("https://evil.example/token", key=key),
        "stale_iat": proof(url, key=key, iat=int(time.time()) - 300),
        "future_iat": proof(url, key=key, iat=int(time.time()) + 300),
        "private_jwk": proof(url, key=key, header={"jwk": key.to_dict()}),
        "alg_none": proof(url, key=key, alg="none"),
        "alg_hs256": proof(url, key=hs, alg="HS256", header={"jwk": hs.to_dict()}),
        "typ_missing": proof(url, key=key, header={"typ": None}),
        "typ_jwt": proof(url, key=key, header={"typ": "JWT"}),
        "bad_signature": proof(url, key=key, signer=jwskate.Jwk.generate(alg="ES256")),
        "jti_missing": proof(url, key=key, jti=None),
        "not_a_jws": "not-a-proof",
        "huge": "e" * 10_000,
    }


MUTATIONS = ["wrong_htm", "wrong_htu", "other_host_htu", "stale_iat", "future_iat",
             "private_jwk", "alg_none", "alg_hs256", "typ_missing", "typ_jwt", "bad_signature",
             "jti_missing", "not_a_jws", "huge"]


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_bad_proof_at_the_token_endpoint_is_refused(
        live: Live, service: Callable[..., RP], dpop_key: Callable[..., jwskate.Jwk],
        mutation: str) -> None:
    rp = service()
    bad = _mutations(live, dpop_key())[mutation]
    response = post(live, "/token", rp, CC, headers={"DPoP": bad})
    assert_json_error(response, 400, "invalid_dpop_proof")


def test_htu_query_and_fragment_are_ignored(live: Live, service: Callable[..., RP],
                                            dpop_key: Callable[..., jwskate.Jwk]) -> None:
    rp, key = service(), dpop_key()
    good = proof(live.url("/token") + "?a=1#f", key=key)
    response = post(live, "/token", rp, CC, headers={"DPoP": good})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"


def test_replayed_jti_is_refused(live: Live, service: Callable[..., RP],
                                 dpop_key: Callable[..., jwskate.Jwk]) -> None:
    rp, key = service(), dpop_key()
    once = proof(live.url("/token"), key=key)
    assert post(live, "/token", rp, CC, headers={"DPoP": once}).status_code == 200
    assert_json_error(post(live, "/token", rp, CC, headers={"DPoP": once}), 400,
                      "invalid_dpop_proof")


def test_two_dpop_headers_are_refused(live: Live, service: Callable[..., RP],
                                      dpop_key: Callable[..., jwskate.Jwk]) -> None:
    rp, key = service(), dpop_key()
    url = live.url("/token")
    parts = urlsplit(url)
    body = "grant_type=client_credentials&scope=corp"
    basic = base64.b64encode(f"{rp.client_id}:{rp.secret}".encode()).decode()
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("POST", parts.path)
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Authorization", f"Basic {basic}")
        conn.putheader("DPoP", proof(url, key=key))
        conn.putheader("DPoP", proof(url, key=key))
        conn.endheaders(body.encode())
        answer = conn.getresponse()
        status, payload = answer.status, json.loads(answer.read())
    finally:
        conn.close()
    assert status == 400
    assert payload["error"] == "invalid_dpop_proof"


def test_use_dpop_nonce_then_success_with_the_nonce(
        live: Live, make_client: Callable[..., RP], dpop_key: Callable[..., jwskate.Jwk]) -> None:
    rp = fapi2_client(make_client, grant_types=["client_credentials"], scopes=["corp"])
    key = dpop_key()
    url = live.url("/token")
    first = post(live, "/token", rp, CC, headers={"DPoP": proof(url, key=key)})
    assert_json_error(first, 400, "use_dpop_nonce")
    nonce = first.headers["DPoP-Nonce"]
    forged = post(live, "/token", rp, CC, headers={"DPoP": proof(url, key=key, nonce="x" * 43)})
    assert_json_error(forged, 400, "use_dpop_nonce")
    second = post(live, "/token", rp, CC, headers={"DPoP": proof(url, key=key, nonce=nonce)})
    assert second.status_code == 200, second.text
    assert token_claims(second.json()["access_token"])["cnf"] == {"jkt": jkt(key)}


def test_fapi2_refuses_rs256_proofs(live: Live, make_client: Callable[..., RP],
                                    dpop_key: Callable[..., jwskate.Jwk]) -> None:
    rp = fapi2_client(make_client, grant_types=["client_credentials"], scopes=["corp"])
    key = dpop_key("RS256")
    response = post(live, "/token", rp, CC,
                    headers={"DPoP": proof(live.url("/token"), key=key, alg="RS256")})
    assert_json_error(response, 400, "invalid_dpop_proof")


# --- dpop_jkt on the authorization request ----------------------------------------------------

def test_dpop_jkt_must_be_a_thumbprint(live: Live, make_client: Callable[..., RP],
                                       signed_in: Callable[..., tuple[PersonInfo, Browser]],
                                       get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    rp = make_client("client_secret_basic")
    with pytest.raises(AssertionError):
        get_code(b, rp, dpop_jkt="not a thumbprint")


def test_code_bound_by_dpop_jkt_needs_that_key(
        live: Live, make_client: Callable[..., RP],
        signed_in: Callable[..., tuple[PersonInfo, Browser]],
        get_code: Callable[..., CodeResult], dpop_key: Callable[..., jwskate.Jwk]) -> None:
    _, b = signed_in()
    rp = make_client("client_secret_basic")
    key, other = dpop_key(), dpop_key()
    result = get_code(b, rp, dpop_jkt=jkt(key))
    url = live.url("/token")
    form = {"grant_type": "authorization_code", "code": result.code,
            "redirect_uri": rp.redirect_uri, "code_verifier": result.verifier}
    assert_json_error(redeem(live, result), 400, "invalid_dpop_proof")  # no proof
    wrong = post(live, "/token", rp, form, headers={"DPoP": proof(url, key=other)})
    assert_json_error(wrong, 400, "invalid_grant")
    right = post(live, "/token", rp, form, headers={"DPoP": proof(url, key=key)})
    assert right.status_code == 200, right.text
    assert right.json()["token_type"] == "DPoP"


# --- refresh tokens ---------------------------------------------------------------------------

def _bound_tokens(live: Live, rp: RP, b: Browser, get_code: Callable[..., CodeResult],
                  key: jwskate.Jwk, scope: str = "openid") -> dict[str, Any]:
    result = get_code(b, rp, scope=scope)
    form = {"grant_type": "authorization_code", "code": result.code,
            "redirect_uri": rp.redirect_uri, "code_verifier": result.verifier}
    response = post(live, "/token", rp, form, headers={"DPoP": proof(live.url("/token"), key=key)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["token_type"] == "DPoP"
    assert body["refresh_token"]
    return body


def test_refresh_of_a_bound_family_needs_the_same_key(
        live: Live, make_client: Callable[..., RP],
        signed_in: Callable[..., tuple[PersonInfo, Browser]],
        get_code: Callable[..., CodeResult], dpop_key: Callable[..., jwskate.Jwk]) -> None:
    _, b = signed_in()
    rp = make_client("client_secret_basic")
    key, other = dpop_key(), dpop_key()
    tokens = _bound_tokens(live, rp, b, get_code, key)
    url = live.url("/token")
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    assert_json_error(post(live, "/token", rp, form), 400, "invalid_dpop_proof")
    assert_json_error(post(live, "/token", rp, form, headers={"DPoP": proof(url, key=other)}),
                      400, "invalid_grant")
    ok = post(live, "/token", rp, form, headers={"DPoP": proof(url, key=key)})
    assert ok.status_code == 200, ok.text  # the refused attempts did not rotate the token
    assert ok.json()["token_type"] == "DPoP"
    assert token_claims(ok.json()["access_token"])["cnf"] == {"jkt": jkt(key)}


# --- userinfo as a DPoP resource --------------------------------------------------------------

def _userinfo(live: Live, scheme: str, token: str, dpop: str | None = None,
              method: str = "GET") -> requests.Response:
    headers = {"Authorization": f"{scheme} {token}"}
    if dpop is not None:
        headers["DPoP"] = dpop
    return requests.request(method, live.url("/userinfo"), headers=headers, timeout=10)


def test_userinfo_with_dpop(live: Live, make_client: Callable[..., RP],
                            signed_in: Callable[..., tuple[PersonInfo, Browser]],
                            get_code: Callable[..., CodeResult],
                            dpop_key: Callable[..., jwskate.Jwk]) -> None:
    who, b = signed_in()
    rp = make_client("client_secret_basic")
    key, other = dpop_key(), dpop_key()
    token = _bound_tokens(live, rp, b, get_code, key, scope="openid corp")["access_token"]
    url = live.url("/userinfo")

    def refused(response: requests.Response, error: str, scheme: str = "DPoP") -> None:
        assert_json_error(response, 401, error)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith(scheme)
        assert f'error="{error}"' in challenge

    good = _userinfo(live, "DPoP", token, proof(url, key=key, method="GET", ath=ath(token)))
    assert good.status_code == 200, good.text
    assert good.json()["corp"]["br_number"] == who.companies[0].br_number
    assert good.headers["Cache-Control"] == "no-store"
    # A bound token as a plain Bearer token.
    refused(_userinfo(live, "Bearer", token), "invalid_token", "Bearer")
    # No proof, missing or wrong ath, wrong key, wrong htm, wrong htu, replayed jti.
    refused(_userinfo(live, "DPoP", token), "invalid_dpop_proof")
    refused(_userinfo(live, "DPoP", token, proof(url, key=key, method="GET")),
            "invalid_dpop_proof")
    refused(_userinfo(live, "DPoP", token, proof(url, key=key, method="GET", ath=ath("x"))),
            "invalid_dpop_proof")
    refused(_userinfo(live, "DPoP", token, proof(url, key=other, method="GET", ath=ath(token))),
            "invalid_token")
    refused(_userinfo(live, "DPoP", token, proof(url, key=key, method="POST", ath=ath(token))),
            "invalid_dpop_proof")
    refused(_userinfo(live, "DPoP", token,
                      proof(live.url("/token"), key=key, method="GET", ath=ath(token))),
            "invalid_dpop_proof")
    once = proof(url, key=key, method="GET", ath=ath(token))
    assert _userinfo(live, "DPoP", token, once).status_code == 200
    refused(_userinfo(live, "DPoP", token, once), "invalid_dpop_proof")
    # POST userinfo works with htm POST.
    posted = _userinfo(live, "DPoP", token, proof(url, key=key, method="POST", ath=ath(token)),
                       method="POST")
    assert posted.status_code == 200


def test_unbound_token_with_the_dpop_scheme_is_refused(
        live: Live, make_client: Callable[..., RP],
        signed_in: Callable[..., tuple[PersonInfo, Browser]],
        get_code: Callable[..., CodeResult], dpop_key: Callable[..., jwskate.Jwk]) -> None:
    _, b = signed_in()
    rp = make_client("client_secret_basic")
    token = redeem(live, get_code(b, rp)).json()["access_token"]
    key = dpop_key()
    response = _userinfo(live, "DPoP", token,
                         proof(live.url("/userinfo"), key=key, method="GET", ath=ath(token)))
    assert_json_error(response, 401, "invalid_token")
    assert response.headers["WWW-Authenticate"].startswith("DPoP")
    assert _userinfo(live, "Bearer", token).status_code == 200  # as before


def test_userinfo_without_a_token_offers_both_schemes(live: Live) -> None:
    response = requests.get(live.url("/userinfo"), timeout=10)
    assert response.status_code == 401
    challenges = response.headers["WWW-Authenticate"]
    assert challenges.startswith("Bearer")
    assert 'DPoP algs="' in challenges


def test_hot_path_hands_dpop_requests_to_the_full_path(
        live: Live, service: Callable[..., RP], dpop_key: Callable[..., jwskate.Jwk]) -> None:
    from tests.functional.test_hotpath import served_by_hot_path

    rp, key = service(), dpop_key()
    plain = post(live, "/token", rp, CC)
    bound = post(live, "/token", rp, CC, headers={"DPoP": proof(live.url("/token"), key=key)})
    assert served_by_hot_path(plain)
    assert not served_by_hot_path(bound)
    assert bound.json()["token_type"] == "DPoP"
    refused = post(live, "/token", rp, CC, headers={"DPoP": "garbage"})
    assert not served_by_hot_path(refused)
    assert_json_error(refused, 400, "invalid_dpop_proof")


def test_bound_tokens_are_audited_with_their_key(
        ctx: Live, make_client: Callable[..., RP],
        signed_in: Callable[..., tuple[PersonInfo, Browser]],
        get_code: Callable[..., CodeResult], dpop_key: Callable[..., jwskate.Jwk]) -> None:
    from sqlalchemy import select

    from idp.audit.models import AuditEvent
    from idp.extensions import db

    _, b = signed_in()
    rp, key = make_client("client_secret_basic"), dpop_key()
    _bound_tokens(ctx, rp, b, get_code, key)
    db.session.rollback()
    issued = db.session.scalars(
        select(AuditEvent).where(AuditEvent.tag == "oauth:token:issue")).all()
    assert [e.details.get("dpop_jkt") for e in issued] == [jkt(key)]
