"""Short-lived state in Redis (idp.cache): a batch writes once, at its end, and not at all
after an exception; ``keep_once`` lets one caller end a thing. Redis only: these run in the
PostgreSQL + Redis pass (``IDP_REDIS_URL``)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from idp import cache


@pytest.fixture(autouse=True)
def _redis_only(app_ctx: Flask) -> None:
    if not cache.shared():
        pytest.skip("needs IDP_REDIS_URL")


def _stored(app: Flask, namespace: str, value: str) -> Any:
    return app.extensions["idp.redis"].get(cache._key(namespace, value))


class Counting:
    """Counts the round trips to Redis: commands and pipelines sent."""

    def __init__(self, app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trips = 0
        client = app.extensions["idp.redis"]
        real_command, real_pipeline = client.execute_command, client.pipeline

        def command(*args: Any, **kwargs: Any) -> Any:
            self.trips += 1
            return real_command(*args, **kwargs)

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute

            def execute(*a: Any, **k: Any) -> Any:
                self.trips += 1
                return real_execute(*a, **k)

            pipe.execute = execute
            return pipe

        monkeypatch.setattr(client, "execute_command", command)
        monkeypatch.setattr(client, "pipeline", pipeline)


def test_a_batch_writes_its_keeps_in_one_round_trip_at_its_end(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting(app, monkeypatch)
    with cache.batch():
        cache.keep("t", "one", {"n": 1}, ttl=60)
        cache.keep("t", "two", {"n": 2}, ttl=60)
        cache.keep("t", "one", {"n": 3}, ttl=60)  # the later write wins
        assert counting.trips == 0
        assert cache.peek("t", "one") == {"n": 3}  # what waits is seen
        assert counting.trips == 0
        assert _stored(app, "t", "one") is None  # but not written yet
        counting.trips = 0
    assert counting.trips == 1
    assert cache.peek("t", "one") == {"n": 3}
    assert cache.peek("t", "two") == {"n": 2}
    assert 0 < app.extensions["idp.redis"].ttl(cache._key("t", "two")) <= 60


def test_an_exception_drops_what_the_batch_held() -> None:
    def failing_request() -> None:
        with cache.batch():
            cache.keep("t", "dropped", {"n": 1}, ttl=60)
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        failing_request()
    assert cache.peek("t", "dropped") is None
    # And the next batch starts empty.
    with cache.batch():
        cache.keep("t", "kept", {"n": 2}, ttl=60)
    assert cache.peek("t", "dropped") is None
    assert cache.peek("t", "kept") == {"n": 2}


def test_take_inside_a_batch_takes_what_waits(app: Flask) -> None:
    with cache.batch():
        cache.keep("t", "challenge", {"n": 1}, ttl=60)
        assert cache.take("t", "challenge") == {"n": 1}
        assert cache.take("t", "challenge") is None
    assert _stored(app, "t", "challenge") is None


def test_a_nested_batch_writes_with_the_outer_one(app: Flask) -> None:
    with cache.batch():
        with cache.batch():
            cache.keep("t", "inner", {"n": 1}, ttl=60)
        assert _stored(app, "t", "inner") is None
    assert cache.peek("t", "inner") == {"n": 1}


def test_keep_once_lets_one_caller_end_it() -> None:
    assert cache.keep_once("t", "pending", {"ended": 1}, ttl=60) is True
    assert cache.keep_once("t", "pending", {"ended": 2}, ttl=60) is False
    assert cache.peek("t", "pending") is not None


def test_keep_once_writes_what_a_batch_held_first(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting(app, monkeypatch)
    with cache.batch():
        cache.keep("t", "challenge", {"n": 1}, ttl=60)
        cache.keep("t", "pending", {"started": True}, ttl=60)
        assert cache.keep_once("t", "pending", {"ended": True}, ttl=60) is True
        assert counting.trips == 1
        assert cache.peek("t", "challenge") == {"n": 1}
        assert cache.peek("t", "pending") == {"ended": True}
