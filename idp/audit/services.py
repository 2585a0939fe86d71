"""Audit events, recorded by services in the same transaction as what they describe, linked
in a hash chain when that transaction commits; verifying the chain; searching events.

``record`` keeps the event aside in the session until the transaction commits; just before the
commit (``before_commit``, after everything else is flushed) ``_link`` locks the chain head
(``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock on SQLite), gives each event its
``seq``, ``prev_hash`` and ``hash``, moves the head and adds the events; the commit releases the
lock. So the lock is held only for the events' INSERTs and the commit, a transaction that rolls
back consumes no ``seq``, and events recorded in a savepoint (``begin_nested``) that rolls back
are dropped with it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, event, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session, SessionTransaction

from idp.audit.models import GENESIS_HASH, AuditChainHead, AuditEvent, event_hash
from idp.db import utcnow
from idp.extensions import db

log = logging.getLogger("idp.audit")

# "source:subject:action", three lowercase segments. "-" is allowed besides "_": tags such as
# "clients:client:rotate-secret" and "delegation:third-party:grant" are in use.
_SEGMENT = r"[a-z0-9][a-z0-9_-]*"
TAG_PATTERN = re.compile(rf"{_SEGMENT}:{_SEGMENT}:{_SEGMENT}")
TAG_MAX_LENGTH = 64
# Session.info key of the events waiting for the commit: (transaction, event) pairs.
PENDING = "idp.audit.pending"
HEAD_ID = 1
# Rows read per query by verify_chain.
VERIFY_BATCH = 2000
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

    The event is written and linked into the chain when the transaction commits; until then
    it is not in the session (queries do not see it) and its ``seq``/``hash`` are None. Raises
    ``ValueError`` for a tag that is not ``"source:subject:action"`` (each segment lowercase
    letters, digits, ``_`` and ``-``, starting with a letter or digit) or details that are not
    JSON."""
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
    if not session.in_transaction():
        session.begin()  # what the next statement would do: a rollback now drops the event
    transaction = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(PENDING, []).append((transaction, event))
    log.info("audit %s actor=%s subject=%s", tag, actor, subject)
    return event


# --- linking at commit ------------------------------------------------------------------------


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    """Whether ``transaction`` (None: the root, not begun when recorded) is ``ended`` or
    one of its savepoints."""
    if transaction is None:
        return ended.parent is None
    current: SessionTransaction | None = transaction
    while current is not None:
        if current is ended:
            return True
        current = current.parent
    return False


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    pending = session.info.get(PENDING)
    if pending:
        pending[:] = [(t, e) for t, e in pending if not _within(t, previous_transaction)]


@event.listens_for(Session, "after_transaction_end")
def _forget_on_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(PENDING, None)


def _lock_head(conn: Connection) -> tuple[int, str]:
    """The head's ``(last_seq, last_hash)``, locked until the transaction ends; made on first
    use (two first users at once: one inserts, both then lock the same row)."""
    table = _HEAD_TABLE
    row_for_update = select(table.c.last_seq, table.c.last_hash).where(table.c.id == HEAD_ID)
    if conn.dialect.name == "sqlite":
        # No FOR UPDATE in SQLite: a write takes the database's write lock before the read.
        conn.execute(update(table).where(table.c.id == HEAD_ID).values(last_seq=table.c.last_seq))
    else:
        row_for_update = row_for_update.with_for_update()
    row = conn.execute(row_for_update).one_or_none()
    if row is None:
        values = {"id": HEAD_ID, "last_seq": 0, "last_hash": GENESIS_HASH}
        if conn.dialect.name == "postgresql":
            conn.execute(pg_insert(table).values(values).on_conflict_do_nothing())
        elif conn.dialect.name == "sqlite":
            conn.execute(sqlite_insert(table).values(values).on_conflict_do_nothing())
        else:
            conn.execute(insert(table).values(values))
        row = conn.execute(row_for_update).one()
    return int(row.last_seq), str(row.last_hash)


@event.listens_for(Session, "before_commit")
def _link(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released: its events wait for the outer commit
    if not session.info.get(PENDING):
        return
    session.flush()  # everything else first, so the head is locked as briefly as possible
    pending = session.info.pop(PENDING)
    conn = session.connection(bind_arguments={"mapper": AuditEvent.__mapper__})
    seq, previous = _lock_head(conn)
    events = [e for _, e in pending]
    for audit_event in events:
        seq += 1
        audit_event.seq = seq
        audit_event.prev_hash = previous
        audit_event.hash = previous = event_hash(**_hashed_fields(audit_event))
    table = _HEAD_TABLE
    conn.execute(
        update(table).where(table.c.id == HEAD_ID).values(last_seq=seq, last_hash=previous)
    )
    session.add_all(events)


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
    elsewhere to detect a rewritten chain later)."""

    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    last_seq: int = 0
    last_hash: str = GENESIS_HASH

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_broken_seq": self.first_broken_seq,
            "reason": self.reason,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
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
    """Walk the chain from seq 1 to the head as it is when the walk starts, in batches, and
    return a ``ChainReport`` naming the first broken link: a missing seq (event deleted),
    a ``prev_hash`` that is not the previous event's hash, a hash that does not match the
    event's fields (a field changed), or a head that does not match the last event."""
    head = db.session.execute(
        select(AuditChainHead.last_seq, AuditChainHead.last_hash).where(
            AuditChainHead.id == HEAD_ID
        )
    ).one_or_none()
    head_seq, head_hash = (head.last_seq, head.last_hash) if head else (0, GENESIS_HASH)
    expected, previous, checked = 1, GENESIS_HASH, 0

    def broken(seq: int, reason: str) -> ChainReport:
        return ChainReport(False, checked, seq, reason, expected - 1, previous)

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
    if head is None and db.session.scalar(select(AuditEvent.seq).limit(1)) is not None:
        return broken(1, "events exist but the chain head is missing")
    return ChainReport(True, checked, None, None, head_seq, head_hash)


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
    before_seq: int | None = None,
) -> list[AuditEvent]:
    """Events matching every given filter, newest first (by ``seq``), at most ``limit``
    (1-500, clamped). ``tag_prefix`` matches the tag's start literally (``"oauth:"``,
    ``"oauth:token:"``); ``since`` is inclusive, ``until`` exclusive. For the next page pass
    the last event's ``seq`` as ``before_seq``."""
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
    if before_seq is not None:
        query = query.where(AuditEvent.seq < before_seq)
    limit = max(1, min(int(limit), SEARCH_MAX_LIMIT))
    return list(db.session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit)))
