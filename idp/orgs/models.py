"""People, companies (the register), memberships and invitations."""

from __future__ import annotations

import datetime as dt
import enum
import re
import unicodedata
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from idp.db import Base, new_public_id, str_enum, utcnow


class PersonStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class CompanyStatus(enum.StrEnum):
    LIVE = "live"
    DORMANT = "dormant"
    DEREGISTERED = "deregistered"
    DISSOLVED = "dissolved"


class MembershipStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Role(enum.StrEnum):
    ADMIN = "admin"
    SIGNATORY = "signatory"
    MEMBER = "member"


class Person(Base):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Stable, opaque subject identifier (public `sub`; pairwise subjects derive from it).
    subject: Mapped[str] = mapped_column(String(64), unique=True, default=new_public_id)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    status: Mapped[PersonStatus] = mapped_column(
        str_enum(PersonStatus, "person_status"), default=PersonStatus.ACTIVE
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="person")

    @property
    def is_active(self) -> bool:
        return self.status is PersonStatus.ACTIVE


_SPACES = re.compile(r"\s+")
# Search keys are compared byte-wise: "C" collation on PostgreSQL (SQLite's default is binary),
# so a range scan of the B-tree index is exactly a prefix match and both order alike.
SearchKey = String(300).with_variant(String(300, collation="C"), "postgresql")


def name_key(value: str | None) -> str | None:
    """The search form of a company name: NFKC, casefolded, whitespace collapsed to one space.

    Name-prefix search compares these keys (``idp.orgs.register.search_companies``)."""
    if value is None:
        return None
    key = _SPACES.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip()
    return key[:300] or None


class OfficerRole(enum.StrEnum):
    DIRECTOR = "director"
    SECRETARY = "secretary"


class Company(Base):
    """A company of the register, identified by its Business Registration number.

    ``name_key``/``name_zh_key`` are the names' search forms (``name_key()``), kept in step by
    the ORM (``@validates``) and written explicitly by the bulk import."""

    __tablename__ = "companies"
    __table_args__ = (
        Index("ix_companies_name_key_br", "name_key", "br_number"),
        Index("ix_companies_name_zh_key_br", "name_zh_key", "br_number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Business Registration number: 8 digits.
    br_number: Mapped[str] = mapped_column(String(8), unique=True)
    name_en: Mapped[str] = mapped_column(String(300))
    name_zh: Mapped[str | None] = mapped_column(String(300))
    name_key: Mapped[str] = mapped_column(SearchKey)
    name_zh_key: Mapped[str | None] = mapped_column(SearchKey)
    status: Mapped[CompanyStatus] = mapped_column(
        str_enum(CompanyStatus, "company_status"), default=CompanyStatus.LIVE
    )
    address: Mapped[str | None] = mapped_column(Text)
    incorporated_on: Mapped[dt.date | None] = mapped_column(Date)
    # As the register names it ("Private company limited by shares"...).
    company_type: Mapped[str | None] = mapped_column(String(100))
    # Where the register data came from (file or feed name) and the date it describes.
    source: Mapped[str | None] = mapped_column(String(200))
    as_of: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime | None]

    officers: Mapped[list[CompanyOfficer]] = relationship(
        back_populates="company",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="CompanyOfficer.id",
    )

    @validates("name_en", "name_zh")
    def _keep_search_keys(self, attribute: str, value: str | None) -> str | None:
        if attribute == "name_en":
            self.name_key = name_key(value) or ""
        else:
            self.name_zh_key = name_key(value)
        return value

    @property
    def is_active(self) -> bool:
        """Only live and dormant companies may act (sign in, be chosen, get tokens)."""
        return self.status in (CompanyStatus.LIVE, CompanyStatus.DORMANT)


class CompanyOfficer(Base):
    """A director or the secretary of a company, as the register lists them (replaced
    wholesale on each import of the company)."""

    __tablename__ = "company_officers"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[OfficerRole] = mapped_column(str_enum(OfficerRole, "officer_role"))
    name_en: Mapped[str | None] = mapped_column(String(300))
    name_zh: Mapped[str | None] = mapped_column(String(300))
    appointed_on: Mapped[dt.date | None] = mapped_column(Date)

    company: Mapped[Company] = relationship(back_populates="officers")


class ImportRun(Base):
    """One run of a register import: the checkpoint ``--resume`` continues from.

    ``last_record`` is the number of data records (after the header) whose batch has been
    committed; ``last_line`` the file line that record ended on."""

    __tablename__ = "import_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # SHA-256 of the file's bytes: a resumed run must read the very same file.
    file_digest: Mapped[str] = mapped_column(String(64), index=True)
    file_name: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(200))
    # running, completed or failed.
    state: Mapped[str] = mapped_column(String(16))
    last_record: Mapped[int] = mapped_column(Integer, default=0)
    last_line: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(String(500))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("person_id", "company_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[MembershipStatus] = mapped_column(
        str_enum(MembershipStatus, "membership_status"), default=MembershipStatus.ACTIVE
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    person: Mapped[Person] = relationship(back_populates="memberships")
    company: Mapped[Company] = relationship()

    @property
    def is_active(self) -> bool:
        return self.status is MembershipStatus.ACTIVE


class Invitation(Base):
    """A single-use enrolment link for a person to join a company; only its hash is stored."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Who invited: an operator name ("operator:cli") or a person's subject.
    invited_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    used_by_person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))

    company: Mapped[Company] = relationship()
