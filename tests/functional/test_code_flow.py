"""The authorization code flow end to end, driven by real client libraries: Authlib's requests
client (secret and public clients) and requests-oauth2client (private_key_jwt, from
discovery). ID tokens are verified independently against the JWKS discovery advertises."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from requests_oauth2client import OAuth2Client, PrivateKeyJwt

from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    callback,
    half_hash,
    oauth_session,
    userinfo,
    verify_jwt,
)


def check_id_token(live: Live, id_token: str, *, rp: RP, alg: str, nonce: str | None,
                   access_token: str, b: Browser) -> dict[str, object]:
    """Verify an ID token and the claims every Corp ID login carries."""
    header, claims = verify_jwt(live, id_token, alg=alg, audience=rp.client_id)
    assert header.get("kid")
    assert claims["aud"] == rp.client_id or claims["aud"] == [rp.client_id]
    if nonce is not None:
        assert claims["nonce"] == nonce
    assert claims["at_hash"] == half_hash(access_token, alg)
    assert claims["acr"] == "phrh"
    assert claims["amr"] == ["hwk", "mfa"]
    assert claims["sid"] == b.sid
    assert claims["auth_time"] == b.auth_time  # when the session signed in, not now
    assert isinstance(claims["sub"], str)
    assert claims["sub"]
    return claims


@pytest.mark.parametrize("response_mode", ["query", "form_post"])
@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post", "none"])
def test_code_flow_with_authlib(live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
                                make_client: Callable[..., RP], auth_method: str,
                                response_mode: str) -> None:
    who, b = signed_in()
    rp = make_client(auth_method)
    oauth = oauth_session(live, rp, scope="openid profile email")
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(12)
    url, state = oauth.create_authorization_url(live.url("/authorize"), code_verifier=verifier,
                                                nonce=nonce, response_mode=response_mode)
    cb = callback(b.run(url))
    assert cb.mode == response_mode
    assert cb.target == rp.redirect_uri
    assert cb.params["state"] == state
    assert cb.params["iss"] == live.issuer  # RFC 9207
    assert "error" not in cb.params
    token = oauth.fetch_token(live.url("/token"), authorization_response=cb.url(), state=state,
                              code_verifier=verifier)
    assert token["token_type"].lower() == "bearer"
    assert token["expires_in"] > 0
    assert set(token["scope"].split()) == {"openid", "profile", "email"}
    assert token["refresh_token"].startswith("cir_")
    claims = check_id_token(live, token["id_token"], rp=rp, alg="RS256", nonce=nonce,
                            access_token=token["access_token"], b=b)
    assert claims["sub"] == who.subject  # public subject by default
    info = oauth.get(live.url("/userinfo"), timeout=10)
    assert info.status_code == 200
    assert info.headers["Cache-Control"] == "no-store"
    assert info.json() == {"sub": who.subject, "name": who.display_name, "email": who.email,
                           "email_verified": True}


@pytest.mark.parametrize("response_mode", ["query", "form_post"])
@pytest.mark.parametrize("key_alg", ["ES256", "RS256"])
def test_code_flow_private_key_jwt_from_discovery(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], key_alg: str, response_mode: str) -> None:
    """requests-oauth2client, configured from discovery: it checks state and iss on the
    callback, authenticates with a signed assertion and validates the ID token itself."""
    who, b = signed_in()
    rp = make_client("private_key_jwt", key_alg=key_alg)
    assert rp.private_jwk is not None
    client = OAuth2Client.from_discovery_endpoint(
        live.url("/.well-known/openid-configuration"), issuer=live.issuer, testing=True,
        auth=PrivateKeyJwt(rp.client_id, rp.private_jwk, alg=key_alg),
        redirect_uri=rp.redirect_uri)
    assert client.authorization_response_iss_parameter_supported
    azr = client.authorization_request(scope="openid corp", response_mode=response_mode)
    assert azr.code_challenge_method == "S256"
    cb = callback(b.run(str(azr.uri)))
    assert cb.mode == response_mode
    response = azr.validate_callback(cb.url())  # state and iss checked by the library
    token = client.authorization_code(response)
    assert token.id_token is not None
    claims = check_id_token(live, str(token.id_token), rp=rp, alg="RS256", nonce=azr.nonce,
                            access_token=token.access_token, b=b)
    assert claims["corp"] == {"br_number": who.companies[0].br_number,
                              "name": who.companies[0].name_en,
                              "roles": sorted(who.companies[0].roles)}
    assert client.userinfo(token)["corp"]["br_number"] == who.companies[0].br_number
    refreshed = client.refresh_token(token)
    assert refreshed.access_token != token.access_token
    assert refreshed.refresh_token not in (None, token.refresh_token)


@pytest.mark.parametrize("registered", [None, "RS256", "ES256", "PS256", "EdDSA"])
def test_id_token_alg_follows_the_client(live: Live,
                                         signed_in: Callable[..., tuple[PersonInfo, Browser]],
                                         make_client: Callable[..., RP],
                                         get_code: Callable[..., CodeResult],
                                         registered: str | None) -> None:
    """RS256 when the client registered no algorithm (OIDC Core), else the client's."""
    _, b = signed_in()
    settings = {"id_token_alg": registered} if registered else {}
    rp = make_client("client_secret_basic", **settings)
    expected = registered or "RS256"
    result = get_code(b, rp)
    oauth = oauth_session(live, rp)
    token = oauth.fetch_token(live.url("/token"), code=result.code,
                              code_verifier=result.verifier)
    check_id_token(live, token["id_token"], rp=rp, alg=expected, nonce=result.nonce,
                   access_token=token["access_token"], b=b)


def test_pairwise_subjects_differ_by_sector_and_are_stable(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], get_code: Callable[..., CodeResult]) -> None:
    who, b = signed_in()
    a1 = make_client(redirect_uris=["https://rp-a.example/cb"], subject_type="pairwise")
    a2 = make_client(redirect_uris=["https://rp-a.example/other"], subject_type="pairwise")
    other = make_client(redirect_uris=["https://rp-b.example/cb"], subject_type="pairwise")

    def subject(rp: RP) -> str:
        result = get_code(b, rp)
        token = oauth_session(live, rp).fetch_token(live.url("/token"), code=result.code,
                                                    code_verifier=result.verifier)
        _, claims = verify_jwt(live, token["id_token"], alg="RS256", audience=rp.client_id)
        info = userinfo(live, token['access_token']).json()
        assert info["sub"] == claims["sub"]
        return str(claims["sub"])

    first = subject(a1)
    assert first != who.subject
    assert subject(a1) == first  # stable for the same client
    assert subject(a2) == first  # and for another client of the same sector
    assert subject(other) not in (first, who.subject)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_userinfo_releases_corp_claim(live: Live,
                                      signed_in: Callable[..., tuple[PersonInfo, Browser]],
                                      make_client: Callable[..., RP],
                                      get_code: Callable[..., CodeResult], method: str) -> None:
    who, b = signed_in(companies=[{"br_number": "12345678", "name_en": "Kowloon Widgets Ltd",
                                   "roles": ["signatory", "admin"]}])
    rp = make_client()
    result = get_code(b, rp, scope="openid corp")
    token = oauth_session(live, rp).fetch_token(live.url("/token"), code=result.code,
                                                code_verifier=result.verifier)
    response = userinfo(live, token['access_token'], method)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json() == {
        "sub": who.subject,
        "corp": {"br_number": "12345678", "name": "Kowloon Widgets Ltd",
                 "roles": ["admin", "signatory"]}}


def test_userinfo_without_corp_scope_has_no_corp(
        live: Live, signed_in: Callable[..., tuple[PersonInfo, Browser]],
        make_client: Callable[..., RP], get_code: Callable[..., CodeResult]) -> None:
    who, b = signed_in()
    rp = make_client()
    result = get_code(b, rp, scope="openid")
    token = oauth_session(live, rp).fetch_token(live.url("/token"), code=result.code,
                                                code_verifier=result.verifier)
    _, claims = verify_jwt(live, token["id_token"], alg="RS256", audience=rp.client_id)
    assert "corp" not in claims
    assert "email" not in claims
    assert "name" not in claims
    info = userinfo(live, token['access_token']).json()
    assert info == {"sub": who.subject}
