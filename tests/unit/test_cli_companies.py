"""``idp companies import`` and ``idp companies search``, and the demo's sample register."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select

from idp import cli as idp_cli
from idp.audit.models import AuditEvent
from idp.demo import DEMO_BR_NUMBER, SAMPLE_REGISTER, seed_demo
from idp.extensions import db
from idp.orgs import register
from idp.orgs.models import Company, CompanyStatus

HEADER = ",".join(register.COLUMNS)


def invoke(runner: FlaskCliRunner, *args: str) -> Result:
    return runner.invoke(idp_cli.cli, list(args))


def register_csv(path: Path, *lines: str) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


GOOD = "12345678,Acme Trading Limited,亞克美貿易有限公司,live,,,,director:Chan Tai Man,,"
OTHER = "12345679,Bright Star Limited,,dormant,,,,,,"
BAD = "1234,No Number Limited,,live,,,,,,"


def test_import_prints_a_summary_and_progress(runner: FlaskCliRunner, tmp_path: Path) -> None:
    path = register_csv(tmp_path / "hk.csv", GOOD, OTHER, BAD)
    result = invoke(runner, "companies", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "records: 3 (inserted 2, updated 0, rejected 1)" in result.stdout
    assert str(tmp_path / "hk.rejects.csv") in result.stdout
    assert "importing" in result.stderr  # the progress bar goes to stderr
    with (tmp_path / "hk.rejects.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["line"], r["br_number"], r["reason"]) for r in rows] == [
        ("4", "1234", "bad_br_number")
    ]


def test_import_json_counts_and_no_progress(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    path = register_csv(tmp_path / "hk.csv", GOOD, OTHER, BAD)
    rejects = tmp_path / "out.csv"
    result = invoke(runner, "companies", "import", str(path), "--json", "--rejects", str(rejects))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("records", "inserted", "updated", "rejected")} == {
        "records": 3,
        "inserted": 2,
        "updated": 0,
        "rejected": 1,
    }
    assert data["reasons"] == {"bad_br_number": 1}
    assert data["rejects_file"] == str(rejects)
    again = json.loads(
        invoke(runner, "companies", "import", str(path), "--json", "--rejects", str(rejects)).stdout
    )
    assert (again["inserted"], again["updated"]) == (0, 2)
    with app.app_context():
        tags = db.session.scalars(
            select(AuditEvent.details).where(AuditEvent.tag == "orgs:register:import")
        ).all()
        assert [t["inserted"] for t in tags] == [2, 0]


def test_import_bad_file_is_one_line_error(runner: FlaskCliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("br_number,name\n12345678,Acme\n", encoding="utf-8")
    result = invoke(runner, "companies", "import", str(path), "--json")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "lacks the column(s) name_en, status" in result.stderr
    missing = invoke(runner, "companies", "import", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 2


def test_import_failed_batch_then_resume(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = register_csv(tmp_path / "hk.csv", GOOD, OTHER, "12345680,Third Limited,,live,,,,,,")
    real = register._upsert_companies
    calls: list[int] = []

    def flaky(rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 2:
            raise OSError("no space left on device")
        real(rows)

    monkeypatch.setattr(register, "_upsert_companies", flaky)
    failed = invoke(runner, "companies", "import", str(path), "--batch-size", "1", "--json")
    assert failed.exit_code == 1
    assert failed.stdout == ""
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "rolled back whole" in lines[0]
    assert "--resume" in lines[0]
    monkeypatch.undo()
    resumed = invoke(
        runner, "companies", "import", str(path), "--batch-size", "1", "--resume", "--json"
    )
    assert resumed.exit_code == 0, resumed.output
    data = json.loads(resumed.stdout)
    assert (data["resumed_from_record"], data["inserted"], data["records"]) == (1, 3, 3)


def test_search_command(runner: FlaskCliRunner, tmp_path: Path) -> None:
    invoke(runner, "companies", "import", str(register_csv(tmp_path / "hk.csv", GOOD, OTHER)))
    by_br = json.loads(invoke(runner, "companies", "search", "12345679", "--json").stdout)
    assert by_br == [
        {
            "br_number": "12345679",
            "name_en": "Bright Star Limited",
            "name_zh": None,
            "status": "dormant",
        }
    ]
    text = invoke(runner, "companies", "search", "亞克美").stdout
    assert "12345678" in text
    assert "Acme Trading Limited" in text
    assert invoke(runner, "companies", "search", "zzz").stdout.strip() == "no companies found"
    bad = invoke(runner, "companies", "search", "acme", "--after", "x")
    assert bad.exit_code == 1
    assert "after" in bad.stderr


def test_sample_register_is_clean_and_holds_the_demo_company(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        result = register.import_register(
            SAMPLE_REGISTER, actor="tests", rejects_path=tmp_path / "r.csv"
        )
        assert (result.records, result.inserted, result.rejected) == (50, 50, 0)
        statuses = set(db.session.scalars(select(Company.status)))
        assert statuses == set(CompanyStatus)
        demo = db.session.scalar(select(Company).where(Company.br_number == DEMO_BR_NUMBER))
        assert demo is not None
        assert demo.name_en == "Demo Trading Limited"
        assert demo.name_zh
        assert demo.officers


def test_demo_seed_imports_the_sample_register_once(app: Flask) -> None:
    with app.app_context():
        first = seed_demo()
        assert first.register_imported == 50
        assert first.company_created is True
        assert first.invite_url
        second = seed_demo()
        assert second.register_imported == 0
        assert second.company_created is False
        assert db.session.scalar(select(func.count()).select_from(Company)) == 50
