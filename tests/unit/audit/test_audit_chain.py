"""The audit log: typed tags, unsealed inserts sealed into the hash chain afterwards,
append-only tables (but sealing), verify, search."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from idp import schema
from idp.audit import services as audit
from idp.audit.models import (
    GENESIS_HASH,
    AuditChainHead,
    AuditEvent,
    append_only_lifted,
    event_hash,
)
from idp.audit.services import Origin, record, seal_pending, search_events, verify_chain
from idp.cli import cli
from idp.config import ROOT
from idp.extensions import db

ON_POSTGRES = bool(os.environ.get("IDP_TEST_DATABASE_URL"))


def events() -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def head() -> tuple[int, str] | None:
    row = db.session.execute(select(AuditChainHead.last_seq, AuditChainHead.last_hash)).first()
    return (row.last_seq, row.last_hash) if row else None


def commit_events(
    n: int, tag: str = "tests:event:make", *, seal: bool = True, **fields: Any
) -> None:
    """Record ``n`` events in one transaction, commit, and (``seal``) seal them."""
    for i in range(n):
        record(
            tag,
            actor=fields.get("actor", "system"),
            details={"i": i},
            **{k: v for k, v in fields.items() if k != "actor"},
        )
    db.session.commit()
    if seal:
        seal_pending()


def tamper(statement: Any) -> None:
    """Run ``statement`` with the append-only guards lifted and commit: how someone with
    the database's owner rights would change the log."""
    db.session.rollback()
    with db.engine.begin() as conn, append_only_lifted(conn):
        conn.execute(statement)


# --- tags -------------------------------------------------------------------------------------


def _tags_in_the_code() -> set[str]:
    found: set[str] = set()
    pattern = re.compile(r"\brecord\(\s*\"([^\"]+)\"")
    for path in (ROOT / "idp").rglob("*.py"):
        found.update(pattern.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_tag_in_the_code_is_valid() -> None:
    tags = _tags_in_the_code()
    assert {"oauth:token:issue", "authn:login:failure", "keys:key:create"} <= tags
    for tag in tags:
        assert audit.TAG_PATTERN.fullmatch(tag), tag
        assert len(tag) <= audit.TAG_MAX_LENGTH, tag


@pytest.mark.parametrize(
    "tag",
    [
        "oauth:token",
        "oauth:token:issue:again",
        "OAuth:token:issue",
        "oauth::issue",
        ":token:issue",
        "oauth:token:issue ",
        "oauth:to ken:issue",
        "oauth:token:-issue",
        "oauth:token:ïssue",
        "",
        "a:b:" + "c" * 70,
    ],
)
@pytest.mark.usefixtures("app_ctx")
def test_malformed_tags_are_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="source:subject:action"):
        record(tag, actor="system")
    db.session.commit()
    assert events() == []


@pytest.mark.usefixtures("app_ctx")
def test_details_must_be_json() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        record("tests:event:make", actor="system", details={"when": {1, 2}})
    with pytest.raises(ValueError, match="not JSON"):
        record("tests:event:make", actor="system", details={"x": float("nan")})


# --- the chain --------------------------------------------------------------------------------


@pytest.mark.usefixtures("app_ctx")
def test_events_are_linked_when_sealed() -> None:
    event = record(
        "tests:event:make",
        actor="person:abc",
        subject="client:xyz",
        company_id=7,
        origin=Origin("203.0.113.9", "Mozilla/5.0 瀏覽器"),
        details={"b": (1, 2), 3: "three", "名稱": "公司"},
    )
    assert event.seq is None
    db.session.commit()
    # Committed unsealed: in the table, not in the chain, the head untouched.
    [unsealed] = events()
    assert (unsealed.seq, unsealed.prev_hash, unsealed.hash) == (None, None, None)
    assert head() is None
    db.session.rollback()
    assert seal_pending() == 1
    assert seal_pending() == 0

    [stored] = events()
    assert stored.seq == 1
    assert stored.prev_hash == GENESIS_HASH
    assert stored.details == {"b": [1, 2], "3": "three", "名稱": "公司"}  # as JSON gives back
    assert stored.ip_address == "203.0.113.9"
    assert stored.user_agent == "Mozilla/5.0 瀏覽器"
    fields = {name: getattr(stored, name) for name in audit._HASHED}
    assert stored.hash == event_hash(**fields)
    assert head() == (1, stored.hash)


@pytest.mark.usefixtures("app_ctx")
def test_chain_over_several_transactions_is_gap_free() -> None:
    commit_events(2)
    commit_events(1)
    record("tests:event:make", actor="system")
    db.session.rollback()  # consumes nothing
    commit_events(3)
    chain = events()
    assert [e.seq for e in chain] == [1, 2, 3, 4, 5, 6]
    assert [e.prev_hash for e in chain] == [GENESIS_HASH] + [e.hash for e in chain[:-1]]
    assert head() == (6, chain[-1].hash)
    assert chain[-1].hash is not None
    assert verify_chain() == audit.ChainReport(True, 6, None, None, 6, chain[-1].hash)


@pytest.mark.usefixtures("app_ctx")
def test_a_failed_commit_consumes_no_seq() -> None:
    commit_events(1)
    record("tests:event:make", actor="system")
    # The action the event describes fails at the commit's flush: nothing is written.
    db.session.add(AuditChainHead(id=1, last_seq=0, last_hash=GENESIS_HASH))
    with pytest.raises(DBAPIError):
        db.session.commit()
    db.session.rollback()
    assert [e.seq for e in events()] == [1]
    commit_events(1)
    assert [e.seq for e in events()] == [1, 2]
    assert verify_chain().ok


@pytest.mark.usefixtures("app_ctx")
def test_savepoints_keep_their_events_only_when_released() -> None:
    record("tests:outer:before", actor="system")
    with db.session.begin_nested() as savepoint:
        record("tests:inner:rolled_back", actor="system")
        savepoint.rollback()
    with db.session.begin_nested():
        record("tests:inner:released", actor="system")
        with db.session.begin_nested() as deeper:
            record("tests:deeper:rolled_back", actor="system")
            deeper.rollback()
    record("tests:outer:after", actor="system")
    db.session.commit()
    assert seal_pending() == 3
    chain = events()
    assert [(e.seq, e.tag) for e in chain] == [
        (1, "tests:outer:before"),
        (2, "tests:inner:released"),
        (3, "tests:outer:after"),
    ]
    assert verify_chain().ok


@pytest.mark.usefixtures("app_ctx")
def test_nothing_pending_survives_a_rollback_or_removal() -> None:
    record("tests:event:lost", actor="system")
    db.session.remove()
    record("tests:event:lost", actor="system")
    db.session.rollback()
    db.session.commit()
    assert events() == []
    assert head() is None


def test_interleaved_sessions_link_in_commit_order(app: Flask) -> None:
    """Two sessions (two connections): the one that commits first gets the lower seq (on
    SQLite its INSERT also comes first)."""
    with app.app_context():
        record("tests:session:first_recorded", actor="system")
        with app.app_context():  # a second app context: another session and connection
            record("tests:session:second_recorded", actor="system")
            db.session.commit()
            db.session.remove()
        db.session.commit()
        assert seal_pending() == 2
        assert [(e.seq, e.tag) for e in events()] == [
            (1, "tests:session:second_recorded"),
            (2, "tests:session:first_recorded"),
        ]
        assert verify_chain().ok


@pytest.mark.skipif(not ON_POSTGRES, reason="concurrent writers need PostgreSQL")
def test_concurrent_workers_build_one_chain(app: Flask) -> None:
    workers, commits = 4, 15
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        with app.app_context():
            try:
                barrier.wait()
                for i in range(commits):
                    record("tests:worker:commit", actor=f"worker:{n}", details={"i": i})
                    record("tests:worker:commit", actor=f"worker:{n}", details={"i": i, "b": 1})
                    db.session.commit()
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    with app.app_context():
        assert seal_pending(limit=7) == 7
        assert seal_pending() == workers * commits * 2 - 7
        chain = events()
        assert [e.seq for e in chain] == list(range(1, workers * commits * 2 + 1))
        # No lock any more keeps one transaction's events adjacent, but each worker's events
        # are in the chain in the order it recorded them.
        for n in range(workers):
            mine = [(e.details["i"], "b" in e.details) for e in chain if e.actor == f"worker:{n}"]
            assert mine == [(i, b) for i in range(commits) for b in (False, True)]
        report = verify_chain(batch=7)
        assert report.ok
        assert report.checked == workers * commits * 2


@pytest.mark.skipif(not ON_POSTGRES, reason="row locks need PostgreSQL")
def test_recording_takes_no_lock_and_a_busy_head_is_skipped(app: Flask) -> None:
    """While a third connection holds the head, two sessions record and commit at once, and
    a sealer skips its round rather than queue; once the head is free the events are sealed."""
    with app.app_context():
        commit_events(1)
        conn = db.engine.connect()
        try:
            conn.execute(text("SELECT last_seq FROM audit_chain_head FOR UPDATE"))
            barrier = threading.Barrier(2)
            done: list[int] = []

            def other(n: int) -> None:
                with app.app_context():
                    record("tests:session:concurrent", actor=f"worker:{n}")
                    db.session.flush()
                    barrier.wait(5)  # both hold an uncommitted INSERT at once
                    db.session.commit()
                    db.session.remove()
                    done.append(n)

            threads = [threading.Thread(target=other, args=(n,)) for n in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert sorted(done) == [0, 1]  # neither waited for the head
            started = time.monotonic()
            assert seal_pending() == 0  # skipped: the head is taken
            assert time.monotonic() - started < 2
            db.session.rollback()
            assert [e.seq for e in events()] == [1, None, None]
            conn.rollback()
        finally:
            conn.close()
        assert seal_pending() == 2
        assert [e.seq for e in events()] == [1, 2, 3]
        assert verify_chain().ok


@pytest.mark.skipif(not ON_POSTGRES, reason="table locks need PostgreSQL")
def test_lifting_the_guards_waits_for_a_sealer_holding_the_head(app: Flask) -> None:
    """A fixture emptying the tables takes the head before ``audit_events``, as the sealer
    does: a sealer holding the head still links its events and the fixture then goes on
    (taken the other way round, the two deadlocked, as CI once saw)."""
    with app.app_context():
        commit_events(1)  # the head exists
        commit_events(1, seal=False)
        sealer = db.engine.connect()
        try:
            sealer.execute(text("SELECT last_seq FROM audit_chain_head FOR UPDATE"))
            failures: list[BaseException] = []

            def empty() -> None:
                try:
                    with app.app_context(), db.engine.begin() as conn, append_only_lifted(conn):
                        conn.execute(delete(AuditChainHead))
                        conn.execute(delete(AuditEvent))
                except BaseException as exc:  # reported below
                    failures.append(exc)

            fixture = threading.Thread(target=empty)
            fixture.start()
            time.sleep(0.3)  # the fixture is waiting now
            assert fixture.is_alive()
            # The lock the sealer's UPDATE of audit_events takes.
            sealer.execute(text("LOCK TABLE audit_events IN ROW EXCLUSIVE MODE"))
            sealer.commit()
            fixture.join(10)
            assert not fixture.is_alive()
            assert failures == []
        finally:
            sealer.close()
        assert db.session.scalar(select(func.count()).select_from(AuditEvent)) == 0


@pytest.mark.skipif(not ON_POSTGRES, reason="two open writers need PostgreSQL")
def test_an_event_committed_late_gets_a_later_seq(app: Flask) -> None:
    with app.app_context():
        record("tests:event:recorded_first", actor="system")
        db.session.flush()  # the lower id, not committed yet
        first_id = db.session.scalar(select(func.max(AuditEvent.id))) or 0
        with app.app_context():
            commit_events(1, tag="tests:event:committed_first")
            [sealed] = events()
            assert sealed.seq == 1
            assert sealed.id > first_id
            db.session.remove()
        db.session.commit()
        assert seal_pending() == 1
        assert [(e.seq, e.tag) for e in events()] == [
            (1, "tests:event:committed_first"),
            (2, "tests:event:recorded_first"),
        ]
        assert verify_chain().ok


@pytest.mark.usefixtures("app_ctx")
def test_sealing_follows_id_order_and_continues_the_head() -> None:
    commit_events(3, seal=False)
    commit_events(2, seal=False, actor="later")
    assert seal_pending(limit=2) == 2
    assert seal_pending(limit=2) == 2
    commit_events(1, seal=False, actor="last")
    assert seal_pending() == 2
    chain = events()
    assert [e.seq for e in chain] == [1, 2, 3, 4, 5, 6]
    assert [e.id for e in chain] == sorted(e.id for e in chain)
    assert [e.actor for e in chain] == ["system"] * 3 + ["later"] * 2 + ["last"]
    assert head() == (6, chain[-1].hash)
    assert verify_chain().ok


@pytest.mark.usefixtures("app_ctx")
def test_a_rollback_leaves_nothing_to_seal() -> None:
    record("tests:event:lost", actor="system")
    db.session.flush()
    db.session.rollback()
    assert seal_pending() == 0
    assert events() == []
    assert audit.backlog() == audit.Backlog(0, None)


def test_the_sealer_thread_seals_within_the_interval(make_app: Callable[..., Flask]) -> None:
    app = make_app(AUDIT_SEAL_INTERVAL=0.2)
    try:
        with app.app_context():
            commit_events(2, seal=False)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and audit.backlog().unsealed:
                db.session.rollback()
                time.sleep(0.05)
            db.session.rollback()
            assert time.monotonic() < deadline
            assert [e.seq for e in events()] == [1, 2]
            sealer = app.extensions[audit._SEALER_KEY]
            assert sealer.thread.is_alive()
            assert sealer.thread.daemon
            commit_events(1, seal=False)  # the same thread, woken again
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and audit.backlog().unsealed:
                db.session.rollback()
                time.sleep(0.05)
            assert app.extensions[audit._SEALER_KEY] is sealer
            assert verify_chain().checked == 3
    finally:
        audit.stop_sealer(app)
    assert not sealer.thread.is_alive()


def test_no_sealer_thread_when_the_interval_is_zero(app_ctx: Flask) -> None:
    commit_events(1, seal=False)
    assert audit._SEALER_KEY not in app_ctx.extensions
    time.sleep(0.1)
    assert audit.backlog().unsealed == 1


# --- verify -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("app_ctx")
def test_verify_an_empty_log() -> None:
    assert verify_chain() == audit.ChainReport(True, 0, None, None, 0, GENESIS_HASH)


@pytest.fixture
def chain_of_six(app_ctx: Flask) -> list[AuditEvent]:
    for i in range(3):
        record(
            "tests:event:make",
            actor=f"person:p{i}",
            subject="client:c",
            company_id=1,
            origin=Origin("192.0.2.1", "agent"),
            details={"n": i, "nested": {"z": 1, "a": [1, 2.5, None, True]}},
        )
        record("tests:event:other", actor="system")
        db.session.commit()
    seal_pending()
    chain = events()
    db.session.rollback()
    assert verify_chain(batch=2).ok
    return chain


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("tag", "tests:event:forged"),
        ("actor", "person:someone_else"),
        ("subject", None),
        ("company_id", 2),
        ("ip_address", "198.51.100.1"),
        ("user_agent", "other"),
        ("details", {"n": 999}),
        ("created_at", dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
        ("seq", 33),
    ],
)
def test_verify_names_an_altered_event(
    chain_of_six: list[AuditEvent], column: str, value: Any
) -> None:
    tamper(update(AuditEvent).where(AuditEvent.seq == 3).values({column: value}))
    report = verify_chain(batch=2)
    assert not report.ok
    assert report.first_broken_seq == 3
    assert report.checked == 2
    assert report.last_seq == 2
    assert report.last_hash == chain_of_six[1].hash
    if column == "seq":  # renumbered: 3 is missing
        assert report.reason == "event 3 is missing (next found: 4)"
    else:
        assert report.reason == "event 3 does not match its hash (a field was changed)"


def test_verify_names_a_deleted_event(chain_of_six: list[AuditEvent]) -> None:
    tamper(delete(AuditEvent).where(AuditEvent.seq == 4))
    report = verify_chain(batch=2)
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 4, 3)
    assert report.reason == "event 4 is missing (next found: 5)"


def test_verify_names_deleted_last_events(
    chain_of_six: list[AuditEvent],
) -> None:
    tamper(delete(AuditEvent).where(AuditEvent.seq >= 5))
    report = verify_chain()
    assert (report.ok, report.first_broken_seq) == (False, 5)
    assert report.reason == "event 5 is missing (the head is at 6)"


def test_verify_names_a_changed_prev_hash(
    chain_of_six: list[AuditEvent],
) -> None:
    # Even with its own hash recomputed, the link to event 3 is broken.
    forged = {name: getattr(chain_of_six[3], name) for name in audit._HASHED}
    forged["prev_hash"] = "f" * 64
    tamper(
        update(AuditEvent)
        .where(AuditEvent.seq == 4)
        .values(prev_hash="f" * 64, hash=event_hash(**forged))
    )
    report = verify_chain()
    assert (report.ok, report.first_broken_seq) == (False, 4)
    assert report.reason == "prev_hash of event 4 is not event 3's hash"


def test_verify_names_a_head_out_of_step(chain_of_six: list[AuditEvent]) -> None:
    db.session.execute(update(AuditChainHead).values(last_hash="0" * 63 + "1"))
    db.session.commit()
    report = verify_chain()
    assert (report.ok, report.first_broken_seq) == (False, 6)
    assert report.reason == "the chain head's hash is not event 6's hash"
    db.session.execute(delete(AuditChainHead))
    db.session.commit()
    report = verify_chain()
    assert (report.ok, report.first_broken_seq) == (False, 1)
    assert report.reason == "events exist but the chain head is missing"


@pytest.mark.usefixtures("app_ctx")
def test_verify_reports_the_unsealed_events() -> None:
    commit_events(2)
    commit_events(3, seal=False)
    report = verify_chain()
    assert (report.ok, report.checked, report.last_seq, report.unsealed) == (True, 2, 2, 3)
    assert report.oldest_unsealed_age is not None
    assert 0 <= report.oldest_unsealed_age < 60
    assert report.as_dict()["unsealed"] == 3
    seal_pending()
    report = verify_chain()
    assert (report.checked, report.unsealed, report.oldest_unsealed_age) == (5, 0, None)


def test_verify_ignores_events_committed_after_it_read_the_head(
    chain_of_six: list[AuditEvent],
) -> None:
    # The walk stops at the head it read first; later events are for the next run.
    assert verify_chain().checked == 6


def test_cli_audit_verify(chain_of_six: list[AuditEvent], runner: FlaskCliRunner) -> None:
    result = runner.invoke(cli, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok: 6 events, chain head 6 {chain_of_six[-1].hash}")
    result = runner.invoke(cli, ["audit", "verify", "--json"])
    assert result.exit_code == 0
    assert '"ok": true' in result.output

    tamper(update(AuditEvent).where(AuditEvent.seq == 2).values(actor="forged"))
    result = runner.invoke(cli, ["audit", "verify"])
    assert result.exit_code == 1
    assert "BROKEN at event 2: event 2 does not match its hash" in result.output
    result = runner.invoke(cli, ["audit", "verify", "--json", "--batch", "1"])
    assert result.exit_code == 1
    assert '"first_broken_seq": 2' in result.output


@pytest.mark.usefixtures("app_ctx")
def test_cli_audit_verify_seals_first_unless_told_not_to(runner: FlaskCliRunner) -> None:
    commit_events(2, seal=False)
    result = runner.invoke(cli, ["audit", "verify", "--no-seal"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 0 events, chain head 0 ")
    assert "2 events not sealed yet (oldest " in result.output
    result = runner.invoke(cli, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 2 events, chain head 2 ")
    assert "no events waiting to be sealed" in result.output
    db.session.rollback()
    assert [e.seq for e in events()] == [1, 2]


@pytest.mark.usefixtures("app_ctx")
def test_cli_audit_seal(runner: FlaskCliRunner) -> None:
    commit_events(3, seal=False)
    result = runner.invoke(cli, ["audit", "seal"])
    assert result.exit_code == 0, result.output
    assert result.output == "sealed 3 events; no events waiting to be sealed\n"
    result = runner.invoke(cli, ["audit", "seal", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"sealed": 0, "unsealed": 0, "oldest_unsealed_age": None}
    db.session.rollback()
    assert verify_chain().checked == 3


# --- append-only ------------------------------------------------------------------------------


def _refused(statement: Any) -> None:
    with pytest.raises(DBAPIError, match="append-only"):
        db.session.execute(statement)
    db.session.rollback()


@pytest.mark.usefixtures("chain_of_six")
def test_the_database_refuses_updates_and_deletes() -> None:
    _refused(update(AuditEvent).values(actor="forged"))
    _refused(update(AuditEvent).where(AuditEvent.seq == 6).values(details={}))
    _refused(delete(AuditEvent).where(AuditEvent.seq == 1))
    _refused(delete(AuditEvent))
    if db.engine.dialect.name == "postgresql":
        _refused(text("TRUNCATE audit_events"))
    assert len(events()) == 6
    assert verify_chain().ok


def _unsealed_row() -> AuditEvent:
    commit_events(1, seal=False, actor="person:p", subject="client:c")
    [row] = [e for e in events() if e.hash is None]
    db.session.rollback()
    return row


def _sealing(row: AuditEvent, **more: Any) -> Any:
    return (
        update(AuditEvent)
        .where(AuditEvent.id == row.id)
        .values(seq=99, prev_hash="a" * 64, hash="b" * 64, **more)
    )


@pytest.mark.parametrize(
    "more",
    [
        {"actor": "forged"},
        {"subject": None},
        {"tag": "tests:event:forged"},
        {"company_id": 5},
        {"details": {"i": 9}},
        {"created_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
        {"ip_address": "192.0.2.9"},
    ],
)
@pytest.mark.usefixtures("app_ctx")
def test_sealing_may_change_nothing_else(more: dict[str, Any]) -> None:
    row = _unsealed_row()
    _refused(_sealing(row, **more))
    _refused(update(AuditEvent).where(AuditEvent.id == row.id).values(**more))
    assert events()[0].hash is None


@pytest.mark.usefixtures("app_ctx")
def test_only_an_unsealed_row_is_sealed_and_only_once() -> None:
    row = _unsealed_row()
    # All three chain columns at once, or nothing.
    with pytest.raises(DBAPIError):
        db.session.execute(update(AuditEvent).where(AuditEvent.id == row.id).values(hash="b" * 64))
    db.session.rollback()
    _refused(update(AuditEvent).where(AuditEvent.id == row.id).values(seq=None))
    _refused(delete(AuditEvent).where(AuditEvent.id == row.id))
    # The one UPDATE allowed: filling seq/prev_hash/hash of an unsealed row.
    db.session.execute(_sealing(row))
    db.session.commit()
    assert (events()[0].seq, events()[0].hash) == (99, "b" * 64)
    db.session.rollback()
    _refused(update(AuditEvent).where(AuditEvent.id == row.id).values(hash="c" * 64))
    _refused(update(AuditEvent).where(AuditEvent.id == row.id).values(seq=None, hash=None))
    _refused(_sealing(row))


def test_the_migrated_database_refuses_updates_and_deletes(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(tables=False, keys=False, DATABASE_URL=f"sqlite:///{tmp_path / 'm.sqlite3'}")
    with app.app_context():
        schema.upgrade()
        commit_events(2)
        _refused(update(AuditEvent).values(actor="forged"))
        _refused(delete(AuditEvent))
        row = _unsealed_row()
        _refused(_sealing(row, actor="forged"))
        assert seal_pending() == 1  # the migration's triggers let the sealer through
        assert verify_chain().checked == 3
        schema.downgrade("base")
        schema.upgrade()
        assert events() == []


# --- search -----------------------------------------------------------------------------------


@pytest.fixture
def searchable(app_ctx: Flask) -> None:
    record("oauth:token:issue", actor="client:a", subject="person:1", company_id=1)
    record("oauth:client_auth:failure", actor="client:b", company_id=None)
    record("oauth:clientxauth:failure", actor="client:b")
    record("authn:login:success", actor="person:1", subject="person:1", company_id=1)
    record("orgs:member:suspend", actor="person:2", subject="person:1", company_id=2)
    db.session.commit()
    for i in range(10):
        record("consent:consent:grant", actor="person:3", company_id=3, details={"i": i})
    db.session.commit()
    seal_pending()


def seqs(found: list[AuditEvent]) -> list[int | None]:
    return [e.seq for e in found]


@pytest.mark.usefixtures("searchable")
def test_search_filters() -> None:
    assert seqs(search_events(company_id=1)) == [4, 1]
    assert seqs(search_events(tag_prefix="oauth:")) == [3, 2, 1]
    assert seqs(search_events(tag_prefix="oauth:client_")) == [2]  # "_" is literal
    assert seqs(search_events(tag_prefix="%")) == []
    assert seqs(search_events(actor="client:b")) == [3, 2]
    assert seqs(search_events(subject="person:1")) == [5, 4, 1]
    assert seqs(search_events(subject="person:1", company_id=1, tag_prefix="authn:")) == [4]
    assert search_events(actor="nobody") == []


@pytest.mark.usefixtures("searchable")
def test_search_by_time() -> None:
    chain = events()
    at = chain[4].created_at
    assert seqs(search_events(since=at, limit=500)) == list(range(15, 4, -1))
    assert seqs(search_events(until=at)) == [4, 3, 2, 1]
    assert seqs(search_events(since=chain[0].created_at, until=chain[1].created_at)) == [1]


@pytest.mark.usefixtures("searchable")
def test_search_pages_by_seq() -> None:
    first = search_events(company_id=3, limit=4)
    assert seqs(first) == [15, 14, 13, 12]
    second = search_events(company_id=3, limit=4, before_seq=first[-1].seq)
    assert seqs(second) == [11, 10, 9, 8]
    third = search_events(company_id=3, limit=4, before_seq=second[-1].seq)
    assert seqs(third) == [7, 6]
    assert search_events(company_id=3, before_seq=6) == []


@pytest.mark.usefixtures("searchable")
def test_search_pages_by_id() -> None:
    first = search_events(company_id=3, limit=4)
    second = search_events(company_id=3, limit=4, before_id=first[-1].id)
    assert seqs(second) == [11, 10, 9, 8]
    assert search_events(company_id=3, before_id=min(e.id for e in second) - 3) == []


@pytest.mark.usefixtures("searchable")
def test_search_lists_unsealed_events_by_id() -> None:
    record("oauth:token:issue", actor="client:a", company_id=1)
    db.session.commit()
    found = search_events(company_id=1)
    assert seqs(found) == [None, 4, 1]
    assert found[0].tag == "oauth:token:issue"
    assert found[0].hash is None
    assert seqs(search_events(company_id=1, before_id=found[0].id)) == [4, 1]


@pytest.mark.usefixtures("searchable")
def test_search_limit_is_clamped() -> None:
    assert len(search_events(limit=0)) == 1
    assert len(search_events(limit=-5)) == 1
    assert len(search_events(limit=10_000)) == 15


def test_search_uses_the_indexes(app_ctx: Flask) -> None:
    """The admin pages' queries (company, actor, subject, newest first) read an index."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's")
    for where, index in [
        ("company_id = 1", "ix_audit_events_company_id_id"),
        ("actor = 'x'", "ix_audit_events_actor_id"),
        ("subject = 'x'", "ix_audit_events_subject_id"),
    ]:
        plan = db.session.execute(
            text(
                f"EXPLAIN QUERY PLAN SELECT * FROM audit_events WHERE {where} "  # noqa: S608
                "AND id < 100 ORDER BY id DESC LIMIT 50"
            )
        ).all()
        details = " ".join(str(row[-1]) for row in plan)
        assert index in details, details
        assert "TEMP B-TREE" not in details
    plan = db.session.execute(
        text("EXPLAIN QUERY PLAN SELECT id FROM audit_events WHERE hash IS NULL ORDER BY id")
    ).all()
    assert "ix_audit_events_unsealed" in " ".join(str(row[-1]) for row in plan)
