"""Alembic environment: Corp ID's one metadata, batch mode (SQLite), URL from the app settings.

Programmatic callers (``idp.schema``) pass an open connection in
``config.attributes["connection"]``; the ``alembic`` command line builds an engine from
``IDP_DATABASE_URL`` (or the default SQLite file under instance/).
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from idp.audit.ddl import add_guards
from idp.schema import metadata, render_item

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from idp.config import load_config

    return str(load_config()["DATABASE_URL"])


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata(),
        render_as_batch=True,
        compare_type=True,
        render_item=render_item,
        process_revision_directives=add_guards,  # triggers autogenerate does not see
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
