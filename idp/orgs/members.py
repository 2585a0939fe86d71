"""Member administration: who belongs to a company, with which roles.

Every service checks who is asking (``require_admin``), so a view cannot forget to: ``actor``
is the admin (a ``Person``) acting, or an operator name (``"operator:<who>"``) from the CLI or
the operator console, which views must never take from the request. Rules:

- roles come from ``admin``, ``signatory``, ``member``;
- a company never loses its last active admin (no suspending, removing or demoting them);
- suspending or removing a member ends, at once, the tokens they hold for the company (and
  those they hold as the company's agent for others) and the consents they gave for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select, update

from idp.audit.services import Origin, record
from idp.db import utcnow
from idp.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from idp.extensions import db
from idp.oauth import tokens
from idp.orgs import services as orgs
from idp.orgs.models import Company, Invitation, Membership, MembershipStatus, Person, Role

Actor = Person | str
LAST_ADMIN = "a company must keep at least one active admin"


def actor_name(actor: Actor) -> str:
    """How ``actor`` is named in audit events and ``invited_by``."""
    if isinstance(actor, Person):
        return f"person:{actor.subject}"
    if not isinstance(actor, str) or not actor.startswith("operator:"):
        raise ForbiddenError("only a company admin or an operator may do this")
    return actor


def is_admin(person: Person, company: Company) -> bool:
    """Whether ``person`` is an active admin of ``company`` (both active)."""
    if not person.is_active or not company.is_active:
        return False
    membership = _membership(person.id, company.id)
    return membership is not None and membership.is_active and Role.ADMIN.value in membership.roles


def require_admin(actor: Actor, company: Company) -> str:
    """Check that ``actor`` may administer ``company``: an operator, or an active admin of
    this very company. Returns the actor's audit name. Raises ``ForbiddenError``."""
    name = actor_name(actor)
    if isinstance(actor, Person) and not is_admin(actor, company):
        raise ForbiddenError("you are not an admin of this company")
    return name


def _membership(person_id: int, company_id: int) -> Membership | None:
    return db.session.scalar(
        select(Membership).where(
            Membership.person_id == person_id, Membership.company_id == company_id
        )
    )


def get_member(company: Company, membership_id: object) -> Membership:
    """The membership ``membership_id`` of ``company``. An id of another company's member is
    answered exactly like an unknown one. Raises ``NotFoundError``."""
    if not isinstance(membership_id, int) or isinstance(membership_id, bool):
        raise NotFoundError("no such member")
    membership = db.session.get(Membership, membership_id)
    if membership is None or membership.company_id != company.id:
        raise NotFoundError("no such member")
    return membership


def list_members(company: Company) -> list[Membership]:
    """The company's memberships (active and suspended), by name."""
    return list(
        db.session.scalars(
            select(Membership)
            .join(Person, Person.id == Membership.person_id)
            .where(Membership.company_id == company.id)
            .order_by(Person.display_name, Membership.id)
        )
    )


def list_invitations(company: Company) -> list[Invitation]:
    """The company's invitations not yet used nor expired, newest first."""
    return list(
        db.session.scalars(
            select(Invitation)
            .where(
                Invitation.company_id == company.id,
                Invitation.used_at.is_(None),
                Invitation.expires_at > utcnow(),
            )
            .order_by(Invitation.created_at.desc())
        )
    )


def _active_admin_ids(company_id: int) -> set[int]:
    # Locked (FOR UPDATE on PostgreSQL), so two admins demoting each other at once cannot
    # both succeed; SQLite serialises writers anyway.
    rows = db.session.execute(
        select(Membership.id, Membership.roles)
        .where(Membership.company_id == company_id, Membership.status == MembershipStatus.ACTIVE)
        .with_for_update()
    ).all()
    return {row.id for row in rows if Role.ADMIN.value in row.roles}


def _keeps_an_admin(membership: Membership) -> None:
    """Raise ``ConflictError`` if ``membership`` is the company's last active admin."""
    admins = _active_admin_ids(membership.company_id)
    if admins == {membership.id}:
        raise ConflictError(LAST_ADMIN)


def _end_member_access(membership: Membership, *, reason: str, actor: str) -> dict[str, int]:
    """Revoke the grants and consents ``membership``'s person holds for its company (caller
    commits)."""
    from idp.consent.models import Consent

    person_id, company_id = membership.person_id, membership.company_id
    revoked = tokens.revoke_grants(
        reason=reason, actor=actor, person_id=person_id, company_id=company_id
    )
    # Tokens held as this company's agent for other companies end too.
    revoked += tokens.revoke_grants(
        reason=reason, actor=actor, person_id=person_id, agent_company_id=company_id
    )
    consent_ids = list(
        db.session.scalars(
            select(Consent.id).where(
                Consent.person_id == person_id,
                Consent.company_id == company_id,
                Consent.revoked_at.is_(None),
            )
        )
    )
    if consent_ids:
        # In this transaction (consent.services.revoke_consent commits one at a time); their
        # grants were revoked just above.
        db.session.execute(
            update(Consent)
            .where(Consent.id.in_(consent_ids))
            .values(revoked_at=utcnow(), revoked_by=actor[:200])
        )
        from idp.consent import receipts

        for consent_id in consent_ids:
            # Every revocation gets its signed receipt, as idp.consent.services does.
            consent = db.session.get(Consent, consent_id)
            if consent is not None:
                db.session.refresh(consent)
                receipts.issue(consent, event=receipts.REVOKED)
            record(
                "consent:consent:revoke",
                actor=actor,
                subject=f"consent:{consent_id}",
                company_id=company_id,
                details={"reason": reason},
            )
    return {"grants_revoked": revoked, "consents_revoked": len(consent_ids)}


def _subject(membership: Membership) -> str:
    return f"person:{membership.person.subject}"


# --- the services -----------------------------------------------------------------------------


def invite_member(
    company: Company,
    *,
    email: str,
    roles: Iterable[str],
    actor: Actor,
    ttl: int | None = None,
) -> tuple[Invitation, str]:
    """Invite ``email`` to ``company`` with ``roles`` (see ``orgs.services.create_invitation``).

    Returns ``(invitation, token)``; ``orgs.services.invite_url(token)`` is the link. Raises
    ``ForbiddenError``, ``ValidationError`` and ``ConflictError``."""
    name = require_admin(actor, company)
    return orgs.create_invitation(
        company=company, email=email, roles=roles, invited_by=name, ttl=ttl
    )


def change_roles(
    membership: Membership, roles: Iterable[str], *, actor: Actor, origin: Origin | None = None
) -> Membership:
    """Replace a member's roles. Committed. Raises ``ForbiddenError``, ``ValidationError`` (an
    unknown or no role) and ``ConflictError`` (demoting the last active admin)."""
    name = require_admin(actor, membership.company)
    chosen = orgs._roles(roles)
    before = list(membership.roles)
    if Role.ADMIN.value in before and Role.ADMIN.value not in chosen and membership.is_active:
        _keeps_an_admin(membership)
    membership.roles = chosen
    record(
        "orgs:member:roles",
        actor=name,
        subject=_subject(membership),
        company_id=membership.company_id,
        origin=origin,
        details={"membership_id": membership.id, "before": before, "after": chosen},
    )
    db.session.commit()
    return membership


def suspend_member(
    membership: Membership, *, actor: Actor, origin: Origin | None = None
) -> Membership:
    """Suspend a member: they can no longer choose the company, and their tokens and consents
    for it end at once. Committed; idempotent. Raises ``ForbiddenError`` and ``ConflictError``
    (the last active admin)."""
    name = require_admin(actor, membership.company)
    if membership.is_active:
        _keeps_an_admin(membership)
    membership.status = MembershipStatus.SUSPENDED
    ended = _end_member_access(membership, reason="membership_suspended", actor=name)
    record(
        "orgs:member:suspend",
        actor=name,
        subject=_subject(membership),
        company_id=membership.company_id,
        origin=origin,
        details={"membership_id": membership.id, **ended},
    )
    db.session.commit()
    return membership


def reactivate_member(
    membership: Membership, *, actor: Actor, origin: Origin | None = None
) -> Membership:
    """Lift a suspension (their earlier tokens stay revoked). Committed. Raises
    ``ForbiddenError`` and ``ConflictError`` (a suspended person or inactive company)."""
    name = require_admin(actor, membership.company)
    if not membership.person.is_active:
        raise ConflictError("this person is suspended")
    membership.status = MembershipStatus.ACTIVE
    record(
        "orgs:member:reactivate",
        actor=name,
        subject=_subject(membership),
        company_id=membership.company_id,
        origin=origin,
        details={"membership_id": membership.id},
    )
    db.session.commit()
    return membership


def remove_member(membership: Membership, *, actor: Actor, origin: Origin | None = None) -> None:
    """Remove a member from the company: the membership and their e-service authorisations for
    it are deleted, their tokens and consents for it end at once. Committed. Raises
    ``ForbiddenError`` and ``ConflictError`` (the last active admin)."""
    from idp.delegation.models import EServiceAuthorisation

    name = require_admin(actor, membership.company)
    if membership.is_active:
        _keeps_an_admin(membership)
    ended = _end_member_access(membership, reason="membership_removed", actor=name)
    db.session.execute(
        update(EServiceAuthorisation)
        .where(
            EServiceAuthorisation.person_id == membership.person_id,
            EServiceAuthorisation.company_id == membership.company_id,
            EServiceAuthorisation.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow(), revoked_by=name)
    )
    record(
        "orgs:member:remove",
        actor=name,
        subject=_subject(membership),
        company_id=membership.company_id,
        origin=origin,
        details={"membership_id": membership.id, "roles": list(membership.roles), **ended},
    )
    db.session.execute(delete(Membership).where(Membership.id == membership.id))
    db.session.commit()


def validate_roles(roles: Iterable[str]) -> list[str]:
    """The roles, deduplicated, if all are known and at least one is given. Raises
    ``ValidationError``."""
    try:
        return orgs._roles(roles)
    except TypeError:
        raise ValidationError("roles: a list is required") from None
