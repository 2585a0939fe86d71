"""Unbound extensions, bound to the app in ``create_app`` with ``init_app``."""

from flask_sqlalchemy import SQLAlchemy

from idp.db import Base

db = SQLAlchemy(model_class=Base, disable_autonaming=True)

