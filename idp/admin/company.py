"""What the company admin pages read, scoped to one company and checked against who asks.

The changes themselves go through the domain services (``idp.orgs.members``,
``idp.authn.keys_admin``, ``idp.delegation.services``, ``idp.consent.services``), which check
the actor again. Here: finding the company an admin may see (another company is answered like
an unknown one: 404), and the rows of its pages with the names they show.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from idp.audit import services as audit
from idp.audit.models import AuditEvent
from idp.clients.models import Client
from idp.consent.models import Consent
from idp.errors import NotFoundError, ValidationError
from idp.extensions import db
from idp.orgs import members
from idp.orgs import services as orgs
from idp.orgs.models import Company, Membership, Person, Role

# Audit events per page.
AUDIT_PAGE = 100


def company_for_admin(person: Person, br: object) -> Company:
    """The company with BR number ``br`` if ``person`` administers it. Raises
    ``NotFoundError`` for an unknown company or one they are not a member of (so companies
    cannot be probed), ``ForbiddenError`` for a member who is not an admin."""
    if not isinstance(br, str) or len(br) != 8 or not br.isdigit():
        raise NotFoundError("no such company")
    company = db.session.scalar(select(Company).where(Company.br_number == br))
    if company is None:
        raise NotFoundError("no such company")
    membership = db.session.scalar(
        select(Membership).where(
            Membership.person_id == person.id, Membership.company_id == company.id
        )
    )
    if membership is None:
        raise NotFoundError("no such company")
    members.require_admin(person, company)
    return company


def parse_id(raw: object) -> int:
    """An object id from a URL or form. Raises ``NotFoundError`` for anything but digits."""
    # At most 9 digits: ids are 32-bit integer columns (PostgreSQL refuses larger values).
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise NotFoundError("not found")
    return int(raw)


def parse_end_date(raw: object, *, required: bool) -> dt.datetime | None:
    """``YYYY-MM-DD`` as the end of that day (UTC). Raises ``ValidationError``."""
    if raw is None or raw == "":
        if required:
            raise ValidationError("an end date is required")
        return None
    if not isinstance(raw, str):
        raise ValidationError("end date: YYYY-MM-DD")
    try:
        day = dt.date.fromisoformat(raw.strip())
    except ValueError:
        raise ValidationError("end date: YYYY-MM-DD") from None
    return dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.UTC)


def touches_admin(before: list[str], after: list[str]) -> bool:
    """Whether a role change appoints or removes an admin (a sensitive action)."""
    return (Role.ADMIN.value in before) != (Role.ADMIN.value in after)


def _names(model: Any, ids: set[int], attribute: str) -> dict[int, str]:
    if not ids:
        return {}
    rows = db.session.execute(select(model.id, getattr(model, attribute)).where(model.id.in_(ids)))
    return {row[0]: row[1] for row in rows}


def client_names(ids: set[int]) -> dict[int, str]:
    return _names(Client, ids, "name")


def people_names(ids: set[int]) -> dict[int, str]:
    return _names(Person, ids, "display_name")


def company_names(ids: set[int]) -> dict[int, str]:
    return _names(Company, ids, "name_en")


def active_clients() -> list[Client]:
    """Relying parties an admin may authorise members for, by name."""
    return [c for c in db.session.scalars(select(Client).order_by(Client.name)) if c.is_active]


def active_client(raw: object) -> Client:
    """An active relying party by its database id (from a form). Raises ``NotFoundError``."""
    client = db.session.get(Client, parse_id(raw))
    if client is None or not client.is_active:
        raise NotFoundError("no such relying party")
    return client


def agent_company(br: object) -> Company:
    """The company named as a third party, by BR number. Raises ``ValidationError`` and
    ``NotFoundError``."""
    return orgs.get_company_by_br(str(br or "").strip())


def get_consent(company: Company, consent_id: int) -> Consent:
    """A live consent given for ``company``; another company's is answered like an unknown
    one. Raises ``NotFoundError``."""
    consent = db.session.get(Consent, consent_id)
    if consent is None or consent.company_id != company.id or consent.revoked_at is not None:
        raise NotFoundError("no such consent")
    return consent


def company_events(company: Company, *, before_id: int | None = None) -> list[AuditEvent]:
    """The company's audit events, newest first, a page at a time."""
    return audit.search_events(company_id=company.id, limit=AUDIT_PAGE, before_id=before_id)


def audit_page_start(raw: object) -> int | None:
    """The ``before`` parameter of an audit page: an event id (pages list by id, newest first:
    events are sealed into the chain a moment after they are written), else the newest page."""
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return None
    return int(raw)
