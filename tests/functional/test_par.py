"""Pushed authorization requests (RFC 9126) and signed request objects at PAR (RFC 9101), as
a real client library and hand-made requests see them."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import jwskate
import pytest
import requests
from requests_oauth2client import DPoPToken, OAuth2Client, PrivateKeyJwt
from sqlalchemy import select, update

from idp.extensions import db
from tests.functional.conftest import (
    ASSERTION_TYPE,
    RP,
    Browser,
    Live,
    PersonInfo,
    assert_json_error,
    assertion_for,
    b64json,
    callback,
    pkce_pair,
    post,
)
from tests.support.dpop import ProofKey

PREFIX = "urn:ietf:params:oauth:request_uri:"


# --- helpers ----------------------------------------------------------------------------------

def fapi_client(make_client: Callable[..., RP], **settings: Any) -> RP:
    return make_client("private_key_jwt", key_alg="ES256", profile="fapi2", **settings)


def request_params(rp: RP, challenge: str | None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"response_type": "code", "client_id": rp.client_id,
                              "redirect_uri": rp.redirect_uri, "scope": "openid",
                              "state": "st-" + secrets.token_hex(4), "nonce": "n-1"}
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def push(live: Live, rp: RP, data: dict[str, Any], **kwargs: Any) -> requests.Response:
    """POST to /par as ``rp``: FAPI-style assertion (aud = issuer) for private_key_jwt."""
    if rp.auth_method != "private_key_jwt":
        return post(live, "/par", rp, data, **kwargs)
    body = {**data, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion_for(rp, aud=live.issuer)}
    return requests.post(live.url("/par"), data=body, allow_redirects=False, timeout=15,
                         **kwargs)


def pushed_uri(live: Live, rp: RP, challenge: str, **extra: Any) -> str:
    response = push(live, rp, request_params(rp, challenge, **extra))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["request_uri"].startswith(PREFIX)
    return str(body["request_uri"])


def authorize_with(live: Live, client_id: str, request_uri: str, **extra: str) -> str:
    return live.url("/authorize") + "?" + urlencode(
        {"client_id": client_id, "request_uri": request_uri, **extra})


def redeem_fapi(live: Live, rp: RP, code: str, verifier: str) -> requests.Response:
    """Redeem a fapi2 client's code: private_key_jwt and a DPoP proof (FAPI 2.0 tokens are
    sender-constrained)."""
    return ProofKey().post(live.url("/token"), lambda: {
        "grant_type": "authorization_code", "code": code, "redirect_uri": rp.redirect_uri,
        "code_verifier": verifier, "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion_for(rp, aud=live.issuer)})


def assert_page_error(response: requests.Response) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")


def request_object(rp: RP, live: Live, claims: dict[str, Any], *, key: jwskate.Jwk | None = None,
                   alg: str | None = None, typ: str | None = "oauth-authz-req+jwt") -> str:
    now = int(time.time())
    body: dict[str, Any] = {"iss": rp.client_id, "aud": live.issuer, "nbf": now,
                            "exp": now + 300, "jti": secrets.token_urlsafe(8)}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    signing = key or rp.private_jwk
    assert signing is not None
    return str(jwskate.Jwt.sign(body, signing, alg=alg or signing.alg, typ=typ))


# --- the flow with a real client library ------------------------------------------------------

def test_par_flow_with_requests_oauth2client(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    """A FAPI 2.0 bank client: PAR, authorize by request_uri, code redeemed with
    private_key_jwt (aud = issuer), all done by requests-oauth2client."""
    who, b = signed_in()
    rp = fapi_client(make_client)
    assert rp.private_jwk is not None
    client = OAuth2Client.from_discovery_endpoint(
        live.url("/.well-known/openid-configuration"), issuer=live.issuer, testing=True,
        auth=PrivateKeyJwt(rp.client_id, rp.private_jwk, alg="ES256", aud=live.issuer),
        redirect_uri=rp.redirect_uri, id_token_signed_response_alg=rp.id_token_alg)
    # FAPI 2.0 tokens are sender-constrained: DPoP, bound from PAR on (dpop_jkt).
    azr = client.authorization_request(scope="openid corp", dpop=True)
    pushed = client.pushed_authorization_request(azr)
    assert pushed.request_uri.startswith(PREFIX)
    cb = callback(b.run(str(pushed.uri)))
    response = azr.validate_callback(cb.url())  # state and iss checked by the library
    # validate=False: requests-oauth2client 1.8's ID token validation fails on DPoP tokens
    # (it rebuilds the token without its key); ID tokens are checked in test_code_flow.
    token = client.authorization_code(response, validate=False)
    assert isinstance(token, DPoPToken)
    assert token.id_token is not None
    assert client.userinfo(token)["corp"]["br_number"] == who.companies[0].br_number


def test_basic_client_may_push_too(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client("client_secret_basic")
    verifier, challenge = pkce_pair()
    uri = pushed_uri(live, rp, challenge)
    cb = callback(b.run(authorize_with(live, rp.client_id, uri)))
    assert cb.params["code"]
    assert cb.params["iss"] == live.issuer
    answer = post(live, "/token", rp, {"grant_type": "authorization_code",
                                       "code": cb.params["code"], "code_verifier": verifier,
                                       "redirect_uri": rp.redirect_uri})
    assert answer.status_code == 200, answer.text


def test_push_answer_shape_and_storage(ctx: Live, make_client: Callable[..., RP]) -> None:
    from idp.oauth.models import PushedAuthorization
    from idp.security import digest

    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    response = push(ctx, rp, request_params(rp, challenge))
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"request_uri", "expires_in"}
    assert body["expires_in"] == ctx.config()["PAR_TTL"] == 60
    db.session.rollback()
    row = db.session.scalars(select(PushedAuthorization)).one()
    assert row.request_uri_hash == digest(body["request_uri"][len(PREFIX):])
    assert body["request_uri"] not in str(row.params)
    assert "client_assertion" not in row.params


def test_pushed_parameters_win_over_the_query(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    """RFC 9126 §4: only the pushed parameters count; others at /authorize are ignored."""
    _, b = signed_in()
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    uri = pushed_uri(live, rp, challenge, state="pushed-state")
    cb = callback(b.run(authorize_with(live, rp.client_id, uri, state="other",
                                       redirect_uri="https://evil.example/cb",
                                       response_mode="form_post")))
    assert cb.target == rp.redirect_uri
    assert cb.mode == "query"
    assert cb.params["state"] == "pushed-state"


# --- request_uri at /authorize ----------------------------------------------------------------

def test_request_uri_is_single_use(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    uri = pushed_uri(live, rp, challenge)
    assert "code" in callback(b.run(authorize_with(live, rp.client_id, uri))).params
    assert_page_error(b.go(authorize_with(live, rp.client_id, uri)))


def test_racing_redemptions_cannot_both_win(live: Live, make_client: Callable[..., RP]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    url = authorize_with(live, rp.client_id, pushed_uri(live, rp, challenge))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda _: requests.get(url, allow_redirects=False, timeout=15).status_code, range(4)))
    assert sorted(answers) == [200, 400, 400, 400]  # one gets the sign-in page


def test_expired_request_uri_is_refused(
        ctx: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    from idp.db import utcnow
    from idp.oauth.models import PushedAuthorization

    _, b = signed_in()
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    uri = pushed_uri(ctx, rp, challenge)
    db.session.execute(update(PushedAuthorization).values(
        expires_at=utcnow() - dt.timedelta(seconds=1)))
    db.session.commit()
    assert_page_error(b.go(authorize_with(ctx, rp.client_id, uri)))


def test_purge_deletes_expired_pushed_requests(ctx: Live, make_client: Callable[..., RP]
                                               ) -> None:
    from idp.db import utcnow
    from idp.oauth.models import PushedAuthorization
    from idp.oauth.tokens import purge_expired

    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    pushed_uri(ctx, rp, challenge)
    pushed_uri(ctx, rp, challenge)
    first = db.session.scalars(select(PushedAuthorization.id)).first()
    db.session.execute(update(PushedAuthorization).where(PushedAuthorization.id == first)
                       .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    db.session.commit()
    assert purge_expired()["pushed_authorizations"] == 1
    assert len(db.session.scalars(select(PushedAuthorization)).all()) == 1


def test_foreign_request_uri_is_refused_and_stays_usable(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = fapi_client(make_client)
    other = make_client("client_secret_basic")
    _, challenge = pkce_pair()
    uri = pushed_uri(live, rp, challenge)
    assert_page_error(b.go(authorize_with(live, other.client_id, uri)))
    assert_page_error(b.go(live.url("/authorize?" + urlencode({"request_uri": uri}))))
    assert "code" in callback(b.run(authorize_with(live, rp.client_id, uri))).params


@pytest.mark.parametrize("uri", [PREFIX + "unknown", PREFIX + "x" * 200, PREFIX])
def test_unknown_request_uri_is_refused(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], uri: str) -> None:
    _, b = signed_in()
    rp = fapi_client(make_client)
    assert_page_error(b.go(authorize_with(live, rp.client_id, uri)))


def test_other_request_uri_values_stay_unsupported(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = make_client()
    _, challenge = pkce_pair()
    params = request_params(rp, challenge, request_uri="https://rp.example/request.jwt")
    cb = callback(b.go(live.url("/authorize?" + urlencode(params))))
    assert cb.params["error"] == "request_uri_not_supported"


# --- the PAR endpoint's own rules -------------------------------------------------------------

def test_push_requires_pkce_s256(live: Live, make_client: Callable[..., RP]) -> None:
    for rp in (fapi_client(make_client), make_client("client_secret_basic")):
        body = assert_json_error(push(live, rp, request_params(rp, None)), 400,
                                 "invalid_request")
        assert "PKCE" in body["error_description"]
        plain = request_params(rp, None, code_challenge="a" * 43, code_challenge_method="plain")
        assert_json_error(push(live, rp, plain), 400, "invalid_request")


def test_push_refuses_request_uri(live: Live, make_client: Callable[..., RP]) -> None:
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    data = request_params(rp, challenge, request_uri=PREFIX + "abc")
    assert_json_error(push(live, rp, data), 400, "invalid_request")


def test_push_checks_redirect_uri_exactly(live: Live, make_client: Callable[..., RP]) -> None:
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    for uri in ("https://rp.example/cb/", "https://evil.example/cb", None):
        data = request_params(rp, challenge, redirect_uri=uri)  # None: left out
        assert_json_error(push(live, rp, data), 400, "invalid_request")


def test_push_runs_the_authorization_checks(live: Live, make_client: Callable[..., RP]) -> None:
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    assert_json_error(push(live, rp, request_params(rp, challenge, prompt="bogus")), 400,
                      "invalid_request")
    assert_json_error(push(live, rp, request_params(rp, challenge, response_type="token")),
                      400, "unsupported_response_type")


def test_push_needs_client_authentication(live: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client("client_secret_basic")
    _, challenge = pkce_pair()
    data = request_params(rp, challenge)
    assert_json_error(requests.post(live.url("/par"), data=data, timeout=10), 401,
                      "invalid_client")
    wrong = requests.post(live.url("/par"), data=data, auth=(rp.client_id, "cis_wrong"),
                          timeout=10)
    assert_json_error(wrong, 401, "invalid_client")
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")


def test_push_client_id_must_be_the_authenticated_client(
        live: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client("client_secret_basic")
    other = make_client("client_secret_basic")
    _, challenge = pkce_pair()
    data = request_params(rp, challenge, client_id=other.client_id)
    assert_json_error(push(live, rp, data), 400)


def test_push_is_form_encoded_only(live: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client("client_secret_basic")
    _, challenge = pkce_pair()
    data = request_params(rp, challenge)
    as_json = requests.post(live.url("/par"), json=data, auth=(rp.client_id, str(rp.secret)),
                            timeout=10)
    assert_json_error(as_json, 400, "invalid_request")
    in_query = requests.post(live.url("/par?" + urlencode(data)), data={"x": "1"},
                             auth=(rp.client_id, str(rp.secret)), timeout=10)
    assert_json_error(in_query, 400, "invalid_request")
    repeated = requests.post(live.url("/par"), data=[*data.items(), ("scope", "openid")],
                             auth=(rp.client_id, str(rp.secret)), timeout=10)
    assert_json_error(repeated, 400, "invalid_request")
    assert requests.get(live.url("/par"), timeout=10).status_code == 405


def test_push_keeps_dpop_jkt(ctx: Live, make_client: Callable[..., RP]) -> None:
    from idp.oauth.models import PushedAuthorization

    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    jkt = "A" * 43
    assert push(ctx, rp, request_params(rp, challenge, dpop_jkt=jkt)).status_code == 201
    db.session.rollback()
    assert db.session.scalars(select(PushedAuthorization)).one().params["dpop_jkt"] == jkt
    for bad in ("short", "A" * 42 + "=", "A" * 44):
        assert_json_error(push(ctx, rp, request_params(rp, challenge, dpop_jkt=bad)), 400,
                          "invalid_request")


def test_push_is_audited(ctx: Live, make_client: Callable[..., RP]) -> None:
    from idp.audit.models import AuditEvent

    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    assert push(ctx, rp, request_params(rp, challenge)).status_code == 201
    db.session.rollback()
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.tag == "oauth:par:push")).one()
    assert event.actor == f"client:{rp.client_id}"


# --- request objects at PAR (RFC 9101, FAPI 2.0) ----------------------------------------------

def test_request_object_flow_ignores_form_parameters(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = fapi_client(make_client)
    verifier, challenge = pkce_pair()
    signed = request_object(rp, live, request_params(rp, challenge, state="signed-state"))
    response = push(live, rp, {"request": signed, "client_id": rp.client_id,
                               "state": "form-state", "redirect_uri": "https://evil.example/",
                               "scope": "openid corp"})
    assert response.status_code == 201, response.text
    cb = callback(b.run(authorize_with(live, rp.client_id, response.json()["request_uri"])))
    assert cb.target == rp.redirect_uri
    assert cb.params["state"] == "signed-state"
    token = redeem_fapi(live, rp, cb.params["code"], verifier)
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "openid"


BAD_OBJECTS = ("bad signature", "alg none", "HS256", "missing exp", "missing nbf",
               "nbf too old", "nbf ahead", "too long lived", "expired", "wrong aud",
               "wrong iss", "wrong client_id", "wrong typ", "nested request_uri", "garbage",
               "huge")


def bad_object(name: str, rp: RP, live: Live, challenge: str, other_key: jwskate.Jwk) -> str:
    now = int(time.time())
    good = request_params(rp, challenge)
    if name == "alg none":
        claims = {**good, "iss": rp.client_id, "aud": live.issuer, "nbf": now, "exp": now + 60}
        return f"{b64json({'alg': 'none'})}.{b64json(claims)}."
    if name == "garbage":
        return "a.b.c"
    if name == "huge":
        return "e" * 20_000
    if name == "bad signature":
        return request_object(rp, live, good, key=other_key)
    if name == "HS256":
        return request_object(rp, live, good, key=jwskate.Jwk.generate(alg="HS256"))
    if name == "wrong typ":
        return request_object(rp, live, good, typ="JWT")
    changes: dict[str, Any] = {
        "missing exp": {"exp": None},
        "missing nbf": {"nbf": None},
        "nbf too old": {"nbf": now - 3700, "exp": now + 60},
        "nbf ahead": {"nbf": now + 600, "exp": now + 900},
        "too long lived": {"nbf": now, "exp": now + 3700},
        "expired": {"nbf": now - 600, "exp": now - 300},
        "wrong aud": {"aud": live.url("/token")},
        "wrong iss": {"iss": "someone-else"},
        "wrong client_id": {"client_id": "someone-else"},
        "nested request_uri": {"request_uri": PREFIX + "abc"},
    }[name]
    return request_object(rp, live, {**good, **changes})


@pytest.mark.parametrize("name", BAD_OBJECTS)
def test_bad_request_objects_are_refused(live: Live, make_client: Callable[..., RP],
                                         key_source: Callable[[str], jwskate.Jwk],
                                         name: str) -> None:
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    signed = bad_object(name, rp, live, challenge, key_source("ES256"))
    response = push(live, rp, {"request": signed, "client_id": rp.client_id})
    assert_json_error(response, 400, "invalid_request_object")


def test_fapi2_request_objects_need_es256_or_ps256(
        live: Live, make_client: Callable[..., RP],
        key_source: Callable[[str], jwskate.Jwk]) -> None:
    # One RSA key, no 'alg' member: it may sign PS256 or RS256.
    key = jwskate.Jwk({k: v for k, v in key_source("RS256").to_dict().items() if k != "alg"})
    public = key.public_jwk().to_dict()
    rp = make_client("private_key_jwt", profile="fapi2", jwks={"keys": [public]})
    rp.private_jwk = key
    _, challenge = pkce_pair()

    def assertion() -> str:  # PS256: the FAPI rules for assertions hold (test_fapi_client_rules)
        return str(jwskate.Jwt.sign(
            {"iss": rp.client_id, "sub": rp.client_id, "aud": live.issuer,
             "exp": int(time.time()) + 60, "jti": secrets.token_urlsafe(8)}, key, alg="PS256"))

    for alg, status in (("RS256", 400), ("PS256", 201)):
        signed = request_object(rp, live, request_params(rp, challenge), alg=alg)
        body = {"request": signed, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion()}
        answer = requests.post(live.url("/par"), data=body, timeout=15)
        assert answer.status_code == status, (alg, answer.text)
        if status == 400:
            assert answer.json()["error"] == "invalid_request_object"


# --- discovery and registration ---------------------------------------------------------------

def test_discovery_is_truthful_about_par(live: Live, make_client: Callable[..., RP]) -> None:
    doc = live.discovery()
    assert doc["pushed_authorization_request_endpoint"] == live.url("/par")
    assert doc["require_pushed_authorization_requests"] is False
    assert doc["request_parameter_supported"] is False
    assert doc["request_uri_parameter_supported"] is False
    algs = doc["request_object_signing_alg_values_supported"]
    assert "none" not in algs
    assert not any(a.startswith("HS") for a in algs)
    assert {"ES256", "PS256"} <= set(algs)
    # The endpoint answers, and a basic client need not push.
    assert_json_error(requests.post(doc["pushed_authorization_request_endpoint"],
                                    data={"scope": "openid"}, timeout=10), 401, "invalid_client")


def test_registration_reports_require_par(ctx: Live, make_client: Callable[..., RP]) -> None:
    from idp.clients import services

    bank = fapi_client(make_client)
    basic = make_client()
    assert services.client_as_dict(services.get_client(bank.client_id))[
        "require_pushed_authorization_requests"] is True
    assert services.client_as_dict(services.get_client(basic.client_id))[
        "require_pushed_authorization_requests"] is False


# --- DPoP at PAR (RFC 9449 §10.1) -------------------------------------------------------------

def test_dpop_proof_at_par_binds_the_code_to_its_key(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    rp = fapi_client(make_client)
    verifier, challenge = pkce_pair()
    key = ProofKey()
    pushed = push(live, rp, request_params(rp, challenge),
                  headers={"DPoP": key.proof("POST", live.url("/par"))})
    assert pushed.status_code == 201, pushed.text
    url = live.url("/authorize?" + urlencode({"client_id": rp.client_id,
                                              "request_uri": pushed.json()["request_uri"]}))
    code = callback(b.run(url)).params["code"]

    def form() -> dict[str, str]:
        return {"grant_type": "authorization_code", "code": code,
                "redirect_uri": rp.redirect_uri, "code_verifier": verifier,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion_for(rp, aud=live.issuer)}

    other = ProofKey().post(live.url("/token"), form)
    assert_json_error(other, 400, "invalid_grant")  # another key: refused, code not spent
    token = key.post(live.url("/token"), form)
    assert token.status_code == 200, token.text
    assert token.json()["token_type"] == "DPoP"


def test_dpop_proof_at_par_must_match_dpop_jkt(live: Live, make_client: Callable[..., RP]
                                               ) -> None:
    rp = fapi_client(make_client)
    _, challenge = pkce_pair()
    key = ProofKey()
    mismatch = push(live, rp, request_params(rp, challenge, dpop_jkt=ProofKey().jkt),
                    headers={"DPoP": key.proof("POST", live.url("/par"))})
    assert_json_error(mismatch, 400, "invalid_dpop_proof")
    wrong_url = push(live, rp, request_params(rp, challenge),
                     headers={"DPoP": key.proof("POST", live.url("/token"))})
    assert_json_error(wrong_url, 400, "invalid_dpop_proof")
