"""Append-only audit events."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Typed tag such as "oauth:token:issue" or "clients:client:create".
    tag: Mapped[str] = mapped_column(String(64), index=True)
    # Who acted: "person:<subject>", "client:<client_id>", "operator:cli", "system".
    actor: Mapped[str] = mapped_column(String(200))
    # What it was done to, in the same form ("client:<id>", "company:<br>", "key:<kid>").
    subject: Mapped[str | None] = mapped_column(String(200), index=True)
    company_id: Mapped[int | None] = mapped_column(index=True)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
