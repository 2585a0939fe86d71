"""Two server processes, one PostgreSQL database: what one worker issues or revokes, every
other worker honours at once (codes, tokens, refresh rotation, assertion replay).

Needs ``IDP_TEST_DATABASE_URL`` (a PostgreSQL URL whose role may create databases); the test
makes a scratch database of its own and drops it afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from idp import create_app, schema
from idp.extensions import db
from idp.keys import services as keys
from idp.orgs.models import Person
from tests.functional.conftest import (
    RP,
    SECRET_KEY,
    Browser,
    Live,
    PersonInfo,
    assertion_for,
    authorize_url,
    callback,
    pkce_pair,
    pooled_key,
    scratch_postgres,
)

pytestmark = pytest.mark.postgres

SERVER = """
import sys
from werkzeug.serving import make_server
from idp import create_app

url, keys_dir, secret, issuer, redis_url = sys.argv[1:6]
server = make_server("127.0.0.1", 0, None, threaded=True)
issuer = issuer or f"http://127.0.0.1:{server.server_port}"
server.app = create_app({"ISSUER": issuer, "DATABASE_URL": url, "KEYS_DIR": keys_dir,
                         "SECRET_KEY": secret, "REDIS_URL": redis_url,
                         "CLIENT_CACHE_TTL": 0, "JWKS_CACHE_TTL": 0, "LOG_LEVEL": "WARNING"})
print(server.server_port, flush=True)
server.serve_forever()
"""


@dataclass
class Worker:
    process: subprocess.Popen[str]
    base: str

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def scratch_database() -> Iterator[str]:
    base = os.environ.get("IDP_TEST_DATABASE_URL", "")
    if not base:
        pytest.skip("IDP_TEST_DATABASE_URL is not set")
    with scratch_postgres(base, "corpid_workers") as url:
        yield url


@pytest.fixture
def workers(scratch_database: str, tmp_path: Path, redis_url: str | None
            ) -> Iterator[tuple[Flask, Worker, Worker]]:
    """An app in this process for setting up data, and two server processes sharing its
    database, SECRET_KEY, issuer and Redis (as two workers behind one load balancer). Redis is
    this test worker's own database (another xdist worker flushes its own between tests)."""
    keys_dir = str(tmp_path / "keys")
    started: list[subprocess.Popen[str]] = []

    def start(issuer: str) -> Worker:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER, scratch_database, keys_dir, SECRET_KEY, issuer,
             redis_url or ""],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
        started.append(process)
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"worker did not start (exit {process.poll()})"
        return Worker(process, f"http://127.0.0.1:{port}")

    try:
        first = start("")
        issuer = first.base
        second = start(issuer)
        # No sealer thread in this process: the scratch database is dropped at the end, the
        # serving processes seal their own events.
        setup = create_app({"ISSUER": issuer, "DATABASE_URL": scratch_database,
                            "KEYS_DIR": keys_dir, "SECRET_KEY": SECRET_KEY,
                            "REDIS_URL": redis_url or "", "AUDIT_SEAL_INTERVAL": 0})
        with setup.app_context():
            schema.upgrade()
            keys.ensure_keys(actor="tests")
        for worker in (first, second):
            deadline = time.monotonic() + 20
            while requests.get(worker.url("/jwks.json"), timeout=5).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        yield setup, first, second
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stdout is not None:
                process.stdout.close()
        if "setup" in locals():
            with setup.app_context():
                db.session.remove()
                db.engine.dispose()
        keys.clear_caches()


def _setup_rows(app: Flask) -> tuple[Any, RP, RP]:
    from idp.clients.services import create_client
    from idp.orgs.models import Company, Membership, Person

    with app.app_context():
        person = Person(display_name="Wong Siu Ming", email="siu.ming@acme.example")
        company = Company(br_number="87654321", name_en="Acme Two Ltd")
        db.session.add_all([person, company])
        db.session.flush()
        db.session.add(Membership(person_id=person.id, company_id=company.id,
                                  roles=["admin"]))
        db.session.commit()
        client, secret = create_client(name="RP", redirect_uris=["https://rp.example/cb"],
                                       auth_method="client_secret_basic", actor="tests")
        key = pooled_key("ES256", 0)
        keyed, _ = create_client(name="Keyed RP", redirect_uris=["https://rp.example/cb"],
                                 auth_method="private_key_jwt", actor="tests",
                                 grant_types=["client_credentials"], scopes=["corp"],
                                 jwks={"keys": [key.public_jwk().to_dict()]})
        rp = RP(client.id, client.client_id, secret, "client_secret_basic",
                "https://rp.example/cb", ["https://rp.example/cb"])
        keyed_rp = RP(keyed.id, keyed.client_id, None, "private_key_jwt",
                      "https://rp.example/cb", ["https://rp.example/cb"], private_jwk=key)
        person_id = person.id
        db.session.remove()
    return person_id, rp, keyed_rp


def test_two_processes_share_codes_tokens_and_revocation(
        workers: tuple[Flask, Worker, Worker]) -> None:
    setup, a, b = workers
    person_id, rp, keyed = _setup_rows(setup)
    live_a = Live(app=setup, issuer=a.base, server=None, errors=None)  # type: ignore[arg-type]
    browser = Browser(live_a)
    with setup.app_context():
        person = db.session.get(Person, person_id)
        assert person is not None
        info = PersonInfo(person.id, person.subject, person.email, person.display_name)
        db.session.remove()
    browser.sign_in(info)
    try:
        _exercise(browser, live_a, a, b, rp, keyed)
    finally:
        browser.http.close()


def _exercise(browser: Browser, live_a: Live, a: Worker, b: Worker, rp: RP, keyed: RP) -> None:
    auth = (rp.client_id, str(rp.secret))

    def token_at(worker: Worker, data: dict[str, str]) -> requests.Response:
        return requests.post(worker.url("/token"), data=data, auth=auth, timeout=10)

    def active_at(worker: Worker, token: str) -> bool:
        response = requests.post(worker.url("/introspect"), data={"token": token}, auth=auth,
                                 timeout=10)
        assert response.status_code == 200, response.text
        return bool(response.json()["active"])

    # A code issued by one worker is redeemed at the other, once.
    verifier, challenge = pkce_pair()
    cb = callback(browser.run(authorize_url(live_a, rp, scope="openid corp",
                                            challenge=challenge)))
    assert cb.params["iss"] == a.base
    redeem = {"grant_type": "authorization_code", "code": cb.params["code"],
              "redirect_uri": rp.redirect_uri, "code_verifier": verifier}
    first = token_at(b, redeem)
    assert first.status_code == 200, first.text
    tokens: dict[str, Any] = first.json()
    assert active_at(a, tokens["access_token"])
    assert token_at(a, redeem).json()["error"] == "invalid_grant"  # reuse, at the other
    assert not active_at(b, tokens["access_token"])  # and the reuse revoked the family

    # A token revoked at one worker is inactive at the other.
    verifier, challenge = pkce_pair()
    cb = callback(browser.run(authorize_url(live_a, rp, scope="openid corp",
                                            challenge=challenge)))
    tokens = token_at(a, {**redeem, "code": cb.params["code"], "code_verifier": verifier}).json()
    assert active_at(b, tokens["access_token"])
    revoked = requests.post(a.url("/revoke"), data={"token": tokens["access_token"]},
                            auth=auth, timeout=10)
    assert revoked.status_code == 200
    assert not active_at(b, tokens["access_token"])
    userinfo = requests.get(b.url("/userinfo"), timeout=10,
                            headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.status_code == 401

    # Refresh rotation: rotated at one worker, the old token replayed at the other ends the
    # family everywhere.
    rotated = token_at(b, {"grant_type": "refresh_token",
                           "refresh_token": tokens["refresh_token"]}).json()
    replay = token_at(a, {"grant_type": "refresh_token",
                          "refresh_token": tokens["refresh_token"]})
    assert replay.json()["error"] == "invalid_grant"
    assert not active_at(b, rotated["access_token"])
    assert not active_at(a, rotated["refresh_token"])

    # A client assertion used at one worker is a replay at the other.
    assertion = assertion_for(keyed, aud=a.base)
    data = {"grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    assert requests.post(a.url("/token"), data=data, timeout=10).status_code == 200
    second_use = requests.post(b.url("/token"), data=data, timeout=10)
    assert second_use.status_code in (400, 401)
    assert second_use.json()["error"] == "invalid_client"
