"""Introspection (RFC 7662) and revocation (RFC 7009), with Authlib's and
requests-oauth2client's own calls where they have them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import requests
from requests_oauth2client import ClientSecretPost, OAuth2Client
from sqlalchemy import update

from idp.extensions import db
from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    assert_json_error,
    introspect,
    oauth_session,
    post,
    redeem,
    userinfo,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]


@pytest.fixture
def issued(live: Live, signed_in: SignedIn, make_client: Callable[..., RP],
           get_code: Callable[..., CodeResult]) -> Callable[..., tuple[RP, dict[str, Any]]]:
    """Tokens from a full code flow: ``issued(auth_method="client_secret_basic", scope=...)``."""

    def run(auth_method: str = "client_secret_basic", scope: str = "openid corp"
            ) -> tuple[RP, dict[str, Any]]:
        _, b = signed_in()
        rp = make_client(auth_method)
        response = redeem(live, get_code(b, rp, scope=scope))
        assert response.status_code == 200, response.text
        return rp, response.json()

    return run


def assert_inactive(live: Live, rp: RP, token: str) -> None:
    assert introspect(live, rp, token) == {"active": False}


def assert_userinfo_refuses(live: Live, token: str) -> None:
    response = userinfo(live, token)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    assert 'error="invalid_token"' in challenge


# --- introspection ----------------------------------------------------------------------------

def test_introspection_of_an_active_user_token(live: Live, issued: Callable[..., Any]) -> None:
    rp, tokens = issued()
    oauth = oauth_session(live, rp)
    response = oauth.introspect_token(live.url("/introspect"), token=tokens["access_token"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["active"] is True
    assert body["client_id"] == rp.client_id
    assert body["iss"] == live.issuer
    assert set(body["scope"].split()) == {"openid", "corp"}
    assert body["exp"] > body["iat"]
    assert body["sub"]
    assert body["corp"]["br_number"]
    refresh = introspect(live, rp, tokens["refresh_token"], token_type_hint="refresh_token")
    assert refresh["active"] is True
    assert refresh["client_id"] == rp.client_id
    # A wrong hint is only a hint (RFC 7662 §2.1).
    assert introspect(live, rp, tokens["access_token"],
                      token_type_hint="refresh_token")["active"] is True


@pytest.mark.parametrize("auth", ["none", "wrong-secret", "public-client"])
def test_introspection_requires_client_authentication(live: Live, issued: Callable[..., Any],
                                                      make_client: Callable[..., RP],
                                                      auth: str) -> None:
    rp, tokens = issued()
    data: dict[str, str] = {"token": tokens["access_token"]}
    basic = None
    if auth == "wrong-secret":
        basic = (rp.client_id, "cis_wrong")
    elif auth == "public-client":
        data["client_id"] = make_client("none").client_id
    elif auth == "none":
        data["client_id"] = rp.client_id
    response = requests.post(live.url("/introspect"), data=data, auth=basic, timeout=10)
    assert response.status_code == 401, response.text
    assert response.headers.get("WWW-Authenticate")
    body = assert_json_error(response, 401, "invalid_client")
    assert "active" not in body


def test_another_clients_token_is_just_inactive(live: Live, issued: Callable[..., Any],
                                                make_client: Callable[..., RP]) -> None:
    _, tokens = issued()
    other = make_client("client_secret_post", grant_types=["client_credentials"],
                        redirect_uris=None, scopes=["corp"])
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert_inactive(live, other, token)
    client = OAuth2Client(live.url("/token"), introspection_endpoint=live.url("/introspect"),
                          auth=ClientSecretPost(other.client_id, str(other.secret)),
                          testing=True)
    assert client.introspect_token(tokens["access_token"]) == {"active": False}


@pytest.mark.parametrize("token", ["", "x", "eyJhbGciOiJub25lIn0.e30.", "cir_unknown",
                                   "a.b.c", "cir_" + "A" * 300, "e" * 20_000])
def test_unknown_or_garbage_token_is_inactive(live: Live, issued: Callable[..., Any],
                                              token: str) -> None:
    rp, _ = issued()
    response = post(live, "/introspect", rp, {"token": token})
    if token == "":
        assert response.status_code in (200, 400)
        if response.status_code == 400:
            assert_json_error(response, 400, "invalid_request")
            return
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json() == {"active": False}


def test_expired_access_token_is_inactive(live: Live, issued: Callable[..., Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Tokens issued with a lifetime already over: exp in the past, no sleeping.
    monkeypatch.setitem(live.config(), "ACCESS_TOKEN_TTL", -5)
    rp, tokens = issued()
    assert_inactive(live, rp, tokens["access_token"])
    assert_userinfo_refuses(live, tokens["access_token"])


def test_expired_refresh_token_is_inactive(ctx: Live, issued: Callable[..., Any]) -> None:
    from idp.oauth.models import RefreshToken

    rp, tokens = issued()
    db.session.execute(update(RefreshToken).values(
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    db.session.commit()
    assert_inactive(ctx, rp, tokens["refresh_token"])
    refresh = post(ctx, "/token", rp, {"grant_type": "refresh_token",
                                       "refresh_token": tokens["refresh_token"]})
    assert_json_error(refresh, 400, "invalid_grant", described=False)


# --- revocation -------------------------------------------------------------------------------

@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post", "none"])
def test_revoking_an_access_token(live: Live, issued: Callable[..., Any],
                                  make_client: Callable[..., RP], auth_method: str) -> None:
    rp, tokens = issued(auth_method)
    oauth = oauth_session(live, rp)
    response = oauth.revoke_token(live.url("/revoke"), token=tokens["access_token"],
                                  token_type_hint="access_token")
    assert response.status_code == 200, response.text
    # Introspection needs an authenticated client; a public client cannot introspect.
    checker = rp if auth_method != "none" else None
    if checker is not None:
        assert_inactive(live, checker, tokens["access_token"])
    assert_userinfo_refuses(live, tokens["access_token"])
    # Revoking again, or revoking an unknown token, is fine (RFC 7009 §2.2).
    assert oauth.revoke_token(live.url("/revoke"), token=tokens["access_token"]).status_code == 200
    assert oauth.revoke_token(live.url("/revoke"), token="cir_unknown").status_code == 200
    assert oauth.revoke_token(live.url("/revoke"), token="garbage").status_code == 200


def test_revoking_a_refresh_token_ends_its_access_tokens(live: Live,
                                                         issued: Callable[..., Any]) -> None:
    rp, tokens = issued()
    refreshed = post(live, "/token", rp, {"grant_type": "refresh_token",
                                          "refresh_token": tokens["refresh_token"]}).json()
    response = post(live, "/revoke", rp, {"token": refreshed["refresh_token"],
                                          "token_type_hint": "refresh_token"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    for token in (tokens["access_token"], refreshed["access_token"],
                  refreshed["refresh_token"]):
        assert_inactive(live, rp, token)
    assert_userinfo_refuses(live, refreshed["access_token"])
    again = post(live, "/token", rp, {"grant_type": "refresh_token",
                                      "refresh_token": refreshed["refresh_token"]})
    assert_json_error(again, 400, "invalid_grant", described=False)


def test_revocation_by_another_client_has_no_effect(live: Live, issued: Callable[..., Any],
                                                    make_client: Callable[..., RP]) -> None:
    rp, tokens = issued()
    other = make_client()
    for token in (tokens["access_token"], tokens["refresh_token"]):
        response = post(live, "/revoke", other, {"token": token})
        assert response.status_code in (200, 400, 401, 403)
        assert introspect(live, rp, token)["active"] is True
    assert userinfo(live, tokens["access_token"]).status_code == 200


def test_revocation_requires_client_authentication(live: Live,
                                                   issued: Callable[..., Any]) -> None:
    rp, tokens = issued()
    response = requests.post(live.url("/revoke"), data={"token": tokens["access_token"]},
                             auth=(rp.client_id, "cis_wrong"), timeout=10)
    assert_json_error(response, 401, "invalid_client")
    assert introspect(live, rp, tokens["access_token"])["active"] is True
