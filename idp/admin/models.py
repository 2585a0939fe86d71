"""Operators, their enrolment links, fresh hardware-key assertions and four-eyes requests."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.db import Base, str_enum, utcnow
from idp.orgs.models import Person


class OperatorStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Operator(Base):
    """A person who runs the provider (the operator console). A separate role: being an admin
    of a company makes nobody an operator."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), unique=True)
    status: Mapped[OperatorStatus] = mapped_column(
        str_enum(OperatorStatus, "operator_status"), default=OperatorStatus.ACTIVE
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Who made them an operator: "operator:cli" or "operator:<id>".
    created_by: Mapped[str] = mapped_column(String(200))

    person: Mapped[Person] = relationship()

    @property
    def is_active(self) -> bool:
        return self.status is OperatorStatus.ACTIVE


class OperatorInvitation(Base):
    """A single-use enrolment link for a person-to-be operator; only its hash is stored."""

    __tablename__ = "operator_invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    used_by_person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))


class FreshAssertion(Base):
    """A step-up: a hardware-key assertion made during a sign-in session, to prove presence
    before a sensitive action (``idp.admin.services.require_fresh_assertion``)."""

    __tablename__ = "fresh_assertions"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="CASCADE"), index=True
    )
    security_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("security_keys.id", ondelete="SET NULL")
    )
    asserted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class KeyChangeRequest(Base):
    """Four eyes on the signing keys: one operator asks to rotate or retire, another approves,
    and only then does the change run."""

    __tablename__ = "key_change_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    # "rotate" (``alg``) or "retire" (``kid``).
    action: Mapped[str] = mapped_column(String(16))
    alg: Mapped[str | None] = mapped_column(String(16))
    kid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[ApprovalStatus] = mapped_column(
        str_enum(ApprovalStatus, "approval_status"), default=ApprovalStatus.PENDING
    )
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    decided_at: Mapped[dt.datetime | None]
    # What happened: the new kids, or why it failed.
    outcome: Mapped[str | None] = mapped_column(String(500))

    requested_by: Mapped[Operator] = relationship(foreign_keys=[requested_by_id])
    decided_by: Mapped[Operator | None] = relationship(foreign_keys=[decided_by_id])
