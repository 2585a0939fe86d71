"""E-service and third-party authorisations.

An **e-service authorisation** lets one member use one relying party for the company,
optionally in a named e-service role (``"tax-filer"``) and until an end date, like Corppass's
e-service roles. A client registered ``members_authorised_only`` may be chosen at sign-in only
by members holding a live one; every client receives the member's live roles for it in
``corp.authorisations``.

A **third-party authorisation** lets company A (the principal) have company B (its agent, e.g.
a tax representative) act for it at one relying party until an end date. An active member of
B may then sign in there "for A": tokens name A in ``corp`` and B and the person in ``act``
(RFC 8693 §4.1). Revoking it, its expiry, suspending B's member, or either company ceasing to
be active ends those tokens at once (``idp.oauth.tokens.is_access_token_live``).

Services check who is asking with ``idp.orgs.members.require_admin``: an admin of the company
granting (A for third-party authorisations), or an operator.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import aliased

from idp.audit.services import Origin, record
from idp.clients.models import Client
from idp.db import utcnow
from idp.delegation.models import EServiceAuthorisation, ThirdPartyAuthorisation
from idp.errors import ConflictError, NotFoundError, ValidationError
from idp.extensions import db
from idp.oauth import tokens
from idp.orgs.members import Actor, require_admin
from idp.orgs.models import Company, CompanyStatus, Membership, MembershipStatus, Person

# An e-service role: a short machine-readable name, as relying parties match on it.
_ROLE = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")
ACTIVE_COMPANY = (CompanyStatus.LIVE, CompanyStatus.DORMANT)


def _live(model: type[EServiceAuthorisation] | type[ThirdPartyAuthorisation]) -> list[Any]:
    now = utcnow()
    conditions: list[Any] = [model.revoked_at.is_(None)]
    if model is EServiceAuthorisation:
        conditions.append(
            or_(EServiceAuthorisation.expires_at.is_(None), EServiceAuthorisation.expires_at > now)
        )
    else:
        conditions.append(ThirdPartyAuthorisation.expires_at > now)
    return conditions


def _future(value: object, *, field: str, required: bool) -> dt.datetime | None:
    if value is None:
        if required:
            raise ValidationError(f"{field}: an end date is required")
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ValidationError(f"{field}: a timezone-aware date and time is required")
    if value <= utcnow():
        raise ValidationError(f"{field}: must be in the future")
    return value


def _role(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _ROLE.fullmatch(value):
        raise ValidationError(
            "role: 1-64 lower-case letters, digits and . _ : - (starting with a letter or digit)"
        )
    return value


# --- e-service authorisations -----------------------------------------------------------------


def grant_eservice(
    membership: Membership,
    client: Client,
    *,
    role: str | None = None,
    expires_at: dt.datetime | None = None,
    actor: Actor,
    origin: Origin | None = None,
) -> EServiceAuthorisation:
    """Let ``membership``'s person use ``client`` for its company (in ``role``, until
    ``expires_at``; None: until revoked). Committed. Raises ``ForbiddenError`` (not an admin of
    that company), ``ValidationError`` and ``ConflictError`` (already granted, a suspended
    member, or a disabled client)."""
    name = require_admin(actor, membership.company)
    checked_role = _role(role)
    end = _future(expires_at, field="expires_at", required=False)
    if not membership.is_active:
        raise ConflictError("this member is suspended")
    if not client.is_active:
        raise ConflictError("this relying party is disabled")
    same_role = (
        EServiceAuthorisation.role.is_(None)
        if checked_role is None
        else EServiceAuthorisation.role == checked_role
    )
    existing = db.session.scalar(
        select(EServiceAuthorisation.id).where(
            EServiceAuthorisation.person_id == membership.person_id,
            EServiceAuthorisation.company_id == membership.company_id,
            EServiceAuthorisation.client_id == client.id,
            same_role,
            *_live(EServiceAuthorisation),
        )
    )
    if existing is not None:
        raise ConflictError("this member already holds that authorisation")
    authorisation = EServiceAuthorisation(
        company_id=membership.company_id,
        person_id=membership.person_id,
        client_id=client.id,
        role=checked_role,
        expires_at=end,
        granted_by=name,
    )
    db.session.add(authorisation)
    db.session.flush()
    record(
        "delegation:eservice:grant",
        actor=name,
        subject=f"person:{membership.person.subject}",
        company_id=membership.company_id,
        origin=origin,
        details={
            "authorisation_id": authorisation.id,
            "client_id": client.client_id,
            "role": checked_role,
            "expires_at": end.isoformat() if end else None,
        },
    )
    db.session.commit()
    return authorisation


def get_eservice(company: Company, authorisation_id: object) -> EServiceAuthorisation:
    """The e-service authorisation ``authorisation_id`` of ``company``; another company's is
    answered like an unknown one. Raises ``NotFoundError``."""
    if not isinstance(authorisation_id, int) or isinstance(authorisation_id, bool):
        raise NotFoundError("no such authorisation")
    row = db.session.get(EServiceAuthorisation, authorisation_id)
    if row is None or row.company_id != company.id:
        raise NotFoundError("no such authorisation")
    return row


def list_eservice(
    company: Company, *, client: Client | None = None, include_ended: bool = False
) -> list[EServiceAuthorisation]:
    """The company's e-service authorisations (live ones unless ``include_ended``), oldest
    first."""
    statement = select(EServiceAuthorisation).where(EServiceAuthorisation.company_id == company.id)
    if client is not None:
        statement = statement.where(EServiceAuthorisation.client_id == client.id)
    if not include_ended:
        statement = statement.where(*_live(EServiceAuthorisation))
    return list(db.session.scalars(statement.order_by(EServiceAuthorisation.id)))


def revoke_eservice(
    authorisation: EServiceAuthorisation, *, actor: Actor, origin: Origin | None = None
) -> None:
    """Revoke an e-service authorisation and end the member's tokens for that client and
    company at once. Committed; idempotent. Raises ``ForbiddenError``."""
    company = db.session.get(Company, authorisation.company_id)
    assert company is not None
    name = require_admin(actor, company)
    if authorisation.revoked_at is not None:
        return
    authorisation.revoked_at = utcnow()
    authorisation.revoked_by = name
    revoked = tokens.revoke_grants(
        reason="authorisation_revoked",
        actor=name,
        person_id=authorisation.person_id,
        company_id=authorisation.company_id,
        client_id=authorisation.client_id,
    )
    record(
        "delegation:eservice:revoke",
        actor=name,
        subject=f"authorisation:{authorisation.id}",
        company_id=authorisation.company_id,
        origin=origin,
        details={"grants_revoked": revoked},
    )
    db.session.commit()


def eservice_roles(person_id: int, company_id: int, client_id: int) -> list[str] | None:
    """The person's live e-service roles for this client and company, sorted (``[]``: access
    without a named role), or None when they hold no live authorisation at all."""
    roles = list(
        db.session.scalars(
            select(EServiceAuthorisation.role).where(
                EServiceAuthorisation.person_id == person_id,
                EServiceAuthorisation.company_id == company_id,
                EServiceAuthorisation.client_id == client_id,
                *_live(EServiceAuthorisation),
            )
        )
    )
    if not roles:
        return None
    return sorted({r for r in roles if r})


def authorised_company_ids(person: Person, client: Client) -> set[int]:
    """Companies for which ``person`` holds a live e-service authorisation for ``client``."""
    return set(
        db.session.scalars(
            select(EServiceAuthorisation.company_id).where(
                EServiceAuthorisation.person_id == person.id,
                EServiceAuthorisation.client_id == client.id,
                *_live(EServiceAuthorisation),
            )
        )
    )


# --- third-party authorisations ---------------------------------------------------------------


def grant_third_party(
    principal: Company,
    agent: Company,
    client: Client,
    *,
    expires_at: dt.datetime,
    actor: Actor,
    origin: Origin | None = None,
) -> ThirdPartyAuthorisation:
    """Let ``agent``'s members act for ``principal`` at ``client`` until ``expires_at``.
    Committed. Raises ``ForbiddenError`` (not an admin of ``principal``), ``ValidationError``
    (no or a past end date, a company authorising itself) and ``ConflictError`` (already
    granted, an inactive company, a disabled client)."""
    name = require_admin(actor, principal)
    end = _future(expires_at, field="expires_at", required=True)
    assert end is not None
    if principal.id == agent.id:
        raise ValidationError("a company cannot be its own third party")
    if not principal.is_active or not agent.is_active:
        raise ConflictError("both companies must be active")
    if not client.is_active:
        raise ConflictError("this relying party is disabled")
    existing = db.session.scalar(
        select(ThirdPartyAuthorisation.id).where(
            ThirdPartyAuthorisation.principal_company_id == principal.id,
            ThirdPartyAuthorisation.agent_company_id == agent.id,
            ThirdPartyAuthorisation.client_id == client.id,
            *_live(ThirdPartyAuthorisation),
        )
    )
    if existing is not None:
        raise ConflictError("this company already acts for you at that service")
    authorisation = ThirdPartyAuthorisation(
        principal_company_id=principal.id,
        agent_company_id=agent.id,
        client_id=client.id,
        expires_at=end,
        granted_by=name,
    )
    db.session.add(authorisation)
    db.session.flush()
    record(
        "delegation:third-party:grant",
        actor=name,
        subject=f"company:{agent.br_number}",
        company_id=principal.id,
        origin=origin,
        details={
            "authorisation_id": authorisation.id,
            "client_id": client.client_id,
            "expires_at": end.isoformat(),
        },
    )
    db.session.commit()
    return authorisation


def get_third_party(company: Company, authorisation_id: object) -> ThirdPartyAuthorisation:
    """The third-party authorisation ``authorisation_id`` that ``company`` granted; any other
    is answered like an unknown one. Raises ``NotFoundError``."""
    if not isinstance(authorisation_id, int) or isinstance(authorisation_id, bool):
        raise NotFoundError("no such authorisation")
    row = db.session.get(ThirdPartyAuthorisation, authorisation_id)
    if row is None or row.principal_company_id != company.id:
        raise NotFoundError("no such authorisation")
    return row


def list_third_party(
    company: Company, *, as_agent: bool = False, include_ended: bool = False
) -> list[ThirdPartyAuthorisation]:
    """Third-party authorisations ``company`` granted (or, ``as_agent``, received); live ones
    unless ``include_ended``; oldest first."""
    column = (
        ThirdPartyAuthorisation.agent_company_id
        if as_agent
        else ThirdPartyAuthorisation.principal_company_id
    )
    statement = select(ThirdPartyAuthorisation).where(column == company.id)
    if not include_ended:
        statement = statement.where(*_live(ThirdPartyAuthorisation))
    return list(db.session.scalars(statement.order_by(ThirdPartyAuthorisation.id)))


def revoke_third_party(
    authorisation: ThirdPartyAuthorisation, *, actor: Actor, origin: Origin | None = None
) -> None:
    """Revoke a third-party authorisation; the agent's tokens for the principal at that client
    end at once. Committed; idempotent. Raises ``ForbiddenError`` (not an admin of the
    principal company)."""
    principal = db.session.get(Company, authorisation.principal_company_id)
    assert principal is not None
    name = require_admin(actor, principal)
    if authorisation.revoked_at is not None:
        return
    authorisation.revoked_at = utcnow()
    authorisation.revoked_by = name
    revoked = tokens.revoke_grants(
        reason="third_party_revoked",
        actor=name,
        company_id=authorisation.principal_company_id,
        agent_company_id=authorisation.agent_company_id,
        client_id=authorisation.client_id,
    )
    record(
        "delegation:third-party:revoke",
        actor=name,
        subject=f"authorisation:{authorisation.id}",
        company_id=authorisation.principal_company_id,
        origin=origin,
        details={"grants_revoked": revoked},
    )
    db.session.commit()


# The two roles a company plays in a third-party authorisation, aliased once: building an
# alias of the Company entity costs milliseconds, and the company choice asks on every login.
_PRINCIPAL = aliased(Company, name="principal")
_AGENT = aliased(Company, name="agent")


@dataclass(frozen=True)
class AgentOption:
    """At sign-in: act for ``principal`` as a member of ``agent``."""

    principal: Company
    agent: Company


def agent_options(person: Person, client: Client) -> list[AgentOption]:
    """Companies ``person`` may act for at ``client`` as a member of an agent company: a live
    third-party authorisation, the person's membership in the agent active, both companies
    active. By principal name."""
    principal, agent = _PRINCIPAL, _AGENT
    rows = db.session.execute(
        select(principal, agent)
        .select_from(ThirdPartyAuthorisation)
        .join(principal, principal.id == ThirdPartyAuthorisation.principal_company_id)
        .join(agent, agent.id == ThirdPartyAuthorisation.agent_company_id)
        .join(
            Membership,
            (Membership.company_id == ThirdPartyAuthorisation.agent_company_id)
            & (Membership.person_id == person.id),
        )
        .where(
            ThirdPartyAuthorisation.client_id == client.id,
            Membership.status == MembershipStatus.ACTIVE,
            principal.status.in_(ACTIVE_COMPANY),
            agent.status.in_(ACTIVE_COMPANY),
            *_live(ThirdPartyAuthorisation),
        )
        .order_by(principal.name_en, agent.name_en)
    ).all()
    seen: set[tuple[int, int]] = set()
    options = []
    for p, a in rows:
        if (p.id, a.id) not in seen:
            seen.add((p.id, a.id))
            options.append(AgentOption(p, a))
    return options


def agent_may_act(person_id: int, principal_id: int, agent_id: int, client_id: int) -> bool:
    """Whether the person may (still) act for ``principal_id`` as a member of ``agent_id`` at
    ``client_id`` (the checks of ``agent_options`` for one pair)."""
    principal, agent = _PRINCIPAL, _AGENT
    found = db.session.scalar(
        select(ThirdPartyAuthorisation.id)
        .join(principal, principal.id == ThirdPartyAuthorisation.principal_company_id)
        .join(agent, agent.id == ThirdPartyAuthorisation.agent_company_id)
        .join(
            Membership,
            (Membership.company_id == ThirdPartyAuthorisation.agent_company_id)
            & (Membership.person_id == person_id),
        )
        .where(
            ThirdPartyAuthorisation.principal_company_id == principal_id,
            ThirdPartyAuthorisation.agent_company_id == agent_id,
            ThirdPartyAuthorisation.client_id == client_id,
            Membership.status == MembershipStatus.ACTIVE,
            principal.status.in_(ACTIVE_COMPANY),
            agent.status.in_(ACTIVE_COMPANY),
            *_live(ThirdPartyAuthorisation),
        )
        .limit(1)
    )
    return found is not None
