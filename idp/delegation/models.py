"""E-service authorisations (a member may use a relying party for the company) and third-party
authorisations (a company lets another company act for it at a relying party)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, utcnow


class EServiceAuthorisation(Base):
    """An admin's grant: ``person`` may use ``client`` for ``company`` (optionally in a named
    e-service role, e.g. "tax-filer") until ``expires_at`` (None: until revoked)."""

    __tablename__ = "eservice_authorisations"
    __table_args__ = (Index(None, "person_id", "company_id", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    # The e-service role the relying party receives in corp.authorisations (None: access only).
    role: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime | None]
    # Who granted it: "person:<subject>" or an operator name.
    granted_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class ThirdPartyAuthorisation(Base):
    """``principal_company`` lets ``agent_company`` (e.g. its tax representative) act for it at
    ``client`` until ``expires_at``. Active members of the agent company may then sign in
    "for" the principal company there; their tokens carry an ``act`` claim."""

    __tablename__ = "third_party_authorisations"
    __table_args__ = (Index(None, "agent_company_id", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    principal_company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    agent_company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    expires_at: Mapped[dt.datetime]
    granted_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))
