"""Audit events, recorded by services in the same transaction as what they describe, linked
in a hash chain afterwards by a sealer; verifying the chain; searching events.

``record`` only INSERTs the event, unlinked (``seq``, ``prev_hash``, ``hash`` NULL), in the
caller's transaction: no lock, no read of the chain head, so audited transactions of every
worker commit in parallel, and one that rolls back (or a savepoint that does) leaves nothing.

``seal_pending`` links committed, unlinked events in ``id`` order in a transaction of its own:
it takes the head (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, skipping the round when
another sealer has it; the write lock on SQLite), gives each event the next ``seq`` (gap-free),
``prev_hash`` and ``hash``, moves the head and commits. The chain is in sealing order: an event
whose transaction committed late gets a later ``seq``. Sealing is done by a daemon thread per
process (every ``AUDIT_SEAL_INTERVAL`` seconds while there is work, woken by commits that
recorded events), by ``idp audit seal`` and by ``idp audit verify``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask, current_app, has_app_context
from sqlalchemy import Table, bindparam, event, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session

from idp.audit.models import GENESIS_HASH, AuditChainHead, AuditEvent, event_hash
from idp.db import utcnow
from idp.extensions import db

log = logging.getLogger("idp.audit")

# "source:subject:action", three lowercase segments. "-" is allowed besides "_": tags such as
# "clients:client:rotate-secret" and "delegation:third-party:grant" are in use.
_SEGMENT = r"[a-z0-9][a-z0-9_-]*"
TAG_PATTERN = re.compile(rf"{_SEGMENT}:{_SEGMENT}:{_SEGMENT}")
TAG_MAX_LENGTH = 64
# Session.info key: the transaction recorded events (wake the sealer when it commits).
RECORDED = "idp.audit.recorded"
HEAD_ID = 1
# Rows read per query by verify_chain.
VERIFY_BATCH = 2000
# Events linked per sealing transaction at most.
SEAL_LIMIT = 5000
SEARCH_MAX_LIMIT = 500
_HEAD_TABLE = cast(Table, AuditChainHead.__table__)
_EVENT_TABLE = cast(Table, AuditEvent.__table__)


@dataclass(frozen=True)
class Origin:
    """Where a request came from, as the view saw it."""

    ip_address: str | None = None
    user_agent: str | None = None


def _clip(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]


def record(
    tag: str,
    *,
    actor: str,
    subject: str | None = None,
    origin: Origin | None = None,
    company_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the current transaction (the caller commits). Never put secrets
    in ``details`` (JSON values only).

    The event is added to the session, unsealed: its ``seq``, ``prev_hash`` and ``hash`` stay
    None until ``seal_pending`` links it after the commit (a rollback drops it, like anything
    else in the transaction). Raises ``ValueError`` for a tag that is not
    ``"source:subject:action"`` (each segment lowercase letters, digits, ``_`` and ``-``,
    starting with a letter or digit) or details that are not JSON."""
    if len(tag) > TAG_MAX_LENGTH or not TAG_PATTERN.fullmatch(tag):
        raise ValueError(f"audit tag {tag!r} is not 'source:subject:action' (a-z 0-9 _ - each)")
    # Stored as JSON, hashed as JSON: normalise now (tuples become lists, keys strings) so that
    # the hash covers exactly what the database gives back.
    try:
        normalised = json.loads(json.dumps(details or {}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit details of {tag} are not JSON: {exc}") from None
    event = AuditEvent(
        tag=tag,
        actor=_clip(actor, 200),
        subject=_clip(subject, 200),
        company_id=company_id,
        ip_address=_clip(origin.ip_address, 64) if origin else None,
        user_agent=(origin.user_agent or "")[:300] if origin else None,
        details=normalised,
        created_at=utcnow(),
    )
    session = db.session()
    session.add(event)
    session.info[RECORDED] = True
    log.info("audit %s actor=%s subject=%s", tag, actor, subject)
    return event


@event.listens_for(Session, "after_commit")
def _wake_sealer(session: Session) -> None:
    if session.info.pop(RECORDED, None) and has_app_context():
        wake_sealer(current_app._get_current_object())  # type: ignore[attr-defined]


@event.listens_for(Session, "after_transaction_end")
def _forget_on_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(RECORDED, None)


# --- sealing ----------------------------------------------------------------------------------


def _take_head(conn: Connection) -> tuple[int, str] | None:
    """The head's ``(last_seq, last_hash)``, locked until the transaction ends, or None when
    another sealer holds it (PostgreSQL; SQLite waits for its write lock). Made on first use."""
    table = _HEAD_TABLE
    row_query = select(table.c.last_seq, table.c.last_hash).where(table.c.id == HEAD_ID)
    if conn.dialect.name == "sqlite":
        # No FOR UPDATE in SQLite: a write takes the database's write lock before the read.
        conn.execute(update(table).where(table.c.id == HEAD_ID).values(last_seq=table.c.last_seq))
        locking = row_query
    elif conn.dialect.name == "postgresql":
        locking = row_query.with_for_update(skip_locked=True)
    else:
        locking = row_query.with_for_update()
    row = conn.execute(locking).one_or_none()
    if row is None:
        if conn.execute(row_query).one_or_none() is not None:
            return None  # there, but locked by another sealer: skip this round
        values = {"id": HEAD_ID, "last_seq": 0, "last_hash": GENESIS_HASH}
        if conn.dialect.name == "postgresql":
            conn.execute(pg_insert(table).values(values).on_conflict_do_nothing())
        elif conn.dialect.name == "sqlite":
            conn.execute(sqlite_insert(table).values(values).on_conflict_do_nothing())
        else:
            conn.execute(insert(table).values(values))
        row = conn.execute(locking).one_or_none()
        if row is None:
            return None  # another sealer made it first and holds it
    return int(row.last_seq), str(row.last_hash)


def _seal(limit: int) -> int | None:
    """One sealing transaction: the number of events linked, None when another sealer held
    the head."""
    table = _EVENT_TABLE
    with db.engine.connect() as conn, conn.begin():
        taken = _take_head(conn)
        if taken is None:
            return None
        seq, previous = taken
        rows = conn.execute(
            select(table).where(table.c.hash.is_(None)).order_by(table.c.id).limit(limit)
        ).all()
        if not rows:
            return 0
        links = []
        for row in rows:
            seq += 1
            fields = _hashed_fields(row) | {"seq": seq, "prev_hash": previous}
            current = event_hash(**fields)
            links.append({"row_id": row.id, "seq": seq, "prev_hash": previous, "hash": current})
            previous = current
        conn.execute(
            update(table)
            .where(table.c.id == bindparam("row_id"), table.c.hash.is_(None))
            .values(seq=bindparam("seq"), prev_hash=bindparam("prev_hash"), hash=bindparam("hash")),
            links,
        )
        conn.execute(
            update(_HEAD_TABLE)
            .where(_HEAD_TABLE.c.id == HEAD_ID)
            .values(last_seq=seq, last_hash=previous)
        )
    log.debug("audit sealed %d events, head %d", len(rows), seq)
    return len(rows)


def seal_pending(*, limit: int = SEAL_LIMIT) -> int:
    """Link up to ``limit`` committed, unsealed events into the chain, in ``id`` order, in a
    transaction of its own (commits). Returns how many; 0 when there were none or another
    sealer holds the head (it will link them). Call outside a write transaction of one's own
    on SQLite (the sealer waits for the database's write lock)."""
    return _seal(max(1, int(limit))) or 0


@dataclass(frozen=True)
class Backlog:
    """Events committed but not sealed yet: how many, and the oldest one's ``created_at``."""

    unsealed: int
    oldest: dt.datetime | None

    def age_seconds(self, now: dt.datetime | None = None) -> float | None:
        if self.oldest is None:
            return None
        return max(0.0, ((now or utcnow()) - self.oldest).total_seconds())


def backlog() -> Backlog:
    """The unsealed events (committed ones, as this session sees them)."""
    count, oldest = db.session.execute(
        select(func.count(), func.min(AuditEvent.created_at)).where(AuditEvent.hash.is_(None))
    ).one()
    return Backlog(int(count), oldest)


# --- the sealer thread ------------------------------------------------------------------------


class _Sealer:
    """A daemon thread of one app in one process: sleeps until a commit recorded events,
    waits ``interval`` seconds (so one transaction links many events), seals until nothing is
    left, and sleeps again."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app = app
        self.interval = interval
        self.pid = os.getpid()
        self.work = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="idp-audit-sealer", daemon=True)

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.work.wait()
            if self.stopped.wait(self.interval):
                return
            self.work.clear()  # commits from now on wake the next round
            with self.app.app_context():
                try:
                    while not self.stopped.is_set():
                        sealed = _seal(SEAL_LIMIT)
                        if sealed is None:
                            self.work.set()  # another sealer has the head: try next round
                            break
                        if sealed < SEAL_LIMIT:
                            break
                except Exception:
                    log.exception("audit events could not be sealed; retrying")
                    self.work.set()
                finally:
                    db.session.remove()

    def stop(self) -> None:
        self.stopped.set()
        self.work.set()


_SEALER_KEY = "idp.audit.sealer"
_sealer_lock = threading.Lock()


def wake_sealer(app: Flask) -> None:
    """Tell ``app``'s sealer thread in this process that events were committed, starting it
    first (on first use, and again after a fork, so each worker has its own). With
    ``AUDIT_SEAL_INTERVAL`` = 0 there is no thread: ``idp audit seal`` links the events."""
    interval = float(app.config["IDP"]["AUDIT_SEAL_INTERVAL"])
    if interval <= 0:
        return
    sealer = app.extensions.get(_SEALER_KEY)
    if sealer is None or sealer.pid != os.getpid():
        with _sealer_lock:
            sealer = app.extensions.get(_SEALER_KEY)
            if sealer is None or sealer.pid != os.getpid():
                sealer = _Sealer(app, interval)
                sealer.thread.start()
                app.extensions[_SEALER_KEY] = sealer
    sealer.work.set()


def stop_sealer(app: Flask, timeout: float = 5) -> None:
    """Stop ``app``'s sealer thread in this process, if it runs (for tests and shutdown)."""
    sealer = app.extensions.pop(_SEALER_KEY, None)
    if sealer is not None and sealer.pid == os.getpid():
        sealer.stop()
        sealer.thread.join(timeout)


_HASHED = (
    "seq",
    "prev_hash",
    "tag",
    "actor",
    "subject",
    "company_id",
    "ip_address",
    "user_agent",
    "details",
    "created_at",
)


def _hashed_fields(source: AuditEvent | Row[Any]) -> dict[str, Any]:
    return {name: getattr(source, name) for name in _HASHED}


# --- verifying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    """Outcome of ``verify_chain``: ``checked`` events read; when not ``ok``, the ``seq`` of the
    first broken link and why. ``last_hash`` is the hash of the last good event (record it
    elsewhere to detect a rewritten chain later). ``unsealed`` events are committed but not in
    the chain yet (not checked); the oldest of them is ``oldest_unsealed_age`` seconds old."""

    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    unsealed: int = 0
    oldest_unsealed_age: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_broken_seq": self.first_broken_seq,
            "reason": self.reason,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "unsealed": self.unsealed,
            "oldest_unsealed_age": self.oldest_unsealed_age,
        }


def _rows(up_to: int, batch: int) -> Iterator[Row[Any]]:
    """Events with ``seq <= up_to`` in seq order, ``batch`` rows per query (keyset)."""
    table = _EVENT_TABLE
    after = 0
    while True:
        rows = db.session.execute(
            select(table)
            .where(table.c.seq > after, table.c.seq <= up_to)
            .order_by(table.c.seq)
            .limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


def verify_chain(*, batch: int = VERIFY_BATCH) -> ChainReport:
    """Walk the chain of sealed events from seq 1 to the head as it is when the walk starts,
    in batches, and return a ``ChainReport`` naming the first broken link: a missing seq (event
    deleted), a ``prev_hash`` that is not the previous event's hash, a hash that does not match
    the event's fields (a field changed), or a head that does not match the last event. It
    also counts the events not sealed yet (it does not seal: call ``seal_pending`` first)."""
    pending = backlog()
    unsealed, age = pending.unsealed, pending.age_seconds()
    head = db.session.execute(
        select(AuditChainHead.last_seq, AuditChainHead.last_hash).where(
            AuditChainHead.id == HEAD_ID
        )
    ).one_or_none()
    head_seq, head_hash = (head.last_seq, head.last_hash) if head else (0, GENESIS_HASH)
    expected, previous, checked = 1, GENESIS_HASH, 0

    def broken(seq: int, reason: str) -> ChainReport:
        return ChainReport(False, checked, seq, reason, expected - 1, previous, unsealed, age)

    for row in _rows(head_seq, batch):
        if row.seq != expected:
            return broken(expected, f"event {expected} is missing (next found: {row.seq})")
        if row.prev_hash != previous:
            return broken(
                row.seq, f"prev_hash of event {row.seq} is not event {row.seq - 1}'s hash"
            )
        if event_hash(**_hashed_fields(row)) != row.hash:
            return broken(row.seq, f"event {row.seq} does not match its hash (a field was changed)")
        checked += 1
        expected, previous = row.seq + 1, row.hash
    if expected - 1 != head_seq:
        return broken(expected, f"event {expected} is missing (the head is at {head_seq})")
    if previous != head_hash:
        return broken(head_seq, f"the chain head's hash is not event {head_seq}'s hash")
    sealed = select(AuditEvent.seq).where(AuditEvent.seq.is_not(None)).limit(1)
    if head is None and db.session.scalar(sealed) is not None:
        return broken(1, "events exist but the chain head is missing")
    return ChainReport(True, checked, None, None, head_seq, head_hash, unsealed, age)


# --- searching --------------------------------------------------------------------------------


def search_events(
    *,
    company_id: int | None = None,
    tag_prefix: str | None = None,
    actor: str | None = None,
    subject: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    before_id: int | None = None,
    before_seq: int | None = None,
) -> list[AuditEvent]:
    """Events matching every given filter, sealed or not, newest first by ``id`` (the order
    they were recorded in; ``seq``, the chain's order, is the order they were sealed in, None
    until then), at most ``limit`` (1-500, clamped). ``tag_prefix`` matches the tag's start
    literally (``"oauth:"``, ``"oauth:token:"``); ``since`` is inclusive, ``until`` exclusive.
    For the next page pass the last event's ``id`` as ``before_id``. ``before_seq`` keeps only
    sealed events with a lower ``seq`` (still listed by ``id``): an older way to page, which
    can skip an event whose transaction committed late; use ``before_id``."""
    query = select(AuditEvent)
    if company_id is not None:
        query = query.where(AuditEvent.company_id == company_id)
    if tag_prefix:
        query = query.where(AuditEvent.tag.startswith(tag_prefix, autoescape=True))
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    if since is not None:
        query = query.where(AuditEvent.created_at >= since)
    if until is not None:
        query = query.where(AuditEvent.created_at < until)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    if before_seq is not None:
        query = query.where(AuditEvent.seq < before_seq)
    limit = max(1, min(int(limit), SEARCH_MAX_LIMIT))
    return list(db.session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit)))
