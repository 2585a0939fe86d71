"""Short-lived shared state: single-use markers (replay caches) and rate-limit counters.

In Redis when ``IDP_REDIS_URL`` is set, in the database otherwise, so that every worker on
every machine sees the same state. Nothing here lives only in process memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idp.db import utcnow
from idp.errors import RateLimitedError
from idp.extensions import db
from idp.oauth.models import RateCounter, ReplayEntry

# Set in a WSGI environ once its request was counted against the rate limits (by the hot
# path, idp.oauth.hotpath), so that the full path, answering it instead, does not count again.
COUNTED = "idp.rate_counted"
# Attribute of flask.g: the writes of an open ``batch``, key -> (JSON, ttl), in order.
_BATCH = "idp_cache_batch"


def init_app(app: Flask) -> None:
    url = app.config["IDP"]["REDIS_URL"]
    if url:
        import redis

        app.extensions["idp.redis"] = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2
        )
    else:
        app.extensions["idp.redis"] = None


def _redis() -> Any:
    return current_app.extensions.get("idp.redis")


def _key(namespace: str, value: str) -> str:
    # Keyed by issuer too, so that several providers can share one Redis.
    issuer = str(current_app.config["IDP"]["ISSUER"])
    material = f"{issuer}\x00{value}".encode("utf-8", "surrogatepass")
    return f"idp:{namespace}:{hashlib.sha256(material).hexdigest()}"


def shared() -> bool:
    """Whether short-lived state lives in Redis (``IDP_REDIS_URL``) rather than the database."""
    return _redis() is not None


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Within it, ``keep`` writes wait and go to Redis together, in one round trip, when it
    ends without an exception; an exception drops them, as a rollback would. ``peek`` and
    ``take`` see the waiting writes. Without Redis, or inside another batch, it changes
    nothing. For a request that keeps several things (a pending authorization and its
    sign-in challenge)."""
    if _redis() is None or hasattr(g, _BATCH):
        yield
        return
    waiting: dict[str, tuple[str, int]] = {}
    setattr(g, _BATCH, waiting)
    try:
        yield
    finally:
        delattr(g, _BATCH)
    if waiting:
        pipe = _redis().pipeline(transaction=False)
        _queue_sets(pipe, waiting)
        pipe.execute()


def _waiting() -> dict[str, tuple[str, int]] | None:
    waiting: dict[str, tuple[str, int]] | None = getattr(g, _BATCH, None)
    return waiting


def _queue_sets(pipe: Any, waiting: dict[str, tuple[str, int]]) -> None:
    for key, (raw, ttl) in waiting.items():
        pipe.set(key, raw, ex=ttl)
    waiting.clear()


def keep(namespace: str, value: str, payload: dict[str, Any], *, ttl: int) -> None:
    """Keep ``payload`` for ``ttl`` seconds under ``value`` (stored as a digest), replacing what
    was kept there: read with ``peek``, or taken once by ``take``. Redis only (``shared()``):
    callers keep their own table otherwise. Inside a ``batch``, written when it ends."""
    key, raw, ex = _key(namespace, value), json.dumps(payload), max(1, ttl)
    waiting = _waiting()
    if waiting is not None:
        waiting.pop(key, None)  # a later write of the key goes after the others
        waiting[key] = (raw, ex)
        return
    _redis().set(key, raw, ex=ex)


def keep_once(namespace: str, value: str, payload: dict[str, Any], *, ttl: int) -> bool:
    """``keep`` and, in the same round trip, mark ``value`` as ended once and for all (``SET
    NX`` of a marker beside it, for ``ttl`` seconds): True for the one caller that marked it,
    False for any other (a racing request), whose write then changes nothing that matters as
    long as both write the same ending. Redis only; executes with what a ``batch`` holds."""
    key, raw, ex = _key(namespace, value), json.dumps(payload), max(1, ttl)
    pipe = _redis().pipeline(transaction=False)
    waiting = _waiting()
    if waiting is not None:
        waiting.pop(key, None)
        _queue_sets(pipe, waiting)
    pipe.set(f"{key}:ended", b"1", nx=True, ex=ex)
    pipe.set(key, raw, ex=ex)
    return bool(pipe.execute()[-2])


def peek(namespace: str, value: str) -> dict[str, Any] | None:
    """The payload kept under ``value`` (left in place), or None. Redis only."""
    key = _key(namespace, value)
    waiting = _waiting()
    raw = waiting[key][0] if waiting and key in waiting else _redis().get(key)
    if raw is None:
        return None
    payload: dict[str, Any] = json.loads(raw)
    return payload


def take(namespace: str, value: str) -> dict[str, Any] | None:
    """The payload kept under ``value``, removed as it is read (one atomic ``GETDEL``: of
    racing takers, one gets it), or None when unknown, expired or taken. Redis only."""
    key = _key(namespace, value)
    waiting = _waiting()
    if waiting and key in waiting:
        payload: dict[str, Any] = json.loads(waiting.pop(key)[0])
        return payload
    raw = _redis().getdel(key)
    if raw is None:
        return None
    payload = json.loads(raw)
    return payload


def use_once(namespace: str, value: str, *, ttl: int) -> bool:
    """Mark ``value`` as used for ``ttl`` seconds. True the first time, False on replay.

    Atomic across workers: Redis ``SET NX`` or a primary-key insert.
    """
    key = _key(namespace, value)
    client = _redis()
    if client is not None:
        return bool(client.set(key, b"1", nx=True, ex=max(1, ttl)))
    now = utcnow()
    expires = now + dt.timedelta(seconds=max(1, ttl))
    # An expired entry may be reused: delete it first (only when expired).
    db.session.execute(
        delete(ReplayEntry).where(ReplayEntry.key == key, ReplayEntry.expires_at <= now)
    )
    try:
        with db.session.begin_nested():
            db.session.execute(insert(ReplayEntry).values(key=key, expires_at=expires))
    except IntegrityError:
        db.session.commit()
        return False
    db.session.commit()
    return True


def hit(namespace: str, value: str, *, limit: int, window: int = 60) -> None:
    """Count one request against ``limit`` per ``window`` seconds for ``value``.

    Raises ``RateLimitedError`` (429 with Retry-After) past the limit. ``limit <= 0`` disables.
    """
    if limit <= 0:
        return
    now = time.time()
    current = int(now // window)
    retry_after = max(1, int((current + 1) * window - now))
    key = f"{_key(namespace, value)}:{current}"
    client = _redis()
    if client is not None:
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.expire(key, window + 1)
        count = int(pipe.execute()[0])
    else:
        count = _db_hit(key[:200], current)
    if count > limit:
        raise RateLimitedError(retry_after)


def hit_all(
    hits: Sequence[tuple[str, str, int]], *, read: str | None = None, window: int = 60
) -> bytes | None:
    """Count each ``(namespace, value, limit)`` as ``hit`` does, and with Redis also ``GET``
    the key ``read``, all in one round trip. Returns the value read (None without Redis).

    Raises ``RateLimitedError`` past any limit (every count is made first, as with ``hit``)."""
    client = _redis()
    if client is None:
        for namespace, value, limit in hits:
            hit(namespace, value, limit=limit, window=window)
        return None
    now = time.time()
    current = int(now // window)
    retry_after = max(1, int((current + 1) * window - now))
    counted = [(n, v, limit) for n, v, limit in hits if limit > 0]
    if not counted:
        return client.get(read) if read is not None else None
    pipe = client.pipeline(transaction=False)
    for namespace, value, _ in counted:
        key = f"{_key(namespace, value)}:{current}"
        pipe.incr(key)
        pipe.expire(key, window + 1)
    if read is not None:
        pipe.get(read)
    results = pipe.execute()
    for index, (_, _, limit) in enumerate(counted):
        if int(results[2 * index]) > limit:
            raise RateLimitedError(retry_after)
    return results[-1] if read is not None else None


def _db_hit(key: str, window: int) -> int:
    result = db.session.execute(
        update(RateCounter)
        .where(RateCounter.key == key, RateCounter.window == window)
        .values(count=RateCounter.count + 1)
    )
    if getattr(result, "rowcount", 0) == 0:
        try:
            with db.session.begin_nested():
                db.session.execute(insert(RateCounter).values(key=key, window=window, count=1))
        except IntegrityError:
            db.session.execute(
                update(RateCounter)
                .where(RateCounter.key == key)
                .values(count=RateCounter.count + 1)
            )
    count = db.session.scalar(select(RateCounter.count).where(RateCounter.key == key)) or 0
    db.session.commit()
    return int(count)


def purge_expired() -> int:
    """Delete expired database entries (a periodic job; Redis expires its own)."""
    now = utcnow()
    window_now = int(time.time() // 60)
    results = [
        db.session.execute(delete(ReplayEntry).where(ReplayEntry.expires_at <= now)),
        db.session.execute(delete(RateCounter).where(RateCounter.window < window_now - 60)),
    ]
    n = sum(int(getattr(r, "rowcount", 0) or 0) for r in results)
    db.session.commit()
    return int(n or 0)
