"""Operators, console sign-in with step-up, and four eyes on the signing keys.

Operators are people with hardware keys, like everyone else, holding a separate role: an
``Operator`` row. The first is made by ``idp operator create``, which prints a single-use
enrolment link (its token stored only as a digest, like a company invitation's).

Sensitive actions need a *fresh assertion*: a hardware-key assertion made in this sign-in
session within the last few minutes (``require_fresh_assertion``). A step-up is an ordinary
WebAuthn sign-in ceremony whose challenge is bound to the session (scope ``stepup:<sid>``);
the key must belong to the session's person. Signing-key rotation and retirement need a second
operator's approval, each with a fresh assertion (``request_key_change``/``approve_key_change``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from idp.admin.models import (
    ApprovalStatus,
    FreshAssertion,
    KeyChangeRequest,
    Operator,
    OperatorInvitation,
    OperatorStatus,
)
from idp.audit.services import Origin, record
from idp.authn import attestation, ceremonies
from idp.authn import webauthn as wa
from idp.authn.models import LoginSession, SecurityKey
from idp.authn.services import end_session, start_session
from idp.db import new_public_id, utcnow
from idp.errors import ConflictError, ForbiddenError, IdpError, NotFoundError, ValidationError
from idp.extensions import db
from idp.keys import services as keys
from idp.orgs import services as orgs
from idp.orgs.models import Company, Membership, MembershipStatus, Person, Role
from idp.security import digest, new_secret

OPERATOR_INVITE_PREFIX = "cio_"
# Seconds a fresh assertion counts for sensitive actions.
FRESH_ASSERTION_MAX_AGE = 300
# Seconds a four-eyes request waits for its second operator.
KEY_CHANGE_TTL = 24 * 3600
INVALID_LINK = "This enrolment link is not valid: it may have expired or been used."
STEPUP = "stepup"


class StepUpRequired(IdpError):
    """Touch your security key again to confirm this action."""

    status = 403
    code = "step_up_required"


def actor_of(operator: Operator) -> str:
    """The audit actor of an operator acting in the console."""
    return f"operator:{operator.id}:person:{operator.person.subject}"


# --- operators --------------------------------------------------------------------------------


def find_operator(person_id: int) -> Operator | None:
    """The active operator role of a person, or None."""
    row = db.session.scalar(select(Operator).where(Operator.person_id == person_id))
    return row if row is not None and row.is_active else None


def require_operator(session: LoginSession | None) -> Operator:
    """The operator signed in with ``session``. Raises ``ForbiddenError`` for anyone else
    (a company admin is not an operator)."""
    if session is None:
        raise ForbiddenError("Sign in first.")
    operator = find_operator(session.person_id)
    if operator is None or not session.person.is_active:
        raise ForbiddenError("Only operators may use the operator console.")
    return operator


def administered_companies(person: Person) -> list[Company]:
    """The active companies of which ``person`` is an active admin, by name."""
    rows = db.session.execute(
        select(Company, Membership.roles)
        .join(Membership, Membership.company_id == Company.id)
        .where(Membership.person_id == person.id, Membership.status == MembershipStatus.ACTIVE)
        .order_by(Company.name_en)
    ).all()
    return [company for company, roles in rows if company.is_active and Role.ADMIN.value in roles]


def list_operators() -> list[Operator]:
    """Every operator, oldest first."""
    return list(db.session.scalars(select(Operator).order_by(Operator.id)))


def create_operator_invitation(
    *, email: str, created_by: str, ttl: int | None = None
) -> tuple[OperatorInvitation, str]:
    """Invite a person-to-be operator. Returns ``(invitation, token)``; the token goes in the
    link (``operator_enrol_url``) and is stored only hashed; single use, expiring after
    ``ttl`` seconds (default ``IDP_INVITE_TTL``). Committed. Raises ``ValidationError``."""
    address = orgs.validate_email(email)
    ttl = int(current_app.config["IDP"]["INVITE_TTL"]) if ttl is None else ttl
    if ttl <= 0:
        raise ValidationError("an invitation's lifetime must be positive")
    token = new_secret(OPERATOR_INVITE_PREFIX)
    invitation = OperatorInvitation(
        token_hash=digest(token),
        email=address,
        created_by=created_by,
        expires_at=utcnow() + dt.timedelta(seconds=ttl),
    )
    db.session.add(invitation)
    db.session.flush()
    record(
        "admin:operator:invite",
        actor=created_by,
        subject=f"operator-invitation:{invitation.id}",
        details={"email": address, "expires_at": invitation.expires_at.isoformat()},
    )
    db.session.commit()
    return invitation, token


def operator_enrol_url(token: str) -> str:
    """The enrolment link of an operator invitation token."""
    return f"{current_app.config['IDP']['ISSUER']}/console/enrol/{token}"


def find_operator_invitation(token: object) -> OperatorInvitation:
    """The unused, unexpired operator invitation for ``token``. Raises ``NotFoundError`` (the
    same message for unknown, used and expired links)."""
    if not isinstance(token, str) or not token.startswith(OPERATOR_INVITE_PREFIX):
        raise NotFoundError(INVALID_LINK)
    if len(token) > orgs.MAX_TOKEN_LENGTH:
        raise NotFoundError(INVALID_LINK)
    row = db.session.scalar(
        select(OperatorInvitation).where(OperatorInvitation.token_hash == digest(token))
    )
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise NotFoundError(INVALID_LINK)
    return row


def begin_operator_enrolment(
    *, token: str, binding: str, display_name: object, key_name: object = None
) -> dict[str, Any]:
    """Registration options for an operator invitation: a new person named ``display_name``.
    Raises ``NotFoundError`` and ``ValidationError``."""
    invitation = find_operator_invitation(token)
    name = (
        ceremonies.clean_name(key_name, field="key_name", limit=100, required=False)
        or ceremonies.DEFAULT_KEY_NAME
    )
    shown = str(ceremonies.clean_name(display_name, field="display_name", limit=200, required=True))
    subject = new_public_id()
    challenge = ceremonies.issue_challenge(
        ceremony=ceremonies.REGISTER,
        binding=binding,
        scope=f"operator-invitation:{invitation.id}",
        data={
            "operator_invitation_id": invitation.id,
            "subject": subject,
            "display_name": shown,
            "key_name": name,
        },
    )
    return wa.registration_options(
        rp_id=ceremonies.rp_id(),
        rp_name=str(current_app.config["IDP"].get("WEBAUTHN_RP_NAME") or "Corp ID"),
        user_id=subject.encode("ascii"),
        user_name=invitation.email,
        user_display_name=shown,
        challenge=challenge,
        exclude_credentials=[],
        timeout_ms=ceremonies.timeout_ms_setting(),
    )


def finish_operator_enrolment(
    *, token: str, credential: object, binding: str, origin: Origin | None = None
) -> ceremonies.SignedIn:
    """Verify the registration and, in one transaction, create the person, their key and
    their operator role and use up the link; then start a session. Nothing is written when
    the key is refused. Raises ``WebAuthnError``, ``AttestationRefused``, ``NotFoundError``."""
    invitation = find_operator_invitation(token)
    cred, facts = wa.read_registration(credential)
    data = ceremonies.claim_challenge(
        facts.challenge,
        ceremony=ceremonies.REGISTER,
        binding=binding,
        scope=f"operator-invitation:{invitation.id}",
    )
    if data.get("operator_invitation_id") != invitation.id:
        raise wa.WebAuthnError("This enrolment attempt is not for this invitation.")
    in_use = wa.WebAuthnError(
        "This security key is already registered.", reason="credential_in_use"
    )
    if db.session.scalar(
        select(SecurityKey.id).where(SecurityKey.credential_id == facts.credential_id)
    ):
        raise in_use
    policy = attestation.current_policy()
    verified = wa.verify_registration(
        credential=cred,
        challenge=facts.challenge,
        rp_id=ceremonies.rp_id(),
        origin=ceremonies.expected_origin(),
        fmt=facts.fmt,
        root_certs=policy.roots_for(fmt=facts.fmt, aaguid=facts.aaguid),
    )
    verdict = policy.enforce(
        fmt=verified.fmt,
        aaguid=verified.aaguid,
        has_trust_path=facts.has_trust_path,
        backup_eligible=verified.backup_eligible,
    )
    now = utcnow()
    claimed = db.session.execute(
        update(OperatorInvitation)
        .where(
            OperatorInvitation.id == invitation.id,
            OperatorInvitation.used_at.is_(None),
            OperatorInvitation.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        db.session.rollback()
        raise NotFoundError(INVALID_LINK)
    person = Person(
        subject=str(data["subject"]),
        display_name=str(data["display_name"]),
        email=invitation.email,
        created_at=now,
    )
    db.session.add(person)
    try:
        db.session.flush()
        key = SecurityKey(
            person_id=person.id,
            credential_id=verified.credential_id,
            public_key=verified.public_key,
            sign_count=verified.sign_count,
            aaguid=verdict.aaguid,
            model_name=verdict.model_name,
            transports=verified.transports,
            backup_eligible=verified.backup_eligible,
            name=str(data.get("key_name") or ceremonies.DEFAULT_KEY_NAME),
            created_at=now,
        )
        db.session.add(key)
        operator = Operator(
            person_id=person.id, status=OperatorStatus.ACTIVE, created_by=invitation.created_by
        )
        db.session.add(operator)
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise in_use from None
    db.session.execute(
        update(OperatorInvitation)
        .where(OperatorInvitation.id == invitation.id)
        .values(used_by_person_id=person.id)
        .execution_options(synchronize_session=False)
    )
    actor = f"person:{person.subject}"
    record(
        "webauthn:key:register",
        actor=actor,
        subject=f"key:{key.id}",
        origin=origin,
        details={"aaguid": key.aaguid, "model_name": key.model_name, "fmt": verified.fmt},
    )
    record(
        "admin:operator:create",
        actor=invitation.created_by,
        subject=f"operator:{operator.id}",
        origin=origin,
        details={"person": person.subject, "operator_invitation_id": invitation.id},
    )
    db.session.commit()
    session, secret = start_session(
        person=person,
        security_key_id=key.id,
        acr=ceremonies.ACR_HARDWARE_KEY,
        amr=list(ceremonies.AMR_HARDWARE_KEY),
        origin=origin,
    )
    return ceremonies.SignedIn(person, key, session, secret)


# --- step-up ----------------------------------------------------------------------------------


def _stepup_scope(session: LoginSession) -> str:
    return f"{STEPUP}:{session.sid}"


def begin_stepup(*, session: LoginSession, binding: str) -> dict[str, Any]:
    """Request options for a step-up in ``session``: the challenge is bound to the session
    (and the browser); only the session's person's keys are offered."""
    allowed = ceremonies.keys_of(session.person_id)
    challenge = ceremonies.issue_challenge(
        ceremony=ceremonies.LOGIN,
        binding=binding,
        scope=_stepup_scope(session),
        data={"allow": [wa.b64url_encode(k.credential_id) for k in allowed]},
    )
    return wa.authentication_options(
        rp_id=ceremonies.rp_id(),
        challenge=challenge,
        allow_credentials=[(k.credential_id, list(k.transports or [])) for k in allowed],
        timeout_ms=ceremonies.timeout_ms_setting(),
    )


def finish_stepup(
    *, session: LoginSession, credential: object, binding: str, origin: Origin | None = None
) -> FreshAssertion:
    """Verify a step-up assertion (every check of a sign-in, through ``finish_login``) and
    record it as a fresh assertion of ``session``. The key must be the session's person's.
    Returns the record (committed). Raises ``WebAuthnError`` (or ``RateLimitedError``)."""
    done = ceremonies.finish_login(
        credential=credential, binding=binding, scope=_stepup_scope(session), origin=origin
    )
    # finish_login starts a session of its own: the step-up keeps the one it confirms.
    end_session(done.session, reason=STEPUP, actor=f"person:{done.person.subject}", origin=origin)
    if done.person.id != session.person_id:
        raise wa.WebAuthnError("This security key belongs to another account.", reason="stepup")
    fresh = FreshAssertion(session_id=session.id, security_key_id=done.key.id)
    db.session.add(fresh)
    record(
        "authn:stepup:success",
        actor=f"person:{done.person.subject}",
        subject=f"sid:{session.sid}",
        origin=origin,
        details={"key": done.key.id},
    )
    db.session.commit()
    return fresh


def last_assertion_at(session: LoginSession) -> dt.datetime | None:
    """When the session's person last proved presence with a key in this session."""
    latest = db.session.scalar(
        select(FreshAssertion.asserted_at)
        .where(FreshAssertion.session_id == session.id)
        .order_by(FreshAssertion.asserted_at.desc())
        .limit(1)
    )
    candidates = [t for t in (latest, session.auth_time if session.security_key_id else None) if t]
    return max(candidates) if candidates else None


def require_fresh_assertion(
    session: LoginSession | None, max_age: int = FRESH_ASSERTION_MAX_AGE
) -> None:
    """Raise ``StepUpRequired`` unless ``session`` saw a hardware-key assertion (its sign-in
    or a step-up) within ``max_age`` seconds."""
    if session is None:
        raise StepUpRequired()
    at = last_assertion_at(session)
    if at is None or utcnow() - at > dt.timedelta(seconds=max_age):
        raise StepUpRequired()


# --- four eyes on signing keys ----------------------------------------------------------------


def list_key_change_requests(*, limit: int = 50) -> list[KeyChangeRequest]:
    """The latest key change requests, newest first."""
    return list(
        db.session.scalars(
            select(KeyChangeRequest).order_by(KeyChangeRequest.id.desc()).limit(limit)
        )
    )


def request_key_change(
    *,
    operator: Operator,
    session: LoginSession,
    action: str,
    alg: str | None = None,
    kid: str | None = None,
    origin: Origin | None = None,
) -> KeyChangeRequest:
    """Ask for a rotation (``alg``; None = every algorithm) or the retirement of ``kid``; a
    second operator must approve it. Needs a fresh assertion. Returns the request (committed).
    Raises ``StepUpRequired``, ``ValidationError``, ``NotFoundError``."""
    require_fresh_assertion(session)
    if action == "rotate":
        if alg is not None and alg not in keys.SUPPORTED_ALGS:
            raise ValidationError(f"unsupported algorithm {alg!r}")
        kid = None
    elif action == "retire":
        known = {k.kid: k for k in keys.list_keys()}
        if not isinstance(kid, str) or kid not in known:
            raise NotFoundError("no such signing key")
        if known[kid].state in ("retired", "removed"):
            raise ConflictError(f"key {kid} is already {known[kid].state}")
        alg = known[kid].alg
    else:
        raise ValidationError("action: rotate or retire")
    now = utcnow()
    change = KeyChangeRequest(
        action=action,
        alg=alg,
        kid=kid,
        status=ApprovalStatus.PENDING,
        requested_by_id=operator.id,
        requested_at=now,
        expires_at=now + dt.timedelta(seconds=KEY_CHANGE_TTL),
    )
    db.session.add(change)
    db.session.flush()
    record(
        "admin:key-change:request",
        actor=actor_of(operator),
        subject=f"key-change:{change.id}",
        origin=origin,
        details={"action": action, "alg": alg, "kid": kid},
    )
    db.session.commit()
    return change


def _pending(request_id: int) -> KeyChangeRequest:
    change = db.session.get(KeyChangeRequest, request_id)
    if change is None:
        raise NotFoundError("no such request")
    if change.status is not ApprovalStatus.PENDING or change.expires_at <= utcnow():
        raise ConflictError("This request is no longer pending.")
    return change


def approve_key_change(
    *, operator: Operator, session: LoginSession, request_id: int, origin: Origin | None = None
) -> KeyChangeRequest:
    """Approve another operator's request and run it through ``idp.keys.services``. Needs a
    fresh assertion; the requester cannot approve their own request. Returns the request
    (committed, ``done`` or ``failed`` with the reason). Raises ``StepUpRequired``,
    ``ForbiddenError``, ``NotFoundError``, ``ConflictError``."""
    require_fresh_assertion(session)
    change = _pending(request_id)
    if change.requested_by_id == operator.id or change.requested_by.person_id == operator.person_id:
        raise ForbiddenError("A second operator must approve this request.")
    claimed = db.session.execute(
        update(KeyChangeRequest)
        .where(KeyChangeRequest.id == change.id, KeyChangeRequest.status == ApprovalStatus.PENDING)
        .values(status=ApprovalStatus.DONE, decided_by_id=operator.id, decided_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        db.session.rollback()
        raise ConflictError("This request is no longer pending.")
    actor = actor_of(operator)
    record(
        "admin:key-change:approve",
        actor=actor,
        subject=f"key-change:{change.id}",
        origin=origin,
        details={"action": change.action, "alg": change.alg, "kid": change.kid},
    )
    db.session.commit()
    try:
        if change.action == "rotate":
            created = keys.rotate(change.alg, actor=actor)
            outcome = "new keys: " + ", ".join(k.kid for k in created)
        else:
            keys.retire(str(change.kid), actor=actor)
            outcome = f"retired {change.kid}"
    except IdpError as exc:
        db.session.rollback()
        change = db.session.get(KeyChangeRequest, request_id) or change
        change.status = ApprovalStatus.FAILED
        change.outcome = exc.message[:500]
        record(
            "admin:key-change:fail",
            actor=actor,
            subject=f"key-change:{change.id}",
            origin=origin,
            details={"reason": exc.message},
        )
        db.session.commit()
        return change
    change = db.session.get(KeyChangeRequest, request_id) or change
    change.outcome = outcome[:500]
    db.session.commit()
    return change


def cancel_key_change(
    *, operator: Operator, request_id: int, origin: Origin | None = None
) -> KeyChangeRequest:
    """Withdraw or refuse a pending request (any operator). Committed."""
    change = _pending(request_id)
    change.status = ApprovalStatus.CANCELLED
    change.decided_by_id = operator.id
    change.decided_at = utcnow()
    record(
        "admin:key-change:cancel",
        actor=actor_of(operator),
        subject=f"key-change:{change.id}",
        origin=origin,
    )
    db.session.commit()
    return change
