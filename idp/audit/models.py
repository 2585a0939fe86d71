"""Append-only audit events, linked in a hash chain by a sealer, and the chain's head.

An event is INSERTed unlinked (``seq``, ``prev_hash`` and ``hash`` NULL) in the transaction of
what it describes; ``idp.audit.services.seal_pending`` later links committed events, in ``id``
order, in a transaction of its own: ``seq`` (gap-free, in sealing order), the hash of the event
before it (``prev_hash``) and its own ``hash`` (SHA-256 over ``canonical(event)``). The one-row
``audit_chain_head`` table holds the last ``seq`` and ``hash``; only the sealer locks it. The
database refuses DELETE on ``audit_events`` and every UPDATE but the sealer's one filling
``seq``/``prev_hash``/``hash`` of an unsealed row (triggers on SQLite and PostgreSQL, made by
the migration and by ``create_all``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Index, String, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import Table

from idp.db import Base, utcnow

# The prev_hash of the first event.
GENESIS_HASH = "0" * 64
# Version of the canonical serialisation, hashed with every event.
HASH_VERSION = 1


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        # Listing (newest first, keyset on id) by company, actor or subject.
        Index("ix_audit_events_company_id_id", "company_id", "id"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_subject_id", "subject", "id"),
        # Sealed or not, never half: the three chain columns are set together.
        CheckConstraint(
            "(seq IS NULL) = (hash IS NULL) AND (prev_hash IS NULL) = (hash IS NULL)",
            name="sealed_together",
        ),
        # The sealer's queue: only the unsealed rows, in id order.
        Index(
            "ix_audit_events_unsealed",
            "id",
            sqlite_where=text("hash IS NULL"),
            postgresql_where=text("hash IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Position in the chain: 1, 2, 3... without gaps, in sealing order; NULL until sealed.
    seq: Mapped[int | None] = mapped_column(unique=True)
    # Typed tag "source:subject:action", such as "oauth:token:issue".
    tag: Mapped[str] = mapped_column(String(64), index=True)
    # Who acted: "person:<subject>", "client:<client_id>", "operator:cli", "system".
    actor: Mapped[str] = mapped_column(String(200))
    # What it was done to, in the same form ("client:<id>", "company:<br>", "key:<kid>").
    subject: Mapped[str | None] = mapped_column(String(200))
    company_id: Mapped[int | None]
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    # SHA-256 (hex) of the previous event (GENESIS_HASH for seq 1) and of this one; NULL
    # until sealed.
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """The chain's last link: one row (id 1), locked by the sealer while it links events."""

    __tablename__ = "audit_chain_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_seq: Mapped[int]
    last_hash: Mapped[str] = mapped_column(String(64))


def canonical(
    *,
    seq: int,
    prev_hash: str,
    tag: str,
    actor: str,
    subject: str | None,
    company_id: int | None,
    ip_address: str | None,
    user_agent: str | None,
    details: dict[str, Any],
    created_at: dt.datetime,
) -> bytes:
    """The bytes an event's hash covers: every field but ``id`` and ``hash``, as JSON with
    sorted keys and no spaces (UTF-8), the time in UTC to the microsecond."""
    document = {
        "v": HASH_VERSION,
        "seq": seq,
        "prev_hash": prev_hash,
        "tag": tag,
        "actor": actor,
        "subject": subject,
        "company_id": company_id,
        "ip_address": ip_address,
        "user_agent": user_agent,
        "details": details,
        "created_at": created_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def event_hash(**fields: Any) -> str:
    """SHA-256 (hex) of ``canonical(**fields)``."""
    return hashlib.sha256(canonical(**fields)).hexdigest()


# --- append-only guards -----------------------------------------------------------------------
# The same statements are written into the migration (migrations/env.py renders them through
# idp.audit.ddl) and run by create_all (below), so test databases are guarded too.

APPEND_ONLY_MESSAGE = "audit_events is append-only"
# The columns the sealer fills (once, from NULL); every other column never changes.
SEAL_COLUMNS = ("seq", "prev_hash", "hash")
_KEPT_COLUMNS = tuple(c.name for c in AuditEvent.__table__.columns if c.name not in SEAL_COLUMNS)
# SQLite: the one UPDATE allowed (``IS`` compares NULLs as equal).
_SQLITE_SEALING = " AND ".join(
    [f"OLD.{c} IS NULL AND NEW.{c} IS NOT NULL" for c in SEAL_COLUMNS]
    + [f"NEW.{c} IS OLD.{c}" for c in _KEPT_COLUMNS]
)
# PostgreSQL: the same, comparing the whole row but the sealed columns (json has no "=", jsonb
# does), so a column added later is covered too.
_PG_SEALED = " - ".join(["{row}", *(f"'{c}'" for c in SEAL_COLUMNS)])
_PG_SEALING = " AND ".join(
    [f"OLD.{c} IS NULL AND NEW.{c} IS NOT NULL" for c in SEAL_COLUMNS]
    + [f"{_PG_SEALED.format(row='to_jsonb(NEW)')} = {_PG_SEALED.format(row='to_jsonb(OLD)')}"]
)

GUARDS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events "
        f"WHEN NOT ({_SQLITE_SEALING}) "
        f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events "
        f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END",
    ),
    "postgresql": (
        "CREATE FUNCTION audit_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF TG_OP = 'UPDATE' AND {_PG_SEALING} THEN RETURN NEW; END IF; "
        f"RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}' USING ERRCODE = '55000'; END $$",
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change()",
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change()",
    ),
}

DROP_GUARDS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "DROP TRIGGER IF EXISTS audit_events_no_update",
        "DROP TRIGGER IF EXISTS audit_events_no_delete",
    ),
    "postgresql": (
        "DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events",
        "DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events",
        "DROP FUNCTION IF EXISTS audit_events_refuse_change()",
    ),
}


def create_guards(connection: Connection) -> None:
    """Make the database refuse DELETE on audit_events, and UPDATE but sealing (other dialects:
    nothing)."""
    for statement in GUARDS.get(connection.dialect.name, ()):
        connection.execute(text(statement))


def drop_guards(connection: Connection) -> None:
    for statement in DROP_GUARDS.get(connection.dialect.name, ()):
        connection.execute(text(statement))


@event.listens_for(AuditEvent.__table__, "after_create")
def _guard_after_create(target: Table, connection: Connection, **kw: Any) -> None:
    create_guards(connection)


@event.listens_for(AuditEvent.__table__, "after_drop")
def _unguard_after_drop(target: Table, connection: Connection, **kw: Any) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("DROP FUNCTION IF EXISTS audit_events_refuse_change()"))


@contextlib.contextmanager
def append_only_lifted(connection: Connection) -> Iterator[Connection]:
    """Let ``connection`` delete audit events for the duration, in its transaction: for test
    fixtures that empty every table. Nothing in the application uses it.

    On PostgreSQL it takes the chain head before ``audit_events``, in the sealer's order: a
    sealer holding the head and waiting to link events would otherwise deadlock with a
    fixture holding ``audit_events`` (ALTER TABLE's lock) and waiting to delete the head."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("LOCK TABLE audit_chain_head IN EXCLUSIVE MODE"))
        connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        yield connection
        connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
    else:
        drop_guards(connection)
        try:
            yield connection
        finally:
            create_guards(connection)
