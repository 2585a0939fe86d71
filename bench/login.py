#!/usr/bin/env python3
"""Corp ID login benchmark (issue 3, "Speed"): prints figures, never asserts.

Many concurrent browsers-without-a-browser (an HTTP connection, a cookie jar and a software
security key each) do the whole hardware-key login against ``idp serve`` on PostgreSQL with
100,000 enrolled people:

    GET /authorize (PKCE S256, state, nonce): the sign-in page (handle, CSRF, the first
    request options) -> sign the assertion -> POST /login/verify, whose answer sends the browser
    straight to the client (one company, consent already given) or, --journey first, to GET
    /authorize/continue: the consent page and its POST -> 303 to the client; either way with
    code, state, iss -> POST /token (code + verifier)
    -> an ID token whose iss, aud and nonce are checked.

Only complete, checked logins count. It prints logins/s, p50/p90/p99 latency of a whole login,
the mean latency of each step, errors, and the CPU split (server workers, PostgreSQL, Redis, load
generator, other) beside the issue's target, and writes ``bench/results/login-latest.md``.

    python bench/login.py                      # the issue's figure (seeds, measures, drops)
    python bench/login.py --reuse              # keep the seeded database between runs
    python bench/login.py --reuse --journey first --duration 10
    python bench/login.py --reuse --sql        # SQL statements and round trips per step

The scratch database is ``corpid_bench_login`` (dropped at the end unless ``--keep`` or
``--reuse``); the server runs in its own process group and is killed on exit.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import html
import http.client
import json
import math
import os
import random
import re
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import run as common  # noqa: E402  (bench/run.py: the issue-2 benchmark's helpers)

HOST = common.HOST
PG_DB = "corpid_bench_login"
PG_SA_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"
REDIS_URL = common.REDIS_URL  # db 14
TARGET_RPS = 150.0
TARGET_P99_MS = 250.0
SCOPE = "openid profile email corp"
REDIRECT_URI = "https://rp.bench.example/callback"
STEPS = ("authorize", "login_page", "options", "verify", "continue", "consent", "token")
CLIENT_NAMES = {"returning": "bench login (returning)", "first": "bench login (first time)"}
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Counters are time-based (tenths of a second since 2026), so that runs months apart never
# present a counter a key has already used, without storing anything.
COUNTER_EPOCH = 1_767_225_600
log = common.log


# --- the people's keys, derived from a seed ---------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _h(seed: str, what: str, i: int) -> bytes:
    return hashlib.sha256(f"{seed}\x00{what}\x00{i}".encode()).digest()


def subject_of(seed: str, i: int) -> str:
    return b64url(_h(seed, "subject", i))[:22]


def credential_id_of(seed: str, i: int) -> bytes:
    return _h(seed, "credential", i)[:16]


def private_key_of(seed: str, i: int) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    scalar = int.from_bytes(_h(seed, "key", i), "big") % (P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def cose_es256(private_key: Any) -> bytes:
    import cbor2

    numbers = private_key.public_key().public_numbers()
    return bytes(cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                              -3: numbers.y.to_bytes(32, "big")}))


# --- the scratch database ---------------------------------------------------------------------


class LoginBackend(common.Backend):
    """run.py's Backend with the issuer on ``localhost`` (a WebAuthn RP ID must be a domain);
    the server is still reached on 127.0.0.1, where it listens."""

    @property
    def login_issuer(self) -> str:
        return f"http://localhost:{self.port}"

    def overrides(self) -> dict[str, Any]:
        out = super().overrides()
        out.update(ISSUER=self.login_issuer, **SERVER_LIMITS)
        return out


# Rate limits for the benchmark: every request comes from 127.0.0.1, so the per-source limits
# (failed sign-ins, token endpoint) are raised out of reach; they still count (same cost).
SERVER_LIMITS = {
    "RATE_LIMIT_SOURCE_PER_MINUTE": 1_000_000_000,
    "RATE_LIMIT_CLIENT_PER_MINUTE": 1_000_000_000,
    "LOGIN_FAILURES_PER_SOURCE_PER_MINUTE": 1_000_000_000,
}


def pg_admin(sql: str, db: str = PG_DB) -> None:
    """``sql`` as the PostgreSQL superuser; only ever about the scratch database ``db``."""
    import psycopg

    assert db in sql
    assert " test" not in sql
    with psycopg.connect(common.PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def drop_db(db: str = PG_DB) -> None:
    with contextlib.suppress(Exception):
        pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", db)


def db_exists() -> bool:
    import psycopg

    with psycopg.connect(common.PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (PG_DB,)).fetchone() is not None


def schema_mark() -> str:
    """A fingerprint of the migrations: a database seeded under another
    schema is seeded again rather than reused."""
    text = b"".join(p.read_bytes() for p in sorted((ROOT / "migrations" / "versions").glob("*.py")))
    return hashlib.sha256(text).hexdigest()[:8]


def client_name(journey: str, people: int, seed: str) -> str:
    return f"{CLIENT_NAMES[journey]} {people}/{seed}/{schema_mark()}"


def seeded_clients(backend: LoginBackend, people: int, seed: str) -> dict[str, str] | None:
    """The bench clients' ids when the database holds this seed's ``people``, else None."""
    from sqlalchemy import func, select

    from idp.clients.models import Client
    from idp.extensions import db
    from idp.orgs.models import Person

    with backend.app.app_context():
        try:
            names = {client_name(j, people, seed): j for j in CLIENT_NAMES}
            rows = db.session.execute(select(Client.name, Client.client_id)
                                      .where(Client.name.in_(list(names)))).all()
            count = db.session.scalar(select(func.count()).select_from(Person))
        except Exception:
            return None
        finally:
            db.session.remove()
    found = {names[name]: cid for name, cid in rows}
    if count != people or len(found) != len(CLIENT_NAMES):
        return None
    return found


def seed_database(backend: LoginBackend, people: int, per_company: int,
                  seed: str) -> dict[str, str]:
    """Schema and keys (``idp init``), the two bench clients (``create_client``), then people,
    companies, memberships, security keys and the returning client's consents by COPY (fast;
    the per-row services are for correctness, not for loading 100,000 people)."""
    from idp.clients.services import create_client
    from idp.extensions import db
    from idp.orgs.models import name_key

    how = common.create_schema(backend)
    log(f"schema by {how}")
    clients = {}
    with backend.app.app_context():
        for journey in CLIENT_NAMES:
            client, _ = create_client(
                name=client_name(journey, people, seed), redirect_uris=[REDIRECT_URI],
                auth_method="none", grant_types=["authorization_code"], scopes=SCOPE.split(),
                actor="operator:bench")
            clients[journey] = client.client_id
            if journey == "returning":
                returning_pk = client.id
        db.session.remove()
        db.engine.dispose()

    import psycopg

    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    companies = math.ceil(people / per_company)
    granted = " ".join(sorted(s for s in SCOPE.split() if s != "openid"))
    with psycopg.connect(PG_SA_URL.replace("+psycopg", "")) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY companies (id, br_number, name_en, name_key, status, "
                          "created_at) FROM STDIN") as copy:
                for c in range(1, companies + 1):
                    name = f"Bench Trading {c} Limited"
                    copy.write_row((c, f"{50_000_000 + c:08d}", name, name_key(name), "live",
                                    now))
            with cur.copy("COPY people (id, subject, display_name, email, status, created_at) "
                          "FROM STDIN") as copy:
                for i in range(1, people + 1):
                    copy.write_row((i, subject_of(seed, i), f"Bench Person {i}",
                                    f"person{i}@bench.example", "active", now))
            with cur.copy("COPY memberships (id, person_id, company_id, roles, status, "
                          "created_at) FROM STDIN") as copy:
                for i in range(1, people + 1):
                    copy.write_row((i, i, (i - 1) // per_company + 1, '["member"]', "active",
                                    now))
            log(f"seeded {companies:,} companies, {people:,} people and memberships in "
                f"{time.monotonic() - started:.1f}s; deriving {people:,} keys")
            with cur.copy("COPY security_keys (id, person_id, credential_id, public_key, "
                          "sign_count, aaguid, model_name, transports, backup_eligible, name, "
                          "created_at) FROM STDIN") as copy:
                for i in range(1, people + 1):
                    copy.write_row((i, i, credential_id_of(seed, i),
                                    cose_es256(private_key_of(seed, i)), 0, None, None,
                                    '["usb"]', False, "Bench key", now))
            with cur.copy("COPY consents (id, person_id, company_id, client_id, scopes, "
                          "purpose, created_at, updated_at, expires_at, revoked_at) "
                          "FROM STDIN") as copy:
                for i in range(1, people + 1):
                    copy.write_row((i, i, (i - 1) // per_company + 1, returning_pk, granted,
                                    None, now, now, None, None))
            for table in ("companies", "people", "memberships", "security_keys", "consents"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                            f"(SELECT max(id) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    log(f"seeded {people:,} people with keys and consents in {time.monotonic() - started:.1f}s")
    return clients


def reset_first_time(journey: str, client_id: str) -> None:
    """--journey first: no consent for the first-time client (earlier runs gave some)."""
    if journey != "first":
        return
    import psycopg

    with psycopg.connect(PG_SA_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DELETE FROM consents WHERE client_id = "
                     "(SELECT id FROM clients WHERE client_id = %s)", (client_id,))


# --- one virtual browser ----------------------------------------------------------------------

Send = Callable[[str, str, dict[str, str], bytes | None], tuple[int, dict[str, str], bytes]]


class Failed(Exception):
    def __init__(self, step: str, why: str) -> None:
        super().__init__(f"{step}: {why}")
        self.step = step


_HANDLE = re.compile(r'id="webauthn"[^>]*?data-handle="([^"]+)"[^>]*?data-csrf="([^"]+)"', re.S)
_OPTIONS = re.compile(r'id="webauthn"[^>]*?data-public-key="([^"]+)"', re.S)
_CONSENT_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A browser without a browser: a cookie jar, a security key per person it signs in as,
    and a ``send`` (keep-alive HTTP connection, or Flask's test client for --sql)."""

    def __init__(self, send: Send, *, issuer: str, client_id: str, seed: str) -> None:
        self.send, self.issuer, self.client_id, self.seed = send, issuer, client_id, seed
        self.cookies: dict[str, str] = {}
        self.counters: dict[int, int] = {}
        self.keys: dict[int, Any] = {}
        self.rp_hash = hashlib.sha256(urlsplit(issuer).hostname.encode()).digest()  # type: ignore[union-attr]

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        status, out, data = self.send(method, path, h, body)
        for line in out.get("set-cookie-list", []):  # type: ignore[union-attr]
            pair = line.split(";", 1)[0]
            name, _, value = pair.partition("=")
            if "max-age=0" in line.lower() or "expires=thu, 01 jan 1970" in line.lower():
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = value.strip()
        return status, out, data

    def begin(self) -> tuple[str, str, str, str]:
        """A new browser (empty cookie jar) and its authorization request: the ``/authorize``
        path (PKCE S256), then the code verifier, the state and the nonce."""
        self.cookies = {}  # a new browser
        verifier = secrets.token_urlsafe(32)
        state, nonce = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        query = urlencode({"response_type": "code", "client_id": self.client_id,
                           "redirect_uri": REDIRECT_URI, "scope": SCOPE, "state": state,
                           "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        return f"/authorize?{query}", verifier, state, nonce

    def code_from(self, step: str, status: int, headers: dict[str, str], state: str) -> str:
        """The code of an answer that sends the browser back to the client (a 303 with code,
        state and iss); raises ``Failed`` for ``step`` otherwise."""
        location = headers.get("location", "")
        if status != 303 or not location.startswith(REDIRECT_URI + "?"):
            raise Failed(step, f"status {status}, not back to the client")
        answer = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        if answer.get("state") != state or answer.get("iss") != self.issuer or "code" not in answer:
            raise Failed(step, f"bad redirect {sorted(answer)}")
        return answer["code"]

    def redeem(self, code: str, verifier: str, nonce: str) -> None:
        """The client's token request for ``code``; checks the ID token's iss, aud and nonce."""
        form = urlencode({"grant_type": "authorization_code", "code": code,
                          "redirect_uri": REDIRECT_URI, "client_id": self.client_id,
                          "code_verifier": verifier}).encode()
        status, _, data = self.request(
            "POST", "/token", body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            raise Failed("token", f"status {status} {data[:160]!r}")
        id_token = json.loads(data).get("id_token", "")
        claims = json.loads(unb64url(id_token.split(".")[1])) if id_token.count(".") == 2 else {}
        if (claims.get("nonce") != nonce or claims.get("iss") != self.issuer
                or claims.get("aud") not in (self.client_id, [self.client_id])):
            raise Failed("token", "ID token missing or its iss/aud/nonce wrong")

    def login(self, person: int, journey: str, times: dict[str, float]) -> None:
        """One whole login of ``person``; raises ``Failed``. ``times``: seconds per step."""
        clock = time.perf_counter
        path, verifier, state, nonce = self.begin()
        t = clock()
        status, headers, page = self.request("GET", path)
        if status == 303 and "/login?" in headers.get("location", ""):
            # A provider that sends the browser to a separate sign-in page.
            t, times["authorize"] = clock(), times.get("authorize", 0.0) + clock() - t
            status, headers, page = self.request("GET", _path(headers["location"]))
            step = "login_page"
        else:
            step = "authorize"  # the sign-in page is the authorization endpoint's answer
        found = _HANDLE.search(page.decode())
        if status != 200 or not found:
            raise Failed(step, f"status {status}")
        handle, csrf = found.group(1), found.group(2)
        embedded = _OPTIONS.search(page.decode())
        t, times[step] = clock(), times.get(step, 0.0) + clock() - t
        api = {"Content-Type": "application/json", "X-CSRFToken": csrf}
        if embedded:  # the page carries its first options, as the page's script uses them
            options = json.loads(html.unescape(embedded.group(1)))["publicKey"]
        else:
            status, _, data = self.request("POST", "/login/options", headers=api,
                                           body=json.dumps({"h": handle}).encode())
            if status != 200:
                raise Failed("options", f"status {status} {data[:120]!r}")
            options = json.loads(data)["publicKey"]
            t, times["options"] = clock(), times.get("options", 0.0) + clock() - t
        assertion = self.assertion(person, options)
        status, _, data = self.request("POST", "/login/verify", headers=api, body=json.dumps(
            {"h": handle, "credential": assertion}).encode())
        if status != 200:
            raise Failed("verify", f"status {status} {data[:160]!r}")
        following = json.loads(data)["next"]
        if following.startswith(REDIRECT_URI + "?"):
            # Nothing more to ask (returning person): the sign-in answer sends the browser
            # straight back to the client, as a 303 would.
            status, headers, step = 303, {"location": following}, "verify"
        else:
            t, times["verify"] = clock(), times.get("verify", 0.0) + clock() - t
            status, headers, page = self.request("GET", _path(following))
            step = "continue"
        if step == "verify":
            pass
        elif journey == "first":
            found_csrf = _CONSENT_CSRF.search(page.decode())
            if status != 200 or not found_csrf:
                raise Failed("continue", f"status {status}: no consent page")
            t, times["continue"] = clock(), times.get("continue", 0.0) + clock() - t
            form = urlencode({"csrf_token": found_csrf.group(1), "h": handle,
                              "decision": "allow"}).encode()
            status, headers, _ = self.request(
                "POST", "/authorize/consent", body=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"})
            if status != 303:
                raise Failed("consent", f"status {status}")
            if not headers.get("location", "").startswith(REDIRECT_URI + "?"):
                status, headers, _ = self.request("GET", _path(headers["location"]))
            step = "consent"
        code = self.code_from(step, status, headers, state)
        t, times[step] = clock(), times.get(step, 0.0) + clock() - t
        self.redeem(code, verifier, nonce)
        times["token"] = times.get("token", 0.0) + clock() - t

    def assertion(self, person: int, options: dict[str, Any]) -> dict[str, Any]:
        """What the person's security key answers (UP and UV set, ES256)."""
        client_data, auth_data, signature = self.sign(person, options["challenge"])
        raw_id = b64url(credential_id_of(self.seed, person))
        return {"id": raw_id, "rawId": raw_id, "type": "public-key",
                "authenticatorAttachment": "cross-platform", "clientExtensionResults": {},
                "response": {"clientDataJSON": b64url(client_data),
                             "authenticatorData": b64url(auth_data),
                             "signature": b64url(signature),
                             "userHandle": b64url(subject_of(self.seed, person).encode())}}

    def sign(self, person: int, challenge: str) -> tuple[bytes, bytes, bytes]:
        """The person's key signing ``challenge``: client data, authenticator data (UP and UV
        set, a counter that only grows) and the ES256 signature over both."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = self.keys.get(person)
        if key is None:
            key = self.keys[person] = private_key_of(self.seed, person)
        tick = int((time.time() - COUNTER_EPOCH) * 10)
        count = self.counters[person] = max(tick, self.counters.get(person, 0) + 1)
        client_data = json.dumps({"type": "webauthn.get", "challenge": challenge,
                                  "origin": self.issuer, "crossOrigin": False},
                                 separators=(",", ":")).encode()
        auth_data = self.rp_hash + bytes([0x05]) + struct.pack(">I", count)
        signature = key.sign(auth_data + hashlib.sha256(client_data).digest(),
                             ec.ECDSA(hashes.SHA256()))
        return client_data, auth_data, signature


def _path(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Connection:
    """A keep-alive HTTP/1.1 connection to the server (http.client: lean, the generator
    shares the 2 cores with the server)."""

    def __init__(self, port: int, host_header: str) -> None:
        self.port, self.host_header = port, host_header
        self.conn: http.client.HTTPConnection | None = None

    def __call__(self, method: str, path: str, headers: dict[str, str],
                 body: bytes | None) -> tuple[int, dict[str, Any], bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        headers = {"Host": self.host_header, "User-Agent": "corp-id-bench/1", **headers}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        out: dict[str, Any] = {k.lower(): v for k, v in resp.getheaders()}
        out["set-cookie-list"] = resp.msg.get_all("Set-Cookie") or []
        if resp.will_close:
            self.close()
        return resp.status, out, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- the load generator process ---------------------------------------------------------------


def worker_main(browser_class: type[Browser] = Browser) -> int:
    """``login.py --worker``: run threads of virtual browsers (``browser_class``) from a JSON
    job on stdin, print the figures of the logins finished inside the measured window as JSON."""
    job = json.loads(sys.stdin.read())
    start_at, end_at = job["start_at"], job["end_at"]
    lock = threading.Lock()
    latencies: list[float] = []
    step_sums: dict[str, float] = {}
    errors: dict[str, int] = {}
    samples: list[str] = []
    logins_all = [0]

    def browse(vb: int) -> None:
        rng = random.Random(f"{job['seed']}/{vb}/{time.time()}")
        # Each virtual browser has its own people (no two sign in as the same person at once).
        mine = list(range(vb + 1, job["people"] + 1, job["browsers"]))
        rng.shuffle(mine)
        conn = Connection(job["port"], job["host_header"])
        browser = browser_class(conn, issuer=job["issuer"], client_id=job["client_id"],
                                seed=job["seed"])
        n = 0
        while time.time() < end_at:
            person = mine[n % len(mine)]
            n += 1
            times: dict[str, float] = {}
            began = time.perf_counter()
            try:
                browser.login(person, job["journey"], times)
            except (Failed, OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                step = exc.step if isinstance(exc, Failed) else type(exc).__name__
                if time.time() >= start_at and time.time() <= end_at:
                    with lock:
                        errors[step] = errors.get(step, 0) + 1
                        if len(samples) < 5:
                            samples.append(str(exc)[:300])
                conn.close()
                time.sleep(0.01)
                continue
            took = time.perf_counter() - began
            finished = time.time()
            with lock:
                logins_all[0] += 1
                if start_at <= finished <= end_at:
                    latencies.append(took)
                    for k, v in times.items():
                        step_sums[k] = step_sums.get(k, 0.0) + v
        conn.close()

    threads = [threading.Thread(target=browse, args=(vb,), daemon=True)
               for vb in range(job["first_browser"], job["first_browser"] + job["threads"])]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(1.0, end_at - time.time() + 35))
    with lock:
        print(json.dumps({"latencies": latencies, "step_sums": step_sums, "errors": errors,
                          "samples": samples, "all": logins_all[0]}))
    return 0


# --- SQL per step (in process, Flask test client) ---------------------------------------------


def count_sql(backend: LoginBackend, client_id: str, journey: str, seed: str,
              people: int) -> dict[str, tuple[int, int, list[str]]]:
    """SQL statements and PostgreSQL round trips (BEGIN and COMMIT/ROLLBACK included) of each
    step of one login, with warm caches (the third login of this process)."""
    from sqlalchemy import event

    from idp.extensions import db

    app = backend.app
    with app.app_context():
        engine = db.engine
    statements: list[str] = []
    trips = [0]
    per_step: dict[str, tuple[int, int, list[str]]] = {}

    def dbapi_of(conn: Any) -> Any:
        return conn.connection.dbapi_connection

    def in_tx(dbapi: Any) -> bool:
        return int(dbapi.info.transaction_status) != 0

    def on_exec(conn: Any, cursor: Any, stmt: str, *a: Any) -> None:
        statements.append(" ".join(stmt.split())[:110])
        dbapi = dbapi_of(conn)
        trips[0] += 1 + (0 if dbapi.autocommit or in_tx(dbapi) else 1)

    def on_end(conn: Any) -> None:
        if in_tx(dbapi_of(conn)):
            trips[0] += 1

    def on_reset(dbapi: Any, record: Any, *a: Any) -> None:
        if in_tx(dbapi):
            trips[0] += 1

    test_client = app.test_client(use_cookies=False)  # the Browser keeps the jar

    def send(method: str, path: str, headers: dict[str, str],
             body: bytes | None) -> tuple[int, dict[str, Any], bytes]:
        statements.clear()
        trips[0] = 0
        resp = test_client.open(path, method=method, headers=headers, data=body,
                                base_url=backend.login_issuer)
        step = current_step(path, method)
        n, t, sql = per_step.get(step, (0, 0, []))
        per_step[step] = (n + len(statements), t + trips[0], sql + list(statements))
        return flask_answer(resp)

    browser = Browser(send, issuer=backend.login_issuer, client_id=client_id, seed=seed)
    hooks = [(engine, "before_cursor_execute", on_exec), (engine, "commit", on_end),
             (engine, "rollback", on_end), (engine.pool, "reset", on_reset)]
    for target, name, fn in hooks:
        event.listen(target, name, fn)
    try:
        # No app context around the requests: Flask-WTF keeps the CSRF token in ``g``.
        for n in range(3):
            per_step.clear()
            browser.login(people - n, journey, {})
    finally:
        for target, name, fn in hooks:
            event.remove(target, name, fn)
    return per_step


def cpu_per_step(backend: LoginBackend, client_id: str, journey: str, seed: str, people: int,
                 logins: int, cprofile: str | None) -> dict[str, float]:
    """What one login costs the server, in process (Flask test client, no HTTP server, no load
    generator): CPU milliseconds per step, the mean over ``logins`` logins in five rounds
    (three more to warm up), each step's cheapest round.
    With ``cprofile`` the measured logins are profiled into that file (pstats format)."""
    import cProfile

    cpu: dict[str, float] = {}
    send = cpu_send(backend.app, backend.login_issuer, cpu)
    browser = Browser(send, issuer=backend.login_issuer, client_id=client_id, seed=seed)
    for n in range(3):
        browser.login(people - 10 - n, journey, {})
    profiler = cProfile.Profile() if cprofile else None
    if profiler is not None:
        profiler.enable()
    # Five rounds; each step's figure is its cheapest round (the others paid for whatever
    # else the machine did meanwhile).
    best: dict[str, float] = {}
    per_round = max(1, logins // 5)
    for r in range(5):
        cpu.clear()
        for n in range(per_round):
            browser.login(people - 20 - r * per_round - n, journey, {})
        for step, total in cpu.items():
            best[step] = min(best.get(step, math.inf), 1000 * total / per_round)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(cprofile)
    return best


def cpu_send(app: Any, issuer: str, cpu: dict[str, float]) -> Send:
    """A ``Send`` through ``app``'s test client (the Browser keeps the cookie jar) that adds
    each request's CPU seconds, this thread's, to ``cpu[step]``."""
    test_client = app.test_client(use_cookies=False)

    def send(method: str, path: str, headers: dict[str, str],
             body: bytes | None) -> tuple[int, dict[str, Any], bytes]:
        started = time.thread_time()  # this thread's: not the audit sealer's, say
        resp = test_client.open(path, method=method, headers=headers, data=body,
                                base_url=issuer)
        step = current_step(path, method)
        cpu[step] = cpu.get(step, 0.0) + time.thread_time() - started
        return flask_answer(resp)

    return send


def flask_answer(resp: Any) -> tuple[int, dict[str, Any], bytes]:
    """A test client's response as a ``Send`` answers it."""
    out: dict[str, Any] = {k.lower(): v for k, v in resp.headers.items()}
    out["set-cookie-list"] = resp.headers.getlist("Set-Cookie")
    return resp.status_code, out, resp.get_data()


def current_step(path: str, method: str) -> str:
    if path.startswith("/authorize?"):
        return "authorize"
    if path.startswith("/login?"):
        return "login_page"
    if path.startswith("/login/options"):
        return "options"
    if path.startswith("/login/verify"):
        return "verify"
    if path.startswith("/authorize/consent"):
        return "consent"
    if path.startswith("/authorize/continue"):
        return "continue"
    return "token" if path.startswith("/token") else path


# --- the run ----------------------------------------------------------------------------------


def measure(backend: LoginBackend, server: common.Server, args: argparse.Namespace,
            client_id: str) -> dict[str, Any]:
    """Start the load generators, warm up, measure; the figures and the CPU split."""
    if args.wait_quiet > 0:
        busy = common.wait_quiet(args.wait_quiet)
        if busy > 0.25:
            log(f"machine still busy ({busy:.2f} cores) before the run")
    start_at = time.time() + 1.0 + args.warmup  # 1 s to start the generators
    end_at = start_at + args.duration
    gens: list[subprocess.Popen[bytes]] = []
    job = {"port": backend.port, "host_header": f"localhost:{backend.port}",
           "issuer": backend.login_issuer, "client_id": client_id, "seed": args.seed,
           "people": args.people, "journey": args.journey, "start_at": start_at,
           "end_at": end_at}
    start_generators(__file__, job, args.concurrency, args.procs, gens)
    groups = {p.pid: "loadgen" for p in gens}
    pgid = server.proc.pid if server.proc else -1
    time.sleep(max(0.0, start_at - time.time()))
    spy = start_profiler(args, server)
    before = common.cpu_snapshot(pgid, groups)
    wall = time.monotonic()
    time.sleep(max(0.0, end_at - time.time()))
    after = common.cpu_snapshot(pgid, groups)
    cpu = common.cpu_split(before, after, 0.0, time.monotonic() - wall)
    cpu.pop("wrk", None)
    fig = gather(gens, args.duration)
    if spy is not None:
        spy.wait(timeout=60)
    fig["cpu"] = cpu
    return fig


def start_generators(script: str, job: dict[str, Any], concurrency: int, procs: int,
                     gens: list[subprocess.Popen[bytes]]) -> None:
    """Up to ``procs`` load generator processes (``script --worker``, each in its own process
    group) sharing ``concurrency`` virtual browsers, each given ``job`` and its share of the
    browsers; appended to ``gens`` as they start, so that the caller can stop them."""
    procs = max(1, min(procs, concurrency))
    per = [concurrency // procs + (1 if k < concurrency % procs else 0) for k in range(procs)]
    first = 0
    for k in range(procs):
        share = {**job, "threads": per[k], "first_browser": first, "browsers": concurrency}
        first += per[k]
        proc = subprocess.Popen([sys.executable, script, "--worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(share).encode())
        proc.stdin.close()
        gens.append(proc)


def gather(gens: list[subprocess.Popen[bytes]], duration: float) -> dict[str, Any]:
    """The load generators' figures once they finish: complete logins, logins/s, latency of a
    whole login (ms: p50, p90, p99, max, mean), mean ms per step, errors and error samples."""
    results = []
    for proc in gens:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=90)
        results.append(json.loads(out))
    latencies = sorted(x for r in results for x in r["latencies"])
    step_sums: dict[str, float] = {}
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["step_sums"].items():
            step_sums[k] = step_sums.get(k, 0.0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, math.ceil(p / 100 * n) - 1)] * 1000 if n else 0.0

    return {"logins": n, "rps": n / duration, "p50": pct(50), "p90": pct(90),
            "p99": pct(99), "max": latencies[-1] * 1000 if n else 0.0,
            "mean": statistics.fmean(latencies) * 1000 if n else 0.0,
            "steps": {k: v / n * 1000 for k, v in step_sums.items()} if n else {},
            "errors": errors, "samples": [s for r in results for s in r["samples"]][:5]}


def start_profiler(args: argparse.Namespace, server: common.Server
                   ) -> subprocess.Popen[bytes] | None:
    if not args.profile or server.proc is None:
        return None
    out = Path(args.profile) / f"login-{args.journey}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [args.pyspy, "record", "--pid", str(server.proc.pid), "--subprocesses",
            "--nonblocking", "--rate", "100", "--duration", str(max(1, round(args.duration))),
            "--format", "raw", "--output", str(out)]
    log(f"py-spy recording to {out}")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)


def cpu_text(cpu: dict[str, float]) -> str:
    names = {"server": "server workers", "postgres": "PostgreSQL", "redis": "Redis",
             "loadgen": "load generator", "other": "other"}
    return ", ".join(f"{names.get(k, k)} {v:.2f}" for k, v in cpu.items())


def render(fig: dict[str, Any], sql: dict[str, tuple[int, int, list[str]]] | None,
           args: argparse.Namespace, meta: dict[str, str]) -> str:
    meets = (fig["rps"] >= TARGET_RPS and fig["p99"] < TARGET_P99_MS and not fig["errors"])
    verdict = "meets" if meets else "MISSES"
    if args.journey != "returning":
        verdict = "(the target is for returning logins)"
    lines = [
        "# Corp ID login benchmark: latest figures",
        "",
        f"- when: {meta['when']}; commit {meta['commit']}",
        f"- machine: {meta['machine']}; server: `idp serve --server {args.server} --workers "
        f"{args.workers} --threads {args.threads}` on PostgreSQL + Redis (db 14), same "
        "machine, loopback",
        f"- data: {args.people:,} people, each with one ES256 security key, an active membership "
        f"of one of {math.ceil(args.people / args.per_company):,} companies, and (returning "
        "journey) a stored consent for the bench client (public client, PKCE S256)",
        f"- load: {args.concurrency} virtual browsers in {args.procs} process(es) (keep-alive "
        f"connection, new cookie jar per login), {args.warmup:g}s warm-up then "
        f"{args.duration:g}s measured; journey **{args.journey}**",
        "- rate limits per source raised out of reach (all the load comes from 127.0.0.1); "
        "they still count",
        "",
        "| journey | logins/s | p50 ms | p90 ms | p99 ms | max ms | errors | target | verdict |",
        "|---|--:|--:|--:|--:|--:|--:|---|---|",
        f"| {args.journey} | {fig['rps']:.1f} | {fig['p50']:.0f} | {fig['p90']:.0f} | "
        f"{fig['p99']:.0f} | {fig['max']:.0f} | {sum(fig['errors'].values())} | "
        f">= {TARGET_RPS:g}/s, p99 < {TARGET_P99_MS:g} ms | {verdict} |",
        "",
        f"Cores used (of 2) during the measured run: {cpu_text(fig['cpu'])}.",
        "",
        "Mean latency per step (ms): " + ", ".join(
            f"{k} {fig['steps'][k]:.1f}" for k in STEPS if k in fig["steps"]),
    ]
    if fig["errors"]:
        lines += ["", f"Errors by step: {fig['errors']}", "", "Samples:", ""]
        lines += [f"    {s}" for s in fig["samples"]]
    if fig["cpu"].get("other", 0) > 0.15:
        lines += ["", f"WARNING: processes outside the benchmark used {fig['cpu']['other']:.2f} "
                  "cores (column 'other'): these figures are pessimistic."]
    if sql:
        lines += render_sql(sql, args).splitlines()
    return "\n".join(lines) + "\n"


def render_sql(sql: dict[str, tuple[int, int, list[str]]], args: argparse.Namespace) -> str:
    lines = []
    if sql:
        lines += ["", "## SQL per step of one login (in process, warm caches)", "",
                  "| step | SQL statements | PostgreSQL round trips |", "|---|--:|--:|"]
        lines += [f"| {k} | {v[0]} | {v[1]} |" for k, v in sql.items()]
        lines += ["", f"Total: {sum(v[0] for v in sql.values())} statements, "
                  f"{sum(v[1] for v in sql.values())} round trips."]
        if args.show_sql:
            for k, v in sql.items():
                lines += ["", f"{k}:", ""] + [f"    {s}" for s in v[2]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_options(p, seed="corp-id-bench-1")
    p.add_argument("--journey", choices=("returning", "first"), default="returning")
    add_load_options(p, workers="server worker processes")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per server worker (idp serve --threads; its default is 1)")
    p.add_argument("--server", choices=("granian", "gunicorn"), default="granian")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="wait up to SECONDS for the machine to go idle before measuring")
    p.add_argument("--reuse", action="store_true",
                   help="keep the seeded database between runs (reseeded only when --people "
                        "or --seed differ)")
    p.add_argument("--keep", action="store_true", help="keep the database and temp folder")
    p.add_argument("--sql", action="store_true", help="count SQL per step (in process)")
    p.add_argument("--show-sql", action="store_true", help="list each step's statements")
    p.add_argument("--cpu", type=int, default=0, metavar="N",
                   help="first measure N logins in process: CPU ms per step (--duration 0: "
                        "only that)")
    p.add_argument("--cprofile", metavar="FILE", help="with --cpu: cProfile those logins")
    p.add_argument("--profile", metavar="DIR", help="py-spy raw stacks of the server into DIR")
    p.add_argument("--pyspy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--out", default=str(BENCH / "results" / "login-latest.md"))
    return p.parse_args(argv)


def add_data_options(p: argparse.ArgumentParser, *, seed: str) -> None:
    """--people, --per-company, --seed (default ``seed``)."""
    p.add_argument("--people", type=int, default=100_000)
    p.add_argument("--per-company", type=int, default=10, help="people per company")
    p.add_argument("--seed", default=seed, help="derives subjects and keys")


def add_load_options(p: argparse.ArgumentParser, *, workers: str) -> None:
    """--concurrency, --procs, --duration, --warmup, --workers (whose help is ``workers``)."""
    p.add_argument("--concurrency", type=int, default=32, help="virtual browsers")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds")
    p.add_argument("--workers", type=int, default=2, help=workers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="corpid-bench-login-"))
    backend = LoginBackend("postgres", PG_SA_URL, REDIS_URL, tmp, common.free_port())
    (tmp / "keys").mkdir()
    backend.extra_env = {"IDP_ISSUER": backend.login_issuer,
                         **{f"IDP_{k}": str(v) for k, v in SERVER_LIMITS.items()}}
    fig: dict[str, Any] = {}
    sql = None
    with common.cleanup_on_signals():
        try:
            from idp import create_app

            if not (args.reuse and db_exists()):
                drop_db()
                pg_admin(f"CREATE DATABASE {PG_DB}")
            backend.app = create_app(backend.overrides())
            clients = seeded_clients(backend, args.people, args.seed)
            if clients is None:
                drop_db()
                pg_admin(f"CREATE DATABASE {PG_DB}")
                backend.app = create_app(backend.overrides())
                seeding = time.monotonic()
                clients = seed_database(backend, args.people, args.per_company, args.seed)
                log(f"seeding took {time.monotonic() - seeding:.0f}s")
            else:
                common.create_schema(backend)  # idempotent: migrations and keys
                log(f"reusing {PG_DB} ({args.people:,} people)")
            client_id = clients[args.journey]
            reset_first_time(args.journey, client_id)
            if args.sql:
                sql = count_sql(backend, client_id, args.journey, args.seed, args.people)
                reset_first_time(args.journey, client_id)
                for step, (n, t, _) in sql.items():
                    log(f"SQL: {step}: {n} statements, {t} round trips")
            if args.cpu:
                cpu = cpu_per_step(backend, client_id, args.journey, args.seed, args.people,
                                   args.cpu, args.cprofile)
                reset_first_time(args.journey, client_id)
                log("CPU ms per step, in process: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in cpu.items()) + f"; total {sum(cpu.values()):.2f}")
            if args.duration <= 0:  # only the in-process figures
                print(render_sql(sql, args) if sql else "", end="")
                return 0
            with backend.app.app_context():
                from idp.extensions import db

                db.engine.dispose()
            argv_ = [str(common.VENV_BIN / "idp"), "serve", "--host", HOST, "--port",
                     str(backend.port), "--workers", str(args.workers), "--threads",
                     str(args.threads), "--server", args.server]
            server = common.Server(f"idp-serve-{args.server}", argv_, backend, tmp)
            server.start()
            try:
                log(f"server up (workers {server.worker_pids()}); {args.concurrency} browsers, "
                    f"{args.warmup:g}s warm-up, {args.duration:g}s measured")
                fig = measure(backend, server, args, client_id)
                if server.proc is not None and server.proc.poll() is not None:
                    fig["errors"]["server died"] = 1
            finally:
                server.stop()
        finally:
            common.stop_all()
            if not (args.keep or args.reuse):
                drop_db()
            if args.keep:
                log(f"kept {tmp} and database {PG_DB}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    meta = {"when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": common.git_commit(),
            "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"}
    report = render(fig, sql, args, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    log(f"done in {time.monotonic() - started:.0f}s; written to {out}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        sys.exit(worker_main())
    sys.exit(main())
