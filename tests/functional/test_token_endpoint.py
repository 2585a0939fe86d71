"""Token endpoint rules (RFC 6749, RFC 7636, RFC 9700): codes single-use, bound, short-lived,
race-safe; PKCE S256 for every client; refresh rotation with family revocation;
client_credentials; exact redirect URI matching."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import pytest
import requests
from requests_oauth2client import ClientSecretBasic, OAuth2Client, PrivateKeyJwt
from sqlalchemy import select, update

from idp.extensions import db
from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    assert_json_error,
    authorize_url,
    callback,
    introspect,
    oauth_session,
    pkce_pair,
    post,
    redeem,
    userinfo,
    verify_jwt,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]


@pytest.fixture
def code(live: Live, signed_in: SignedIn, make_client: Callable[..., RP],
         get_code: Callable[..., CodeResult]) -> CodeResult:
    """A fresh code for a client_secret_basic client with two redirect URIs."""
    _, b = signed_in()
    rp = make_client(redirect_uris=["https://rp.example/cb", "https://rp.example/cb2"])
    return get_code(b, rp, scope="openid corp")


# --- authorization codes ----------------------------------------------------------------------

def test_code_is_stored_hashed_and_lives_at_most_60_seconds(ctx: Live, code: CodeResult
                                                            ) -> None:
    from idp.oauth.models import AuthorizationCode

    db.session.rollback()
    rows = db.session.scalars(select(AuthorizationCode)).all()
    assert len(rows) == 1
    row = rows[0]
    assert code.code not in (row.code_hash, str(row.id))
    assert (row.expires_at - row.created_at) <= dt.timedelta(seconds=60)


def test_code_is_single_use_and_reuse_revokes_its_tokens(live: Live, code: CodeResult) -> None:
    first = redeem(live, code)
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert introspect(live, code.rp, tokens["access_token"])["active"] is True
    second = redeem(live, code)
    assert_json_error(second, 400, "invalid_grant")
    assert introspect(live, code.rp, tokens["access_token"]) == {"active": False}
    assert introspect(live, code.rp, tokens["refresh_token"]) == {"active": False}
    assert userinfo(live, tokens["access_token"]).status_code == 401
    refreshed = post(live, "/token", code.rp, {"grant_type": "refresh_token",
                                                "refresh_token": tokens["refresh_token"]})
    assert_json_error(refreshed, 400, "invalid_grant", described=False)


def test_code_bound_to_client(live: Live, code: CodeResult,
                              make_client: Callable[..., RP]) -> None:
    thief = make_client(redirect_uris=[code.rp.redirect_uri])
    assert_json_error(redeem(live, code, rp=thief), 400, "invalid_grant")


def test_code_bound_to_redirect_uri(live: Live, code: CodeResult) -> None:
    # Registered for the client too, but not the one the code was issued for.
    other = code.rp.redirect_uris[1]
    assert_json_error(redeem(live, code, redirect_uri=other), 400, "invalid_grant")
    missing = post(live, "/token", code.rp, {"grant_type": "authorization_code",
                                             "code": code.code,
                                             "code_verifier": code.verifier})
    assert missing.status_code == 400
    assert missing.json()["error"] in ("invalid_grant", "invalid_request")


def test_code_bound_to_pkce_verifier(live: Live, code: CodeResult) -> None:
    wrong, _ = pkce_pair()
    assert_json_error(redeem(live, code, verifier=wrong), 400, "invalid_grant")
    missing = post(live, "/token", code.rp, {"grant_type": "authorization_code",
                                             "code": code.code,
                                             "redirect_uri": code.rp.redirect_uri})
    assert missing.status_code == 400
    assert missing.json()["error"] in ("invalid_grant", "invalid_request")


def test_failed_redemptions_leave_the_code_for_its_client(live: Live, code: CodeResult) -> None:
    """A wrong verifier or redirect URI does not burn the code (nothing was issued)."""
    wrong, _ = pkce_pair()
    assert redeem(live, code, verifier=wrong).status_code == 400
    assert redeem(live, code).status_code == 200


def test_code_older_than_60_seconds_is_rejected(ctx: Live, code: CodeResult) -> None:
    from idp.oauth.models import AuthorizationCode

    db.session.execute(update(AuthorizationCode).values(
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    db.session.commit()
    assert_json_error(redeem(ctx, code), 400, "invalid_grant")


def race(count: int, action: Callable[[], requests.Response]) -> list[requests.Response]:
    """Run ``action`` in ``count`` threads released together; their answers."""
    barrier = threading.Barrier(count)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(5)
        response = action()
        with lock:
            results.append(response)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == count
    return results


@pytest.mark.parametrize("round_", range(3))
def test_racing_redemptions_cannot_both_succeed(live: Live, code: CodeResult,
                                                round_: int) -> None:
    results = race(4, lambda: redeem(live, code))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) <= 1, statuses
    for r in results:
        if r.status_code != 200:
            assert_json_error(r, 400, "invalid_grant")


@pytest.mark.parametrize("round_", range(3))
def test_racing_refreshes_cannot_both_succeed(live: Live, code: CodeResult,
                                              round_: int) -> None:
    tokens = redeem(live, code).json()
    results = race(4, lambda: post(live, "/token", code.rp, {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}))
    winners = [r.json() for r in results if r.status_code == 200]
    assert len(winners) <= 1, [r.status_code for r in results]
    for r in results:
        if r.status_code != 200:
            assert_json_error(r, 400, "invalid_grant", described=False)


# --- PKCE -------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth_method", ["client_secret_basic", "private_key_jwt", "none"])
@pytest.mark.parametrize("pkce", ["missing", "plain", "no-method", "S512"])
def test_pkce_s256_required_for_every_client(live: Live, signed_in: SignedIn,
                                             make_client: Callable[..., RP], auth_method: str,
                                             pkce: str) -> None:
    _, b = signed_in()
    rp = make_client(auth_method)
    verifier, challenge = pkce_pair()
    extra = {"missing": {}, "plain": {"code_challenge": verifier,
                                      "code_challenge_method": "plain"},
             "no-method": {"code_challenge": challenge},
             "S512": {"code_challenge": challenge, "code_challenge_method": "S512"}}[pkce]
    response = b.go(authorize_url(live, rp, **extra))
    cb = callback(response)
    assert cb.params["error"] == "invalid_request", cb.params
    assert cb.params["state"] == "st-123"
    assert cb.params["iss"] == live.issuer


# --- refresh tokens ---------------------------------------------------------------------------

def test_refresh_rotates_and_reuse_revokes_the_family(live: Live, code: CodeResult) -> None:
    oauth = oauth_session(live, code.rp)
    first = oauth.fetch_token(live.url("/token"), code=code.code, code_verifier=code.verifier)
    second = oauth.refresh_token(live.url("/token"), refresh_token=first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert "id_token" not in second or second["id_token"]
    assert introspect(live, code.rp, second["access_token"])["active"] is True
    # The rotated token comes back: someone holds a copy. The family ends.
    reuse = post(live, "/token", code.rp, {"grant_type": "refresh_token",
                                           "refresh_token": first["refresh_token"]})
    assert_json_error(reuse, 400, "invalid_grant", described=False)
    for token in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert introspect(live, code.rp, token) == {"active": False}
    after = post(live, "/token", code.rp, {"grant_type": "refresh_token",
                                           "refresh_token": second["refresh_token"]})
    assert_json_error(after, 400, "invalid_grant", described=False)


def test_refresh_token_bound_to_client(live: Live, code: CodeResult,
                                       make_client: Callable[..., RP]) -> None:
    tokens = redeem(live, code).json()
    thief = make_client()
    stolen = post(live, "/token", thief, {"grant_type": "refresh_token",
                                          "refresh_token": tokens["refresh_token"]})
    assert_json_error(stolen, 400, "invalid_grant", described=False)
    assert introspect(live, code.rp, tokens["refresh_token"])["active"] is True


def test_refresh_keeps_scope_and_identity(live: Live, code: CodeResult) -> None:
    tokens = redeem(live, code).json()
    again = post(live, "/token", code.rp, {"grant_type": "refresh_token",
                                           "refresh_token": tokens["refresh_token"]})
    assert again.status_code == 200
    body = again.json()
    assert set(body["scope"].split()) == {"openid", "corp"}
    before = userinfo(live, tokens["access_token"]).json()
    assert userinfo(live, body["access_token"]).json() == before
    wider = post(live, "/token", code.rp, {"grant_type": "refresh_token",
                                           "refresh_token": body["refresh_token"],
                                           "scope": "openid corp email"})
    assert_json_error(wider, 400, "invalid_scope")


# --- client credentials -----------------------------------------------------------------------

@pytest.mark.parametrize("auth_method", ["client_secret_basic", "private_key_jwt"])
def test_client_credentials_returns_an_at_jwt_for_the_client(
        live: Live, make_client: Callable[..., RP], auth_method: str) -> None:
    rp = make_client(auth_method, grant_types=["client_credentials"], redirect_uris=None,
                     scopes=["corp"])
    if auth_method == "private_key_jwt":
        assert rp.private_jwk is not None
        # aud = the issuer: accepted at every endpoint (RFC 7523bis), unlike the URL of the
        # endpoint called, which the library would use by default.
        auth = PrivateKeyJwt(rp.client_id, rp.private_jwk, alg=rp.private_jwk.alg,
                             aud=live.issuer)
    else:
        assert rp.secret is not None
        auth = ClientSecretBasic(rp.client_id, rp.secret)
    client = OAuth2Client.from_discovery_endpoint(
        live.url("/.well-known/openid-configuration"), issuer=live.issuer, testing=True,
        auth=auth)
    token = client.client_credentials(scope="corp")
    assert token.refresh_token is None
    assert token.id_token is None
    header, claims = verify_jwt(live, token.access_token, alg=live.config()["ACCESS_TOKEN_ALG"])
    assert header["typ"].lower() in ("at+jwt", "application/at+jwt")
    assert claims["sub"] == rp.client_id
    assert claims["client_id"] == rp.client_id
    assert claims["scope"] == "corp"
    assert claims["jti"]
    assert "gid" not in claims
    assert "sid" not in claims
    info = client.introspect_token(token.access_token)
    assert info["active"] is True
    assert info["sub"] == rp.client_id
    # Not a user token: userinfo refuses it.
    assert userinfo(live, token.access_token).status_code == 401


def test_client_credentials_with_authlib(live: Live, make_client: Callable[..., RP]) -> None:
    rp = make_client("client_secret_post", grant_types=["client_credentials"],
                     redirect_uris=None, scopes=["corp"])
    oauth = oauth_session(live, rp, scope="corp")
    token = oauth.fetch_token(live.url("/token"), grant_type="client_credentials")
    assert "refresh_token" not in token
    assert verify_jwt(live, token["access_token"], alg="ES256")[1]["sub"] == rp.client_id


@pytest.mark.parametrize("scope", ["openid", "offline_access", "email", "nonsense"])
def test_client_credentials_refuses_user_scopes(live: Live, make_client: Callable[..., RP],
                                                scope: str) -> None:
    rp = make_client(grant_types=["client_credentials"], redirect_uris=None,
                     scopes=["corp", "openid"])
    response = post(live, "/token", rp, {"grant_type": "client_credentials", "scope": scope})
    assert_json_error(response, 400, "invalid_scope")


def test_client_credentials_needs_the_grant_type(live: Live,
                                                 make_client: Callable[..., RP]) -> None:
    rp = make_client()  # authorization_code + refresh_token only
    response = post(live, "/token", rp, {"grant_type": "client_credentials"})
    assert_json_error(response, 400, "unauthorized_client")


def test_public_client_cannot_use_client_credentials(ctx: Live,
                                                     make_client: Callable[..., RP]) -> None:
    from idp.errors import ValidationError

    with pytest.raises(ValidationError):
        make_client("none", grant_types=["authorization_code", "client_credentials"])
    public = make_client("none")
    response = post(ctx, "/token", public, {"grant_type": "client_credentials"})
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("unauthorized_client", "invalid_client")
    assert "access_token" not in response.json()


# --- redirect URIs ----------------------------------------------------------------------------

@pytest.mark.parametrize("redirect_uri", [
    "https://evil.example/cb",
    "https://evil.example/<script>alert(1)</script>",
    "https://rp.example/cb/",
    "https://RP.example/cb",
    "https://rp.example/CB",
    "https://rp.example/cb?x=1",
    "https://rp.example/cb#frag",
    "http://rp.example/cb",
    "https://rp.example:443/cb",
    "https://rp.example/cb/../cb",
    "https://rp.example/cb%20",
    "",
])
def test_unregistered_redirect_uri_is_never_redirected_to(live: Live, signed_in: SignedIn,
                                                          make_client: Callable[..., RP],
                                                          redirect_uri: str) -> None:
    _, b = signed_in()
    rp = make_client(redirect_uris=["https://rp.example/cb"])
    _, challenge = pkce_pair()
    url = authorize_url(live, rp, challenge=challenge, redirect_uri=redirect_uri or "x")
    if not redirect_uri:
        url = url.replace("redirect_uri=x&", "")
    for bad in (url, url + "&prompt=none", url.replace("code_challenge=", "nope=")):
        response = b.request("GET", bad)
        assert response.status_code == 400, (bad, response.status_code)
        assert "Location" not in response.headers
        assert "text/html" in response.headers["Content-Type"]
        # Shown at most as inert text: never a link, never markup.
        assert 'href="https://evil' not in response.text
        assert "<script>alert" not in response.text


def test_registered_redirect_uri_with_query_keeps_it(live: Live, signed_in: SignedIn,
                                                     make_client: Callable[..., RP]) -> None:
    _, b = signed_in()
    registered = "https://rp.example/cb?tenant=7"
    rp = make_client(redirect_uris=[registered])
    _, challenge = pkce_pair()
    response = b.run(authorize_url(live, rp, challenge=challenge))
    cb = callback(response)
    assert cb.target == "https://rp.example/cb"
    assert cb.params["tenant"] == "7"
    assert "code" in cb.params
    assert cb.params["iss"] == live.issuer
