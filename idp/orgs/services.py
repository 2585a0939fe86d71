"""Companies, memberships and invitations.

An invitation is a single-use enrolment link; only the SHA-256 digest of its token is stored,
so a database leak does not leak usable links.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from idp.audit.services import record
from idp.db import utcnow
from idp.errors import ConflictError, NotFoundError, ValidationError
from idp.extensions import db
from idp.orgs.models import Company, Invitation, Membership, MembershipStatus, Person, Role
from idp.security import INVITE_PREFIX, digest, new_secret

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# One message for unknown, used and expired links, so a link's state cannot be probed.
INVALID_INVITATION = "This invitation link is not valid: it may have expired or been used."
MAX_TOKEN_LENGTH = 200


def validate_br_number(value: object) -> str:
    """Return ``value`` if it is a Business Registration number (exactly 8 ASCII digits).

    Raises ``ValidationError``.
    """
    if not isinstance(value, str) or len(value) != 8 or not value.isascii() or not value.isdigit():
        raise ValidationError("a BR number is exactly 8 digits")
    return value


def _company_name(value: object, *, field: str, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValidationError(f"{field}: a name is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field}: a name is required")
    value = value.strip()
    if len(value) > 300:
        raise ValidationError(f"{field}: at most 300 characters")
    if _CONTROL.search(value):
        raise ValidationError(f"{field}: control characters are not allowed")
    return value


def validate_email(value: object) -> str:
    """Return the address trimmed, with its domain in lower case. Raises ``ValidationError``."""
    if not isinstance(value, str):
        raise ValidationError("a valid email address is required")
    value = value.strip()
    if len(value) > 320 or not _EMAIL.fullmatch(value) or _CONTROL.search(value):
        raise ValidationError("a valid email address is required")
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}"


def _roles(roles: Iterable[str]) -> list[str]:
    if isinstance(roles, str):
        raise ValidationError("roles: a list is required")
    chosen = list(dict.fromkeys(roles))
    allowed = [r.value for r in Role]
    unknown = [r for r in chosen if r not in allowed]
    if unknown:
        raise ValidationError(
            f"roles: unknown {', '.join(map(str, unknown))}; choose from {', '.join(allowed)}"
        )
    if not chosen:
        raise ValidationError("roles: at least one role is required")
    return chosen


# --- companies --------------------------------------------------------------------------------


def _add_company(*, br_number: str, name_en: str, name_zh: str | None, actor: str) -> Company:
    br = validate_br_number(br_number)
    english = _company_name(name_en, field="name_en", required=True)
    chinese = _company_name(name_zh, field="name_zh", required=False)
    if db.session.scalar(select(Company.id).where(Company.br_number == br)) is not None:
        raise ConflictError(f"a company with BR number {br} already exists")
    company = Company(br_number=br, name_en=english, name_zh=chinese)
    db.session.add(company)
    try:
        db.session.flush()
    except IntegrityError:  # registered concurrently
        db.session.rollback()
        raise ConflictError(f"a company with BR number {br} already exists") from None
    record(
        "orgs:company:create",
        actor=actor,
        subject=f"company:{br}",
        company_id=company.id,
        details={"name_en": english},
    )
    return company


def create_company(
    *, br_number: str, name_en: str, name_zh: str | None = None, actor: str
) -> Company:
    """Register a company. Returns it (committed).

    Raises ``ValidationError`` for a malformed BR number or name, ``ConflictError`` when the BR
    number is already registered.
    """
    company = _add_company(br_number=br_number, name_en=name_en, name_zh=name_zh, actor=actor)
    db.session.commit()
    return company


def get_company_by_br(br: str) -> Company:
    """The company with BR number ``br``. Raises ``ValidationError`` for a malformed number and
    ``NotFoundError`` when none is registered."""
    company = db.session.scalar(select(Company).where(Company.br_number == validate_br_number(br)))
    if company is None:
        raise NotFoundError(f"no company with BR number {br}")
    return company


# --- invitations ------------------------------------------------------------------------------


def _add_invitation(
    *, company: Company, email: str, roles: Iterable[str], invited_by: str, ttl: int | None
) -> tuple[Invitation, str]:
    if not company.is_active:
        raise ConflictError(f"company {company.br_number} is {company.status.value}")
    address = validate_email(email)
    chosen = _roles(roles)
    if ttl is None:
        ttl = int(current_app.config["IDP"]["INVITE_TTL"])
    if ttl <= 0:
        raise ValidationError("an invitation's lifetime must be positive")
    token = new_secret(INVITE_PREFIX)
    invitation = Invitation(
        token_hash=digest(token),
        company_id=company.id,
        email=address,
        roles=chosen,
        invited_by=invited_by,
        expires_at=utcnow() + dt.timedelta(seconds=ttl),
    )
    db.session.add(invitation)
    db.session.flush()
    record(
        "orgs:invitation:create",
        actor=invited_by,
        subject=f"company:{company.br_number}",
        company_id=company.id,
        details={
            "invitation_id": invitation.id,
            "email": address,
            "roles": chosen,
            "expires_at": invitation.expires_at.isoformat(),
        },
    )
    return invitation, token


def create_invitation(
    *, company: Company, email: str, roles: Iterable[str], invited_by: str, ttl: int | None = None
) -> tuple[Invitation, str]:
    """Invite ``email`` to join ``company`` with ``roles``.

    Returns ``(invitation, token)``: the token goes in the link (``invite_url``) and is stored
    only hashed. The link is single-use and expires after ``ttl`` seconds (default
    ``IDP_INVITE_TTL``). Raises ``ValidationError`` for a bad address, role or lifetime and
    ``ConflictError`` when the company is not active.
    """
    invitation, token = _add_invitation(
        company=company, email=email, roles=roles, invited_by=invited_by, ttl=ttl
    )
    db.session.commit()
    return invitation, token


def invite_url(token: str) -> str:
    """The enrolment link for an invitation token."""
    return f"{current_app.config['IDP']['ISSUER']}/enrol/{token}"


def find_valid_invitation(token: object) -> Invitation:
    """The unused, unexpired invitation for ``token`` (of an active company).

    Raises ``NotFoundError`` with the same message whether the token is unknown, used or expired.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise NotFoundError(INVALID_INVITATION)
    invitation = db.session.scalar(select(Invitation).where(Invitation.token_hash == digest(token)))
    if (
        invitation is None
        or invitation.used_at is not None
        or invitation.expires_at <= utcnow()
        or not invitation.company.is_active
    ):
        raise NotFoundError(INVALID_INVITATION)
    return invitation


def consume_invitation(invitation: Invitation, person: Person) -> Membership:
    """Use ``invitation`` for ``person``: mark it used and make them a member of its company with
    its roles (added to any roles they already have; a suspended membership is reactivated).

    Single use even under concurrency: the invitation is claimed by one conditional UPDATE.
    Returns the membership (committed, with whatever else the caller has pending). Raises
    ``ConflictError`` when the invitation was used or expired meanwhile; then nothing is
    committed.
    """
    now = utcnow()
    if person.id is None:
        db.session.flush()
    result = db.session.execute(
        update(Invitation)
        .where(
            Invitation.id == invitation.id,
            Invitation.used_at.is_(None),
            Invitation.expires_at > now,
        )
        .values(used_at=now, used_by_person_id=person.id)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise ConflictError(INVALID_INVITATION)
    db.session.refresh(invitation)
    membership = db.session.scalar(
        select(Membership).where(
            Membership.person_id == person.id, Membership.company_id == invitation.company_id
        )
    )
    if membership is None:
        membership = Membership(
            person_id=person.id,
            company_id=invitation.company_id,
            roles=list(invitation.roles),
            status=MembershipStatus.ACTIVE,
        )
        db.session.add(membership)
    else:
        membership.roles = list(dict.fromkeys([*membership.roles, *invitation.roles]))
        membership.status = MembershipStatus.ACTIVE
    record(
        "orgs:invitation:consume",
        actor=f"person:{person.subject}",
        subject=f"company:{invitation.company.br_number}",
        company_id=invitation.company_id,
        details={"invitation_id": invitation.id, "roles": list(invitation.roles)},
    )
    db.session.commit()
    return membership


def create_org_with_admin(
    *, br_number: str, name: str, admin_email: str, actor: str
) -> tuple[Company, Invitation, str]:
    """Register a company and invite its first administrator, in one transaction.

    Returns ``(company, invitation, token)``; ``invite_url(token)`` is the link to send.
    Raises ``ValidationError`` and ``ConflictError`` as ``create_company`` and
    ``create_invitation`` do.
    """
    admin_email = validate_email(admin_email)
    company = _add_company(br_number=br_number, name_en=name, name_zh=None, actor=actor)
    invitation, token = _add_invitation(
        company=company, email=admin_email, roles=[Role.ADMIN.value], invited_by=actor, ttl=None
    )
    db.session.commit()
    return company, invitation, token


def has_admin(company: Company) -> bool:
    """Whether an active member of ``company`` holds the admin role."""
    roles = db.session.scalars(
        select(Membership.roles).where(
            Membership.company_id == company.id, Membership.status == MembershipStatus.ACTIVE
        )
    )
    return any(Role.ADMIN.value in r for r in roles)
