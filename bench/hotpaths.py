#!/usr/bin/env python3
"""What the pieces of Corp ID's hot paths cost, one at a time, and what the alternatives
suggested in bench/README.md would cost instead. In process, wall time per operation
(database waits included), on a scratch database set up as ``bench/run.py`` does.

    python bench/hotpaths.py --backend postgres

Nothing here changes ``idp/``: alternatives are written out in this file so that their
figures can be compared with the current code's.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess
import run


def per_op(fn: Callable[[int], Any], n: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean wall time of ``fn(i)`` in microseconds."""
    for i in range(min(n, 100)):  # warm-up
        fn(i)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--clients", type=int, default=1000)
    args = p.parse_args(argv)
    n = args.n

    tmp = Path(tempfile.mkdtemp(prefix="corpid-hot-"))
    rows: list[tuple[str, float, str]] = []

    def row(label: str, us: float, note: str = "") -> None:
        rows.append((label, us, note))
        print(f"  {us:9.1f} us  {label}" + (f"  ({note})" if note else ""), flush=True)

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
        tokens_ = run.mint_client_tokens(backend)
        app = backend.app
        measure_all(app, backend, tokens_, n, row)
        with app.app_context():
            from idp.extensions import db

            db.session.remove()
            db.engine.dispose()
    finally:
        if args.backend == "postgres":
            run.drop_pg()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n# hot-path pieces, {args.backend}, wall microseconds per operation (median of 3)")
    print("| piece | us/op | note |\n|---|--:|---|")
    for label, us, note in rows:
        print(f"| {label} | {us:.1f} | {note} |")
    return 0


def measure_all(app: Any, backend: run.Backend, tokens_: list[str], n: int,
                row: Callable[..., None]) -> None:
    import jwt
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )
    from flask import Flask, request
    from sqlalchemy import exists, select

    from idp import cache
    from idp.clients.models import Client
    from idp.extensions import db
    from idp.keys import jws
    from idp.keys import services as keys
    from idp.oauth import tokens
    from idp.oauth.models import Grant, RevokedAccessToken
    from idp.orgs.models import Company, Membership, Person
    from idp.security import digest

    issuer = backend.issuer
    ids = [cid for cid, _ in backend.clients]

    # --- the framework ------------------------------------------------------------------
    print("framework")
    bare = Flask("bare")

    @bare.post("/noop")
    def bare_noop() -> str:
        return request.form.get("grant_type", "")

    app.add_url_rule("/bench-noop", "bench_noop", bare_noop, methods=["POST"])
    from idp.web import csrf

    csrf.exempt(bare_noop)
    env = inprocess.environ_for(backend, "client_credentials", 0, tokens_)
    env_bare = dict(env, PATH_INFO="/noop")
    env_idp = dict(env, PATH_INFO="/bench-noop")
    row("bare Flask app: POST with a form, no-op view", per_op(
        lambda i: inprocess.call(bare, env_bare), n))
    row("Corp ID app: same no-op view (fast path, CSRF, security headers, teardown)", per_op(
        lambda i: inprocess.call(app, env_idp), n))
    env_disc = inprocess.environ_for(backend, "discovery", 0, tokens_)
    row("discovery via the static-documents fast path", per_op(
        lambda i: inprocess.call(app, env_disc), n))

    with app.app_context():
        def session_noop(i: int) -> None:
            db.session.commit()
            db.session.remove()
        row("Flask-SQLAlchemy: create session, commit with nothing to do, remove",
            per_op(session_noop, n), "what /token's _finish costs when no SQL ran")

    # --- JWT -----------------------------------------------------------------------------
    print("JWT")
    with app.test_request_context():
        claims = {"iss": issuer, "exp": int(time.time()) + 600, "iat": int(time.time()),
                  "jti": "x" * 22, "aud": ids[0], "client_id": ids[0], "scope": "corp",
                  "sub": ids[0]}
        row("jws.sign ES256 (PyJWT)", per_op(
            lambda i: jws.sign(claims, alg="ES256", typ="at+jwt"), n))
        row("jws.sign RS256 (PyJWT, 3072-bit key)", per_op(
            lambda i: jws.sign(claims, alg="RS256", typ="at+jwt"), max(200, n // 10)),
            "the RS256 trap")
        row("jws.sign EdDSA (PyJWT)", per_op(
            lambda i: jws.sign(claims, alg="EdDSA", typ="at+jwt"), n))
        kid, key = keys.signing_key("ES256")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        header = b64(json.dumps({"alg": "ES256", "kid": kid, "typ": "at+jwt"},
                                separators=(",", ":")).encode())

        def raw_sign(i: int) -> str:
            payload = b64(json.dumps(claims, separators=(",", ":")).encode())
            signing_input = f"{header}.{payload}".encode()
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return f"{header}.{payload}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

        row("ES256 by hand (json + cryptography, header cached)", per_op(raw_sign, n),
            "what a leaner jws.sign could cost")
        token = jws.sign(claims, alg="ES256", typ="at+jwt")
        assert jwt.decode(raw_sign(0), key.public_key(), algorithms=["ES256"],
                          audience=ids[0])["jti"] == claims["jti"]
        row("jws.verify ES256 (PyJWT, key cached)", per_op(
            lambda i: jws.verify(token, issuer=issuer, typ="at+jwt"), n))
        pub = key.public_key()

        def raw_verify(i: int) -> dict[str, Any]:
            h, p, s = token.split(".")
            sig = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
            pub.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                            int.from_bytes(sig[32:], "big")),
                       f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
            hdr = json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))
            out = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
            if hdr.get("alg") != "ES256" or out["iss"] != issuer or out["exp"] <= time.time():
                raise ValueError
            return dict(out)

        row("ES256 verify by hand (binascii + cryptography, same checks)",
            per_op(raw_verify, n), "what a leaner jws.verify could cost")
        row("SHA-256 digest of a client secret", per_op(
            lambda i: digest(backend.clients[i % 1000][1]), n), "no slow hash: good")
        rsa_key = keys.signing_key("RS256")[1]
        row("RSA-3072 sign alone (cryptography)", per_op(
            lambda i: rsa_key.sign(b"x" * 300, padding.PKCS1v15(), hashes.SHA256()),  # type: ignore[union-attr,call-arg]
            max(200, n // 10)))

    # --- database ------------------------------------------------------------------------
    print("database")
    with app.app_context():
        engine = db.engine
        table = Client.__table__

        def orm_client(i: int) -> None:
            db.session.scalars(select(Client).where(Client.client_id == ids[i % 1000])).first()
            db.session.commit()
            db.session.remove()

        row("client lookup, ORM, in a transaction (a query_client cache miss)",
            per_op(orm_client, n), "BEGIN + SELECT + COMMIT + session")

        def core_client(i: int) -> None:
            with engine.connect() as conn:
                conn.execute(select(table).where(table.c.client_id == ids[i % 1000])).first()
                conn.commit()

        row("client lookup, Core row, in a transaction", per_op(core_client, n))
        auto = engine.execution_options(isolation_level="AUTOCOMMIT")

        def auto_client(i: int) -> None:
            with auto.connect() as conn:
                conn.execute(select(table).where(table.c.client_id == ids[i % 1000])).first()

        row("client lookup, Core row, autocommit (one round trip)", per_op(auto_client, n))

        claims_cc = tokens.decode_access_token(tokens_[0])
        assert claims_cc is not None

        def live_as_is(i: int) -> None:
            tokens.is_access_token_live(claims_cc)
            db.session.commit()
            db.session.remove()

        row("is_access_token_live (+ session commit) as idp/ has it, client token",
            per_op(live_as_is, n), "/introspect's revocation check")

        def live_auto(i: int) -> None:
            with auto.connect() as conn:
                conn.scalar(select(exists().where(RevokedAccessToken.jti == claims_cc["jti"])))

        row("same check, autocommit connection, statement built per call", per_op(live_auto, n))
        from sqlalchemy import bindparam

        prebuilt = select(exists().where(RevokedAccessToken.jti == bindparam("jti")))

        def live_prebuilt(i: int) -> None:
            with auto.connect() as conn:
                conn.scalar(prebuilt, {"jti": claims_cc["jti"]})

        row("same check, autocommit, statement built once (bindparam)",
            per_op(live_prebuilt, n))

        def live_prebuilt_idp_pattern(i: int) -> None:
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.scalar(prebuilt, {"jti": claims_cc["jti"]})

        row("same, but connect().execution_options(AUTOCOMMIT) per call as idp/ does",
            per_op(live_prebuilt_idp_pattern, n))
        raw_sql = "SELECT EXISTS (SELECT 1 FROM revoked_access_tokens WHERE jti = %(jti)s)"
        if engine.dialect.name != "postgresql":
            raw_sql = "SELECT EXISTS (SELECT 1 FROM revoked_access_tokens WHERE jti = :jti)"

        def live_driver_sql(i: int) -> None:
            with auto.connect() as conn:
                conn.exec_driver_sql(raw_sql, {"jti": claims_cc["jti"]}).scalar()

        row("same check, autocommit, exec_driver_sql", per_op(live_driver_sql, n))
        redis = app.extensions.get("idp.redis")
        if redis is not None:
            row("same check as a Redis EXISTS (revoked jtis kept in Redis)", per_op(
                lambda i: redis.exists(f"idp:revoked:{claims_cc['jti']}"), n))

        from idp.oauth.endpoints import userinfo_claims

        user_token = backend.user_token

        def userinfo_as_is(i: int) -> None:
            assert userinfo_claims(user_token) is not None
            db.session.commit()
            db.session.remove()

        row("userinfo_claims (+ session commit) as idp/ has it",
            per_op(userinfo_as_is, max(200, n // 4)), "see the SQL table of run.py")
        uclaims = tokens.decode_access_token(user_token)
        assert uclaims is not None
        from idp.authn.models import LoginSession

        joined = (
            select(Grant.revoked_at, Grant.expires_at, Person.subject, Person.display_name,
                   Person.email, Person.status, Company.br_number, Company.name_en,
                   Company.status, Membership.roles, Membership.status, LoginSession.sid,
                   Client.__table__.c.status, Client.__table__.c.subject_type,
                   exists().where(RevokedAccessToken.jti == uclaims["jti"]).label("revoked"))
            .join(Person, Person.id == Grant.person_id)
            .join(Company, Company.id == Grant.company_id)
            .join(Membership, (Membership.person_id == Grant.person_id)
                  & (Membership.company_id == Grant.company_id))
            .join(Client, Client.id == Grant.client_id)
            .outerjoin(LoginSession, LoginSession.id == Grant.session_id)
            .where(Grant.gid == uclaims["gid"]))

        def userinfo_joined(i: int) -> None:
            claims_u = tokens.decode_access_token(user_token)
            assert claims_u is not None
            with auto.connect() as conn:
                assert conn.execute(joined).first() is not None

        row("userinfo: verify + one joined Core query, autocommit", per_op(userinfo_joined, n),
            "what a one-query userinfo could cost")

        def rate_hit(i: int) -> None:
            cache.hit("client", ids[i % 1000], limit=60_000)
            db.session.commit()
            db.session.remove()

        with app.test_request_context():
            row("per-client rate-limit hit (default 60,000/min), "
                + ("Redis" if redis is not None else "database"), per_op(rate_hit, n),
                "switched off in the load runs")

    # --- a floor: the same two endpoints without Flask and Authlib --------------------------
    print("lean WSGI prototypes (not Corp ID code: what the work itself costs)")
    measure_lean(app, backend, tokens_, n, row)


def measure_lean(app: Any, backend: run.Backend, tokens_: list[str], n: int,
                 row: Callable[..., None]) -> None:
    """Minimal WSGI handlers doing the same checks as /introspect and /token
    (client_credentials): Basic auth against the stored digest, an active client using
    client_secret_basic, ES256 by hand, revocation by one autocommit query. They show how
    much of a request is the work and how much the framework around it."""
    import hmac
    from urllib.parse import parse_qsl

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )
    from sqlalchemy import bindparam, exists, select

    from idp.clients.models import Client
    from idp.db import new_public_id
    from idp.extensions import db
    from idp.keys import services as keys
    from idp.oauth.models import RevokedAccessToken
    from idp.security import digest

    issuer = backend.issuer
    with app.app_context():
        rows = {c.client_id: (c.secret_hash, c.is_active, c.auth_method.value, list(c.scopes))
                for c in db.session.query(Client)}
        kid, key = keys.signing_key("ES256")
        pub = key.public_key()
        auto = db.engine.execution_options(isolation_level="AUTOCOMMIT")
    live_stmt = select(exists().where(RevokedAccessToken.jti == bindparam("jti")))
    header = b64(json.dumps({"alg": "ES256", "kid": kid, "typ": "at+jwt"},
                            separators=(",", ":")).encode())
    ttl = 600

    def unb64(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    def client_from(environ: dict[str, Any]) -> str | None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith("Basic "):
            return None
        cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        found = rows.get(cid)
        if found is None or not found[1] or found[2] != "client_secret_basic":
            return None
        return cid if hmac.compare_digest(digest(secret), found[0] or "") else None

    def answer(start_response: Any, status: str, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body, separators=(",", ":")).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store"), ("Pragma", "no-cache")])
        return [data]

    def lean_introspect(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        form = dict(parse_qsl(body.decode()))
        cid = client_from(environ)
        if cid is None:
            return answer(start_response, "401 Unauthorized", {"error": "invalid_client"})
        h, p, sig_b64 = form.get("token", "..").split(".", 2)
        sig = unb64(sig_b64)
        try:
            pub.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                            int.from_bytes(sig[32:], "big")),
                       f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
        except Exception:
            return answer(start_response, "200 OK", {"active": False})
        hdr, claims = json.loads(unb64(h)), json.loads(unb64(p))
        if (hdr.get("kid") != kid or hdr.get("typ") != "at+jwt" or claims["iss"] != issuer
                or claims["exp"] <= time.time() or claims.get("client_id") != cid):
            return answer(start_response, "200 OK", {"active": False})
        with auto.connect() as conn:
            if conn.scalar(live_stmt, {"jti": claims["jti"]}):
                return answer(start_response, "200 OK", {"active": False})
        out = {"active": True, "token_type": "Bearer"}
        out.update({k: claims[k] for k in ("scope", "client_id", "sub", "aud", "iss", "exp",
                                           "iat", "jti") if k in claims})
        return answer(start_response, "200 OK", out)

    def lean_token(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        form = dict(parse_qsl(body.decode()))
        cid = client_from(environ)
        if cid is None:
            return answer(start_response, "401 Unauthorized", {"error": "invalid_client"})
        if form.get("grant_type") != "client_credentials":
            return answer(start_response, "400 Bad Request",
                          {"error": "unsupported_grant_type"})
        scope = form.get("scope", "")
        if any(s not in rows[cid][3] for s in scope.split()):
            return answer(start_response, "400 Bad Request", {"error": "invalid_scope"})
        now = int(time.time())
        claims = {"iss": issuer, "exp": now + ttl, "iat": now, "jti": new_public_id(),
                  "aud": cid, "client_id": cid, "scope": scope, "sub": cid}
        payload = b64(json.dumps(claims, separators=(",", ":")).encode())
        r, s_ = decode_dss_signature(key.sign(f"{header}.{payload}".encode(),
                                              ec.ECDSA(hashes.SHA256())))
        token = f"{header}.{payload}.{b64(r.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"
        return answer(start_response, "200 OK", {"access_token": token, "token_type": "Bearer",
                                                 "expires_in": ttl, "scope": scope})

    envs_i = [inprocess.environ_for(backend, "introspection", k, tokens_) for k in range(1000)]
    envs_t = [inprocess.environ_for(backend, "client_credentials", k, tokens_)
              for k in range(1000)]
    assert inprocess.call(lean_introspect, envs_i[0]).startswith("200")
    assert inprocess.call(lean_token, envs_t[0]).startswith("200")
    row("lean WSGI /introspect (same checks, no Flask/Authlib)", per_op(
        lambda i: inprocess.call(lean_introspect, envs_i[i % 1000]), n))
    row("Corp ID /introspect, same requests", per_op(
        lambda i: inprocess.call(app, envs_i[i % 1000]), n))
    row("lean WSGI /token client_credentials (same checks, no Flask/Authlib)", per_op(
        lambda i: inprocess.call(lean_token, envs_t[i % 1000]), n))
    row("Corp ID /token client_credentials, same requests", per_op(
        lambda i: inprocess.call(app, envs_t[i % 1000]), n))


if __name__ == "__main__":
    sys.exit(main())
