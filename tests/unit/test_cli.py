"""The ``idp`` command: each command, its ``--json`` output, and errors without tracebacks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskCliRunner
from jwt.algorithms import ECAlgorithm
from sqlalchemy import select, text

from idp import cli as idp_cli
from idp import schema
from idp.clients import services as clients
from idp.clients.models import ClientStatus
from idp.extensions import db
from idp.keys.models import SigningKey
from idp.orgs import services as orgs
from idp.orgs.models import Person

RP = "https://tax.example.gov.hk/callback"
BIN = Path(sys.executable).parent
EVERYWHERE = "0.0.0.0"  # noqa: S104 -- only passed to a stub server


def run(runner: CliRunner, *args: str, code: int = 0) -> Result:
    result = runner.invoke(idp_cli.cli, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result


def data(result: Result) -> Any:
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]


def create_client(runner: CliRunner, *extra: str) -> dict[str, Any]:
    args = ["client", "create", "--name", "Tax e-service", "--redirect-uri", RP, *extra, "--json"]
    if "--auth-method" not in extra:
        args += ["--auth-method", "client_secret_basic"]
    result: dict[str, Any] = data(run(runner, *args))
    return result


# --- help ------------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(idp_cli.cli, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "serve", "demo", "client", "org", "keys"):
        assert command in result.output


# --- init ------------------------------------------------------------------------------------


def test_init_migrates_an_empty_database_and_creates_keys(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(tables=False, keys=False, DATABASE_URL=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    runner = app.test_cli_runner()
    first = data(run(runner, "init", "--json"))
    assert first["database"] == {"from": None, "to": schema.head_revision()}
    assert len(first["keys_created"]) == 4
    with app.app_context():
        assert schema.is_at_head()[0]
        assert {k.alg for k in db.session.scalars(select(SigningKey))} == {
            "RS256",
            "PS256",
            "ES256",
            "EdDSA",
        }

    again = run(runner, "init")
    assert f"already at migration {schema.head_revision()}" in again.stdout
    assert "every algorithm has a signing key" in again.stdout


def test_init_refuses_a_database_without_history(runner: FlaskCliRunner) -> None:
    assert_one_line_error(runner.invoke(idp_cli.cli, ["init"]), "no migration history")


# --- serve -----------------------------------------------------------------------------------


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    for name in ("gunicorn", "granian"):
        monkeypatch.setitem(idp_cli.SERVERS, name, lambda name=name, **kw: calls.append((name, kw)))
    return calls


def test_serve_refuses_an_unmigrated_database(runner: FlaskCliRunner, servers: list[Any]) -> None:
    result = runner.invoke(idp_cli.cli, ["serve"])
    assert_one_line_error(result, "run `idp init` first")
    assert servers == []


def test_serve_refuses_without_signing_keys(
    app: Flask, runner: FlaskCliRunner, servers: list[Any]
) -> None:
    with app.app_context():
        schema.stamp()
        db.session.execute(SigningKey.__table__.delete().where(SigningKey.alg == "EdDSA"))
        db.session.commit()
    assert_one_line_error(runner.invoke(idp_cli.cli, ["serve"]), "EdDSA")
    assert servers == []


@pytest.mark.parametrize("server", ["gunicorn", "granian"])
def test_serve_starts_the_chosen_server(
    app: Flask, runner: FlaskCliRunner, servers: list[Any], server: str
) -> None:
    with app.app_context():
        schema.stamp()
    run(
        runner,
        "serve",
        "--host",
        EVERYWHERE,
        "--port",
        "8123",
        "--workers",
        "3",
        "--threads",
        "4",
        "--server",
        server,
    )
    assert servers == [
        (
            server,
            {
                "host": EVERYWHERE,
                "port": 8123,
                "workers": 3,
                "threads": 4,
                "timeout": 30,
            },
        )
    ]


def test_serve_defaults_to_granian_with_workers_per_cpu(
    app: Flask, runner: FlaskCliRunner, servers: list[Any]
) -> None:
    with app.app_context():
        schema.stamp()
    run(runner, "serve")
    [(name, options)] = servers
    assert name == "granian"
    assert options["workers"] == 2 * (os.cpu_count() or 1) + 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("server", ["gunicorn", "granian"])
def test_serve_really_serves(tmp_path: Path, server: str) -> None:
    env = {
        **os.environ,
        "IDP_DATABASE_URL": f"sqlite:///{tmp_path / 'live.sqlite3'}",
        "IDP_KEYS_DIR": str(tmp_path / "keys"),
        "IDP_SECRET_KEY": "serve-test-secret",
        "IDP_REDIS_URL": "",
    }
    subprocess.run([BIN / "idp", "init"], env=env, check=True, capture_output=True, timeout=120)
    port = _free_port()
    process = subprocess.Popen(
        [BIN / "idp", "serve", "--port", str(port), "--workers", "1", "--server", server],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
                with urllib.request.urlopen(url, timeout=2) as response:
                    metadata = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        assert metadata["issuer"] == "http://localhost:5000"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jwks.json", timeout=5) as response:
            assert len(json.load(response)["keys"]) == 4
    finally:
        process.terminate()
        process.wait(30)


# --- demo ------------------------------------------------------------------------------------


def test_demo_initialises_seeds_idempotently_and_runs_the_dev_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDP_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    monkeypatch.setenv("IDP_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("IDP_REDIS_URL", "")
    monkeypatch.delenv("IDP_ISSUER", raising=False)
    monkeypatch.delenv("IDP_DEMO", raising=False)
    served: list[tuple[Flask, str, int]] = []
    monkeypatch.setattr(
        idp_cli, "_run_dev_server", lambda app, host, port: served.append((app, host, port))
    )
    runner = CliRunner()

    first = data(run(runner, "demo", "--port", "5055", "--json"))
    [(app, host, port)] = served
    assert (host, port) == ("127.0.0.1", 5055)
    assert app.config["IDP"]["DEMO"] is True
    assert first["issuer"] == "http://localhost:5055"
    assert first["br_number"] == "12345678"
    assert first["company_created"] is True
    assert first["client_created"] is True
    assert first["invite_url"].startswith("http://localhost:5055/enrol/cii_")
    assert len(first["keys_created"]) == 4
    assert first["bank_client_created"] is True
    assert first["demo_bank_url"] == "http://localhost:5055/demo-bank/"
    assert (tmp_path / "keys" / "demo-bank-client.jwk").exists()

    second = data(run(runner, "demo", "--port", "5055", "--json"))
    assert second["company_created"] is False
    assert second["client_created"] is False
    assert second["client_id"] == first["client_id"]
    assert second["invite_url"] != first["invite_url"]  # a fresh link while no admin enrolled
    assert second["keys_created"] == []
    assert second["bank_client_created"] is False
    assert second["bank_client_id"] == first["bank_client_id"]

    with app.app_context():
        assert sorted(c.name for c in clients.list_clients()) == [
            "Corp ID demo relying party",
            "Demo Bank (business accounts)",
        ]
        bank = clients.get_client(first["bank_client_id"])
        assert bank.profile.value == "fapi2"
        assert bank.auth_method.value == "private_key_jwt"
        assert bank.redirect_uris == ["http://localhost:5055/demo-bank/callback"]
        company = orgs.get_company_by_br("12345678")
        assert company.name_en == "Demo Trading Limited"
        invitation = orgs.find_valid_invitation(second["invite_url"].rsplit("/", 1)[1])
        admin = Person(display_name="Demo Admin", email="admin@demo-trading.example")
        db.session.add(admin)
        orgs.consume_invitation(invitation, admin)

    third = run(runner, "demo", "--port", "5055")
    assert "the company already has an admin" in third.stdout
    assert "issuer: http://localhost:5055" in third.stdout
    assert "demo bank (open a business account, KYC with Corp ID): " in third.stdout
    for made, _, _ in served:
        with made.app_context():
            db.engine.dispose()


# --- clients ---------------------------------------------------------------------------------


def test_client_create_prints_id_and_secret_once(app: Flask, runner: FlaskCliRunner) -> None:
    created = create_client(runner)
    assert set(created) == {"client_id", "client_secret"}
    assert created["client_secret"].startswith("cis_")
    with app.app_context():
        client = clients.get_client(created["client_id"])
        assert client.check_client_secret(created["client_secret"])
        assert client.redirect_uris == [RP]
    shown = run(runner, "client", "show", created["client_id"])
    assert created["client_secret"] not in shown.output


def test_client_create_human_output(runner: FlaskCliRunner) -> None:
    result = run(
        runner,
        "client",
        "create",
        "--name",
        "Bank",
        "--redirect-uri",
        RP,
        "--auth-method",
        "client_secret_post",
    )
    assert "client_id:" in result.stdout
    assert "client_secret: cis_" in result.stdout
    assert "shown once" in result.stdout


def test_client_create_public_has_no_secret(runner: FlaskCliRunner) -> None:
    created = create_client(
        runner, "--auth-method", "none", "--redirect-uri", "http://127.0.0.1:8080/cb"
    )
    assert created["client_secret"] is None


def test_client_create_with_every_option(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    created = create_client(
        runner,
        "--auth-method",
        "private_key_jwt",
        "--jwks-file",
        str(jwks_file),
        "--scope",
        "openid",
        "--scope",
        "corp",
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "client_credentials",
        "--id-token-alg",
        "ES256",
        "--subject-type",
        "pairwise",
        "--post-logout-redirect-uri",
        "https://tax.example.gov.hk/",
        "--backchannel-logout-uri",
        "https://tax.example.gov.hk/bcl",
        "--profile",
        "fapi2",
    )
    assert created["client_secret"] is None
    with app.app_context():
        client = clients.client_as_dict(clients.get_client(created["client_id"]))
    assert client["jwks"] == {"keys": [jwk]}
    assert client["scopes"] == ["openid", "corp"]
    assert client["grant_types"] == ["authorization_code", "client_credentials"]
    assert client["id_token_alg"] == "ES256"
    assert client["sector_identifier"] == "tax.example.gov.hk"
    assert client["post_logout_redirect_uris"] == ["https://tax.example.gov.hk/"]
    assert client["backchannel_logout_uri"] == "https://tax.example.gov.hk/bcl"
    assert client["profile"] == "fapi2"


def test_client_create_invalid_is_a_one_line_error(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        idp_cli.cli,
        [
            "client",
            "create",
            "--name",
            "Tax",
            "--redirect-uri",
            "http://tax.example.gov.hk/cb",
            "--auth-method",
            "none",
        ],
    )
    assert_one_line_error(result, "redirect_uris", "https")


def test_client_create_unreadable_jwks_file(runner: FlaskCliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "jwks.json"
    bad.write_text("{not json")
    result = runner.invoke(
        idp_cli.cli,
        [
            "client",
            "create",
            "--name",
            "Tax",
            "--redirect-uri",
            RP,
            "--auth-method",
            "private_key_jwt",
            "--jwks-file",
            str(bad),
        ],
    )
    assert_one_line_error(result, "JWK Set")


def test_client_create_refuses_unknown_choices(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        idp_cli.cli,
        [
            "client",
            "create",
            "--name",
            "Tax",
            "--redirect-uri",
            RP,
            "--auth-method",
            "client_secret_jwt",
        ],
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_client_list_and_show(runner: FlaskCliRunner) -> None:
    assert data(run(runner, "client", "list", "--json")) == []
    assert "no clients" in run(runner, "client", "list").stdout
    created = create_client(runner)
    [listed] = data(run(runner, "client", "list", "--json"))
    assert listed["client_id"] == created["client_id"]
    assert "secret_hash" not in listed
    assert created["client_id"] in run(runner, "client", "list").stdout
    shown = data(run(runner, "client", "show", created["client_id"], "--json"))
    assert shown == listed
    human = run(runner, "client", "show", created["client_id"]).stdout
    assert f"redirect_uris:              {RP}" in human


def test_client_show_unknown_is_a_one_line_error(runner: FlaskCliRunner) -> None:
    assert_one_line_error(runner.invoke(idp_cli.cli, ["client", "show", "nope"]), "nope")


def test_client_update(app: Flask, runner: FlaskCliRunner) -> None:
    created = create_client(runner, "--backchannel-logout-uri", "https://tax.example.gov.hk/bcl")
    updated = data(
        run(
            runner,
            "client",
            "update",
            created["client_id"],
            "--name",
            "Tax portal",
            "--redirect-uri",
            RP,
            "--redirect-uri",
            RP + "2",
            "--backchannel-logout-uri",
            "",
            "--json",
        )
    )
    assert updated["name"] == "Tax portal"
    assert updated["redirect_uris"] == [RP, RP + "2"]
    assert updated["backchannel_logout_uri"] is None
    assert updated["auth_method"] == "client_secret_basic"  # untouched
    with app.app_context():
        assert clients.get_client(created["client_id"]).check_client_secret(
            created["client_secret"]
        )


def test_client_update_to_a_secret_method_says_to_rotate(runner: FlaskCliRunner) -> None:
    created = create_client(runner, "--auth-method", "none")
    result = run(
        runner, "client", "update", created["client_id"], "--auth-method", "client_secret_basic"
    )
    assert "rotate-secret" in result.stdout


def test_client_update_errors(runner: FlaskCliRunner) -> None:
    created = create_client(runner)
    nothing = runner.invoke(idp_cli.cli, ["client", "update", created["client_id"]])
    assert nothing.exit_code == 2
    assert "nothing to change" in nothing.output
    bad = runner.invoke(
        idp_cli.cli, ["client", "update", created["client_id"], "--redirect-uri", RP + "#fragment"]
    )
    assert_one_line_error(bad, "fragment")
    unknown = runner.invoke(idp_cli.cli, ["client", "update", "nope", "--name", "x"])
    assert_one_line_error(unknown, "nope")


def test_client_rotate_secret(app: Flask, runner: FlaskCliRunner) -> None:
    created = create_client(runner)
    rotated = data(run(runner, "client", "rotate-secret", created["client_id"], "--json"))
    assert rotated["client_id"] == created["client_id"]
    assert rotated["client_secret"] != created["client_secret"]
    with app.app_context():
        client = clients.get_client(created["client_id"])
        assert client.check_client_secret(rotated["client_secret"])
        assert not client.check_client_secret(created["client_secret"])
    public = create_client(runner, "--auth-method", "none")
    result = runner.invoke(idp_cli.cli, ["client", "rotate-secret", public["client_id"]])
    assert_one_line_error(result, "no secret")


def test_client_disable(app: Flask, runner: FlaskCliRunner) -> None:
    created = create_client(runner)
    disabled = data(run(runner, "client", "disable", created["client_id"], "--json"))
    assert disabled["status"] == "disabled"
    assert "revoked" in run(runner, "client", "disable", created["client_id"]).stdout
    with app.app_context():
        assert clients.get_client(created["client_id"]).status is ClientStatus.DISABLED
    assert_one_line_error(runner.invoke(idp_cli.cli, ["client", "disable", "nope"]), "nope")


# --- organisations ---------------------------------------------------------------------------


def test_org_create_prints_the_admin_invitation(app: Flask, runner: FlaskCliRunner) -> None:
    created = data(
        run(
            runner,
            "org",
            "create",
            "--br-number",
            "87654321",
            "--name",
            "Acme Trading Limited",
            "--admin-email",
            "boss@acme.example",
            "--json",
        )
    )
    assert set(created) == {"org_id", "br_number", "invite_url"}
    assert created["br_number"] == "87654321"
    assert created["invite_url"].startswith("http://localhost:5000/enrol/cii_")
    with app.app_context():
        invitation = orgs.find_valid_invitation(created["invite_url"].rsplit("/", 1)[1])
        assert invitation.company_id == created["org_id"]
        assert invitation.roles == ["admin"]
    again = runner.invoke(
        idp_cli.cli,
        [
            "org",
            "create",
            "--br-number",
            "87654321",
            "--name",
            "Acme",
            "--admin-email",
            "boss@acme.example",
        ],
    )
    assert_one_line_error(again, "already exists")


def test_org_create_human_output(runner: FlaskCliRunner) -> None:
    result = run(
        runner,
        "org",
        "create",
        "--br-number",
        "87654321",
        "--name",
        "Acme",
        "--admin-email",
        "boss@acme.example",
    )
    assert "87654321 Acme" in result.stdout
    assert "/enrol/cii_" in result.stdout


@pytest.mark.parametrize("br", ["1234567", "1234567x", "123456789"])
def test_org_create_bad_br_number(runner: FlaskCliRunner, br: str) -> None:
    result = runner.invoke(
        idp_cli.cli,
        [
            "org",
            "create",
            "--br-number",
            br,
            "--name",
            "Acme",
            "--admin-email",
            "boss@acme.example",
        ],
    )
    assert_one_line_error(result, "8 digits")


def test_org_invite(app: Flask, runner: FlaskCliRunner) -> None:
    run(
        runner,
        "org",
        "create",
        "--br-number",
        "87654321",
        "--name",
        "Acme",
        "--admin-email",
        "boss@acme.example",
    )
    invited = data(
        run(
            runner,
            "org",
            "invite",
            "87654321",
            "--email",
            "lee@acme.example",
            "--role",
            "signatory",
            "--role",
            "member",
            "--json",
        )
    )
    with app.app_context():
        invitation = orgs.find_valid_invitation(invited["invite_url"].rsplit("/", 1)[1])
        assert invitation.roles == ["signatory", "member"]
    assert_one_line_error(
        runner.invoke(idp_cli.cli, ["org", "invite", "11111111", "--email", "x@acme.example"]),
        "11111111",
    )


# --- keys ------------------------------------------------------------------------------------


def test_keys_list(runner: FlaskCliRunner) -> None:
    listed = data(run(runner, "keys", "list", "--json"))
    assert sorted(k["alg"] for k in listed) == ["ES256", "EdDSA", "PS256", "RS256"]
    assert {k["state"] for k in listed} == {"active"}
    human = run(runner, "keys", "list").stdout
    assert all(k["kid"] in human for k in listed)


def test_keys_rotate_and_retire(runner: FlaskCliRunner) -> None:
    [old] = [k for k in data(run(runner, "keys", "list", "--json")) if k["alg"] == "ES256"]
    [new] = data(run(runner, "keys", "rotate", "--alg", "ES256", "--overlap", "60", "--json"))
    assert new["alg"] == "ES256"
    states = {k["kid"]: k["state"] for k in data(run(runner, "keys", "list", "--json"))}
    assert states[new["kid"]] == "next"
    assert states[old["kid"]] == "active"
    retired = data(run(runner, "keys", "retire", old["kid"], "--json"))
    assert retired["kid"] == old["kid"]
    assert retired["retired_at"] is not None
    assert "published" in run(runner, "keys", "rotate", "--alg", "EdDSA").stdout


def test_keys_errors(runner: FlaskCliRunner) -> None:
    [only] = [k for k in data(run(runner, "keys", "list", "--json")) if k["alg"] == "RS256"]
    assert_one_line_error(runner.invoke(idp_cli.cli, ["keys", "retire", only["kid"]]), "only")
    assert_one_line_error(runner.invoke(idp_cli.cli, ["keys", "retire", "nope"]), "nope")
    assert runner.invoke(idp_cli.cli, ["keys", "rotate", "--alg", "HS256"]).exit_code == 2
    assert runner.invoke(idp_cli.cli, ["keys", "rotate", "--overlap", "-1"]).exit_code == 2


# --- environment errors ----------------------------------------------------------------------


def test_database_errors_are_one_line(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(tables=False, keys=False, DATABASE_URL=f"sqlite:///{tmp_path / 'e.sqlite3'}")
    result = app.test_cli_runner().invoke(idp_cli.cli, ["client", "list"])
    assert_one_line_error(result, "database error")


def test_migration_errors_are_one_line(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(tables=False, keys=False, DATABASE_URL=f"sqlite:///{tmp_path / 'm.sqlite3'}")
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('deadbeef')"))
    runner = app.test_cli_runner()
    assert_one_line_error(runner.invoke(idp_cli.cli, ["init"]), "migration error", "deadbeef")
    assert_one_line_error(runner.invoke(idp_cli.cli, ["serve"]), "deadbeef", "idp init")


def test_configuration_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDP_ISSUER", "http://idp.example.hk")
    result = CliRunner().invoke(idp_cli.cli, ["keys", "list"])
    assert_one_line_error(result, "configuration", "https")
