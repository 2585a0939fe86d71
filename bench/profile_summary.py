#!/usr/bin/env python3
"""Summarise py-spy collapsed stacks written by ``bench/run.py --profile DIR``.

    python bench/profile_summary.py DIR/postgres-granian-client_credentials.txt [...]

For each file: where the worker CPU samples end (by package of the innermost frame), the
inclusive share of the frames that matter on Corp ID's hot paths, and the top functions by
self time. Only on-CPU samples are recorded (py-spy without ``--idle``), so a share is a
share of the workers' busy time, not of wall-clock latency.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")

# Inclusive shares: a sample counts when any frame on its stack matches.
MARKERS = [
    ("Flask request handling (all of it)", "Flask.wsgi_app"),
    ("  static documents fast path", "StaticDocuments.__call__"),
    ("Authlib create_token_response", "create_token_response"),
    ("Authlib create_endpoint_response", "create_endpoint_response"),
    ("Authlib authenticate_client", "authenticate_client"),
    ("query_client (idp.oauth.server)", "AuthorizationServer.query_client"),
    ("generate_token / issue_access_token", "issue_access_token"),
    ("JWT signing (jws.sign)", "sign (idp/keys/jws.py"),
    ("JWT verification (jws.verify)", "verify (idp/keys/jws.py"),
    ("signing_key lookup", "signing_key"),
    ("is_access_token_live (revocation query)", "is_access_token_live"),
    ("principal_for_grant", "principal_for_grant"),
    ("userinfo_claims", "userinfo_claims"),
    ("SQLAlchemy Session.execute/scalars/get", "Session.execute|Session.scalars|Session.scalar |"
     "Session.get|Query.one_or_none|Query.first|Query.all"),
    ("SQLAlchemy commit/rollback/close", "Session.commit|Session.rollback|Session.close|"
     "SessionTransaction.commit|SessionTransaction.rollback"),
    ("Flask-SQLAlchemy teardown (session.remove)", "_teardown_session|scoped_session.remove"),
    ("psycopg (driver, incl. waiting on the server)", "psycopg/"),
    ("sqlite3 driver", "sqlite"),
    ("werkzeug form parsing", "get_data|_load_form_data|parse_form_data|FormDataParser"),
    ("response building (werkzeug Response)", "Response.__init__|get_wsgi_response|"
     "Response.__call__"),
    ("json encode/decode", "json/encoder|json/decoder|dumps (json|loads (json"),
    ("Python logging", "logging/__init__"),
    ("redis client", "redis/"),
]


def parse_line(line: str) -> tuple[list[str], int] | None:
    line = line.rstrip("\n")
    if not line:
        return None
    stack, _, count = line.rpartition(" ")
    try:
        n = int(count)
    except ValueError:
        return None
    frames = [f for f in stack.split(";") if not f.startswith("process ")
              and not f.startswith("thread ")]
    return frames, n


def package(frame: str) -> str:
    m = FRAME.match(frame)
    path = m.group("file") if m else frame
    parts = path.split("/")
    if parts[0] == "idp":
        return "/".join(parts[:2]).removesuffix(".py")
    if parts[0] in ("<frozen", ""):
        return path
    return parts[0].removesuffix(".py")


def summarise(path: Path, top: int = 20) -> str:
    samples: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        parsed = parse_line(line)
        if parsed and parsed[0]:
            samples.append(parsed)
    total = sum(n for _, n in samples)
    if not total:
        return f"{path.name}: no samples\n"
    out = [f"== {path.name}: {total} on-CPU samples"]
    by_pkg: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    for frames, n in samples:
        by_pkg[package(frames[-1])] += n
        by_func[frames[-1]] += n
    out.append("-- innermost frame by package (self time)")
    for pkg, n in by_pkg.most_common(top):
        out.append(f"  {100 * n / total:5.1f}%  {pkg}")
    out.append("-- inclusive share of hot-path frames")
    for label, pattern in MARKERS:
        alternatives = pattern.split("|")
        n = sum(c for frames, c in samples
                if any(a in f for f in frames for a in alternatives))
        if n:
            out.append(f"  {100 * n / total:5.1f}%  {label}")
    out.append("-- top functions by self time")
    for func, n in by_func.most_common(top):
        out.append(f"  {100 * n / total:5.1f}%  {func}")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for name in argv:
        print(summarise(Path(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
