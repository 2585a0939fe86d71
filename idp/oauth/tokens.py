"""Token service: issuing JWT access tokens (RFC 9068) and rotating refresh tokens, checking
and revoking them.

Design for revocation at scale: access tokens are self-contained JWTs and are *not* written
one by one. Each user token carries ``gid``, the id of its grant (the family of tokens one
authorization produced). A token is active when its signature and ``exp`` are good, its
``jti`` is not on the revoked list, and its grant is not revoked. Revoking a refresh token, a
session, a person, a security key, a membership or a consent marks grants revoked, which ends
every token of those families at once on every worker (one indexed query per check).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, exists, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from idp.audit.services import record
from idp.clients.models import Client
from idp.db import new_public_id, utcnow
from idp.delegation.models import ThirdPartyAuthorisation
from idp.extensions import db
from idp.keys import jws
from idp.oauth.claims import Principal, actor_claim, subject_for
from idp.oauth.models import Grant, RefreshToken, RevokedAccessToken
from idp.orgs.models import (
    Company,
    CompanyStatus,
    Membership,
    MembershipStatus,
    Person,
    PersonStatus,
)
from idp.security import REFRESH_TOKEN_PREFIX, digest, new_secret

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type


def _cfg(name: str) -> Any:
    return current_app.config["IDP"][name]


# --- issuing ----------------------------------------------------------------------------------


def issue_access_token(
    *, client: Client, scope: str, principal: Principal | None, jkt: str | None = None
) -> tuple[str, int]:
    """Sign an RFC 9068 access token, bound to the DPoP key with thumbprint ``jkt`` when
    given (``cnf``, RFC 9449 §6.1). Returns ``(token, expires_in)``."""
    now = int(time.time())
    ttl = int(_cfg("ACCESS_TOKEN_TTL"))
    if principal is not None and principal.grant_expires_at is not None:
        # Never beyond the grant (and so the consent) it was issued under.
        ttl = max(0, min(ttl, principal.grant_expires_at - now))
    claims: dict[str, Any] = {
        "iss": _cfg("ISSUER"),
        "exp": now + ttl,
        "iat": now,
        "jti": new_public_id(),
        "aud": client.client_id,
        "client_id": client.client_id,
        "scope": scope,
    }
    if jkt:
        claims["cnf"] = {"jkt": jkt}
    if principal is None:
        claims["sub"] = client.client_id
    else:
        claims["sub"] = subject_for(client, principal.person)
        claims["gid"] = principal.gid
        if principal.auth_time is not None:
            claims["auth_time"] = principal.auth_time
        if principal.acr:
            claims["acr"] = principal.acr
        if principal.amr:
            claims["amr"] = principal.amr
        if principal.sid:
            claims["sid"] = principal.sid
        if principal.authorization_details:
            claims["authorization_details"] = principal.authorization_details
        if principal.agent is not None:
            # Also what tells the liveness check to apply the third-party rules.
            claims["act"] = actor_claim(client, principal)
    token = jws.sign(claims, alg=_cfg("ACCESS_TOKEN_ALG"), typ=ACCESS_TOKEN_TYP)
    return token, ttl


def create_grant(
    *,
    client: Client,
    person: Person,
    company: Company,
    scope: str,
    session_id: int | None,
    security_key_id: int | None,
    auth_time: dt.datetime,
    acr: str | None,
    amr: list[str],
    claims_request: dict[str, Any] | None,
    agent_company_id: int | None = None,
    authorization_details: list[dict[str, Any]] | None = None,
    consent_id: int | None = None,
    consent_expires_at: dt.datetime | None = None,
    code_id: int | None = None,
) -> Grant:
    """Start a token family for one authorization (flushed, not committed); with
    ``agent_company_id`` the person acts for ``company`` as a member of that agent company.
    Under a consent (``consent_id``) the family ends when the consent expires, at the latest.
    ``code_id``: the authorization code redeemed for it (revoked with it if replayed)."""
    expires_at = utcnow() + dt.timedelta(seconds=int(_cfg("REFRESH_TOKEN_TTL")))
    if consent_expires_at is not None:
        if consent_expires_at.tzinfo is None:
            consent_expires_at = consent_expires_at.replace(tzinfo=dt.UTC)
        expires_at = min(expires_at, consent_expires_at)
    grant = Grant(
        gid=new_public_id(),
        client_id=client.id,
        person_id=person.id,
        company_id=company.id,
        agent_company_id=agent_company_id,
        session_id=session_id,
        security_key_id=security_key_id,
        scope=scope,
        claims_request=claims_request,
        auth_time=auth_time,
        acr=acr,
        amr=list(amr),
        authorization_details=authorization_details,
        consent_id=consent_id,
        code_id=code_id,
        expires_at=expires_at,
    )
    db.session.add(grant)
    db.session.flush()
    return grant


def new_refresh_token(grant: Grant) -> str:
    """Add a refresh token to ``grant``'s family (flushed, not committed); returns it."""
    token = new_secret(REFRESH_TOKEN_PREFIX)
    db.session.add(
        RefreshToken(token_hash=digest(token), grant_id=grant.id, expires_at=grant.expires_at)
    )
    return token


@dataclass
class Parties:
    """Who a grant (or a code about to become one) speaks for, read in one statement: the
    person, the company, the agent company (third-party authorisation), the membership the
    person acts through, and the sign-in session and consent it was issued under."""

    person: Person
    company: Company
    agent: Company | None
    membership: Membership | None
    session: Any  # LoginSession | None (idp.authn imports this module's callers)
    consent: Any  # Consent | None
    # The person's live e-service roles for the client and company, sorted ([]: access without
    # a named role), or None when they hold no live e-service authorisation there.
    eservice_roles: list[str] | None = None
    # The latest signed receipt of ``consent`` (for the token response), if any.
    consent_receipt: str | None = None


@functools.cache  # built once, on first use (its models import this module)
def _parties_statement() -> Any:
    from idp.authn.models import LoginSession
    from idp.consent.models import Consent, ConsentReceipt
    from idp.delegation.models import EServiceAuthorisation as ESA

    agent = aliased(Company)
    now: Any = bindparam("now")
    receipt = (
        select(ConsentReceipt.receipt)
        .where(ConsentReceipt.consent_id == Consent.id)
        .order_by(ConsentReceipt.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    # Built once: the login path runs it on every code redemption. A missing id (None) matches
    # nothing in the outer joins (``= NULL``), which is what an absent party means. One row
    # per live e-service authorisation (the rest of each row is the same), at least one.
    return (
        select(Person, Company, agent, Membership, LoginSession, Consent, receipt, ESA.id, ESA.role)
        .select_from(Person)
        .join(Company, Company.id == bindparam("company_id"))
        .outerjoin(agent, agent.id == bindparam("agent_company_id"))
        .outerjoin(
            Membership,
            (Membership.person_id == Person.id) & (Membership.company_id == bindparam("member_of")),
        )
        .outerjoin(LoginSession, LoginSession.id == bindparam("session_id"))
        .outerjoin(Consent, Consent.id == bindparam("consent_id"))
        .outerjoin(
            ESA,
            (ESA.person_id == Person.id)
            & (ESA.company_id == Company.id)
            & (ESA.client_id == bindparam("client_id"))
            & ESA.revoked_at.is_(None)
            & (ESA.expires_at.is_(None) | (ESA.expires_at > now)),
        )
        .where(Person.id == bindparam("person_id"))
    )


def load_parties(
    *,
    person_id: int,
    company_id: int,
    client_id: int,
    agent_company_id: int | None,
    session_id: int | None,
    consent_id: int | None = None,
) -> Parties | None:
    """One query for the parties of a grant to ``client_id``; None when the person or company
    is gone."""
    rows = db.session.execute(
        _parties_statement(),
        {
            "person_id": person_id,
            "company_id": company_id,
            "client_id": client_id,
            "agent_company_id": agent_company_id,
            # An agent acts through their membership of the agent company.
            "member_of": agent_company_id if agent_company_id is not None else company_id,
            "session_id": session_id,
            "consent_id": consent_id,
            "now": utcnow(),
        },
    ).all()
    if not rows:
        return None
    held = [role for *_, found, role in rows if found is not None]
    person, company, agent, membership, session, consent, receipt, *_ = rows[0]
    return Parties(
        person,
        company,
        agent,
        membership,
        session,
        consent,
        eservice_roles=sorted({r for r in held if r}) if held else None,
        consent_receipt=receipt,
    )


def principal_for_grant(grant: Grant, *, client: Client | None = None) -> Principal | None:
    """Rebuild the principal of a grant, or None if the person, company or membership is no
    longer active (their tokens must not be refreshed), nor the e-service authorisation a
    members-only client needs, nor the third-party authorisation of an agent's grant.
    ``client``: the grant's client when the caller has it (saves a read)."""
    parties = load_parties(
        person_id=grant.person_id,
        company_id=grant.company_id,
        client_id=grant.client_id,
        agent_company_id=grant.agent_company_id,
        session_id=grant.session_id,
    )
    if parties is None:
        return None
    return principal_from(parties, grant, client=client)


def principal_from(
    parties: Parties, grant: Grant, *, client: Client | None = None
) -> Principal | None:
    """The principal of ``grant`` from its loaded ``parties`` (see ``principal_for_grant``)."""
    from idp.delegation import services as delegation

    person, company, agent = parties.person, parties.company, parties.agent
    if not person.is_active or not company.is_active:
        return None
    if client is None or client.id != grant.client_id:
        client = db.session.get(Client, grant.client_id)
    if client is None:
        return None
    # An agent acts through their membership of the agent company, not of the principal.
    if grant.agent_company_id is not None and (
        agent is None or not delegation.agent_may_act(person.id, company.id, agent.id, client.id)
    ):
        return None
    membership = parties.membership
    if membership is None or not membership.is_active:
        return None
    authorisations: list[str] = []
    if agent is None:
        held = parties.eservice_roles
        if held is None and client.members_authorised_only:
            return None
        authorisations = held or []
    return Principal(
        person=person,
        company=company,
        # An agent holds no roles in the principal company.
        roles=[] if agent is not None else list(membership.roles),
        authorisations=authorisations,
        agent=agent,
        grant_id=grant.id,
        gid=grant.gid,
        sid=parties.session.sid if parties.session is not None else None,
        auth_time=int(grant.auth_time.timestamp()),
        acr=grant.acr,
        amr=list(grant.amr),
        claims_request=grant.claims_request,
        authorization_details=grant.authorization_details,
        grant_expires_at=_timestamp(grant.expires_at),
    )


def _timestamp(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


def audit_issue(
    *,
    client: Client,
    principal: Principal,
    grant_type: str,
    scope: str | None,
    jkt: str | None = None,
) -> None:
    """Record tokens issued to ``client`` for a person (in the caller's transaction), with
    the DPoP key thumbprint they are bound to, if any."""
    details: dict[str, Any] = {"grant_type": grant_type, "gid": principal.gid, "scope": scope or ""}
    if jkt:
        details["dpop_jkt"] = jkt
    record(
        "oauth:token:issue",
        actor=f"client:{client.client_id}",
        subject=f"person:{principal.person.subject}",
        company_id=principal.company.id,
        details=details,
    )


# --- refresh tokens ---------------------------------------------------------------------------


@dataclass
class RefreshTokenRecord:
    """What Authlib's refresh-token grant needs to know about a presented refresh token."""

    row: RefreshToken
    grant: Grant

    def check_client(self, client: Client) -> bool:
        return self.grant.client_id == client.id

    def get_scope(self) -> str:
        return self.grant.scope

    def is_expired(self) -> bool:
        return self.row.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        return self.grant.revoked_at is not None or self.row.rotated_at is not None


def find_refresh_token(token: str) -> RefreshTokenRecord | None:
    if not isinstance(token, str) or not token.startswith(REFRESH_TOKEN_PREFIX) or len(token) > 200:
        return None
    row = db.session.scalars(
        select(RefreshToken).where(RefreshToken.token_hash == digest(token))
    ).first()
    if row is None:
        return None
    grant = db.session.get(Grant, row.grant_id)
    if grant is None:
        return None
    return RefreshTokenRecord(row, grant)


def rotate_refresh_token(record_: RefreshTokenRecord) -> bool:
    """Mark the presented refresh token as used, atomically. False if it was already used
    (then the whole family is revoked, RFC 9700 §4.14.2)."""
    result = db.session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == record_.row.id, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=utcnow())
    )
    if getattr(result, "rowcount", 0) == 1:
        return True
    db.session.rollback()
    revoke_grant(record_.grant.id, reason="refresh_token_reuse")
    return False


# --- revocation -------------------------------------------------------------------------------


def revoke_grant(grant_id: int, *, reason: str, actor: str = "system") -> None:
    """Revoke one token family (committed)."""
    db.session.execute(
        update(Grant)
        .where(Grant.id == grant_id, Grant.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
    )
    record(
        "oauth:grant:revoke", actor=actor, subject=f"grant:{grant_id}", details={"reason": reason}
    )
    db.session.commit()


def revoke_grants(
    *,
    reason: str,
    actor: str = "system",
    person_id: int | None = None,
    company_id: int | None = None,
    client_id: int | None = None,
    session_id: int | None = None,
    security_key_id: int | None = None,
    agent_company_id: int | None = None,
    consent_id: int | None = None,
) -> int:
    """Revoke every live grant matching all the given filters (the caller commits).

    Used when a person, security key, session, membership, consent or authorisation ends."""
    filters: list[Any] = [Grant.revoked_at.is_(None)]
    for column, value in (
        (Grant.person_id, person_id),
        (Grant.company_id, company_id),
        (Grant.agent_company_id, agent_company_id),
        (Grant.client_id, client_id),
        (Grant.session_id, session_id),
        (Grant.security_key_id, security_key_id),
        (Grant.consent_id, consent_id),
    ):
        if value is not None:
            filters.append(column == value)
    if len(filters) == 1:
        raise ValueError("revoke_grants needs at least one filter")
    result = db.session.execute(
        update(Grant).where(*filters).values(revoked_at=utcnow(), revoked_reason=reason)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def revoke_access_token(claims: dict[str, Any]) -> None:
    """Put one access token's ``jti`` on the revoked list until it would expire (committed)."""
    expires = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
    try:
        with db.session.begin_nested():
            db.session.add(RevokedAccessToken(jti=str(claims["jti"]), expires_at=expires))
    except IntegrityError:
        pass  # already revoked
    db.session.commit()


# --- checking ---------------------------------------------------------------------------------


def decode_access_token(token: str) -> dict[str, Any] | None:
    """Claims of a valid, unexpired access token we signed, else None. Revocation not checked."""
    try:
        return jws.verify(
            token,
            issuer=_cfg("ISSUER"),
            typ=ACCESS_TOKEN_TYP,
            max_length=int(_cfg("MAX_JWT_LENGTH")),
        )
    except jws.InvalidJWT:
        return None


def _liveness_statements() -> tuple[Any, Any]:
    """The two liveness queries, built once: ``(client token, user token)``. Values are bound
    per call, so SQLAlchemy's compiled cache serves every request after the first."""
    revoked = exists().where(RevokedAccessToken.jti == bindparam("jti"))
    # Person, membership and company status are read with the grant (indexed joins), so a
    # suspension ends tokens at once even when it was made without revoking grants.
    grant_live = (
        select(Grant.id)
        .join(Person, Person.id == Grant.person_id)
        .join(Company, Company.id == Grant.company_id)
        .join(
            Membership,
            (Membership.person_id == Grant.person_id) & (Membership.company_id == Grant.company_id),
        )
        .where(
            Grant.gid == bindparam("gid"),
            Grant.revoked_at.is_(None),
            Grant.expires_at > bindparam("now"),
            Person.status == PersonStatus.ACTIVE,
            Membership.status == MembershipStatus.ACTIVE,
            Company.status.in_((CompanyStatus.LIVE, CompanyStatus.DORMANT)),
        )
        .scalar_subquery()
    )
    return select(revoked, literal(1)), select(revoked, grant_live)


_LIVENESS = _liveness_statements()


def is_access_token_live(claims: dict[str, Any]) -> bool:
    """Not revoked by jti, and its grant (if any) still live: one query."""
    jti = claims.get("jti")
    gid = claims.get("gid")
    if not isinstance(jti, str):
        return False
    if "act" in claims:
        return _agent_token_live(jti, gid)
    params: dict[str, Any]
    if gid is None:
        statement, params = _LIVENESS[0], {"jti": jti}
    elif isinstance(gid, str):
        statement, params = _LIVENESS[1], {"jti": jti, "gid": gid, "now": utcnow()}
    else:
        return False
    # One autocommit round trip with a Core statement: no transaction, no ORM on this hot path.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        row = connection.execute(statement, params).one()
    return (not row[0]) and row[1] is not None


def _agent_liveness_statement() -> Any:
    """Liveness of a token an agent holds (built once, values bound per call): the ordinary
    checks, with the person's membership read in the agent company, plus the agent company's
    status and a live third-party authorisation for the grant's client."""
    principal, agent = aliased(Company), aliased(Company)
    revoked = exists().where(RevokedAccessToken.jti == bindparam("jti"))
    now: Any = bindparam("now")
    grant_live = (
        select(Grant.id)
        .join(Person, Person.id == Grant.person_id)
        .join(principal, principal.id == Grant.company_id)
        .join(agent, agent.id == Grant.agent_company_id)
        .join(
            Membership,
            (Membership.person_id == Grant.person_id)
            & (Membership.company_id == Grant.agent_company_id),
        )
        .join(
            ThirdPartyAuthorisation,
            (ThirdPartyAuthorisation.principal_company_id == Grant.company_id)
            & (ThirdPartyAuthorisation.agent_company_id == Grant.agent_company_id)
            & (ThirdPartyAuthorisation.client_id == Grant.client_id),
        )
        .where(
            Grant.gid == bindparam("gid"),
            Grant.revoked_at.is_(None),
            Grant.expires_at > now,
            Person.status == PersonStatus.ACTIVE,
            Membership.status == MembershipStatus.ACTIVE,
            principal.status.in_((CompanyStatus.LIVE, CompanyStatus.DORMANT)),
            agent.status.in_((CompanyStatus.LIVE, CompanyStatus.DORMANT)),
            ThirdPartyAuthorisation.revoked_at.is_(None),
            ThirdPartyAuthorisation.expires_at > now,
        )
        .limit(1)
        .scalar_subquery()
    )
    return select(revoked, grant_live)


_AGENT_LIVENESS = _agent_liveness_statement()


def _agent_token_live(jti: str, gid: object) -> bool:
    if not isinstance(gid, str):
        return False
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        row = connection.execute(_AGENT_LIVENESS, {"jti": jti, "gid": gid, "now": utcnow()}).one()
    return (not row[0]) and row[1] is not None


_READ_EPOCH: Any = object()


def check_access_token(token: str, *, epoch: bytes | None = _READ_EPOCH) -> dict[str, Any] | None:
    """Claims of an active access token (signature, expiry, revocation), else None.

    A token this worker found active moments ago is answered from memory while no revocation
    has happened since (``idp.oauth.active_cache``). ``epoch``: the revocation epoch, when the
    caller has just read it (with other Redis commands); read here otherwise."""
    from idp.oauth import active_cache

    if epoch is _READ_EPOCH:
        epoch = active_cache.current_epoch()  # read before the database is asked
    claims = active_cache.recall(token, epoch)
    if claims is not None:
        return claims
    claims = decode_access_token(token)
    if claims is None or not is_access_token_live(claims):
        return None
    active_cache.remember(token, epoch, claims)
    return claims


# --- housekeeping -----------------------------------------------------------------------------


def purge_expired() -> dict[str, int]:
    """Delete protocol state nobody can use any more (run periodically: ``idp purge``).

    Expired codes, pending and pushed authorizations, revoked-jti entries past their token's expiry,
    refresh tokens of expired grants, expired WebAuthn challenges, back-channel logout records
    delivered or given up more than a day ago (the audit trail keeps each outcome). Grants
    themselves are kept (audit trail of what was issued) until a retention job decides
    otherwise. Returns the count per table. Committed.
    """
    from sqlalchemy import delete

    from idp.authn.ceremonies import purge_expired_challenges
    from idp.oauth.models import (
        AuthorizationCode,
        BackchannelDelivery,
        PendingAuthorization,
        PushedAuthorization,
    )

    now = utcnow()
    expired_grants = select(Grant.id).where(Grant.expires_at <= now)
    # Kept a day so that ending the same session again soon after sends nothing twice.
    settled = now - dt.timedelta(days=1)
    statements = {
        # Codes are kept a day past expiry so that a late replay still revokes its tokens.
        "authorization_codes": delete(AuthorizationCode).where(
            AuthorizationCode.expires_at <= now - dt.timedelta(days=1)
        ),
        "pending_authorizations": delete(PendingAuthorization).where(
            PendingAuthorization.expires_at <= now
        ),
        "pushed_authorizations": delete(PushedAuthorization).where(
            PushedAuthorization.expires_at <= now
        ),
        "revoked_access_tokens": delete(RevokedAccessToken).where(
            RevokedAccessToken.expires_at <= now
        ),
        "refresh_tokens": delete(RefreshToken).where(RefreshToken.grant_id.in_(expired_grants)),
        "backchannel_deliveries": delete(BackchannelDelivery).where(
            (BackchannelDelivery.delivered_at <= settled)
            | (BackchannelDelivery.gave_up_at <= settled)
        ),
    }
    counts = {
        name: int(getattr(db.session.execute(stmt), "rowcount", 0) or 0)
        for name, stmt in statements.items()
    }
    db.session.commit()
    from idp import cache

    counts["cache_entries"] = cache.purge_expired()
    counts["webauthn_challenges"] = purge_expired_challenges()
    return counts
