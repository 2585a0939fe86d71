"""Back-Channel Logout 1.0: when a session ends, each of its relying parties that registered a
backchannel_logout_uri receives a signed Logout Token; delivery never blocks the person's
logout and failures are retried later (``idp logout deliver``).

A tiny HTTP receiver in the test plays the relying parties: it records every POST and answers
with the statuses it is told to (500 then 200 for the retry test)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    redeem,
    verify_jwt,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass
class Received:
    path: str
    content_type: str
    form: dict[str, list[str]]


@dataclass
class Receiver:
    """Relying parties' back-channel endpoints on 127.0.0.1: ``url(path)``; ``answers[path]``
    is the list of statuses to answer in turn (200 once it runs out); ``delay`` seconds before
    answering."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)
    delay: float = 0.0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, self.received
        return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            me = state["r"]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            if me.delay:
                time.sleep(me.delay)
            me.received.append(Received(self.path, self.headers.get("Content-Type", ""),
                                        parse_qs(body)))
            queue = me.answers.get(self.path) or []
            status = queue.pop(0) if queue else 200
            self.send_response(status)
            if status in (301, 302, 303, 307, 308):
                self.send_header("Location", "/elsewhere")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield state["r"]
    server.shutdown()
    server.server_close()
    thread.join(5)


def sign_in_to(live: Live, b: Browser, rp: RP, get_code: Callable[..., CodeResult]
               ) -> dict[str, Any]:
    response = redeem(live, get_code(b, rp))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def log_out(live: Live, b: Browser, id_token: str) -> float:
    """RP-initiated logout with a hint for this session; returns how long it took."""
    started = time.monotonic()
    response = b.request("GET", live.url("/logout") + "?" + urlencode({"id_token_hint": id_token}))
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text[:300]
    assert "You are signed out" in response.text
    return elapsed


def deliveries(live: Live) -> list[Any]:
    from sqlalchemy import select

    from idp.extensions import db
    from idp.oauth.models import BackchannelDelivery

    db.session.rollback()
    return list(db.session.scalars(select(BackchannelDelivery).order_by(BackchannelDelivery.id)))


def wait_settled(live: Live, count: int, timeout: float = 15.0) -> list[Any]:
    """Wait until ``count`` records exist and none has an attempt in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = deliveries(live)
        if len(rows) >= count and all(r.attempts > 0 and (r.delivered_at or r.last_error
                                                          or r.gave_up_at) for r in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"deliveries did not settle: {deliveries(live)}")


def make_due(live: Live) -> None:
    from sqlalchemy import update

    from idp.db import utcnow
    from idp.extensions import db
    from idp.oauth.models import BackchannelDelivery

    db.session.execute(update(BackchannelDelivery)
                       .where(BackchannelDelivery.next_attempt_at.is_not(None))
                       .values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))
    db.session.commit()


def run_cli(live: Live, *args: str) -> Any:
    from idp.cli import cli

    result = live.app.test_cli_runner().invoke(cli, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout) if "--json" in args else result.stdout


def audit(live: Live, tag: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from idp.audit.models import AuditEvent
    from idp.extensions import db

    db.session.rollback()
    return [dict(e.details) for e in db.session.scalars(
        select(AuditEvent).where(AuditEvent.tag == tag).order_by(AuditEvent.id))]


# --- the logout token ---------------------------------------------------------------------------

def test_each_rp_of_the_session_receives_a_logout_token(
        live: Live, ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult], receiver: Receiver) -> None:
    tax = make_client(name="Tax", backchannel_logout_uri=receiver.url("/tax"))
    bank = make_client(name="Bank", id_token_alg="ES256", subject_type="pairwise",
                       backchannel_logout_uri=receiver.url("/bank"))
    silent = make_client(name="No URI")
    elsewhere = make_client(name="Other session", backchannel_logout_uri=receiver.url("/other"))
    who, b = signed_in()
    issued = {rp.client_id: sign_in_to(live, b, rp, get_code) for rp in (tax, bank, silent)}
    other_b = Browser(live)
    other_b.sign_in(who)
    sign_in_to(live, other_b, elsewhere, get_code)

    log_out(live, b, issued[tax.client_id]["id_token"])
    got = {r.path: r for r in receiver.wait_for(2)}
    time.sleep(0.3)
    assert set(got) == {"/tax", "/bank"}, "only the session's RPs with a URI are told"
    jtis = set()
    for rp, path in ((tax, "/tax"), (bank, "/bank")):
        hit = got[path]
        assert hit.content_type == "application/x-www-form-urlencoded"
        assert list(hit.form) == ["logout_token"]
        token = hit.form["logout_token"][0]
        header, claims = verify_jwt(live, token, alg=rp.id_token_alg, audience=rp.client_id)
        assert header["typ"] == "logout+jwt"
        id_claims = verify_jwt(live, issued[rp.client_id]["id_token"], alg=rp.id_token_alg)[1]
        assert claims["aud"] == rp.client_id
        assert claims["sub"] == id_claims["sub"]
        assert claims["sid"] == id_claims["sid"] == b.sid
        assert claims["events"] == {LOGOUT_EVENT: {}}
        assert "nonce" not in claims
        assert 0 < claims["exp"] - claims["iat"] <= 300
        assert isinstance(claims["jti"], str)
        assert claims["jti"]
        jtis.add(claims["jti"])
    assert len(jtis) == 2
    assert verify_jwt(live, got["/bank"].form["logout_token"][0], alg="ES256")[1]["sub"] \
        != who.subject, "a pairwise client sees its own sub"
    rows = wait_settled(live, 2)
    assert all(r.delivered_at is not None and r.next_attempt_at is None for r in rows)
    outcomes = audit(live, "oauth:logout:backchannel")
    assert sorted(o["client_id"] for o in outcomes) == sorted([tax.client_id, bank.client_id])
    assert {o["outcome"] for o in outcomes} == {"delivered"}
    assert not any("logout_token" in json.dumps(o) or "eyJ" in json.dumps(o) for o in outcomes)


def test_disabled_client_is_not_told(live: Live, ctx: Live, signed_in: SignedIn,
                                     make_client: Callable[..., RP],
                                     get_code: Callable[..., CodeResult],
                                     receiver: Receiver) -> None:
    from idp.authn.models import LoginSession
    from idp.authn.services import end_session
    from idp.clients.services import disable_client
    from idp.extensions import db

    gone = make_client(backchannel_logout_uri=receiver.url("/gone"))
    _, b = signed_in()
    sign_in_to(live, b, gone, get_code)
    disable_client(gone.client_id, actor="tests")
    session = db.session.get(LoginSession, b.session_id)
    assert session is not None
    end_session(session, reason="tests", actor="tests")
    time.sleep(0.5)
    assert receiver.received == []
    assert deliveries(live) == []


def test_ending_a_session_twice_notifies_once(live: Live, ctx: Live, signed_in: SignedIn,
                                              make_client: Callable[..., RP],
                                              get_code: Callable[..., CodeResult],
                                              receiver: Receiver) -> None:
    from idp.authn.models import LoginSession
    from idp.authn.services import end_session
    from idp.extensions import db

    rp = make_client(backchannel_logout_uri=receiver.url("/rp"))
    _, b = signed_in()
    sign_in_to(live, b, rp, get_code)
    for _ in range(2):
        session = db.session.get(LoginSession, b.session_id)
        assert session is not None
        end_session(session, reason="admin", actor="tests")
    receiver.wait_for(1)
    time.sleep(0.5)
    assert len(receiver.received) == 1
    assert len(deliveries(live)) == 1


# --- delivery failures --------------------------------------------------------------------------

def test_failure_does_not_block_logout_and_is_retried_later(
        live: Live, ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult], receiver: Receiver) -> None:
    rp = make_client(backchannel_logout_uri=receiver.url("/flaky"))
    receiver.answers["/flaky"] = [500, 200]
    receiver.delay = 1.0  # a slow RP as well as a failing one
    _, b = signed_in()
    issued = sign_in_to(live, b, rp, get_code)
    assert log_out(live, b, issued["id_token"]) < 0.9, "logout waited for the RP"

    receiver.wait_for(1)
    [row] = wait_settled(live, 1)
    assert row.attempts == 1
    assert row.delivered_at is None
    assert row.last_error == "HTTP 500"
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > dt.datetime.now(dt.UTC)
    assert run_cli(live, "logout", "deliver", "--json") == [], "not due yet"

    make_due(live)
    receiver.delay = 0.0
    assert run_cli(live, "logout", "deliver", "--json") == [
        {"client_id": rp.client_id, "outcome": "delivered", "error": None}]
    first, second = receiver.received
    assert first.form["logout_token"] != second.form["logout_token"], "each attempt is fresh"
    verify_jwt(live, second.form["logout_token"][0], alg=rp.id_token_alg, audience=rp.client_id)
    [row] = deliveries(live)
    assert row.attempts == 2
    assert row.delivered_at is not None
    assert row.next_attempt_at is None
    assert [o["outcome"] for o in audit(live, "oauth:logout:backchannel")] == ["retry",
                                                                              "delivered"]
    make_due(live)
    assert run_cli(live, "logout", "deliver") == "nothing due\n"


def test_gives_up_after_the_last_attempt(live: Live, ctx: Live, signed_in: SignedIn,
                                         make_client: Callable[..., RP],
                                         get_code: Callable[..., CodeResult],
                                         receiver: Receiver) -> None:
    rp = make_client(backchannel_logout_uri=receiver.url("/down"))
    receiver.answers["/down"] = [503] * 10
    _, b = signed_in()
    log_out(live, b, sign_in_to(live, b, rp, get_code)["id_token"])
    wait_settled(live, 1)
    attempts = int(live.config()["BACKCHANNEL_LOGOUT_ATTEMPTS"])
    for _ in range(attempts + 2):
        make_due(live)
        run_cli(live, "logout", "deliver", "--json")
    [row] = deliveries(live)
    assert row.attempts == attempts
    assert row.gave_up_at is not None
    assert row.next_attempt_at is None
    assert len(receiver.received) == attempts
    assert audit(live, "oauth:logout:backchannel")[-1]["outcome"] == "gave_up"


def test_redirects_are_not_followed(live: Live, ctx: Live, signed_in: SignedIn,
                                    make_client: Callable[..., RP],
                                    get_code: Callable[..., CodeResult],
                                    receiver: Receiver) -> None:
    rp = make_client(backchannel_logout_uri=receiver.url("/moved"))
    receiver.answers["/moved"] = [307]
    _, b = signed_in()
    log_out(live, b, sign_in_to(live, b, rp, get_code)["id_token"])
    [row] = wait_settled(live, 1)
    time.sleep(0.3)
    assert [r.path for r in receiver.received] == ["/moved"]
    assert row.last_error == "HTTP 307"
    assert row.delivered_at is None


def test_unreachable_rp_is_retried(live: Live, ctx: Live, signed_in: SignedIn,
                                   make_client: Callable[..., RP],
                                   get_code: Callable[..., CodeResult],
                                   receiver: Receiver) -> None:
    closed = receiver.url("/x").replace(str(receiver.server.server_port), "1")
    rp = make_client(backchannel_logout_uri=closed)
    _, b = signed_in()
    log_out(live, b, sign_in_to(live, b, rp, get_code)["id_token"])
    [row] = wait_settled(live, 1)
    assert row.last_error == "ConnectionError"
    assert row.delivered_at is None
    assert row.gave_up_at is None
    assert row.next_attempt_at


def test_deliveries_survive_without_the_thread_pool(
        live: Live, ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult], receiver: Receiver) -> None:
    """A worker that died before sending (simulated: no threads) leaves the record due; the
    cron command sends it."""
    rp = make_client(backchannel_logout_uri=receiver.url("/later"))
    _, b = signed_in()
    hint = sign_in_to(live, b, rp, get_code)["id_token"]
    config = live.config()
    saved = config["BACKCHANNEL_LOGOUT_THREADS"]
    config["BACKCHANNEL_LOGOUT_THREADS"] = 0
    try:
        log_out(live, b, hint)
    finally:
        config["BACKCHANNEL_LOGOUT_THREADS"] = saved
    time.sleep(0.3)
    assert receiver.received == []
    [row] = deliveries(live)
    assert row.attempts == 0
    assert row.next_attempt_at is not None
    assert run_cli(live, "logout", "deliver", "--json")[0]["outcome"] == "delivered"
    assert [r.path for r in receiver.received] == ["/later"]
