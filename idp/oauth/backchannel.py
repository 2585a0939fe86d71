"""OpenID Connect Back-Channel Logout 1.0: telling relying parties that a session ended.

When a sign-in session ends (``idp.authn.services.end_session`` calls ``queue_for_session``),
every client that holds a grant of that session and registered a ``backchannel_logout_uri`` is
owed a Logout Token (§2.4): a JWT typed ``logout+jwt``, signed with the client's ID-token
algorithm, carrying ``iss``, ``aud``, ``iat``, ``exp``, ``jti``, ``sub``, ``sid`` and the
back-channel logout event, and never a ``nonce``. It is POSTed form-encoded (§2.5) to the URI;
200 or 204 means delivered (§2.8), redirects are not followed.

The person's logout never waits for a relying party: a ``BackchannelDelivery`` record is
committed with the logout, and sending happens afterwards, on a small thread pool per process
and, for retries (with backoff), from ``deliver_due`` (``idp logout deliver``, run from cron).
The records live in the database, so retries survive restarts and any worker may send them;
a record is claimed by a compare-and-set on ``attempts`` so two workers never send the same
attempt.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from flask import Flask, current_app
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from idp.audit.services import record
from idp.authn.models import LoginSession
from idp.clients.models import Client
from idp.db import new_public_id, utcnow
from idp.extensions import db
from idp.keys import jws
from idp.oauth.claims import subject_for
from idp.oauth.models import BackchannelDelivery, Grant
from idp.orgs.models import Person

log = logging.getLogger("idp.oauth.backchannel")

LOGOUT_TOKEN_TYP = "logout+jwt"  # noqa: S105 - a media type
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_PENDING_KEY = "idp.backchannel.pending"
_LISTENING_KEY = "idp.backchannel.listening"


def _cfg(name: str) -> Any:
    return current_app.config["IDP"][name]


# --- queueing ---------------------------------------------------------------------------------


def queue_for_session(session: LoginSession) -> list[int]:
    """Owe a logout notice to each active client of ``session`` with a back-channel URI.

    Adds one ``BackchannelDelivery`` per client (at most one per client and session, so ending
    a session twice sends nothing twice) to the current transaction and flushes; the caller
    commits. Once that commit happens, this process starts sending them off the request.
    Returns the new records' ids."""
    client_ids = select(Grant.client_id).where(Grant.session_id == session.id).distinct()
    clients = db.session.scalars(
        select(Client).where(
            Client.id.in_(client_ids),
            Client.backchannel_logout_uri.is_not(None),
            Client.backchannel_logout_uri != "",
        )
    ).all()
    if not clients:
        return []
    already = set(
        db.session.scalars(
            select(BackchannelDelivery.client_id).where(BackchannelDelivery.sid == session.sid)
        ).all()
    )
    person = db.session.get(Person, session.person_id)
    if person is None:
        return []
    now = utcnow()
    rows = [
        BackchannelDelivery(
            client_id=client.id,
            sid=session.sid,
            sub=subject_for(client, person),
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for client in clients
        if client.is_active and client.id not in already
    ]
    if not rows:
        return []
    db.session.add_all(rows)
    db.session.flush()
    ids = [row.id for row in rows]
    _send_after_commit(db.session(), ids)
    return ids


def _send_after_commit(sess: Session, ids: list[int]) -> None:
    """Hand ``ids`` to the thread pool once the transaction that created them commits."""
    sess.info.setdefault(_PENDING_KEY, []).extend(ids)
    if sess.info.get(_LISTENING_KEY):
        return
    sess.info[_LISTENING_KEY] = True
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    @event.listens_for(sess, "after_commit")
    def _committed(committed: Session) -> None:
        pending = committed.info.pop(_PENDING_KEY, [])
        if pending:
            start_sending(app, pending)

    @event.listens_for(sess, "after_rollback")
    def _rolled_back(rolled_back: Session) -> None:
        rolled_back.info.pop(_PENDING_KEY, None)


# --- the thread pool --------------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None


def _executor(threads: int) -> ThreadPoolExecutor:
    """This process's pool, made on first use (after any fork, so gunicorn workers each have
    their own)."""
    import os

    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="idp-backchannel")
            _pool_pid = os.getpid()
        return _pool


def start_sending(app: Flask, ids: list[int]) -> None:
    """Send the first attempt of these deliveries on this process's pool (returns at once).

    With ``BACKCHANNEL_LOGOUT_THREADS`` = 0, nothing is sent here: ``idp logout deliver``
    sends them."""
    threads = int(app.config["IDP"]["BACKCHANNEL_LOGOUT_THREADS"])
    if threads <= 0:
        return
    for delivery_id in ids:
        _executor(threads).submit(_deliver_in_background, app, delivery_id)


def _deliver_in_background(app: Flask, delivery_id: int) -> None:
    with app.app_context():
        try:
            deliver(delivery_id)
        except Exception:
            # The record stays due; `idp logout deliver` retries it.
            log.exception("back-channel logout delivery %s could not be attempted", delivery_id)
            db.session.rollback()
        finally:
            db.session.remove()


# --- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt did: ``delivered``, ``retry`` (failed, will retry),
    ``gave_up`` (failed for the last time, or nothing to send to any more)."""

    delivery_id: int
    client_id: str
    outcome: str
    error: str | None = None


def logout_token(client: Client, *, sub: str, sid: str) -> str:
    """A Logout Token (Back-Channel Logout §2.4) for ``client``, fresh ``jti`` and ``iat``."""
    now = int(time.time())
    claims = {
        "iss": _cfg("ISSUER"),
        "aud": client.client_id,
        "iat": now,
        "exp": now + int(_cfg("BACKCHANNEL_LOGOUT_TOKEN_TTL")),
        "jti": new_public_id(),
        "sub": sub,
        "sid": sid,
        "events": {LOGOUT_EVENT: {}},
    }
    return jws.sign(claims, alg=client.id_token_alg or "RS256", typ=LOGOUT_TOKEN_TYP)


def retry_delay(attempt: int) -> dt.timedelta:
    """How long after failed attempt number ``attempt`` (1-based) the next one is due.

    Never shorter than two request timeouts, so an attempt still in flight is not claimed
    again."""
    base = int(_cfg("BACKCHANNEL_LOGOUT_RETRY_DELAY"))
    floor = 2 * int(_cfg("BACKCHANNEL_LOGOUT_TIMEOUT")) + 1
    return dt.timedelta(seconds=max(base * 4 ** (attempt - 1), floor))


def _claim(delivery_id: int) -> tuple[BackchannelDelivery, int] | None:
    """Take one due attempt of a delivery (committed): the record, and the attempt number.

    ``next_attempt_at`` moves to when a retry would be due, so if this process dies mid-send
    the record comes due again by itself. None when it is not due or another worker won."""
    now = utcnow()
    row = db.session.get(BackchannelDelivery, delivery_id)
    if (
        row is None
        or row.delivered_at is not None
        or row.gave_up_at is not None
        or row.next_attempt_at is None
        or row.next_attempt_at > now
    ):
        db.session.rollback()
        return None
    attempt = row.attempts + 1
    result = db.session.execute(
        update(BackchannelDelivery)
        .where(
            BackchannelDelivery.id == delivery_id,
            BackchannelDelivery.attempts == row.attempts,
            BackchannelDelivery.delivered_at.is_(None),
            BackchannelDelivery.gave_up_at.is_(None),
        )
        .values(attempts=attempt, next_attempt_at=now + retry_delay(attempt))
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        db.session.rollback()
        return None
    db.session.commit()
    return row, attempt


def _post(uri: str, token: str) -> str | None:
    """POST the token; None when the RP answered 200 or 204, else a short reason (no token)."""
    timeout = int(_cfg("BACKCHANNEL_LOGOUT_TIMEOUT"))
    try:
        with requests.post(
            uri,
            data={"logout_token": token},
            timeout=(timeout, timeout),
            allow_redirects=False,
            stream=True,
        ) as response:
            if response.status_code in (200, 204):
                return None
            return f"HTTP {response.status_code}"
    except requests.RequestException as exc:
        return type(exc).__name__


def deliver(delivery_id: int) -> Attempt | None:
    """Make one attempt at a due delivery (committed). None if it was not due or another
    worker is sending it."""
    claimed = _claim(delivery_id)
    if claimed is None:
        return None
    row, attempt = claimed
    client = db.session.get(Client, row.client_id)
    if client is None:
        return _finish(row, client, attempt, "client removed", last=True)
    if not client.is_active:
        return _finish(row, client, attempt, "client disabled", last=True)
    if not client.backchannel_logout_uri:
        return _finish(row, client, attempt, "no backchannel_logout_uri", last=True)
    token = logout_token(client, sub=row.sub, sid=row.sid)
    uri = client.backchannel_logout_uri
    # No transaction stays open while the relying party takes its time.
    db.session.commit()
    error = _post(uri, token)
    last = attempt >= int(_cfg("BACKCHANNEL_LOGOUT_ATTEMPTS"))
    return _finish(row, client, attempt, error, last=last)


def _finish(
    row: BackchannelDelivery, client: Client | None, attempt: int, error: str | None, *, last: bool
) -> Attempt:
    now = utcnow()
    values: dict[str, Any] = {"last_error": error}
    if error is None:
        outcome = "delivered"
        values.update(delivered_at=now, next_attempt_at=None)
    elif last:
        outcome = "gave_up"
        values.update(gave_up_at=now, next_attempt_at=None)
    else:
        outcome = "retry"
    db.session.execute(
        update(BackchannelDelivery)
        .where(BackchannelDelivery.id == row.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    client_id = client.client_id if client is not None else f"#{row.client_id}"
    if error is not None:
        log.warning(
            "back-channel logout to client %s failed (attempt %d, %s): %s",
            client_id,
            attempt,
            "giving up" if last else "will retry",
            error,
        )
    details: dict[str, Any] = {"client_id": client_id, "outcome": outcome, "attempt": attempt}
    if error is not None:
        details["error"] = error
    record("oauth:logout:backchannel", actor="system", subject=f"sid:{row.sid}", details=details)
    db.session.commit()
    return Attempt(row.id, client_id, outcome, error)


def deliver_due(*, limit: int = 500) -> list[Attempt]:
    """Attempt every delivery that is due now, oldest first, at most ``limit`` (committed).

    What ``idp logout deliver`` runs; safe to run from several machines at once."""
    ids = db.session.scalars(
        select(BackchannelDelivery.id)
        .where(BackchannelDelivery.next_attempt_at <= utcnow())
        .order_by(BackchannelDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    attempts = []
    for delivery_id in ids:
        done = deliver(delivery_id)
        if done is not None:
            attempts.append(done)
    return attempts
