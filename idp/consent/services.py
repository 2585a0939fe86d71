"""Consent records: ask only for what is not yet granted; expiring; revocable; receipted.

A consent is one row per (person, company, client): the scopes and RFC 9396 authorization
details granted, the purpose the relying party stated, and an expiry. It is *live* until it
expires or is revoked; an expired or revoked consent covers nothing, and granting again
starts afresh under a new public ``consent_id``. Every grant and revocation issues a signed
receipt (``idp.consent.receipts``).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, select

from idp.audit.services import Origin, record
from idp.clients.models import Client
from idp.consent import receipts
from idp.consent.models import Consent
from idp.data.categories import CATEGORIES, RAR_TYPE, categories_of
from idp.db import new_public_id, utcnow
from idp.errors import ConflictError, NotFoundError
from idp.extensions import db
from idp.oauth import tokens
from idp.oauth.rar import details_duration, details_purposes
from idp.orgs.models import Company, Person

# Scopes that release nothing by themselves and need no consent.
NO_CONSENT_SCOPES = frozenset({"openid"})

LIVE, EXPIRED, REVOKED = "live", "expired", "revoked"


def _cfg(name: str) -> int:
    return int(current_app.config["IDP"][name])


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; every timestamp we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def status(consent: Consent, *, now: dt.datetime | None = None) -> str:
    """``live``, ``expired`` or ``revoked`` (derived, never stored)."""
    if consent.revoked_at is not None:
        return REVOKED
    expires = _aware(consent.expires_at)
    if expires is not None and expires <= (now or utcnow()):
        return EXPIRED
    return LIVE


# Built once: every authorization that reaches a company asks it.
_CONSENT_OF = select(Consent).where(
    Consent.person_id == bindparam("person_id"),
    Consent.company_id == bindparam("company_id"),
    Consent.client_id == bindparam("client_id"),
)


def _find(person: Person, company: Company, client: Client) -> Consent | None:
    return db.session.scalars(
        _CONSENT_OF,
        {"person_id": person.id, "company_id": company.id, "client_id": client.id},
    ).first()


class Unread(enum.Enum):
    """Not read yet (what ``what_to_ask`` is given when the caller has no consent at hand)."""

    UNREAD = "unread"


UNREAD = Unread.UNREAD


def live_consent(person: Person, company: Company, client: Client) -> Consent | None:
    """The live consent of this person, for this company, to this client, or None."""
    consent = _find(person, company, client)
    if consent is None or status(consent) != LIVE:
        return None
    return consent


def is_live(consent_id: int | None) -> bool:
    """Whether the consent with this (internal) id exists and is live."""
    if consent_id is None:
        return False
    consent = db.session.get(Consent, consent_id)
    return consent is not None and status(consent) == LIVE


def granted_scopes(person: Person, company: Company, client: Client) -> set[str]:
    """Scopes and company data categories this person, for this company, has let this client
    have: the live consent's scopes plus the categories of its ``corp_data`` authorization
    details. Empty when there is no live consent."""
    consent = live_consent(person, company, client)
    if consent is None:
        return set()
    return set(consent.scopes.split()) | categories_of(None, consent.authorization_details)


def _known_purposes(consent: Consent) -> set[str]:
    known = set(details_purposes(consent.authorization_details))
    if consent.purpose:
        known.add(consent.purpose)
    return known


def missing_scopes(person: Person, company: Company, client: Client, scope: str) -> list[str]:
    """Requested scopes that still need the person's consent, in request order."""
    granted = granted_scopes(person, company, client) | NO_CONSENT_SCOPES
    return [s for s in dict.fromkeys(scope.split()) if s not in granted]


@dataclass(frozen=True)
class ConsentAsk:
    """What the person is asked to consent to: scopes and categories (in plain words on the
    page), the purposes stated, and until when the consent would last."""

    scopes: list[str]
    categories: list[str]
    purposes: list[str]
    expires_at: dt.datetime


def consent_expiry(authorization_details: list[dict[str, Any]] | None) -> dt.datetime:
    """When a consent given now to these details would expire: their shortest ``duration``,
    else ``IDP_CONSENT_TTL``, never beyond ``IDP_CONSENT_MAX_TTL``."""
    seconds = details_duration(authorization_details) or _cfg("CONSENT_TTL")
    return utcnow() + dt.timedelta(seconds=min(seconds, _cfg("CONSENT_MAX_TTL")))


def what_to_ask(
    person: Person,
    company: Company,
    client: Client,
    *,
    scope: str,
    authorization_details: list[dict[str, Any]] | None = None,
    purpose: str | None = None,
    force: bool = False,
    given: Consent | Unread | None = UNREAD,
) -> ConsentAsk | None:
    """What the person must consent to for this request, or None when the live consent
    covers every scope, every category and every purpose asked (``force``: ask anyway, as
    ``prompt=consent`` does). Nothing to release (``openid`` alone) asks nothing.
    ``given``: the live consent (or None), when the caller has read it already."""
    scopes = [s for s in dict.fromkeys(scope.split()) if s not in NO_CONSENT_SCOPES]
    categories = sorted(categories_of(None, authorization_details), key=CATEGORIES.index)
    if not scopes and not categories:
        return None
    purposes = list(
        dict.fromkeys([*([purpose] if purpose else []), *details_purposes(authorization_details)])
    )
    ask = ConsentAsk(scopes, categories, purposes, consent_expiry(authorization_details))
    if force:
        return ask
    consent = live_consent(person, company, client) if given is UNREAD else given
    if consent is None:
        return ask
    granted = set(consent.scopes.split()) | categories_of(None, consent.authorization_details)
    missing = [s for s in scopes if s not in granted]
    new_purpose = any(p not in _known_purposes(consent) for p in purposes)
    if missing and not categories and not new_purpose:
        # Only scopes are new: show just those (what the person has not seen yet).
        return ConsentAsk(missing, [], purposes, ask.expires_at)
    if missing or new_purpose or any(c not in granted for c in categories):
        return ask
    return None


def _merge_details(
    previous: list[dict[str, Any]], new: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Details granted before plus the new ones, one ``corp_data`` entry per purpose."""
    merged: dict[str, dict[str, Any]] = {}
    for detail in [*previous, *new]:
        if detail.get("type") != RAR_TYPE:
            continue
        key = str(detail.get("purpose") or "")
        entry = merged.setdefault(key, {**detail, "categories": []})
        entry["categories"] = list(dict.fromkeys([*entry["categories"], *detail["categories"]]))
        if "duration" in detail:
            entry["duration"] = detail["duration"]
    return list(merged.values())


def grant_consent(
    *,
    person: Person,
    company: Company,
    client: Client,
    scopes: list[str],
    authorization_details: list[dict[str, Any]] | None = None,
    purpose: str | None = None,
    origin: Origin | None = None,
) -> Consent:
    """Record consent to ``scopes`` and ``authorization_details`` (validated), added to a
    live consent's, with ``purpose`` and a renewed expiry; issues a ``granted`` receipt.
    Returns the consent. Committed."""
    consent = _find(person, company, client)
    now = utcnow()
    if consent is None:
        consent = Consent(
            person_id=person.id, company_id=company.id, client_id=client.id, scopes=""
        )
        db.session.add(consent)
    fresh = consent.id is None or status(consent, now=now) != LIVE
    previous_scopes = set() if fresh else set(consent.scopes.split())
    previous_details = [] if fresh else list(consent.authorization_details or [])
    if fresh or consent.consent_id is None:
        consent.consent_id = new_public_id()
    if fresh:
        consent.created_at = now
        consent.purpose = None
    granted = set(scopes) - NO_CONSENT_SCOPES
    consent.scopes = " ".join(sorted(previous_scopes | granted))
    details = _merge_details(previous_details, list(authorization_details or []))
    consent.authorization_details = details or None
    stated = purpose or next(iter(details_purposes(authorization_details)), None)
    if stated:
        consent.purpose = stated
    consent.expires_at = consent_expiry(authorization_details)
    consent.revoked_at = None
    consent.revoked_by = None
    consent.updated_at = now
    db.session.flush()
    receipt = receipts.issue(consent, event=receipts.GRANTED)
    record(
        "consent:consent:grant",
        actor=f"person:{person.subject}",
        subject=f"client:{client.client_id}",
        company_id=company.id,
        origin=origin,
        details={
            "consent_id": consent.consent_id,
            "scopes": sorted(granted),
            "categories": sorted(categories_of(None, authorization_details)),
            "purpose": consent.purpose,
            "expires_at": consent.expires_at.isoformat(),
            "receipt": receipt.jti,
        },
    )
    db.session.commit()
    return consent


def revoke_consent(consent: Consent, *, actor: str, origin: Origin | None = None) -> None:
    """Revoke a consent and every token issued under it (its grants, and any other grant of
    the same person, company and client); issues a ``revoked`` receipt. Raises
    ``ConflictError`` when it was already revoked. Committed."""
    if consent.revoked_at is not None:
        raise ConflictError("the consent was already revoked")
    consent.revoked_at = utcnow()
    consent.revoked_by = actor[:200]
    revoked = tokens.revoke_grants(reason="consent_revoked", actor=actor, consent_id=consent.id)
    revoked += tokens.revoke_grants(
        reason="consent_revoked",
        actor=actor,
        person_id=consent.person_id,
        company_id=consent.company_id,
        client_id=consent.client_id,
    )
    db.session.flush()
    receipt = receipts.issue(consent, event=receipts.REVOKED)
    record(
        "consent:consent:revoke",
        actor=actor,
        subject=f"consent:{consent.id}",
        company_id=consent.company_id,
        origin=origin,
        details={
            "consent_id": consent.consent_id,
            "grants_revoked": revoked,
            "receipt": receipt.jti,
        },
    )
    db.session.commit()


# --- the company's view -----------------------------------------------------------------------


@dataclass(frozen=True)
class CompanyConsent:
    """One consent as a company admin sees it."""

    consent: Consent
    client_name: str
    client_id: str
    person_name: str
    status: str
    categories: list[str]

    def as_json(self) -> dict[str, Any]:
        c = self.consent
        return {
            "consent_id": c.consent_id,
            "client": {"client_id": self.client_id, "name": self.client_name},
            "person": self.person_name,
            "scopes": c.scopes.split(),
            "authorization_details": c.authorization_details or [],
            "purpose": c.purpose,
            "granted_at": _iso(c.updated_at),
            "expires_at": _iso(c.expires_at),
            "revoked_at": _iso(c.revoked_at),
            "revoked_by": c.revoked_by,
            "status": self.status,
        }


def _iso(value: dt.datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat() if value is not None else None


def list_company_consents(company: Company, *, limit: int = 500) -> list[CompanyConsent]:
    """Every consent given for ``company`` (live, expired and revoked), newest first."""
    rows = list(
        db.session.scalars(
            select(Consent)
            .where(Consent.company_id == company.id)
            .order_by(Consent.updated_at.desc(), Consent.id.desc())
            .limit(limit)
        )
    )
    client_ids = {r.client_id for r in rows}
    person_ids = {r.person_id for r in rows}
    clients = {c.id: c for c in db.session.scalars(select(Client).where(Client.id.in_(client_ids)))}
    people = {p.id: p for p in db.session.scalars(select(Person).where(Person.id.in_(person_ids)))}
    now = utcnow()
    out = []
    for row in rows:
        client, person = clients.get(row.client_id), people.get(row.person_id)
        out.append(
            CompanyConsent(
                consent=row,
                client_name=client.name if client else "?",
                client_id=client.client_id if client else "?",
                person_name=(person.display_name or person.email or "?") if person else "?",
                status=status(row, now=now),
                categories=sorted(
                    categories_of(row.scopes, row.authorization_details), key=CATEGORIES.index
                ),
            )
        )
    return out


def get_company_consent(company: Company, consent_id: object) -> Consent:
    """The consent with public id ``consent_id`` given for ``company``; another company's is
    answered like an unknown one. Raises ``NotFoundError``."""
    if not isinstance(consent_id, str) or not consent_id or len(consent_id) > 64:
        raise NotFoundError("no such consent")
    consent = db.session.scalars(select(Consent).where(Consent.consent_id == consent_id)).first()
    if consent is None or consent.company_id != company.id:
        raise NotFoundError("no such consent")
    return consent


def company_consent_by_id(company: Company, row_id: int) -> Consent:
    """The consent with internal id ``row_id`` given for ``company`` (any status); another
    company's is answered like an unknown one. Raises ``NotFoundError``."""
    consent = db.session.get(Consent, row_id)
    if consent is None or consent.company_id != company.id:
        raise NotFoundError("no such consent")
    return consent
