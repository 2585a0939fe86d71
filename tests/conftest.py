"""Shared fixtures: ``app``, ``client``, ``runner``, ``app_ctx`` and ``make_app``.

SQLite by default: a fresh database file per test under ``tmp_path``. With
``IDP_TEST_DATABASE_URL`` (PostgreSQL) the tables are created once per session in a schema of
their own per xdist worker and run, and emptied before every test. With ``IDP_REDIS_URL`` the
app uses Redis; each xdist worker gets its own database number (the URL's, minus the worker
index) and flushes it before and after every test, so two runs at once must not share one
Redis server.

Signing keys are generated once per session and copied into each test's database: every app
here shares one ``SECRET_KEY``, hence one key-encryption key, so the copies decrypt. That is the
state ``ensure_keys()`` leaves, without generating RSA keys for every test.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine, delete, insert, make_url, select, text

from idp import create_app, schema
from idp.audit.models import AuditChainHead, AuditEvent, append_only_lifted
from idp.extensions import db
from idp.keys import services as key_service
from idp.keys.models import SigningKey
from idp.schema import metadata

TEST_SECRET_KEY = "corp-id-tests-only-secret-key-0123456789"
TEST_ISSUER = "http://localhost:5000"


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0")


def _worker_index() -> int:
    digits = "".join(c for c in _worker() if c.isdigit())
    return int(digits or 0)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """The PostgreSQL URL of this worker's schema, or None when testing on SQLite."""
    base = os.environ.get("IDP_TEST_DATABASE_URL", "")
    if not base:
        yield None
        return
    if not base.startswith("postgresql"):
        raise pytest.UsageError("IDP_TEST_DATABASE_URL must be a postgresql+psycopg:// URL")
    # Unique per run, so that concurrent runs against one database do not meet.
    schema_name = f"corpid_test_{_worker()}_{secrets.token_hex(4)}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema_name}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema_name}"})
    rendered = url.render_as_string(hide_password=False)
    engine = create_engine(rendered)
    metadata().create_all(engine)
    engine.dispose()
    try:
        yield rendered
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str | None:
    """This worker's Redis database, or None without ``IDP_REDIS_URL``."""
    base = os.environ.get("IDP_REDIS_URL", "")
    if not base:
        return None
    from redis.connection import parse_url

    number = int(parse_url(base).get("db", 0)) - _worker_index()
    if number < 0:
        raise pytest.UsageError(
            "IDP_REDIS_URL's database number is too low for this many xdist workers"
        )
    head, _, _ = base.partition("?")
    return head.rsplit("/", 1)[0] + f"/{number}" if head.count("/") > 2 else f"{head}/{number}"


@dataclass(frozen=True)
class Template:
    """A SQLite database with every table and the keys ``ensure_keys()`` makes, and those
    key rows (to copy into PostgreSQL)."""

    sqlite_path: Path
    key_rows: list[dict[str, Any]]


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Built once per session: copying a file is much faster than creating the tables."""
    folder = tmp_path_factory.mktemp("template")
    path = folder / "template.sqlite3"
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{path}",
            "KEYS_DIR": str(folder / "keys"),
            "SECRET_KEY": TEST_SECRET_KEY,
        }
    )
    with app.app_context():
        db.create_all()
        key_service.ensure_keys(actor="tests")
        with append_only_lifted(db.session.connection()):  # tests start with an empty audit trail
            db.session.execute(delete(AuditEvent))
        db.session.execute(delete(AuditChainHead))
        db.session.commit()
        rows = [
            {c.key: getattr(k, c.key) for c in SigningKey.__table__.columns}
            for k in db.session.scalars(select(SigningKey))
        ]
        db.session.remove()
        db.engine.dispose()  # the last connection closing folds the WAL into the file
    return Template(sqlite_path=path, key_rows=rows)


def _reset_postgres() -> None:
    # DELETE, children first: on a few rows it is much faster than TRUNCATE.
    with append_only_lifted(db.session.connection()):
        for table in reversed(metadata().sorted_tables):
            db.session.execute(table.delete())
    # Like the SQLite template, the database has tables but no migration history.
    db.session.execute(text(f"DROP TABLE IF EXISTS {schema.VERSION_TABLE}"))
    db.session.commit()


def _flush_redis(app: Flask) -> None:
    client = app.extensions.get("idp.redis")
    if client is not None:
        client.flushdb()


def _close(app: Flask) -> None:
    with app.app_context():
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()
    client = app.extensions.get("idp.redis")
    if client is not None:
        client.flushdb()
        client.close()


@pytest.fixture
def make_app(
    tmp_path: Path, postgres_url: str | None, redis_url: str | None, template: Template
) -> Iterator[Callable[..., Flask]]:
    """A factory of test apps: ``make_app(tables=True, keys=True, **config_overrides)``.

    Every app made in one test shares that test's database and key folder (unless
    overridden). ``tables=False`` leaves the database empty (SQLite only: for ``idp init``).
    """
    made: list[Flask] = []
    prepared: set[str] = set()
    sqlite_url = f"sqlite:///{tmp_path / 'idp.sqlite3'}"

    def factory(*, tables: bool = True, keys: bool = True, **overrides: Any) -> Flask:
        config: dict[str, Any] = {
            "ISSUER": TEST_ISSUER,
            "DATABASE_URL": postgres_url or sqlite_url,
            "KEYS_DIR": str(tmp_path / "keys"),
            "SECRET_KEY": TEST_SECRET_KEY,
            "REDIS_URL": redis_url or "",
            # No sealer thread: tests seal with seal_pending() (tests/unit/audit tests the thread).
            "AUDIT_SEAL_INTERVAL": 0,
        }
        config.update(overrides)
        url = config["DATABASE_URL"]
        first = url not in prepared  # later apps of the test share what the first one set up
        prepared.add(url)
        copied = first and tables and keys and url == sqlite_url
        if copied:
            shutil.copyfile(template.sqlite_path, tmp_path / "idp.sqlite3")
        app = create_app(config)
        app.config["TESTING"] = True
        made.append(app)
        if first and not copied:
            with app.app_context():
                if postgres_url and url == postgres_url:
                    _reset_postgres()
                elif tables:
                    db.create_all()
                if tables and keys:
                    db.session.execute(insert(SigningKey), [dict(r) for r in template.key_rows])
                    db.session.commit()
        if first:
            _flush_redis(app)
        return app

    yield factory
    for app in made:
        _close(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """An app with every table and an active signing key per algorithm (as after ``idp init``)."""
    return make_app()


@pytest.fixture
def app_ctx(app: Flask) -> Iterator[Flask]:
    """``app`` with its application context pushed, for calling services directly."""
    with app.app_context():
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """Runs ``idp`` commands against ``app``."""
    return app.test_cli_runner()
