"""Consent records: what a person, acting for a company, let a relying party receive."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, utcnow


class Consent(Base):
    """One company's consent, given by one of its people, to one relying party.

    Live while not revoked and not expired; an expired or revoked consent releases nothing.
    Granting again adds to what was granted (scopes and authorization details) and renews the
    expiry; every grant and revocation issues a signed receipt (``ConsentReceipt``)."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("person_id", "company_id", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Public identifier (receipts, admin pages and API).
    consent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    # Space-separated granted scopes.
    scopes: Mapped[str] = mapped_column(Text, default="")
    # RFC 9396 authorization details granted (validated), e.g. corp_data categories.
    authorization_details: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The relying party's stated purpose, shown to the person when they consented.
    purpose: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    # Who revoked it ("person:<sub>", "client:<id>", "operator:<id>"...).
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class ConsentReceipt(Base):
    """A signed consent receipt (a JWT) issued when a consent was granted or revoked; the
    company and the relying party can both fetch and keep it."""

    __tablename__ = "consent_receipts"

    id: Mapped[int] = mapped_column(primary_key=True)
    consent_id: Mapped[int] = mapped_column(
        ForeignKey("consents.id", ondelete="CASCADE"), index=True
    )
    # "granted" or "revoked".
    event: Mapped[str] = mapped_column(String(16))
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    receipt: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
