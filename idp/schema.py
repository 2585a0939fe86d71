"""The database schema as a whole: every model module, and Alembic driven from the app.

``idp init`` upgrades with ``upgrade()``; ``idp serve`` refuses to start unless
``is_at_head()``. Migrations live in the top-level ``migrations/`` folder.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterator
from typing import Any

from alembic import command
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection

import idp
from idp.config import ROOT
from idp.db import UTCDateTime
from idp.errors import ConflictError

MIGRATIONS = ROOT / "migrations"
VERSION_TABLE = "alembic_version"


def load_models() -> None:
    """Import every ``idp.<domain>.models`` module so the metadata knows every table."""
    for module in pkgutil.iter_modules(idp.__path__):
        if module.ispkg and importlib.util.find_spec(f"idp.{module.name}.models") is not None:
            importlib.import_module(f"idp.{module.name}.models")


def metadata() -> MetaData:
    """The one metadata, with every model loaded."""
    load_models()
    from idp.extensions import db

    return db.metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write our column types in migrations as plain SQLAlchemy types, so that migrations do not
    import application code that may change later."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for ``migrations/``, bound to ``connection`` if given."""
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["configure_logger"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest migration in ``migrations/versions``."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The migration the database behind ``connection`` is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def _engine() -> Any:
    from idp.extensions import db

    return db.engine


def is_at_head() -> tuple[bool, str | None, str | None]:
    """``(at_head, current, head)`` for the app's database (needs an app context)."""
    head = head_revision()
    with _engine().connect() as conn:
        current = current_revision(conn)
    return current == head, current, head


@contextlib.contextmanager
def _migrating() -> Iterator[Connection]:
    """A connection in a transaction for running migrations.

    SQLite: batch mode changes a table by copying it, dropping the old one and renaming the
    copy, and with foreign keys enforced (as the app's connections have them) dropping the old
    table fires the ON DELETE actions of the rows that refer to it: links set to NULL, rows
    cascaded away. So enforcement is off while migrating (it can only change outside a
    transaction), the result is checked with ``PRAGMA foreign_key_check`` before the commit
    (SQLite's DDL is not all transactional here: a failed check means restoring the backup
    taken before upgrading), and it is back on before the connection goes back to the pool."""
    with _engine().connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise ConflictError(
                            f"the migration left {len(broken)} rows whose references are "
                            f"broken (first: {tuple(broken[0])}); restore the backup"
                        )
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def upgrade(revision: str = "head") -> tuple[str | None, str | None]:
    """Create or upgrade the app's database to ``revision``. Returns ``(before, after)``.

    Raises ``ConflictError`` when the database holds tables but no migration history (made by
    ``create_all``, say): Alembic would fail half-way, so nothing is done.
    """
    with _migrating() as conn:
        before = current_revision(conn)
        if before is None:
            ours = set(metadata().tables)
            present = set(inspect(conn).get_table_names()) & ours
            if present:
                raise ConflictError(
                    "the database has Corp ID tables but no migration history "
                    f"({len(present)} tables, e.g. {sorted(present)[0]}); "
                    "use an empty database or stamp it with `alembic stamp head`"
                )
        command.upgrade(alembic_config(conn), revision)
        after = current_revision(conn)
    return before, after


def downgrade(revision: str) -> tuple[str | None, str | None]:
    """Downgrade the app's database to ``revision`` ("base" for empty). Returns
    ``(before, after)``."""
    with _migrating() as conn:
        before = current_revision(conn)
        command.downgrade(alembic_config(conn), revision)
        after = current_revision(conn)
    return before, after


def stamp(revision: str = "head") -> None:
    """Record ``revision`` as the database's migration without running anything (for databases
    made by ``create_all`` in tests)."""
    with _engine().begin() as conn:
        command.stamp(alembic_config(conn), revision)


def check() -> None:
    """Raise ``alembic.util.exc.AutogenerateDiffsDetected`` if the models and the database
    (at head) differ."""
    with _engine().connect() as conn:
        command.check(alembic_config(conn))
