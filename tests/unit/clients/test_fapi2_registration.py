"""FAPI 2.0 client registration: the CLI reports require_pushed_authorization_requests (RFC 9126
§6) and new bank clients get pairwise subjects unless public is asked for."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskCliRunner
from jwt.algorithms import ECAlgorithm

from tests.unit.test_cli import data, run

RP = "https://bank.example.hk/cb"


def _create(runner: FlaskCliRunner, tmp_path: Path, *extra: str) -> dict[str, object]:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    created: dict[str, object] = data(
        run(
            runner,
            "client",
            "create",
            "--name",
            "Bank",
            "--redirect-uri",
            RP,
            "--auth-method",
            "private_key_jwt",
            "--jwks-file",
            str(jwks_file),
            *extra,
            "--json",
        )
    )
    return created


def test_fapi2_create_and_show_require_par(runner: FlaskCliRunner, tmp_path: Path) -> None:
    created = _create(runner, tmp_path, "--profile", "fapi2")
    assert created["require_pushed_authorization_requests"] is True
    shown = data(run(runner, "client", "show", str(created["client_id"]), "--json"))
    assert shown["require_pushed_authorization_requests"] is True
    assert shown["subject_type"] == "pairwise"
    assert shown["sector_identifier"] == "bank.example.hk"
    text = run(runner, "client", "show", str(created["client_id"])).stdout
    assert "require_pushed_authorization_requests" in text


def test_fapi2_may_ask_for_public_subjects(runner: FlaskCliRunner, tmp_path: Path) -> None:
    created = _create(runner, tmp_path, "--profile", "fapi2", "--subject-type", "public")
    shown = data(run(runner, "client", "show", str(created["client_id"]), "--json"))
    assert shown["subject_type"] == "public"


def test_basic_client_output_unchanged(runner: FlaskCliRunner, tmp_path: Path) -> None:
    created = _create(runner, tmp_path)
    assert "require_pushed_authorization_requests" not in created
    shown = data(run(runner, "client", "show", str(created["client_id"]), "--json"))
    assert shown["require_pushed_authorization_requests"] is False
    assert shown["subject_type"] == "public"
