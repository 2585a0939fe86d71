"""End-to-end fixtures: Corp ID served live on ``http://localhost:<port>`` (WebAuthn needs a
domain as relying-party ID, not an IP address) in demo mode, so the demo relying party is
there, and Debian's Chromium driven by Playwright with a CDP virtual authenticator per page.

One server and one browser per xdist worker; every table but the signing keys is emptied and
the demo seeded afresh before each test. Every page must finish its test with no console
error, no uncaught exception and no CSP violation, and the server must answer no 5xx.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import inspect
from werkzeug.serving import BaseWSGIServer, make_server

from idp import create_app, schema
from idp.audit.models import append_only_lifted
from idp.audit.services import stop_sealer
from idp.demo import DemoSeed, seed_demo
from idp.extensions import db
from idp.keys import services as keys

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET_KEY = "e2e-tests-secret-key-0123456789abcdef"
KEEP_TABLES = {"signing_keys", "alembic_version"}
# Generous: two cores shared by a whole test run; no test sleeps, they wait for a state.
TIMEOUT_MS = 30_000
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "usb",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(
        reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    )
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            if not os.path.exists(CHROMIUM):
                item.add_marker(skip)


# --- the live server --------------------------------------------------------------------------


class ServerErrors:
    """WSGI middleware noting every 5xx the live server answers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def watch(status: str, headers: Any, exc_info: Any = None) -> Any:
            if status.startswith("5"):
                self.seen.append(
                    f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')} -> {status}"
                )
            return start_response(status, headers, exc_info)

        return self.app(environ, watch)


@dataclass
class Live:
    app: Flask
    issuer: str
    errors: ServerErrors
    seed: DemoSeed | None = None

    def url(self, path: str) -> str:
        return self.issuer + path

    @property
    def invite_url(self) -> str:
        assert self.seed is not None
        assert self.seed.invite_url
        return self.seed.invite_url

    @property
    def demo_rp_url(self) -> str:
        assert self.seed is not None
        return self.seed.demo_rp_url


@contextlib.contextmanager
def _database(tmp: Path) -> Iterator[str]:
    """SQLite by default; a scratch PostgreSQL database next to ``IDP_TEST_DATABASE_URL``."""
    base = os.environ.get("IDP_TEST_DATABASE_URL", "")
    if not base:
        yield f"sqlite:///{tmp / 'idp.sqlite3'}"
        return
    from sqlalchemy import create_engine, make_url, text

    name = f"corpid_e2e_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def e2e_server(tmp_path_factory: pytest.TempPathFactory, redis_url: str | None) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("corpid-e2e")
    with _database(folder) as database_url:
        server: BaseWSGIServer = make_server("127.0.0.1", 0, Flask("placeholder"), threaded=True)
        issuer = f"http://localhost:{server.server_port}"
        app = create_app(
            {
                "ISSUER": issuer,
                "DEMO": True,
                "DATABASE_URL": database_url,
                "KEYS_DIR": str(folder / "keys"),
                "SECRET_KEY": SECRET_KEY,
                "REDIS_URL": redis_url or "",
                "LOG_LEVEL": "WARNING",
            }
        )
        with app.app_context():
            schema.upgrade()
            keys.ensure_keys(actor="tests")
        errors = ServerErrors(app.wsgi_app)
        app.wsgi_app = errors  # type: ignore[method-assign]
        server.app = app
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield Live(app=app, issuer=issuer, errors=errors)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
            stop_sealer(app)  # before its database goes away
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
            redis_client = app.extensions.get("idp.redis")
            if redis_client is not None:
                redis_client.close()


def _reset(app: Flask) -> None:
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn, append_only_lifted(conn):
            present = set(inspect(conn).get_table_names())
            for table in reversed(db.metadata.sorted_tables):
                if table.name in present and table.name not in KEEP_TABLES:
                    conn.execute(table.delete())
    redis_client = app.extensions.get("idp.redis")
    if redis_client is not None:
        redis_client.flushdb()


@pytest.fixture
def live(e2e_server: Live) -> Iterator[Live]:
    """The live server with a fresh demo (company, admin invitation, demo client)."""
    keys.clear_caches()
    _reset(e2e_server.app)
    e2e_server.errors.seen.clear()
    with e2e_server.app.app_context():
        e2e_server.seed = seed_demo()
        db.session.remove()
    yield e2e_server
    seen, e2e_server.errors.seen[:] = list(e2e_server.errors.seen), []
    e2e_server.seed = None
    _reset(e2e_server.app)
    keys.clear_caches()
    assert not seen, f"the server answered 5xx: {seen}"


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


# Watches every document for CSP violations (the console also reports them, but this names
# the directive); Playwright injects it outside the page's CSP.
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
  console.error("CSP violation: " + e.violatedDirective + " " + e.blockedURI);
});
"""


@dataclass
class Tab:
    """A page in a fresh browser context, with what it reported."""

    page: Any
    cdp: Any
    authenticator_id: str | None
    problems: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def credentials(self) -> list[dict[str, Any]]:
        assert self.authenticator_id is not None
        result = self.cdp.send(
            "WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id}
        )
        return list(result["credentials"])

    def allow_console_error(self, fragment: str) -> None:
        """Accept console errors containing ``fragment`` (e.g. a 4xx the test provokes)."""
        self.allowed.append(fragment)

    def unexpected_problems(self) -> list[str]:
        return [p for p in self.problems if not any(a in p for a in self.allowed)]


@pytest.fixture
def new_tab(chromium: Any, live: Live) -> Iterator[Callable[..., Tab]]:
    """``new_tab(authenticator={...} | None)``: a page in its own context (own cookies) with a
    virtual authenticator (``AUTHENTICATOR`` overridden by the dict given; None for none)."""
    contexts: list[Any] = []
    tabs: list[Tab] = []

    def factory(authenticator: dict[str, Any] | None = AUTHENTICATOR, locale: str = "en-GB") -> Tab:
        context = chromium.new_context(locale=locale)
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        context.add_init_script(CSP_WATCH)
        contexts.append(context)
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        authenticator_id = None
        if authenticator is not None:
            cdp.send("WebAuthn.enable")
            options = {**AUTHENTICATOR, **authenticator}
            result = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})
            authenticator_id = result["authenticatorId"]
        tab = Tab(page=page, cdp=cdp, authenticator_id=authenticator_id)

        def on_console(msg: Any) -> None:
            source = (msg.location or {}).get("url", "")
            if msg.type == "error":
                tab.problems.append(f"console {msg.type}: {msg.text} @ {source or page.url}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: tab.problems.append(f"page error: {exc} @ {page.url}"))
        tabs.append(tab)
        return tab

    yield factory
    problems = [p for tab in tabs for p in tab.unexpected_problems()]
    for context in contexts:
        context.close()
    assert not problems, problems


def wait_for_sign_in(page: Any) -> None:
    """Wait until the browser shows Corp ID's sign-in page (the authorization endpoint's
    answer when no session will do)."""
    page.locator('#webauthn[data-mode="login"]').wait_for()
    page.wait_for_load_state("load")  # its (deferred) script is listening
