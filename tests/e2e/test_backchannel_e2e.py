"""Back-channel logout observed by a test relying party, in headless Chromium: the person
enrols and logs in to the demo relying party with the virtual authenticator, then logs out from
it (RP-initiated); a tiny HTTP receiver registered as the demo client's
``backchannel_logout_uri`` gets a Logout Token, verified here against Corp ID's JWKS: typ
``logout+jwt``, iss, aud, the session's sid and sub, the back-channel event, no nonce. A receiver
that fails first does not hold the person's logout up, and the notice is delivered on retry."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from joserfc import jwt as jose_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet
from playwright.sync_api import expect
from sqlalchemy import select, update

from idp.clients import services as clients
from idp.db import utcnow
from idp.extensions import db
from idp.oauth import backchannel
from idp.oauth.models import BackchannelDelivery
from tests.e2e.conftest import Live, Tab, wait_for_sign_in
from tests.e2e.test_journeys import first_login

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
PATH = "/backchannel-logout"


@dataclass
class Notice:
    content_type: str
    form: dict[str, list[str]]


@dataclass
class Receiver:
    """The test relying party's back-channel endpoint; answers ``statuses`` in turn, then 200."""

    server: ThreadingHTTPServer
    received: list[Notice] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{PATH}"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Notice]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, self.received
        return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            me = box["r"]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            status = me.statuses.pop(0) if me.statuses else 200
            if self.path == PATH:
                me.received.append(Notice(self.headers.get("Content-Type", ""), parse_qs(body)))
            else:
                status = 404
            self.send_response(status)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box["r"] = Receiver(server)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield box["r"]
    server.shutdown()
    server.server_close()
    thread.join(5)


def register_receiver(live: Live, receiver: Receiver) -> str:
    """Make ``receiver`` the demo client's back-channel logout URI; returns its ID-token alg."""
    assert live.seed is not None
    with live.app.app_context():
        client = clients.update_client(
            live.seed.client_id, actor="tests", backchannel_logout_uri=receiver.url
        )
        alg = client.id_token_alg or "RS256"
        db.session.remove()
    return alg


def log_out_from_the_rp(live: Live, tab: Tab) -> float:
    """The demo RP's Log out button (RP-initiated, with id_token_hint); seconds it took."""
    page = tab.page
    started = time.monotonic()
    with page.expect_request(re.compile(r"/logout\?")) as info:
        page.get_by_role("button", name="Log out").click()
    assert "id_token_hint=" in info.value.url
    page.wait_for_url(re.compile(re.escape(live.demo_rp_url) + r"\?state="))
    expect(page.locator("#signed-out")).to_be_visible()
    return time.monotonic() - started


def verified_logout_token(live: Live, notice: Notice, *, alg: str) -> tuple[dict[str, Any], ...]:
    """The Logout Token of ``notice``, its signature checked against the published JWKS."""
    assert notice.content_type == "application/x-www-form-urlencoded"
    assert list(notice.form) == ["logout_token"]
    [token] = notice.form["logout_token"]
    jwks_uri = requests.get(live.url("/.well-known/openid-configuration"), timeout=10).json()[
        "jwks_uri"
    ]
    keyset = KeySet.import_key_set(requests.get(jwks_uri, timeout=10).json())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=SecurityWarning, message="EdDSA")
        decoded = jose_jwt.decode(token, keyset, algorithms=[alg])
    return dict(decoded.header), dict(decoded.claims)


def assert_logout_token_for(
    live: Live, header: dict[str, Any], claims: dict[str, Any], id_token: dict[str, Any]
) -> None:
    assert live.seed is not None
    assert header["typ"] == "logout+jwt"
    assert claims["iss"] == live.issuer
    assert claims["aud"] == live.seed.client_id
    assert claims["sid"] == id_token["sid"]
    assert claims["sub"] == id_token["sub"]
    assert claims["events"] == {LOGOUT_EVENT: {}}
    assert "nonce" not in claims
    assert claims["jti"]
    now = time.time()
    assert claims["iat"] <= now + 5
    assert now < claims["exp"] <= claims["iat"] + 300


def settled(live: Live, timeout: float = 20.0) -> list[BackchannelDelivery]:
    """The delivery records once none is waiting for its first attempt."""
    deadline = time.monotonic() + timeout
    while True:
        with live.app.app_context():
            rows = list(db.session.scalars(select(BackchannelDelivery)))
            db.session.expunge_all()
            db.session.remove()
        if rows and all(r.attempts > 0 and (r.delivered_at or r.last_error) for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)


def test_rp_initiated_logout_is_told_to_the_rp_by_back_channel(
    live: Live, new_tab: Callable[..., Tab], receiver: Receiver
) -> None:
    alg = register_receiver(live, receiver)
    tab, id_token = first_login(live, new_tab, choose=False)
    assert id_token["sid"]
    assert receiver.received == []  # nothing is sent while the session lives

    log_out_from_the_rp(live, tab)
    [notice] = receiver.wait_for(1)
    header, claims = verified_logout_token(live, notice, alg=alg)
    assert_logout_token_for(live, header, claims, id_token)
    [row] = settled(live)
    assert row.delivered_at is not None
    assert row.attempts == 1
    time.sleep(0.3)
    assert len(receiver.received) == 1  # sent once

    # The session is over at Corp ID: logging in again asks for the key.
    tab.page.get_by_role("link", name="Login with Corp ID").click()
    wait_for_sign_in(tab.page)


def test_failing_rp_does_not_hold_the_logout_up_and_is_retried(
    live: Live, new_tab: Callable[..., Tab], receiver: Receiver
) -> None:
    alg = register_receiver(live, receiver)
    receiver.statuses = [503]
    tab, id_token = first_login(live, new_tab, choose=False)

    log_out_from_the_rp(live, tab)
    receiver.wait_for(1)
    [row] = settled(live)
    assert row.delivered_at is None
    assert row.last_error == "HTTP 503"

    # `idp logout deliver` (cron) once the retry is due: delivered, a fresh token.
    with live.app.app_context():
        db.session.execute(
            update(BackchannelDelivery).values(next_attempt_at=utcnow() - dt.timedelta(seconds=1))
        )
        db.session.commit()
        [attempt] = backchannel.deliver_due()
        db.session.remove()
    assert attempt.outcome == "delivered"
    first, second = receiver.wait_for(2)
    header, claims = verified_logout_token(live, second, alg=alg)
    assert_logout_token_for(live, header, claims, id_token)
    _, failed = verified_logout_token(live, first, alg=alg)
    assert failed["jti"] != claims["jti"]
