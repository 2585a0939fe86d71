"""Security-key administration: revoking a person's key (from the company admin pages, the
operator console, or by the person themselves).

Revoking a key ends at once every token family issued under a sign-in made with it and every
sign-in session made with it (back-channel logout included); the person's other keys and
sessions are left alone.
"""

from __future__ import annotations

from sqlalchemy import select

from idp.audit.services import Origin, record
from idp.authn.models import LoginSession, SecurityKey
from idp.db import utcnow
from idp.errors import ForbiddenError, NotFoundError
from idp.extensions import db
from idp.oauth import tokens
from idp.orgs.members import Actor, actor_name, is_admin
from idp.orgs.models import Company, Membership, Person


def require_key_admin(actor: Actor, key: SecurityKey, company: Company | None) -> str:
    """Check that ``actor`` may revoke ``key``: an operator, the key's own holder, or an admin
    of ``company`` of which the key's holder is a member. Returns the actor's audit name.
    Raises ``ForbiddenError``."""
    name = actor_name(actor)
    if not isinstance(actor, Person) or actor.id == key.person_id:
        return name
    if company is None or not is_admin(actor, company):
        raise ForbiddenError("you are not an admin of this company")
    member = db.session.scalar(
        select(Membership.id).where(
            Membership.person_id == key.person_id, Membership.company_id == company.id
        )
    )
    if member is None:
        raise ForbiddenError("this key's holder is not a member of your company")
    return name


def get_member_key(company: Company, key_id: object) -> SecurityKey:
    """The security key ``key_id`` of a member of ``company``; any other key is answered like
    an unknown one. Raises ``NotFoundError``."""
    if not isinstance(key_id, int) or isinstance(key_id, bool):
        raise NotFoundError("no such security key")
    key = db.session.get(SecurityKey, key_id)
    if key is None:
        raise NotFoundError("no such security key")
    member = db.session.scalar(
        select(Membership.id).where(
            Membership.person_id == key.person_id, Membership.company_id == company.id
        )
    )
    if member is None:
        raise NotFoundError("no such security key")
    return key


def member_keys(company: Company, person_id: int) -> list[SecurityKey]:
    """Security keys (revoked ones included) of ``person_id`` if they are a member of
    ``company``, else none; oldest first."""
    return list(
        db.session.scalars(
            select(SecurityKey)
            .join(
                Membership,
                (Membership.person_id == SecurityKey.person_id)
                & (Membership.company_id == company.id),
            )
            .where(SecurityKey.person_id == person_id)
            .order_by(SecurityKey.created_at, SecurityKey.id)
        )
    )


def revoke_security_key(
    key: SecurityKey,
    *,
    actor: Actor,
    company: Company | None = None,
    origin: Origin | None = None,
) -> int:
    """Revoke ``key``: it can no longer sign in; the grants issued under sign-ins made with it
    are revoked and the sessions made with it ended, at once. ``company`` is the company whose
    admin ``actor`` acts as (needed when an admin revokes a member's key). Returns the number
    of sessions ended. Committed; idempotent. Raises ``ForbiddenError``."""
    from idp.authn.services import end_session

    name = require_key_admin(actor, key, company)
    already = key.revoked_at is not None
    if not already:
        key.revoked_at = utcnow()
    revoked = tokens.revoke_grants(reason="key_revoked", actor=name, security_key_id=key.id)
    sessions = list(
        db.session.scalars(
            select(LoginSession).where(
                LoginSession.security_key_id == key.id, LoginSession.ended_at.is_(None)
            )
        )
    )
    if not already:
        record(
            "webauthn:key:revoke",
            actor=name,
            subject=f"person:{key.person.subject}",
            company_id=company.id if company is not None else None,
            origin=origin,
            details={
                "key_id": key.id,
                "name": key.name,
                "grants_revoked": revoked,
                "sessions_ended": len(sessions),
            },
        )
    db.session.commit()
    for session in sessions:
        end_session(session, reason="key_revoked", actor=name, origin=origin)
    return len(sessions)
