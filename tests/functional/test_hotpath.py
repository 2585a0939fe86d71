"""The hot path (idp.oauth.hotpath) answers client_credentials tokens and introspection of
live access tokens before Flask: its answers must be the full path's, and everything else must
reach the full path unchanged (errors included)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
import requests
from werkzeug.test import Client as WSGIClient

from idp.oauth.hotpath import HEADERS
from tests.functional.conftest import RP, Live, assert_json_error, post

HOT_CSP = dict(HEADERS)["Content-Security-Policy"]
CC = {"grant_type": "client_credentials", "scope": "corp"}


def served_by_hot_path(response: Any) -> bool:
    # Flask's pages and answers carry a per-request CSP nonce; the hot path's answers don't.
    return bool(response.headers["Content-Security-Policy"] == HOT_CSP)


def full_path(live: Live) -> WSGIClient:
    """The Flask app behind the middlewares (StaticDocuments -> HotPath -> Flask)."""
    hot = live.app.wsgi_app.wsgi_app  # type: ignore[attr-defined]
    return WSGIClient(hot.wsgi_app)


def full_post(live: Live, path: str, rp: RP, data: dict[str, str]) -> Any:
    headers = {}
    body = dict(data)
    if rp.auth_method == "client_secret_basic":
        raw = f"{rp.client_id}:{rp.secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    else:
        body.update(client_id=rp.client_id, client_secret=str(rp.secret))
    return full_path(live).post(path, data=body, headers=headers)


@pytest.fixture
def service(make_client: Callable[..., RP]) -> Callable[..., RP]:
    def factory(auth_method: str = "client_secret_basic") -> RP:
        return make_client(auth_method, grant_types=["client_credentials"], scopes=["corp"])

    return factory


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_token_matches_the_full_path(live: Live, service: Callable[..., RP], method: str) -> None:
    rp = service(method)
    hot = post(live, "/token", rp, CC)
    full = full_post(live, "/token", rp, CC)
    assert served_by_hot_path(hot)
    assert not served_by_hot_path(full)
    assert hot.status_code == full.status_code == 200
    assert hot.json().keys() == full.get_json().keys()
    for name in ("token_type", "expires_in", "scope"):
        assert hot.json()[name] == full.get_json()[name]
    for name in ("Content-Type", "Cache-Control", "Pragma"):
        assert hot.headers[name] == full.headers[name]
    hot_claims = pyjwt.decode(hot.json()["access_token"], options={"verify_signature": False})
    full_claims = pyjwt.decode(full.get_json()["access_token"], options={"verify_signature": False})
    assert hot_claims.keys() == full_claims.keys()
    assert pyjwt.get_unverified_header(hot.json()["access_token"])["typ"] == "at+jwt"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_introspection_matches_the_full_path(live: Live, service: Callable[..., RP],
                                             method: str) -> None:
    rp = service(method)
    token = post(live, "/token", rp, CC).json()["access_token"]
    hot = post(live, "/introspect", rp, {"token": token})
    full = full_post(live, "/introspect", rp, {"token": token})
    assert served_by_hot_path(hot)
    assert hot.status_code == full.status_code == 200
    assert hot.json() == full.get_json()
    assert hot.json()["active"] is True
    hinted = post(live, "/introspect", rp, {"token": token, "token_type_hint": "access_token"})
    assert served_by_hot_path(hinted)
    assert hinted.json() == hot.json()


def test_failures_reach_the_full_path(live: Live, service: Callable[..., RP],
                                      make_client: Callable[..., RP]) -> None:
    rp = service()
    wrong = requests.post(live.url("/token"), data=CC, auth=(rp.client_id, "cis_" + "x" * 43),
                          timeout=10)
    assert_json_error(wrong, 401, "invalid_client")
    assert "WWW-Authenticate" in wrong.headers
    # The secret is right but sent by a method the client did not register.
    as_post = requests.post(live.url("/token"), timeout=10, data={
        **CC, "client_id": rp.client_id, "client_secret": str(rp.secret)})
    assert_json_error(as_post, 401, "invalid_client")
    assert_json_error(post(live, "/token", rp, {**CC, "scope": "openid"}), 400, "invalid_scope")
    coded = make_client(grant_types=["authorization_code"], scopes=["corp"])
    assert_json_error(post(live, "/token", coded, CC), 400, "unauthorized_client")
    repeated = requests.post(live.url("/token"), data=[*CC.items(), ("scope", "corp")],
                             auth=(rp.client_id, str(rp.secret)), timeout=10)
    assert_json_error(repeated, 400, "invalid_request")
    for answer in (wrong, as_post, repeated):
        assert not served_by_hot_path(answer)


def test_unknown_shapes_go_to_the_full_path(live: Live, service: Callable[..., RP]) -> None:
    rp = service()
    # An extra parameter the hot path does not know: Authlib decides (here: ignored, 200).
    extra = post(live, "/token", rp, {**CC, "audience": "x"})
    assert extra.status_code == 200
    assert not served_by_hot_path(extra)
    other = service()
    token = post(live, "/token", rp, CC).json()["access_token"]
    # Another client's token, a garbage token, a refresh hint: active false, from the full path.
    for data in ({"token": token}, {"token": "garbage"}):
        answer = post(live, "/introspect", other, data)
        assert answer.json() == {"active": False}
        assert not served_by_hot_path(answer)
    hinted = post(live, "/introspect", rp, {"token": token, "token_type_hint": "refresh_token"})
    assert hinted.json()["active"] is True
    assert not served_by_hot_path(hinted)


def test_revoked_token_is_inactive_at_once(live: Live, service: Callable[..., RP]) -> None:
    rp = service()
    token = post(live, "/token", rp, CC).json()["access_token"]
    assert served_by_hot_path(post(live, "/introspect", rp, {"token": token}))
    assert post(live, "/revoke", rp, {"token": token}).status_code == 200
    answer = post(live, "/introspect", rp, {"token": token})
    assert answer.json() == {"active": False}
    assert not served_by_hot_path(answer)


def test_disabled_client_is_refused_at_once(ctx: Live, service: Callable[..., RP]) -> None:
    from idp.clients.services import disable_client

    rp = service()
    assert served_by_hot_path(post(ctx, "/token", rp, CC))
    disable_client(rp.client_id, actor="tests")
    assert_json_error(post(ctx, "/token", rp, CC), 401, "invalid_client")
