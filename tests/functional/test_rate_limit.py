"""Rate limits at the token, introspection and revocation endpoints, per client and per
source (SECURITY.md): 429 with Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests

from tests.functional.conftest import RP, Live, assert_json_error, post

CC = {"grant_type": "client_credentials"}


@pytest.fixture
def fresh_window() -> None:
    """Counters are per minute: start far enough from a minute boundary that a test's few
    requests all land in one window."""
    into = time.time() % 60
    if into > 50:
        time.sleep(60 - into + 0.2)


@pytest.fixture
def service(make_client: Callable[..., RP]) -> Callable[[], RP]:
    def factory() -> RP:
        return make_client(grant_types=["client_credentials"], redirect_uris=None,
                           scopes=["corp"])

    return factory


def assert_429(response: requests.Response) -> None:
    assert_json_error(response, 429)
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert "access_token" not in response.json()


def test_per_client_limit(live: Live, service: Callable[[], RP],
                          monkeypatch: pytest.MonkeyPatch, fresh_window: None) -> None:
    monkeypatch.setitem(live.config(), "RATE_LIMIT_CLIENT_PER_MINUTE", 3)
    busy, quiet = service(), service()
    for _ in range(3):
        assert post(live, "/token", busy, CC).status_code == 200
    assert_429(post(live, "/token", busy, CC))
    # Introspection and revocation count against the same client budget.
    assert_429(post(live, "/introspect", busy, {"token": "x"}))
    assert_429(post(live, "/revoke", busy, {"token": "x"}))
    # Another client from the same address is not affected: the limit is per client.
    assert post(live, "/token", quiet, CC).status_code == 200


def test_failed_authentication_does_not_use_the_clients_budget(
        live: Live, service: Callable[[], RP], monkeypatch: pytest.MonkeyPatch,
        fresh_window: None) -> None:
    """Someone guessing a client's secret cannot lock the real client out."""
    monkeypatch.setitem(live.config(), "RATE_LIMIT_CLIENT_PER_MINUTE", 3)
    rp = service()
    for _ in range(5):
        response = requests.post(live.url("/token"), data=CC, auth=(rp.client_id, "cis_wrong"),
                                 timeout=10)
        assert response.status_code == 401
    assert post(live, "/token", rp, CC).status_code == 200


def test_per_source_limit(live: Live, service: Callable[[], RP],
                          monkeypatch: pytest.MonkeyPatch, fresh_window: None) -> None:
    monkeypatch.setitem(live.config(), "RATE_LIMIT_SOURCE_PER_MINUTE", 3)
    a, b = service(), service()
    assert post(live, "/token", a, CC).status_code == 200
    assert post(live, "/token", b, CC).status_code == 200
    assert requests.post(live.url("/introspect"), data={"token": "x"}, timeout=10
                         ).status_code == 401
    # All three came from 127.0.0.1: whoever asks next is refused, authenticated or not.
    assert_429(post(live, "/token", a, CC))
    assert_429(requests.post(live.url("/revoke"), data={"token": "x"}, timeout=10))


@pytest.mark.parametrize("limit", ["RATE_LIMIT_CLIENT_PER_MINUTE", "RATE_LIMIT_SOURCE_PER_MINUTE"])
def test_introspection_the_hot_path_hands_on_is_counted_once(
        live: Live, service: Callable[[], RP], monkeypatch: pytest.MonkeyPatch,
        fresh_window: None, limit: str) -> None:
    """The hot path counts an introspection (with the revocation epoch, one Redis round trip)
    before it knows the token; when the token is not active it hands the request to the full
    path, which must not count it a second time."""
    rp = service()
    token = post(live, "/token", rp, CC).json()["access_token"]
    assert post(live, "/revoke", rp, {"token": token}).status_code == 200
    # The token and revocation requests above used 2 of the budget (client's and source's).
    monkeypatch.setitem(live.config(), limit, 5)
    for _ in range(3):
        answer = post(live, "/introspect", rp, {"token": token})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"active": False}
    assert_429(post(live, "/introspect", rp, {"token": token}))
