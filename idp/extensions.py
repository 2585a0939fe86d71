"""Unbound extensions, bound to the app in ``create_app`` with ``init_app``."""

from flask_sqlalchemy import SQLAlchemy

from idp.db import Base

db = SQLAlchemy(model_class=Base, disable_autonaming=True)


def commit_keeping_loaded() -> None:
    """Commit without expiring what the session holds, for a request that goes on with
    objects it has just written or read in this transaction (saves reading them again)."""
    session = db.session()
    session.expire_on_commit = False
    try:
        session.commit()
    finally:
        session.expire_on_commit = True
