#!/usr/bin/env python3
"""Per-request cost of each hot endpoint, in one process, no HTTP server and no load
generator: what a worker spends on one request (CPU and wall time), and optionally where
(cProfile). Complements ``bench/run.py``: these figures do not depend on the WSGI server or
on what else the machine runs, so they show what a change to ``idp/`` buys.

    python bench/inprocess.py --backend postgres -n 2000
    python bench/inprocess.py --backend postgres --cprofile client_credentials

Calls the WSGI app directly with a pre-built environ (the static-documents fast path
included), on a scratch database set up exactly as ``bench/run.py`` does.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run


def environ_for(backend: run.Backend, endpoint: str, k: int, tokens: list[str]
                ) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    cid, secret = backend.clients[k % len(backend.clients)]
    form = "application/x-www-form-urlencoded"
    base = backend.issuer
    if endpoint == "discovery":
        b = EnvironBuilder(path="/.well-known/openid-configuration", base_url=base)
    elif endpoint == "jwks":
        b = EnvironBuilder(path="/jwks.json", base_url=base)
    elif endpoint == "client_credentials":
        b = EnvironBuilder(path="/token", method="POST", base_url=base, content_type=form,
                           headers={"Authorization": run.basic(cid, secret)},
                           data="grant_type=client_credentials&scope=corp")
    elif endpoint == "introspection":
        b = EnvironBuilder(path="/introspect", method="POST", base_url=base, content_type=form,
                           headers={"Authorization": run.basic(cid, secret)},
                           data=f"token={tokens[k % len(tokens)]}&token_type_hint=access_token")
    elif endpoint == "userinfo":
        b = EnvironBuilder(path="/userinfo", base_url=base,
                           headers={"Authorization": f"Bearer {backend.user_token}"})
    else:
        raise ValueError(endpoint)
    env = b.get_environ()
    env["REMOTE_ADDR"] = "127.0.0.1"
    env["bench.body"] = env["wsgi.input"].read()
    return env


def call(app: Any, env: dict[str, Any]) -> str:
    env = dict(env)
    env["wsgi.input"] = io.BytesIO(env["bench.body"])
    status: list[str] = []

    def start_response(s: str, headers: Any, exc_info: Any = None) -> None:
        status.append(s)

    body = app(env, start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return status[0]


def measure(app: Any, envs: list[dict[str, Any]], n: int) -> tuple[float, float, int]:
    bad = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        if not call(app, envs[i % len(envs)]).startswith("200"):
            bad += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / n * 1000, wall / n * 1000, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    p.add_argument("--endpoints", default=",".join(run.ENDPOINTS))
    p.add_argument("-n", type=int, default=2000, help="requests per endpoint")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--cprofile", metavar="ENDPOINT", action="append", default=[],
                   help="print the cProfile top functions of this endpoint")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    endpoints = [e for e in args.endpoints.split(",") if e]

    tmp = Path(tempfile.mkdtemp(prefix="corpid-inproc-"))
    try:
        workdir = tmp / args.backend
        workdir.mkdir()
        if args.backend == "sqlite":
            backend = run.Backend("sqlite", f"sqlite:///{workdir / 'idp.sqlite3'}", "", workdir,
                                  run.free_port())
        else:
            run.drop_pg()
            run.pg_admin(f"CREATE DATABASE {run.PG_DB}")
            backend = run.Backend("postgres", run.PG_SA_URL, run.REDIS_URL, workdir,
                                  run.free_port())
        run.setup_backend(backend, args.clients)
        tokens = run.mint_client_tokens(backend)
        app = backend.app
        print(f"# per-request cost, {args.backend}, {args.n} requests per endpoint, one "
              "process, warm caches")
        print("| endpoint | CPU ms/request | wall ms/request | wall - CPU (waiting) | non-200 |")
        print("|---|--:|--:|--:|--:|")
        for endpoint in endpoints:
            envs = [environ_for(backend, endpoint, k, tokens)
                    for k in range(min(args.n, len(backend.clients)))]
            measure(app, envs, len(envs))  # warm-up: keys, JWKS, every client in the cache
            cpu, wall, bad = measure(app, envs, args.n)
            print(f"| {endpoint} | {cpu:.3f} | {wall:.3f} | {wall - cpu:.3f} | {bad} |",
                  flush=True)
        for endpoint in args.cprofile:
            envs = [environ_for(backend, endpoint, k, tokens)
                    for k in range(min(args.n, len(backend.clients)))]
            measure(app, envs, len(envs))
            prof = cProfile.Profile()
            prof.enable()
            measure(app, envs, args.n)
            prof.disable()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out).strip_dirs()
            print(f"\n## cProfile: {endpoint}, {args.n} requests, by cumulative time")
            stats.sort_stats("cumulative").print_stats(args.top)
            print(out.getvalue())
            out.seek(0)
            out.truncate()
            print(f"## cProfile: {endpoint}, by own time")
            stats.sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())
        with app.app_context():
            from idp.extensions import db

            db.session.remove()
            db.engine.dispose()
    finally:
        if args.backend == "postgres":
            run.drop_pg()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
