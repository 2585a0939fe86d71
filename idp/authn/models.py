"""Security keys (WebAuthn credentials) and sign-in sessions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.db import Base, utcnow
from idp.orgs.models import Person


class SecurityKey(Base):
    """A WebAuthn credential registered by a person."""

    __tablename__ = "security_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary(1023), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(Integer, default=0)
    aaguid: Mapped[str | None] = mapped_column(String(36))
    model_name: Mapped[str | None] = mapped_column(String(200))
    transports: Mapped[list[str]] = mapped_column(JSON, default=list)
    backup_eligible: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    cloned_suspected_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]

    person: Mapped[Person] = relationship()


class LoginSession(Base):
    """A person's sign-in at Corp ID; the browser holds a secret whose hash is stored here.

    ``sid`` is the public session identifier put in ID tokens and logout tokens.
    """

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    sid: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    security_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("security_keys.id", ondelete="SET NULL"), index=True
    )
    auth_time: Mapped[dt.datetime]
    acr: Mapped[str] = mapped_column(String(64))
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]

    person: Mapped[Person] = relationship()


class WebAuthnChallenge(Base):
    """A challenge handed to a browser for one ceremony; only its digest is stored.

    Single-use (``used_at`` set by one conditional UPDATE), bound to the browser that asked
    (``binding_hash``: digest of a secret in that browser's Flask session plus the pending
    authorization or invitation) and to the ceremony (``register``/``login``), expiring in
    minutes. ``data`` keeps what the verify step needs and the browser must not choose.
    """

    __tablename__ = "webauthn_challenges"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_hash: Mapped[str] = mapped_column(String(64), unique=True)
    ceremony: Mapped[str] = mapped_column(String(16))
    binding_hash: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]
