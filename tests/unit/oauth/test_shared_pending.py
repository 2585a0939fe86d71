"""Pending authorizations kept in Redis (idp.oauth.authorize.SharedPending): what is written
is what is read back, and a change is saved with the lifetime the request has left."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from idp.db import utcnow
from idp.oauth import authorize

pytestmark = pytest.mark.usefixtures("app_ctx")


class FakeStore:
    """What idp.cache's keep/peek do with Redis, in a dict (JSON in between, as in Redis)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}
        self.ttls: dict[tuple[str, str], int] = {}

    def keep(self, namespace: str, value: str, payload: dict[str, Any], *, ttl: int) -> None:
        self.values[(namespace, value)] = json.dumps(payload)
        self.ttls[(namespace, value)] = ttl

    def peek(self, namespace: str, value: str) -> dict[str, Any] | None:
        raw = self.values.get((namespace, value))
        return json.loads(raw) if raw is not None else None


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore()
    monkeypatch.setattr(authorize.cache, "keep", fake.keep)
    monkeypatch.setattr(authorize.cache, "peek", fake.peek)
    return fake


def test_a_saved_pending_authorization_reads_back_the_same(store: FakeStore) -> None:
    now = utcnow()
    pending = authorize.SharedPending(
        handle_hash="a" * 64,
        client_id=7,
        params={"client_id": "abc", "scope": "openid corp", "state": "s"},
        created_at=now,
        expires_at=now + dt.timedelta(minutes=15),
        company_id=3,
        consented_at=now,
    )
    authorize.save(pending)
    again = authorize.SharedPending.load("a" * 64)
    assert again == pending
    assert again is not None
    assert again.expires_at.tzinfo is not None
    assert again.agent_company_id is None
    assert again.completed_at is None
    # Kept for the time the request has left, and a minute more.
    assert 15 * 60 <= store.ttls[(authorize.PENDING_NAMESPACE, "a" * 64)] <= 16 * 60


def test_an_unknown_handle_reads_nothing(store: FakeStore) -> None:
    assert authorize.SharedPending.load("b" * 64) is None


def test_a_database_row_is_not_written_by_save(store: FakeStore) -> None:
    from idp.oauth.models import PendingAuthorization

    row = PendingAuthorization(handle_hash="c" * 64, client_id=1, params={}, expires_at=utcnow())
    authorize.save(row)  # its change goes with the caller's commit
    assert store.values == {}
