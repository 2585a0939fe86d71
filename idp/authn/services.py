"""Sign-in sessions: a server-side record per sign-in, the browser holding only a secret.

The WebAuthn ceremonies that start a session live in ``idp.authn.webauthn`` (hardware-key
sign-in); this module knows nothing of how the person proved who they are beyond the
``acr``/``amr`` it is given.
"""

from __future__ import annotations

import datetime as dt

from flask import current_app
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import contains_eager

from idp.audit.services import Origin, record
from idp.authn.models import LoginSession
from idp.db import new_public_id, utcnow
from idp.extensions import commit_keeping_loaded, db
from idp.oauth import backchannel, tokens
from idp.orgs.models import Person
from idp.security import SESSION_PREFIX, digest, new_secret


def start_session(
    *,
    person: Person,
    security_key_id: int | None,
    acr: str,
    amr: list[str],
    origin: Origin | None = None,
    commit: bool = True,
) -> tuple[LoginSession, str]:
    """Create a session for ``person``. Returns ``(session, secret)``; the secret goes in the
    cookie and only its digest is stored. Committed, unless ``commit`` is false: then flushed,
    for the caller to commit with what the sign-in leads to."""
    cfg = current_app.config["IDP"]
    now = utcnow()
    secret = new_secret(SESSION_PREFIX)
    session = LoginSession(
        sid=new_public_id(),
        secret_hash=digest(secret),
        person_id=person.id,
        security_key_id=security_key_id,
        auth_time=now,
        acr=acr,
        amr=list(amr),
        created_at=now,
        last_seen_at=now,
        expires_at=now + dt.timedelta(seconds=int(cfg["SESSION_ABSOLUTE_TTL"])),
    )
    db.session.add(session)
    record(
        "authn:session:start",
        actor=f"person:{person.subject}",
        subject=f"sid:{session.sid}",
        origin=origin,
        details={"acr": acr, "amr": list(amr)},
    )
    if commit:
        # The caller goes on with the session and the person (the authorization it was for).
        commit_keeping_loaded()
    else:
        db.session.flush()
    return session, secret


# One statement for the session and its person, built once (every signed-in page asks).
_SESSION_BY_SECRET = (
    select(LoginSession)
    .join(LoginSession.person)
    .options(contains_eager(LoginSession.person))
    .where(LoginSession.secret_hash == bindparam("secret_hash"))
)


def find_session(secret: str | None) -> LoginSession | None:
    """The live session for a cookie secret, or None (unknown, ended, idle or too old).

    Touches ``last_seen_at`` at most once a minute."""
    if (
        not secret
        or not isinstance(secret, str)
        or not secret.startswith(SESSION_PREFIX)
        or len(secret) > 100
    ):
        return None
    session = db.session.scalars(_SESSION_BY_SECRET, {"secret_hash": digest(secret)}).first()
    if session is None or session.ended_at is not None:
        return None
    now = utcnow()
    idle = dt.timedelta(seconds=int(current_app.config["IDP"]["SESSION_IDLE_TTL"]))
    if session.expires_at <= now or session.last_seen_at + idle <= now:
        return None
    # Loaded with the session, which keeps it for the rest of the request (the identity map
    # alone holds objects weakly, so a later get would read again).
    person = session.person
    if person is None or not person.is_active:
        return None
    if now - session.last_seen_at > dt.timedelta(minutes=1):
        session.last_seen_at = now
        db.session.commit()
    return session


def end_session(
    session: LoginSession, *, reason: str, actor: str, origin: Origin | None = None
) -> None:
    """End a session and revoke the tokens issued under it. Committed."""
    db.session.execute(
        update(LoginSession)
        .where(LoginSession.id == session.id, LoginSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
    tokens.revoke_grants(reason=reason, actor=actor, session_id=session.id)
    # Back-Channel Logout: owed to the session's clients, sent after this commit.
    backchannel.queue_for_session(session)
    record(
        "authn:session:end",
        actor=actor,
        subject=f"sid:{session.sid}",
        origin=origin,
        details={"reason": reason},
    )
    db.session.commit()
