"""Hardware-key enrolment and sign-in: the WebAuthn ceremonies around ``idp.authn.webauthn``.

Here is what py_webauthn leaves to us (SECURITY.md): challenges stored server-side as digests,
single-use, bound to the browser and to the ceremony, expiring in minutes; credential IDs unique
across all people; the user handle matched with the key's person; ``allowCredentials``
enforced; the backup-eligible flag compared with the stored one; the sign counter persisted by
compare-and-set, a regressed counter refused and the key marked as possibly cloned. Attestation
is judged by ``idp.authn.attestation``.

Services take their inputs as arguments: ``binding`` is a secret the view keeps in the
browser's Flask session (so a challenge issued to one browser cannot be answered from
another), ``origin`` where the request came from.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from idp import cache
from idp.audit.services import Origin, record
from idp.authn import attestation
from idp.authn import webauthn as wa
from idp.authn.models import LoginSession, SecurityKey, WebAuthnChallenge
from idp.authn.services import start_session
from idp.db import new_public_id, utcnow
from idp.errors import ConflictError, ValidationError
from idp.extensions import db
from idp.orgs import services as orgs
from idp.orgs.models import Invitation, Person
from idp.security import digest

# Where challenges live in Redis (idp.cache), when it is configured.
CHALLENGES = "webauthn-challenge"
REGISTER = "register"
LOGIN = "login"
# RFC 8176 authentication method references and our acr for a phishing-resistant hardware key.
ACR_HARDWARE_KEY = "phrh"
AMR_HARDWARE_KEY = ["hwk", "mfa"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DEFAULT_KEY_NAME = "Security key"


@dataclass(frozen=True)
class SignedIn:
    """A finished ceremony: who, with which key, and the new session with its cookie secret."""

    person: Person
    key: SecurityKey
    session: LoginSession
    secret: str


# --- settings ----------------------------------------------------------------------------------


def _cfg() -> dict[str, Any]:
    config: dict[str, Any] = current_app.config["IDP"]
    return config


def rp_id() -> str:
    """The WebAuthn RP ID: ``IDP_WEBAUTHN_RP_ID`` or the issuer's host."""
    return str(_cfg().get("WEBAUTHN_RP_ID") or urlsplit(_cfg()["ISSUER"]).hostname or "")


def expected_origin() -> str:
    """The one origin ceremonies may run on: the issuer's."""
    parts = urlsplit(str(_cfg()["ISSUER"]))
    return f"{parts.scheme}://{parts.netloc}"


def challenge_ttl() -> int:
    """Seconds a challenge may be answered (``IDP_WEBAUTHN_CHALLENGE_TTL``)."""
    return int(_cfg().get("WEBAUTHN_CHALLENGE_TTL", 300))


def timeout_ms_setting() -> int:
    """How long the browser waits for the key; the page says what to do when it ends."""
    return int(_cfg().get("WEBAUTHN_TIMEOUT_MS", 120_000))


def new_binding() -> str:
    """A fresh browser-binding secret for a view to keep in the Flask session."""
    return secrets.token_urlsafe(32)


# --- challenges --------------------------------------------------------------------------------


def _binding_hash(ceremony: str, binding: str, scope: str) -> str:
    return digest(f"{ceremony}\x00{binding}\x00{scope}")


def _shared_key(challenge: bytes, binding_hash: str) -> str:
    # The challenge, the ceremony, the browser and the scope must all match to find it.
    return f"{wa.b64url_encode(challenge)}\x00{binding_hash}"


def issue_challenge(*, ceremony: str, binding: str, scope: str, data: dict[str, Any]) -> bytes:
    """A new challenge for ``ceremony``, stored as a digest with ``data``, bound to the browser
    (``binding``) and to ``scope``, expiring after the challenge TTL: in Redis when configured
    (short-lived state), else in the database (committed)."""
    challenge = secrets.token_bytes(32)
    if cache.shared():
        key = _shared_key(challenge, _binding_hash(ceremony, binding, scope))
        cache.keep(CHALLENGES, key, data, ttl=challenge_ttl())
        return challenge
    now = utcnow()
    db.session.add(
        WebAuthnChallenge(
            challenge_hash=digest(wa.b64url_encode(challenge)),
            ceremony=ceremony,
            binding_hash=_binding_hash(ceremony, binding, scope),
            data=data,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=challenge_ttl()),
        )
    )
    db.session.commit()
    return challenge


def claim_challenge(challenge: bytes, *, ceremony: str, binding: str, scope: str) -> dict[str, Any]:
    """Claim the stored challenge for this use (one ``GETDEL`` in Redis, or one conditional
    UPDATE, committed) and return its ``data``: a second use, another browser, another
    ceremony or an expired one is refused (``WebAuthnError``)."""
    if cache.shared():
        key = _shared_key(challenge, _binding_hash(ceremony, binding, scope))
        data = cache.take(CHALLENGES, key)
        return _claimed(data)
    # One statement: claimed only if it is this challenge, for this ceremony and browser,
    # unused and live; what the verify step needs comes back with it.
    now = utcnow()
    data = db.session.scalar(
        update(WebAuthnChallenge)
        .where(
            WebAuthnChallenge.challenge_hash == digest(wa.b64url_encode(challenge)),
            WebAuthnChallenge.ceremony == ceremony,
            WebAuthnChallenge.binding_hash == _binding_hash(ceremony, binding, scope),
            WebAuthnChallenge.expires_at > now,
            WebAuthnChallenge.used_at.is_(None),
        )
        .values(used_at=now)
        .returning(WebAuthnChallenge.data)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return _claimed(data)


def _claimed(data: dict[str, Any] | None) -> dict[str, Any]:
    if data is None:
        raise wa.WebAuthnError(
            "This sign-in attempt has expired or was already used. Try again.",
            reason="challenge",
        )
    return dict(data)


def purge_expired_challenges() -> int:
    """Delete challenges past their expiry (a periodic job). Returns how many. Committed."""
    result = db.session.execute(
        delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at <= utcnow())
    )
    db.session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def _descriptor(key: SecurityKey) -> tuple[bytes, list[str]]:
    return key.credential_id, list(key.transports or [])


def _live_keys(person_ids: list[int]) -> list[SecurityKey]:
    if not person_ids:
        return []
    return list(
        db.session.scalars(
            select(SecurityKey)
            .where(SecurityKey.person_id.in_(person_ids), SecurityKey.revoked_at.is_(None))
            .order_by(SecurityKey.id)
        )
    )


def user_handle(person: Person) -> bytes:
    """The WebAuthn user handle of ``person``: their opaque subject identifier (random, no
    personal data, at most 64 bytes)."""
    return person.subject.encode("ascii")


# --- enrolment ---------------------------------------------------------------------------------


def clean_name(value: object, *, field: str, limit: int, required: bool) -> str | None:
    """A person's or key's name, trimmed; ``ValidationError`` if missing (when ``required``),
    too long or holding control characters."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValidationError(f"{field}: a name is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field}: a name is required")
    value = value.strip()
    if len(value) > limit:
        raise ValidationError(f"{field}: at most {limit} characters")
    if _CONTROL.search(value):
        raise ValidationError(f"{field}: control characters are not allowed")
    return value


def begin_enrolment(
    *,
    token: str,
    binding: str,
    person: Person | None,
    display_name: object = None,
    key_name: object = None,
) -> dict[str, Any]:
    """Registration options for the invitation ``token``: for ``person`` (signed in, adding a
    key and the membership) or for a new person named ``display_name``.

    Returns PublicKeyCredentialCreationOptions (JSON form). Raises ``NotFoundError`` for an
    invitation that is unknown, used or expired, ``ValidationError`` for a bad name."""
    invitation = orgs.find_valid_invitation(token)
    name = clean_name(key_name, field="key_name", limit=100, required=False) or DEFAULT_KEY_NAME
    if person is not None:
        subject, shown = person.subject, person.display_name
        exclude = [_descriptor(k) for k in _live_keys([person.id])]
    else:
        shown = str(clean_name(display_name, field="display_name", limit=200, required=True))
        subject, exclude = new_public_id(), []
    data = {
        "invitation_id": invitation.id,
        "person_id": person.id if person is not None else None,
        "subject": subject,
        "display_name": shown,
        "key_name": name,
    }
    challenge = issue_challenge(
        ceremony=REGISTER, binding=binding, scope=f"invitation:{invitation.id}", data=data
    )
    return wa.registration_options(
        rp_id=rp_id(),
        rp_name=str(_cfg().get("WEBAUTHN_RP_NAME") or "Corp ID"),
        user_id=subject.encode("ascii"),
        user_name=invitation.email,
        user_display_name=shown,
        challenge=challenge,
        exclude_credentials=exclude,
        timeout_ms=timeout_ms_setting(),
    )


def finish_enrolment(
    *, token: str, credential: object, binding: str, origin: Origin | None = None
) -> SignedIn:
    """Verify the registration response and, in one transaction, create the person (if new),
    store the key and consume the invitation; then start a session.

    Nothing is written when the key is refused or the invitation was used meanwhile, except
    the audit event of a refused key (``webauthn:key:refused``, committed on its own). Raises
    ``WebAuthnError`` (response refused), ``attestation.AttestationRefused`` (policy),
    ``NotFoundError``/``ConflictError`` (invitation no longer valid)."""
    invitation = orgs.find_valid_invitation(token)
    seen: dict[str, Any] = {"invitation_id": invitation.id, "company_id": invitation.company_id}
    try:
        return _finish_enrolment(invitation, credential, binding, origin, seen)
    except (wa.WebAuthnError, attestation.AttestationRefused) as exc:
        _enrolment_refused(exc, seen, origin)
        raise


def _enrolment_refused(
    exc: wa.WebAuthnError | attestation.AttestationRefused,
    seen: dict[str, Any],
    origin: Origin | None,
) -> None:
    """Audit a refused key (the enrolment's own transaction is rolled back): the reason and
    what the key claimed (AAGUID, attestation format), nothing secret."""
    db.session.rollback()
    facts: wa.RegistrationFacts | None = seen.get("facts")
    person_subject = seen.get("person_subject")
    invitation = f"invitation:{seen['invitation_id']}"
    record(
        "webauthn:key:refused",
        actor=f"person:{person_subject}" if person_subject else invitation,
        subject=invitation,
        origin=origin,
        company_id=seen["company_id"],
        details={
            "reason": exc.reason,
            "aaguid": facts.aaguid if facts else None,
            "fmt": facts.fmt if facts else None,
            "backup_eligible": facts.backup_eligible if facts else None,
            "invitation_id": seen["invitation_id"],
        },
    )
    db.session.commit()


def _finish_enrolment(
    invitation: Invitation,
    credential: object,
    binding: str,
    origin: Origin | None,
    seen: dict[str, Any],
) -> SignedIn:
    cred, facts = wa.read_registration(credential)
    seen["facts"] = facts
    data = claim_challenge(
        facts.challenge, ceremony=REGISTER, binding=binding, scope=f"invitation:{invitation.id}"
    )
    if data.get("person_id") is not None:
        seen["person_subject"] = data.get("subject")
    if data.get("invitation_id") != invitation.id:
        raise wa.WebAuthnError("This enrolment attempt is not for this invitation.")
    if db.session.scalar(
        select(SecurityKey.id).where(SecurityKey.credential_id == facts.credential_id)
    ):
        raise wa.WebAuthnError(
            "This security key is already registered.", reason="credential_in_use"
        )
    policy = attestation.current_policy()
    roots = policy.roots_for(fmt=facts.fmt, aaguid=facts.aaguid)
    verified = wa.verify_registration(
        credential=cred,
        challenge=facts.challenge,
        rp_id=rp_id(),
        origin=expected_origin(),
        fmt=facts.fmt,
        root_certs=roots,
    )
    verdict = policy.enforce(
        fmt=verified.fmt,
        aaguid=verified.aaguid,
        has_trust_path=facts.has_trust_path,
        backup_eligible=verified.backup_eligible,
    )
    person = _enrolling_person(data, invitation)
    try:
        key = SecurityKey(
            person_id=person.id,
            credential_id=verified.credential_id,
            public_key=verified.public_key,
            sign_count=verified.sign_count,
            aaguid=verdict.aaguid,
            model_name=verdict.model_name,
            transports=verified.transports,
            backup_eligible=verified.backup_eligible,
            name=str(data.get("key_name") or DEFAULT_KEY_NAME),
            created_at=utcnow(),
        )
        db.session.add(key)
        db.session.flush()
    except IntegrityError:  # the same credential registered concurrently
        db.session.rollback()
        raise wa.WebAuthnError(
            "This security key is already registered.", reason="credential_in_use"
        ) from None
    record(
        "webauthn:key:register",
        actor=f"person:{person.subject}",
        subject=f"key:{key.id}",
        origin=origin,
        company_id=invitation.company_id,
        details={
            "aaguid": key.aaguid,
            "model_name": key.model_name,
            "fmt": verified.fmt,
            "backup_eligible": key.backup_eligible,
            "invitation_id": invitation.id,
        },
    )
    try:
        orgs.consume_invitation(invitation, person)  # commits everything above, or nothing
    except ConflictError:
        db.session.rollback()
        raise
    session, secret = start_session(
        person=person,
        security_key_id=key.id,
        acr=ACR_HARDWARE_KEY,
        amr=list(AMR_HARDWARE_KEY),
        origin=origin,
    )
    return SignedIn(person, key, session, secret)


def _enrolling_person(data: dict[str, Any], invitation: Invitation) -> Person:
    if data.get("person_id") is not None:
        person = db.session.get(Person, int(data["person_id"]))
        if person is None or not person.is_active:
            db.session.rollback()
            raise wa.WebAuthnError("This account cannot enrol a key.", reason="inactive")
        return person
    person = Person(
        subject=str(data["subject"]),
        display_name=str(data["display_name"]),
        email=invitation.email,
        created_at=utcnow(),
    )
    db.session.add(person)
    db.session.flush()
    return person


# --- sign-in -----------------------------------------------------------------------------------


def _hinted_people(login_hint: str | None) -> list[int]:
    if not login_hint:
        return []
    try:
        email = orgs.validate_email(login_hint)
    except ValidationError:
        return []
    rows = db.session.scalars(select(Person).where(Person.email == email))
    return [p.id for p in rows if p.is_active]


def begin_login(*, binding: str, scope: str, login_hint: str | None = None) -> dict[str, Any]:
    """Request options for signing in (``scope``: the pending authorization the sign-in is
    for). No ``allowCredentials`` (usernameless) unless ``login_hint`` names a known person by
    email; then their keys are listed and only those are accepted.

    Returns PublicKeyCredentialRequestOptions (JSON form)."""
    keys = _live_keys(_hinted_people(login_hint))
    allowed = [wa.b64url_encode(k.credential_id) for k in keys]
    challenge = issue_challenge(
        ceremony=LOGIN, binding=binding, scope=scope, data={"allow": allowed}
    )
    return wa.authentication_options(
        rp_id=rp_id(),
        challenge=challenge,
        allow_credentials=[_descriptor(k) for k in keys],
        timeout_ms=timeout_ms_setting(),
    )


def finish_login(
    *,
    credential: object,
    binding: str,
    scope: str,
    origin: Origin | None = None,
    commit: bool = True,
) -> SignedIn:
    """Verify an assertion (WebAuthn L3 §7.2 and what py_webauthn leaves to us) and start a
    session with ``acr="phrh"``, ``amr=["hwk", "mfa"]``: the new sign count, the audit events
    and the session committed together, or (``commit`` false) flushed for the caller to
    commit with what the sign-in leads to (the challenge is spent either way).

    Every refusal is audited (``authn:login:failure`` with its reason) and counted against the
    source and the person; past the limits ``RateLimitedError`` (429) is raised instead.
    Raises ``WebAuthnError``."""
    person_id: list[int | None] = [None]
    try:
        return _finish_login(credential, binding, scope, origin, person_id, commit)
    except wa.WebAuthnError as exc:
        _login_failed(exc, person_id[0], origin)
        raise


# The presented key and its person, one statement built once (every sign-in runs it).
_KEY_AND_PERSON = (
    select(SecurityKey, Person)
    .join(Person, Person.id == SecurityKey.person_id)
    .where(SecurityKey.credential_id == bindparam("credential_id"))
)


def _finish_login(
    credential: object,
    binding: str,
    scope: str,
    origin: Origin | None,
    person_id: list[int | None],
    commit: bool,
) -> SignedIn:
    cred, facts = wa.read_assertion(credential)
    data = claim_challenge(facts.challenge, ceremony=LOGIN, binding=binding, scope=scope)
    found = db.session.execute(_KEY_AND_PERSON, {"credential_id": facts.credential_id}).first()
    unknown = wa.WebAuthnError(
        "This security key is not registered with Corp ID.", reason="unknown_credential"
    )
    if found is None:
        raise unknown
    key, person = found
    person_id[0] = key.person_id
    allowed = list(data.get("allow") or [])
    if allowed and wa.b64url_encode(key.credential_id) not in allowed:
        raise wa.WebAuthnError(
            "This security key is not one of the keys of the account named.",
            reason="not_allowed",
        )
    if key.revoked_at is not None:
        raise wa.WebAuthnError("This security key has been revoked.", reason="revoked")
    if not person.is_active:
        raise wa.WebAuthnError("This account is suspended.", reason="inactive")
    # §7.2 step 6: a usernameless sign-in must name the account, and it must own the key.
    if facts.user_handle is None and not allowed:
        raise wa.WebAuthnError(
            "The security key did not say whose key it is.", reason="user_handle"
        )
    if facts.user_handle is not None and not secrets.compare_digest(
        facts.user_handle, user_handle(person)
    ):
        raise wa.WebAuthnError("The security key belongs to another account.", reason="user_handle")
    verified = wa.verify_assertion(
        credential=cred,
        challenge=facts.challenge,
        rp_id=rp_id(),
        origin=expected_origin(),
        public_key=key.public_key,
    )
    if verified.backup_eligible != key.backup_eligible:
        raise wa.WebAuthnError(
            "The security key reports a different kind of key than was registered.",
            reason="backup_eligible",
        )
    stored, new = key.sign_count, verified.sign_count
    if (new != 0 or stored != 0) and new <= stored:
        _mark_cloned(key, person, stored=stored, presented=new, origin=origin)
        raise wa.WebAuthnError(
            "This security key may have been copied and has been flagged. Contact your "
            "company's administrator.",
            reason="counter_regressed",
        )
    now = utcnow()
    swapped = db.session.execute(
        update(SecurityKey)
        .where(SecurityKey.id == key.id, SecurityKey.sign_count == stored)
        .values(sign_count=new, last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(swapped, "rowcount", 0) != 1:  # another assertion with this counter won
        db.session.rollback()
        raise wa.WebAuthnError(
            "This security key was used twice at once. Try again.", reason="counter_race"
        )
    record(
        "authn:login:success",
        actor=f"person:{person.subject}",
        subject=f"key:{key.id}",
        origin=origin,
        details={"sign_count": new},
    )
    # The counter, its audit event and the new session are committed together by
    # start_session or the caller (nothing read in between goes stale).
    session, secret = start_session(
        person=person,
        security_key_id=key.id,
        acr=ACR_HARDWARE_KEY,
        amr=list(AMR_HARDWARE_KEY),
        origin=origin,
        commit=commit,
    )
    return SignedIn(person, key, session, secret)


def _mark_cloned(
    key: SecurityKey, person: Person, *, stored: int, presented: int, origin: Origin | None
) -> None:
    now = utcnow()
    db.session.execute(
        update(SecurityKey)
        .where(SecurityKey.id == key.id, SecurityKey.cloned_suspected_at.is_(None))
        .values(cloned_suspected_at=now)
        .execution_options(synchronize_session=False)
    )
    record(
        "webauthn:key:cloned",
        actor=f"person:{person.subject}",
        subject=f"key:{key.id}",
        origin=origin,
        details={"stored_sign_count": stored, "presented_sign_count": presented},
    )
    db.session.commit()


def _login_failed(exc: wa.WebAuthnError, person_id: int | None, origin: Origin | None) -> None:
    db.session.rollback()
    subject = None
    if person_id is not None:
        person = db.session.get(Person, person_id)
        subject = f"person:{person.subject}" if person is not None else None
    record(
        "authn:login:failure",
        actor=subject or "anonymous",
        subject=subject,
        origin=origin,
        details={"reason": exc.reason},
    )
    db.session.commit()
    source = (origin.ip_address if origin else None) or "-"
    cache.hit(
        "login-failure-source",
        source,
        limit=int(_cfg().get("LOGIN_FAILURES_PER_SOURCE_PER_MINUTE", 30)),
    )
    if person_id is not None:
        cache.hit(
            "login-failure-person",
            str(person_id),
            limit=int(_cfg().get("LOGIN_FAILURES_PER_PERSON_PER_MINUTE", 10)),
        )


def keys_of(person_id: int) -> list[SecurityKey]:
    """A person's security keys that are not revoked, oldest first."""
    return _live_keys([person_id])
