#!/usr/bin/env python3
"""Corp ID throughput benchmark (issue 2): prints figures, never asserts.

For each backend (SQLite, PostgreSQL) it builds a scratch database with 1,000 registered
clients and one signed-in person, starts the provider under each WSGI server variant
(2 workers, 127.0.0.1 only) and drives it with ``wrk`` from a separate process at 64
connections for a bounded time per endpoint:

    discovery, JWKS, client_credentials grant (JWT access token), introspection, userinfo

It prints requests/s, p50/p99 latency and error counts beside the targets of the issue, and
writes the same table to ``bench/results/latest.md`` (git-ignored). It also counts, in
process, the SQL statements and transactions each endpoint costs (the figure that dominates
on PostgreSQL).

    python bench/run.py                       # both backends, default server variants
    python bench/run.py --backend postgres --servers granian --duration 10

Every server it starts runs in its own process group and is killed on exit; the scratch
PostgreSQL database ``corpid_bench`` is dropped at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "corpid_bench"
PG_SA_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"
REDIS_URL = "redis://127.0.0.1:6379/14"
SECRET_KEY = "corp-id-bench-secret-not-for-production"

ENDPOINTS = ("discovery", "jwks", "client_credentials", "introspection", "userinfo")

# The issue's targets (PostgreSQL, "at scale" configuration, 64 connections, this 2-core
# machine with the load generator on it): (min requests/s, max p99 ms or None).
TARGETS: dict[str, tuple[float, float | None]] = {
    "discovery": (8000, None),
    "jwks": (8000, None),
    "client_credentials": (2500, 50.0),
    "introspection": (4000, None),
}


# --- small helpers ----------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode, then Basic. Our ids and secrets are URL-safe base64,
    # so encoding changes nothing; checked rather than assumed.
    from urllib.parse import quote

    assert quote(client_id, safe="") == client_id
    assert quote(secret, safe="") == secret
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def http(method: str, url: str, *, headers: dict[str, str] | None = None,
         body: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    assert url.startswith(f"http://{HOST}:"), url  # loopback only
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=body.encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- backends: scratch databases --------------------------------------------------------------

@dataclass
class Backend:
    name: str
    database_url: str
    redis_url: str
    workdir: Path
    port: int
    clients: list[tuple[str, str]] = field(default_factory=list)  # (client_id, secret)
    user_token: str = ""
    app: Any = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
        env.update({
            "IDP_DATABASE_URL": self.database_url,
            "IDP_SECRET_KEY": SECRET_KEY,
            "IDP_KEYS_DIR": str(self.workdir / "keys"),
            "IDP_ISSUER": self.issuer,
            # Rate limits off so that the benchmark measures the endpoints, not the limiter
            # (see README: the per-client limit costs a Redis or database round trip).
            "IDP_RATE_LIMIT_SOURCE_PER_MINUTE": "0",
            "IDP_RATE_LIMIT_CLIENT_PER_MINUTE": "0",
            "IDP_LOG_LEVEL": "WARNING",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        if self.redis_url:
            env["IDP_REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env

    def overrides(self) -> dict[str, Any]:
        return {"DATABASE_URL": self.database_url, "SECRET_KEY": SECRET_KEY,
                "KEYS_DIR": str(self.workdir / "keys"), "ISSUER": self.issuer,
                "REDIS_URL": self.redis_url, "RATE_LIMIT_SOURCE_PER_MINUTE": 0,
                "RATE_LIMIT_CLIENT_PER_MINUTE": 0, "LOG_LEVEL": "WARNING"}


def pg_admin(sql: str) -> None:
    import psycopg

    # Only ever the scratch database.
    assert PG_DB in sql
    assert " test" not in sql
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def drop_pg() -> None:
    with contextlib.suppress(Exception):
        pg_admin(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")


def cli_has(command: str) -> bool:
    """True when ``idp <command>`` exists (the CLI is being written alongside this script)."""
    exe = VENV_BIN / "idp"
    if not exe.exists():
        return False
    try:
        out = subprocess.run([str(exe), command, "--help"], capture_output=True, text=True,
                             timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def create_schema(backend: Backend) -> str:
    """Tables and signing keys: ``idp init`` if the CLI has it, else the same steps in
    process (Alembic upgrade to head, then ``ensure_keys``). Returns what was used."""
    if cli_has("init"):
        out = subprocess.run([str(VENV_BIN / "idp"), "init"], env=backend.env(), cwd=ROOT,
                             capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)
        if out.returncode == 0:
            return "idp init"
        log(f"`idp init` failed ({out.returncode}); falling back in process:\n"
            f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    from idp import schema
    from idp.keys import services as keys

    with backend.app.app_context():
        schema.upgrade()
        keys.ensure_keys(actor="bench")
    return "alembic upgrade head + ensure_keys (in process)"


def setup_backend(backend: Backend, n_clients: int) -> None:
    """Scratch database, 1,000 clients and one signed-in person with a user access token."""
    from idp import create_app

    (backend.workdir / "keys").mkdir(parents=True, exist_ok=True)
    backend.app = create_app(backend.overrides())
    how = create_schema(backend)
    log(f"{backend.name}: schema by {how}")

    from idp.clients.services import create_client
    from idp.extensions import db

    started = time.monotonic()
    with backend.app.app_context():
        for i in range(n_clients):
            client, secret = create_client(
                name=f"bench client {i:04d}", redirect_uris=[f"https://rp{i}.example/cb"],
                auth_method="client_secret_basic",
                grant_types=["client_credentials", "authorization_code"], scopes=["corp"],
                actor="operator:bench")
            assert secret is not None
            backend.clients.append((client.client_id, secret))
        db.session.remove()
    log(f"{backend.name}: registered {n_clients} clients in "
        f"{time.monotonic() - started:.1f}s")
    backend.user_token = mint_user_token(backend)


def mint_user_token(backend: Backend) -> str:
    """A person, a company, a membership and a sign-in session, then a grant and its access
    token minted by the same functions the authorization-code grant uses (the sign-in itself
    needs a hardware key, which a benchmark cannot press)."""
    from idp.authn.services import start_session
    from idp.clients.services import create_client
    from idp.extensions import db
    from idp.oauth import tokens
    from idp.orgs.models import Company, Membership, Person

    with backend.app.app_context():
        client, _ = create_client(
            name="bench web app", redirect_uris=["https://app.example/cb"],
            auth_method="client_secret_basic", grant_types=["authorization_code"],
            scopes=["openid", "profile", "email", "corp"], actor="operator:bench")
        person = Person(display_name="Bench Person", email="bench@example.com")
        company = Company(br_number="12345678", name_en="Bench Trading Limited")
        db.session.add_all([person, company])
        db.session.flush()
        db.session.add(Membership(person_id=person.id, company_id=company.id,
                                  roles=["admin"]))
        db.session.commit()
        session, _ = start_session(person=person, security_key_id=None, acr="phrh",
                                   amr=["hwk", "mfa"])
        grant = tokens.create_grant(
            client=client, person=person, company=company,
            scope="openid profile email corp", session_id=session.id, security_key_id=None,
            auth_time=session.auth_time, acr="phrh", amr=["hwk", "mfa"],
            claims_request=None)
        principal = tokens.principal_for_grant(grant)
        assert principal is not None
        token, _ = tokens.issue_access_token(client=client, scope=grant.scope,
                                             principal=principal)
        db.session.commit()
        db.session.remove()
    return token


def mint_client_tokens(backend: Backend) -> list[str]:
    """One client_credentials access token per client, signed by the same function the
    token endpoint uses (fresh per server run, as they live ACCESS_TOKEN_TTL)."""
    from idp.clients.models import Client
    from idp.extensions import db
    from idp.oauth import tokens

    ids = [cid for cid, _ in backend.clients]
    with backend.app.app_context():
        rows = {c.client_id: c for c in db.session.query(Client)
                .filter(Client.client_id.in_(ids))}
        out = [tokens.issue_access_token(client=rows[cid], scope="corp", principal=None)[0]
               for cid in ids]
        db.session.remove()
    return out


# --- SQL round trips per request (in process, not timed) --------------------------------------

def count_sql(backend: Backend, introspect_tokens: list[str]) -> dict[str, dict[str, Any]]:
    """SQL statements one request of each endpoint costs and, on PostgreSQL, the round trips
    they take on the wire (BEGIN and COMMIT/ROLLBACK included), with warm caches."""
    from sqlalchemy import event

    from idp.extensions import db

    app = backend.app
    cid, secret = backend.clients[0]
    auth = basic(cid, secret)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    calls = {
        "discovery": ("GET", "/.well-known/openid-configuration", {}, None),
        "jwks": ("GET", "/jwks.json", {}, None),
        "client_credentials": ("POST", "/token", {**form, "Authorization": auth},
                               "grant_type=client_credentials&scope=corp"),
        "introspection": ("POST", "/introspect", {**form, "Authorization": auth},
                          f"token={introspect_tokens[0]}"),
        "userinfo": ("GET", "/userinfo", {"Authorization": f"Bearer {backend.user_token}"},
                     None),
    }
    counts: dict[str, dict[str, Any]] = {}
    with app.app_context():
        engine = db.engine
    statements: list[str] = []
    wire = {"round_trips": 0}

    def dbapi_of(conn: Any) -> Any:
        return conn.connection.dbapi_connection

    def in_transaction(dbapi: Any) -> bool | None:
        """psycopg: is a transaction open on the server? None for other drivers."""
        info = getattr(dbapi, "info", None)
        status = getattr(info, "transaction_status", None)
        return None if status is None else int(status) != 0  # 0: IDLE

    def on_exec(conn: Any, cursor: Any, stmt: str, *a: Any) -> None:
        statements.append(" ".join(stmt.split())[:100])
        dbapi = dbapi_of(conn)
        open_ = in_transaction(dbapi)
        if open_ is not None:
            # psycopg sends BEGIN on its own before the first statement of a transaction.
            wire["round_trips"] += 1 + (0 if dbapi.autocommit or open_ else 1)

    def on_end(conn: Any) -> None:
        if in_transaction(dbapi_of(conn)):
            wire["round_trips"] += 1  # COMMIT or ROLLBACK

    def on_reset(dbapi: Any, record: Any, *a: Any) -> None:
        if in_transaction(dbapi):
            wire["round_trips"] += 1  # the pool's rollback on return

    def measure(name: str, call: tuple[str, str, dict[str, str], str | None]) -> None:
        method, path, headers, body = call
        statements.clear()
        wire["round_trips"] = 0
        resp = client.open(path, method=method, headers=headers, data=body)
        ok = resp.status_code == 200
        if name.startswith("introspection"):
            ok = ok and resp.get_json().get("active") is True
        counts[name] = {"status": resp.status_code, "ok": ok, "statements": len(statements),
                        "sql": list(statements),
                        "round_trips": wire["round_trips"] if engine.dialect.name ==
                        "postgresql" else None}

    hooks = [(engine, "before_cursor_execute", on_exec), (engine, "commit", on_end),
             (engine, "rollback", on_end), (engine.pool, "reset", on_reset)]
    for target, name, fn in hooks:
        event.listen(target, name, fn)
    try:
        client = app.test_client()
        for name, call in calls.items():
            measure(name, call)  # first: fills per-process caches (keys, JWKS, this client)
            measure(name, call)  # counted: warm caches
        # A client this process has not seen yet (per-worker client caches start cold).
        for k, name in ((1, "client_credentials"), (2, "introspection")):
            cid_k, secret_k = backend.clients[k]
            method, path, headers, body = calls[name]
            headers = {**headers, "Authorization": basic(cid_k, secret_k)}
            if name == "introspection":
                body = f"token={introspect_tokens[k]}"
            measure(f"{name} (client not cached)", (method, path, headers, body))
    finally:
        for target, name, fn in hooks:
            event.remove(target, name, fn)
    return counts


# --- servers ----------------------------------------------------------------------------------

def server_commands(port: int) -> dict[str, list[str]]:
    bind = f"{HOST}:{port}"
    gunicorn = [str(VENV_BIN / "gunicorn"), "-w", "2", "-b", bind, "--log-level", "warning"]
    granian = [str(VENV_BIN / "granian"), "--interface", "wsgi", "--workers", "2",
               "--host", HOST, "--port", str(port), "--log-level", "warning", "--no-ws"]
    return {
        "idp-serve": [str(VENV_BIN / "idp"), "serve", "--host", HOST, "--port", str(port),
                      "--workers", "2"],
        "idp-serve-granian": [str(VENV_BIN / "idp"), "serve", "--host", HOST, "--port",
                              str(port), "--workers", "2", "--server", "granian"],
        "gunicorn-sync": [*gunicorn, "idp:create_app()"],
        "gunicorn-gthread": [*gunicorn, "-k", "gthread", "--threads", "4",
                             "idp:create_app()"],
        "granian": [*granian, "--blocking-threads", "1", "--factory", "idp:create_app"],
        "granian-bt4": [*granian, "--blocking-threads", "4", "--factory", "idp:create_app"],
    }


# `idp serve` as shipped, then the alternatives; gunicorn-sync stands in for idp-serve while
# the CLI has no `serve`. About 35 s per server and backend at the default durations.
DEFAULT_SERVERS = ("idp-serve", "gunicorn-gthread", "granian")


class Server:
    def __init__(self, name: str, argv: list[str], backend: Backend, logdir: Path, *,
                 ready_path: str = "/.well-known/openid-configuration") -> None:
        self.name, self.argv, self.backend = name, argv, backend
        self.logpath = logdir / f"{backend.name}-{name}.log"
        self.ready_path = ready_path  # up once a GET of it answers 200
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        wait_port_free(self.backend.port)
        self.logfile = self.logpath.open("wb")
        self.proc = subprocess.Popen(self.argv, env=self.backend.env(), cwd=ROOT,
                                     stdout=self.logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        _RUNNING.append(self)
        deadline = time.monotonic() + timeout
        url = self.backend.issuer + self.ready_path
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see "
                                   f"{self.logpath}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                status, _ = http("GET", url, timeout=1)
                if status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within {timeout}s:\n{self.tail()}")

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        out = subprocess.run(["ps", "-o", "pid=,pgid=,ppid=", "-e"], capture_output=True,
                             text=True).stdout.split()
        rows = [tuple(map(int, out[i:i + 3])) for i in range(0, len(out), 3)]
        return [pid for pid, pgid, ppid in rows if pgid == self.proc.pid
                and pid != self.proc.pid]

    def tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.logpath.read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # Workers left behind by a master that died first share its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.logfile.close()
        if self in _RUNNING:
            _RUNNING.remove(self)
        self.proc = None


_RUNNING: list[Server] = []


def stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()


def wait_port_free(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
                return
            except OSError:
                time.sleep(0.2)
    raise RuntimeError(f"port {port} still busy")


# --- the load: wrk with generated Lua ---------------------------------------------------------

LUA_TEMPLATE = """-- generated by bench/run.py
local data = {
%(rows)s
}
local reqs = {}
local i = 0
local n = 0
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  for k, d in ipairs(data) do
    local h = {}
    if d[3] ~= "" then h["Authorization"] = d[3] end
    local body = nil
    if d[4] ~= "" then
      body = d[4]
      h["Content-Type"] = "application/x-www-form-urlencoded"
    end
    reqs[k] = wrk.format(d[1], d[2], h, body)
  end
  n = #reqs
  i = ((tid or 0) * 499) %% n
end

function request()
  i = i %% n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"status":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,"mean":%%.1f}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def lua_str(value: str) -> str:
    if any(c in value for c in '"\\\n\r') or not value.isascii():
        raise ValueError("unexpected character in a Lua literal")
    return f'"{value}"'


def write_lua(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    text = ",\n".join("  {" + ", ".join(lua_str(v) for v in row) + "}" for row in rows)
    path.write_text(LUA_TEMPLATE % {"rows": text})
    return path


def scenario_rows(backend: Backend, endpoint: str, introspect_tokens: list[str]
                  ) -> list[tuple[str, str, str, str]]:
    if endpoint == "discovery":
        return [("GET", "/.well-known/openid-configuration", "", "")]
    if endpoint == "jwks":
        return [("GET", "/jwks.json", "", "")]
    if endpoint == "client_credentials":
        return [("POST", "/token", basic(cid, secret), "grant_type=client_credentials&scope=corp")
                for cid, secret in backend.clients]
    if endpoint == "introspection":
        return [("POST", "/introspect", basic(cid, secret),
                 f"token={tok}&token_type_hint=access_token")
                for (cid, secret), tok in zip(backend.clients, introspect_tokens, strict=True)]
    if endpoint == "userinfo":
        return [("GET", "/userinfo", f"Bearer {backend.user_token}", "")]
    raise ValueError(endpoint)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server_pgid: int, groups: dict[int, str] | None = None
                 ) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process, tagged server/postgres/redis/other (or the
    tag ``groups`` gives the process group, e.g. a load generator's own group)."""
    snap: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        pgid = int(fields[2])
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if pgid == server_pgid:
            tag = "server"
        elif groups and pgid in groups:
            tag = groups[pgid]
        elif comm.startswith(("postgres", "postmaster")):
            tag = "postgres"
        elif comm.startswith("redis"):
            tag = "redis"
        else:
            tag = "other"
        snap[int(entry.name)] = (tag, seconds)
    return snap


def cpu_split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
              children: float, wall: float) -> dict[str, float]:
    """Cores used on average during ``wall`` seconds, by tag; ``children`` is the CPU time
    of processes this script waited for meanwhile (wrk)."""
    used = {"server": 0.0, "postgres": 0.0, "redis": 0.0, "other": 0.0}
    for pid, (tag, seconds) in after.items():
        used[tag] = used.get(tag, 0.0) + seconds - before.get(pid, (tag, 0.0))[1]
    used["wrk"] = children
    return {k: v / wall for k, v in used.items()}


def busy_cores(interval: float = 0.5) -> float:
    """Cores busy machine-wide over ``interval`` seconds (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    total = max(1, total1 - total0)
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / total)


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle; returns busy cores."""
    deadline = time.monotonic() + max_wait
    busy = busy_cores()
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_cores()
    return busy


@dataclass
class Result:
    backend: str
    server: str
    endpoint: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    requests: int = 0
    non2xx: int = 0
    socket_errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    error: str = ""


def run_wrk(url: str, script: Path, *, connections: int, threads: int, duration: float,
            timeout: float = 5.0) -> dict[str, Any]:
    assert url.startswith(f"http://{HOST}:")
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            "--timeout", f"{timeout:g}s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                         stdin=subprocess.DEVNULL)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            return dict(json.loads(line[len("BENCHJSON "):]))
    raise RuntimeError(f"wrk gave no figures (rc {out.returncode}):\n{out.stdout}\n{out.stderr}")


def start_profiler(args: argparse.Namespace, server: Server, endpoint: str
                   ) -> subprocess.Popen[bytes] | None:
    """py-spy on the server's processes for the measured run (collapsed stacks)."""
    if not args.profile or server.proc is None:
        return None
    out = Path(args.profile) / f"{server.backend.name}-{server.name}-{endpoint}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [args.pyspy, "record", "--pid", str(server.proc.pid), "--subprocesses",
            "--nonblocking", "--rate", "200", "--duration", str(max(1, round(args.duration))),
            "--format", "raw", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)


def smoke(backend: Backend, introspect_tokens: list[str]) -> list[str]:
    """A few real requests with their answers checked, so that a fast wrong answer
    (401s, ``active: false``) is caught rather than timed."""
    problems = []
    base = backend.issuer
    status, body = http("GET", base + "/.well-known/openid-configuration")
    if status != 200 or json.loads(body).get("issuer") != base:
        problems.append(f"discovery {status}")
    status, body = http("GET", base + "/jwks.json")
    if status != 200 or not json.loads(body).get("keys"):
        problems.append(f"jwks {status}")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for k in (0, len(backend.clients) // 2, len(backend.clients) - 1):
        cid, secret = backend.clients[k]
        auth = basic(cid, secret)
        status, body = http("POST", base + "/token", headers={**form, "Authorization": auth},
                            body="grant_type=client_credentials&scope=corp")
        if status != 200 or "access_token" not in json.loads(body):
            problems.append(f"token {status} {body[:200]!r}")
            continue
        fresh = json.loads(body)["access_token"]
        for tok in (fresh, introspect_tokens[k]):
            status, body = http("POST", base + "/introspect",
                                headers={**form, "Authorization": auth}, body=f"token={tok}")
            if status != 200 or json.loads(body).get("active") is not True:
                problems.append(f"introspection {status} {body[:200]!r}")
    status, body = http("GET", base + "/userinfo",
                        headers={"Authorization": f"Bearer {backend.user_token}"})
    if status != 200 or "corp" not in json.loads(body):
        problems.append(f"userinfo {status} {body[:200]!r}")
    return problems


def bench_server(backend: Backend, server: Server, args: argparse.Namespace,
                 scripts_dir: Path) -> list[Result]:
    tokens = mint_client_tokens(backend)
    results = []
    server.start()
    try:
        problems = smoke(backend, tokens)
        if problems:
            log(f"{backend.name}/{server.name}: smoke check FAILED: {problems}")
        pids = server.worker_pids()
        log(f"{backend.name}/{server.name}: up (pid {server.proc.pid if server.proc else '?'}, "
            f"workers {pids})")
        for endpoint in args.endpoints:
            script = write_lua(scripts_dir / f"{backend.name}-{endpoint}.lua",
                               scenario_rows(backend, endpoint, tokens))
            result = Result(backend.name, server.name, endpoint)
            try:
                if args.warmup > 0:
                    run_wrk(backend.issuer, script, connections=args.connections,
                            threads=args.threads, duration=args.warmup)
                if args.wait_quiet > 0:
                    busy = wait_quiet(args.wait_quiet)
                    if busy > 0.25:
                        log(f"machine still busy ({busy:.2f} cores) before {endpoint}")
                spy = start_profiler(args, server, endpoint)
                pgid = server.proc.pid if server.proc else -1
                before = cpu_snapshot(pgid)
                kids = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall = time.monotonic()
                try:
                    figures = run_wrk(backend.issuer, script, connections=args.connections,
                                      threads=args.threads, duration=args.duration)
                    wall = time.monotonic() - wall
                    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    result.cpu = cpu_split(before, cpu_snapshot(pgid),
                                           kids_after.ru_utime + kids_after.ru_stime
                                           - kids.ru_utime - kids.ru_stime, wall)
                finally:
                    if spy is not None:
                        spy.wait(timeout=args.duration + 30)
                seconds = figures["duration_us"] / 1e6
                result.requests = figures["requests"]
                result.rps = figures["requests"] / seconds if seconds else 0.0
                result.p50_ms = figures["p50"] / 1000
                result.p90_ms = figures["p90"] / 1000
                result.p99_ms = figures["p99"] / 1000
                result.max_ms = figures["max"] / 1000
                result.non2xx = figures["status"]
                result.socket_errors = (figures["connect"] + figures["read"] + figures["write"]
                                        + figures["timeout"])
            except Exception as exc:  # report and go on with the next endpoint
                result.error = str(exc)[:300]
            if problems:
                result.error = (result.error + " smoke check failed").strip()
            if server.proc is not None and server.proc.poll() is not None:
                result.error = (result.error + " server died").strip()
            log(f"{backend.name}/{server.name}/{endpoint}: {result.rps:,.0f} req/s, "
                f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
                f"non-2xx {result.non2xx}, socket errors {result.socket_errors}, "
                f"cores: {cpu_text(result.cpu)}"
                + (f" ERROR {result.error}" if result.error else ""))
            results.append(result)
        after = smoke(backend, tokens)
        if after:
            log(f"{backend.name}/{server.name}: smoke check after load FAILED: {after}")
    finally:
        server.stop()
    return results


# --- report -----------------------------------------------------------------------------------

def cpu_text(cpu: dict[str, float]) -> str:
    if not cpu:
        return "-"
    names = {"server": "srv", "postgres": "pg", "redis": "redis", "wrk": "wrk",
             "other": "other"}
    return " ".join(f"{names[k]} {v:.2f}" for k, v in cpu.items() if v >= 0.005)


def verdict(r: Result) -> str:
    target = TARGETS.get(r.endpoint)
    if target is None:
        return "-"
    if r.error or r.requests == 0:
        return "n/a"
    rps_min, p99_max = target
    ok = r.rps >= rps_min and (p99_max is None or r.p99_ms < p99_max) and r.non2xx == 0
    return "meets" if ok else "MISSES"


def target_text(endpoint: str) -> str:
    target = TARGETS.get(endpoint)
    if target is None:
        return "-"
    rps_min, p99_max = target
    return f">= {rps_min:,.0f}/s" + (f", p99 < {p99_max:g} ms" if p99_max else "")


def render(results: list[Result], sql: dict[str, dict[str, dict[str, Any]]],
           args: argparse.Namespace, meta: dict[str, str]) -> str:
    lines = [
        "# Corp ID benchmark: latest figures",
        "",
        f"- when: {meta['when']}; commit {meta['commit']}",
        f"- machine: {meta['machine']}; load: wrk -t{args.threads} -c{args.connections}, "
        f"{args.warmup:g}s warm-up then {args.duration:g}s per endpoint, same machine, loopback",
        "- server: 2 workers each; rate limits off (IDP_RATE_LIMIT_*_PER_MINUTE=0); "
        "PostgreSQL run with IDP_REDIS_URL (the at-scale configuration)",
        f"- data: {args.clients} clients (client_secret_basic), client_credentials rotates "
        "over all of them; each introspection is of a client_credentials token by its own "
        "client; userinfo with one user access token (scope openid profile email corp)",
        *([f"- extra server settings: {', '.join(f'{k}={v}' for k, v in args.extra_env.items())}"]
          if args.extra_env else []),
        "- targets are the issue's, for PostgreSQL; SQLite figures are for reference",
        "- cores used: average CPU cores (of 2) during the measured run by the server's "
        "processes (srv), PostgreSQL (pg), Redis, the load generator (wrk) and the rest",
        "",
        "| backend | server | endpoint | req/s | p50 ms | p99 ms | max ms | non-2xx | "
        "socket err | target | verdict | cores used |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|---|---|---|",
    ]
    for r in results:
        v = verdict(r) if r.backend == "postgres" else (
            "(ref)" if r.endpoint in TARGETS else "-")
        err = f" ({r.error})" if r.error else ""
        lines.append(
            f"| {r.backend} | {r.server} | {r.endpoint}{err} | {r.rps:,.0f} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.max_ms:.0f} | {r.non2xx} | {r.socket_errors} | "
            f"{target_text(r.endpoint)} | {v} | {cpu_text(r.cpu)} |")
    busiest = max((r.cpu.get("other", 0.0) for r in results), default=0.0)
    if busiest > 0.15:
        lines += ["", f"WARNING: processes outside the benchmark used up to {busiest:.2f} "
                  "cores during some runs (column 'other'): those figures are pessimistic."]
    if sql:
        lines += ["", "## SQL per request (in process, warm caches)", "",
                  "Round trips: what travels to PostgreSQL, BEGIN and COMMIT/ROLLBACK included "
                  "(SQLite is in process).", "",
                  "| backend | endpoint | SQL statements | round trips |",
                  "|---|---|--:|--:|"]
        for backend, counts in sql.items():
            for endpoint, c in counts.items():
                flag = "" if c["ok"] else f" (status {c['status']}, NOT OK)"
                trips = "-" if c["round_trips"] is None else c["round_trips"]
                lines.append(f"| {backend} | {endpoint}{flag} | {c['statements']} | {trips} |")
        if args.show_sql:
            for backend, counts in sql.items():
                for endpoint, c in counts.items():
                    if c["sql"]:
                        lines += ["", f"{backend} {endpoint}:", ""]
                        lines += [f"    {s}" for s in c["sql"]]
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "idp"], capture_output=True,
                           text=True, cwd=ROOT).stdout.strip()
    return out.stdout.strip() + (" (idp/ has uncommitted changes)" if dirty else "")


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                   help="comma-separated: idp-serve, idp-serve-granian, gunicorn-sync, "
                        "gunicorn-gthread, granian, granian-bt4 (gunicorn-sync stands in "
                        "for idp-serve while the CLI lacks `serve`)")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS))
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per endpoint")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per endpoint")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each measured run, wait up to SECONDS for other processes "
                        "on the machine to go idle (shared machines)")
    p.add_argument("--profile", metavar="DIR",
                   help="record py-spy collapsed stacks of the servers during each measured "
                        "run into DIR (figures then include py-spy's overhead)")
    p.add_argument("--pyspy", default=shutil.which("py-spy") or "py-spy",
                   help="the py-spy executable (pip install py-spy)")
    p.add_argument("--env", action="append", default=[], metavar="IDP_NAME=VALUE",
                   help="extra setting for the servers, e.g. IDP_CLIENT_CACHE_TTL=60 or "
                        "IDP_ACCESS_TOKEN_ALG=RS256 (repeatable; shown in the report)")
    p.add_argument("--show-sql", action="store_true", help="list each endpoint's statements")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp folder and the corpid_bench database")
    p.add_argument("--out", default=str(BENCH / "results" / "latest.md"))
    args = p.parse_args(argv)
    args.endpoints = [e for e in args.endpoints.split(",") if e]
    for e in args.endpoints:
        if e not in ENDPOINTS:
            p.error(f"unknown endpoint {e!r}")
    args.extra_env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("IDP_"):
            p.error(f"--env wants IDP_NAME=VALUE, not {item!r}")
        args.extra_env[name] = value
    args.servers = [s for s in args.servers.split(",") if s]
    known = server_commands(0)
    for s in args.servers:
        if s not in known:
            p.error(f"unknown server {s!r}")
    return args


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        stop_all()
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    os.environ.update(args.extra_env)  # the in-process setup app sees the same settings
    servers = list(args.servers)
    if any(s.startswith("idp-serve") for s in servers) and not cli_has("serve"):
        log("`idp serve` is not available: gunicorn-sync stands in for idp-serve")
        servers = [s for s in servers if not s.startswith("idp-serve")]
        if "gunicorn-sync" not in servers:
            servers.insert(0, "gunicorn-sync")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="corpid-bench-"))
    scripts = tmp / "lua"
    scripts.mkdir()
    results: list[Result] = []
    sql: dict[str, dict[str, dict[str, Any]]] = {}
    with cleanup_on_signals():
        try:
            for name in backends:
                workdir = tmp / name
                workdir.mkdir()
                if name == "sqlite":
                    backend = Backend(name, f"sqlite:///{workdir / 'idp.sqlite3'}", "", workdir,
                                      free_port())
                else:
                    drop_pg()
                    pg_admin(f"CREATE DATABASE {PG_DB}")
                    backend = Backend(name, PG_SA_URL, REDIS_URL, workdir, free_port())
                backend.extra_env = dict(args.extra_env)
                setup_backend(backend, args.clients)
                sql[name] = count_sql(backend, mint_client_tokens(backend))
                for c, counts in sql[name].items():
                    trips = counts["round_trips"]
                    log(f"{name}: {c}: {counts['statements']} SQL statements"
                        + ("" if trips is None else f", {trips} round trips")
                        + ("" if counts["ok"] else f" (status {counts['status']}, NOT OK)"))
                with backend.app.app_context():
                    from idp.extensions import db

                    db.engine.dispose()
                for server_name in servers:
                    argv_ = server_commands(backend.port)[server_name]
                    server = Server(server_name, argv_, backend, tmp)
                    try:
                        results += bench_server(backend, server, args, scripts)
                    except Exception as exc:
                        log(f"{name}/{server_name}: FAILED: {exc}")
                        results += [Result(name, server_name, e, error=str(exc)[:200])
                                    for e in args.endpoints]
        finally:
            stop_all()
            if "postgres" in backends and not args.keep:
                drop_pg()
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                log(f"kept {tmp} and database {PG_DB}")
    meta = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
    }
    report = render(results, sql, args, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    log(f"done in {time.monotonic() - started:.0f}s; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
