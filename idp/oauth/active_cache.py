"""A worker's memory of access tokens it found active, made safe by a shared revocation epoch.

Resource servers introspect the same access token on every call they serve. Checking it costs
a signature verification and a database round trip (``tokens.is_access_token_live``); this
module lets a worker answer a token it checked a moment ago with one Redis ``GET`` instead,
without ever answering "active" for a token revoked before the question was asked:

- Every database transaction that can end a token — writes to the revoked-``jti`` list, to
  grants, or to the status of a person, company, membership or third-party authorisation
  (the tables the liveness query reads) — increments a counter in Redis, the *revocation
  epoch*, right after it commits (SQLAlchemy ``after_commit``, so inside the revoking request:
  once a revocation has been answered, every worker sees the new epoch).
- A worker remembers a token as active together with the epoch it read *before* it queried
  the database, for at most ``IDP_ACTIVE_TOKEN_CACHE_TTL`` seconds and never past the token's
  ``exp``. It reuses the answer only while the epoch is unchanged. A revocation committed
  after its database read moves the epoch, so the answer is dropped.
- Only "active" answers are kept; a missing epoch key (Redis restarted or flushed) is created
  with a random value, so it never matches an old one; any Redis error means no caching.

Without Redis (the embedded SQLite set-up) nothing is cached: one process, and the database
check is cheap there. The database stays the only source of truth.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import weakref
from typing import Any

from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Session, UOWTransaction

log = logging.getLogger(__name__)

# Tables whose changes can make an active token inactive (what the liveness queries read).
WATCHED_TABLES = frozenset(
    {
        "revoked_access_tokens",
        "grants",
        "people",
        "companies",
        "memberships",
        "third_party_authorisations",
    }
)
# Inserts into these tables never end a token (a new grant, person, membership...).
INSERT_ONLY_HARMLESS = WATCHED_TABLES - {"revoked_access_tokens"}
MAX_ENTRIES = 100_000
_FLAG = "idp.revocation_pending"

# token -> (epoch, remember-until (monotonic), claims)
_entries: dict[str, tuple[bytes, float, dict[str, Any]]] = {}


def _redis() -> Any:
    return current_app.extensions.get("idp.redis") if has_app_context() else None


def _epoch_key() -> str:
    key = current_app.extensions.get("idp.epoch_key")
    if key is None:
        from idp.cache import _key

        key = current_app.extensions["idp.epoch_key"] = _key("revocation-epoch", "epoch")
    return str(key)


def _ttl() -> float:
    return float(current_app.config["IDP"]["ACTIVE_TOKEN_CACHE_TTL"])


def enabled() -> bool:
    """Whether this worker may answer tokens from memory (Redis configured, TTL above 0)."""
    return _redis() is not None and _ttl() > 0


def epoch_key() -> str:
    """The Redis key of the epoch, for callers that read it with other commands
    (``epoch_from`` then makes the value usable)."""
    return _epoch_key()


def current_epoch() -> bytes | None:
    """The shared revocation epoch, or None when tokens must not be answered from memory."""
    if not enabled():
        return None
    try:
        return epoch_from(_get(_epoch_key()))
    except Exception:
        _drop_connection()
        log.warning("revocation epoch unavailable; active-token cache bypassed")
        return None


# thread ident -> (the thread, the pool whose settings made it, connection, packed commands)
_held: dict[int, tuple[weakref.ref[threading.Thread], Any, Any, dict[str, bytes]]] = {}


def _connection() -> tuple[Any, dict[str, bytes]]:
    """This thread's own Redis connection (made with the pool's settings, outside its count)
    and its packed commands. Connections of threads that have ended are closed here, so a
    server that starts a thread per request (the development server) does not gather them."""
    pool = _redis().connection_pool
    thread = threading.current_thread()
    held = _held.get(thread.ident or 0)
    if held is not None and held[0]() is thread and held[1] is pool:
        return held[2], held[3]
    for ident, (owner, _, connection, _) in list(_held.items()):
        alive = owner()
        if alive is None or not alive.is_alive() or ident == thread.ident:
            _held.pop(ident, None)
            connection.disconnect()
    connection = pool.connection_class(**pool.connection_kwargs)
    _held[thread.ident or 0] = (weakref.ref(thread), pool, connection, {})
    return connection, _held[thread.ident or 0][3]


def _drop_connection() -> None:
    held = _held.pop(threading.get_ident(), None)
    if held is not None:
        held[2].disconnect()


def _get(key: str) -> bytes | None:
    """``GET key`` on a connection this thread keeps (redis-py's connection layer: about half
    the CPU of ``Redis.get``, which checks a connection out of the pool and back per command;
    this read happens on every introspection). A failed connection is dropped by the caller;
    the next read opens a new one."""
    connection, packed = _connection()
    command = packed.get(key)
    if command is None:
        command = packed[key] = connection.pack_command("GET", key)
    connection.send_packed_command(command, check_health=False)
    value = connection.read_response()
    return value if value is None else bytes(value)


def epoch_from(value: bytes | None) -> bytes | None:
    """The epoch from a value read from Redis; a missing key (Redis restarted or flushed) is
    created with a random value, so that it never matches an epoch remembered before."""
    if value is not None:
        return bytes(value)
    client, key = _redis(), _epoch_key()
    try:
        client.set(key, str(secrets.randbits(62)).encode(), nx=True)
        value = client.get(key)
    except Exception:
        log.warning("revocation epoch unavailable; active-token cache bypassed")
        return None
    return bytes(value) if value is not None else None


def bump() -> None:
    """Move the epoch: every worker forgets the tokens it remembered as active."""
    client = _redis()
    if client is None:
        return
    try:
        client.incr(_epoch_key())
    except Exception:
        # Redis is down: workers cannot read the epoch either, so none answers from memory
        # (current_epoch returns None); entries are also bounded by the cache TTL.
        log.exception("could not move the revocation epoch")


def recall(token: str, epoch: bytes | None) -> dict[str, Any] | None:
    """The claims of ``token`` if this worker found it active under ``epoch``, else None."""
    if epoch is None:
        return None
    hit = _entries.get(token)
    if hit is None:
        return None
    if hit[0] != epoch or hit[1] <= time.monotonic() or hit[2].get("exp", 0) <= time.time():
        _entries.pop(token, None)
        return None
    return hit[2]


def remember(token: str, epoch: bytes | None, claims: dict[str, Any]) -> None:
    """Remember ``token`` as active under ``epoch`` (read before it was checked)."""
    if epoch is None:
        return
    if len(_entries) >= MAX_ENTRIES:
        _entries.clear()
    _entries[token] = (epoch, time.monotonic() + _ttl(), claims)


def forget_all() -> None:
    """Forget every remembered token and close the connections threads keep (tests)."""
    _entries.clear()
    for ident in list(_held):
        held = _held.pop(ident, None)
        if held is not None:
            held[2].disconnect()


# --- noticing revocations -------------------------------------------------------------------


def _touches(table: str, is_insert: bool) -> bool:
    if table not in WATCHED_TABLES:
        return False
    return not (is_insert and table in INSERT_ONLY_HARMLESS)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    if session.info.get(_FLAG):
        return
    for objects, is_insert in (
        (session.new, True),
        (session.dirty, False),
        (session.deleted, False),
    ):
        for obj in objects:
            table = getattr(obj, "__tablename__", None)
            if table and _touches(table, is_insert):
                session.info[_FLAG] = True
                return


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: Any) -> None:
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    table = getattr(getattr(state.statement, "table", None), "name", None)
    if table and _touches(table, bool(state.is_insert)):
        state.session.info[_FLAG] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_FLAG, False):
        bump()


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: Any) -> None:
    # The outermost transaction ended without a commit (after_commit has popped the flag
    # otherwise): nothing was written. A savepoint's end keeps the flag.
    if transaction.parent is None:
        session.info.pop(_FLAG, None)
