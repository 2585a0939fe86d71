"""Consent records: ask only for what is not yet granted; revocable."""

from __future__ import annotations

from sqlalchemy import select

from idp.audit.services import Origin, record
from idp.clients.models import Client
from idp.consent.models import Consent
from idp.db import utcnow
from idp.extensions import db
from idp.oauth import tokens
from idp.orgs.models import Company, Person

# Scopes that release nothing by themselves and need no consent.
NO_CONSENT_SCOPES = frozenset({"openid"})


def _find(person: Person, company: Company, client: Client) -> Consent | None:
    return db.session.scalars(
        select(Consent).where(
            Consent.person_id == person.id,
            Consent.company_id == company.id,
            Consent.client_id == client.id,
        )
    ).first()


def granted_scopes(person: Person, company: Company, client: Client) -> set[str]:
    """Scopes this person, for this company, has let this client have (live consent only)."""
    consent = _find(person, company, client)
    if consent is None or consent.revoked_at is not None:
        return set()
    if consent.expires_at is not None and consent.expires_at <= utcnow():
        return set()
    return set(consent.scopes.split())


def missing_scopes(person: Person, company: Company, client: Client, scope: str) -> list[str]:
    """Requested scopes that still need the person's consent, in request order."""
    granted = granted_scopes(person, company, client) | NO_CONSENT_SCOPES
    return [s for s in dict.fromkeys(scope.split()) if s not in granted]


def grant_consent(
    *,
    person: Person,
    company: Company,
    client: Client,
    scopes: list[str],
    origin: Origin | None = None,
) -> Consent:
    """Record consent to ``scopes`` (added to what was granted before). Committed."""
    consent = _find(person, company, client)
    now = utcnow()
    if consent is None:
        consent = Consent(
            person_id=person.id, company_id=company.id, client_id=client.id, scopes=""
        )
        db.session.add(consent)
    previous = set() if consent.revoked_at else set(consent.scopes.split())
    consent.scopes = " ".join(sorted(previous | set(scopes)))
    consent.revoked_at = None
    consent.updated_at = now
    record(
        "consent:consent:grant",
        actor=f"person:{person.subject}",
        subject=f"client:{client.client_id}",
        company_id=company.id,
        origin=origin,
        details={"scopes": sorted(scopes)},
    )
    db.session.commit()
    return consent


def revoke_consent(consent: Consent, *, actor: str, origin: Origin | None = None) -> None:
    """Revoke a consent and every token issued under it. Committed."""
    consent.revoked_at = utcnow()
    tokens.revoke_grants(
        reason="consent_revoked",
        actor=actor,
        person_id=consent.person_id,
        company_id=consent.company_id,
        client_id=consent.client_id,
    )
    record(
        "consent:consent:revoke",
        actor=actor,
        subject=f"consent:{consent.id}",
        company_id=consent.company_id,
        origin=origin,
    )
    db.session.commit()
