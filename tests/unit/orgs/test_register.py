"""The company register: CSV import (rejects, upsert, officers, resume, atomic batches), search,
and the status cascade."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from idp.audit.models import AuditEvent
from idp.authn import services as authn
from idp.authn.models import LoginSession
from idp.clients import services as clients
from idp.consent import services as consent
from idp.consent.models import Consent
from idp.db import utcnow
from idp.errors import ValidationError
from idp.extensions import db
from idp.oauth import tokens
from idp.oauth.models import Grant
from idp.orgs import register
from idp.orgs.models import (
    Company,
    CompanyOfficer,
    CompanyStatus,
    ImportRun,
    Membership,
    MembershipStatus,
    OfficerRole,
    Person,
    name_key,
)

pytestmark = pytest.mark.usefixtures("app_ctx")

HEADER = list(register.COLUMNS)


def row(br: str = "10000001", **fields: str) -> dict[str, str]:
    base = {
        "br_number": br,
        "name_en": f"Company {br} Limited",
        "name_zh": "",
        "status": "live",
        "address": "1 Queen's Road Central, Hong Kong",
        "incorporated_on": "2001-02-03",
        "company_type": "Private company limited by shares",
        "officers": "director:Chan Tai Man;secretary:Acme Secretaries Limited",
        "source": "",
        "as_of": "2025-06-30",
    }
    base.update(fields)
    return base


def write_csv(
    path: Path, rows: Iterable[dict[str, str] | list[str]], header: list[str] | None = None
) -> Path:
    header = header or HEADER
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in rows:
            writer.writerow(r if isinstance(r, list) else [r.get(h, "") for h in header])
    return path


@pytest.fixture
def register_file(tmp_path: Path) -> Callable[..., Path]:
    def make(
        rows: Iterable[dict[str, str] | list[str]], name: str = "register.csv", **kw: Any
    ) -> Path:
        return write_csv(tmp_path / name, rows, **kw)

    return make


def run(path: Path, **kwargs: Any) -> register.ImportResult:
    return register.import_register(path, actor="operator:tests", **kwargs)


def rejects(result: register.ImportResult) -> list[dict[str, str]]:
    with open(result.rejects_file, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def company(br: str) -> Company:
    found = db.session.scalar(select(Company).where(Company.br_number == br))
    assert found is not None
    db.session.refresh(found)
    return found


def count(model: Any) -> int:
    return int(db.session.scalar(select(func.count()).select_from(model)) or 0)


def events(tag: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.tag == tag)))


# --- import: what is stored -------------------------------------------------------------------


def test_import_stores_every_field(register_file: Callable[..., Path]) -> None:
    officers = json.dumps(
        [
            {
                "role": "director",
                "name_en": "Chan Tai Man",
                "name_zh": "陳大文",
                "appointed_on": "2010-01-01",
            },
            {"role": "secretary", "name": "Acme Secretaries Limited"},
        ]
    )
    path = register_file(
        [
            row(
                "12345678",
                name_en="Acme  Trading   Limited",
                name_zh="亞克美貿易有限公司",
                officers=officers,
                source="Companies Registry",
            )
        ]
    )
    result = run(path)
    assert (result.records, result.inserted, result.updated, result.rejected) == (1, 1, 0, 0)
    acme = company("12345678")
    assert acme.name_en == "Acme Trading Limited"
    assert acme.name_key == "acme trading limited"
    assert acme.name_zh == acme.name_zh_key == "亞克美貿易有限公司"
    assert acme.status is CompanyStatus.LIVE
    assert acme.address == "1 Queen's Road Central, Hong Kong"
    assert acme.incorporated_on == dt.date(2001, 2, 3)
    assert acme.company_type == "Private company limited by shares"
    assert acme.source == "Companies Registry"
    assert acme.as_of == dt.date(2025, 6, 30)
    assert [(o.role, o.name_en, o.name_zh, o.appointed_on) for o in acme.officers] == [
        (OfficerRole.DIRECTOR, "Chan Tai Man", "陳大文", dt.date(2010, 1, 1)),
        (OfficerRole.SECRETARY, "Acme Secretaries Limited", None, None),
    ]
    assert acme.is_active


def test_short_officer_form_and_default_source(register_file: Callable[..., Path]) -> None:
    path = register_file([row("12345678", officers="Director: 陳大文 ; secretary:Lee Siu Ming;")])
    run(path)
    acme = company("12345678")
    assert [(o.role, o.name_en, o.name_zh) for o in acme.officers] == [
        (OfficerRole.DIRECTOR, None, "陳大文"),
        (OfficerRole.SECRETARY, "Lee Siu Ming", None),
    ]
    assert acme.source == "register.csv"


def test_upsert_updates_and_replaces_officers(register_file: Callable[..., Path]) -> None:
    run(register_file([row("12345678"), row("12345679")], name="first.csv"))
    result = run(
        register_file(
            [
                row(
                    "12345678",
                    name_en="Acme Holdings Limited",
                    status="dormant",
                    officers="director:Wong Siu Ming",
                    address="",
                ),
                row("12345680"),
            ],
            name="second.csv",
        )
    )
    assert (result.inserted, result.updated) == (1, 1)
    acme = company("12345678")
    assert acme.name_en == "Acme Holdings Limited"
    assert acme.name_key == "acme holdings limited"
    assert acme.status is CompanyStatus.DORMANT
    assert acme.address is None
    assert [(o.role, o.name_en) for o in acme.officers] == [(OfficerRole.DIRECTOR, "Wong Siu Ming")]
    # The other company's officers are untouched; an empty officers field means none.
    assert len(company("12345679").officers) == 2
    run(register_file([row("12345679", officers="")], name="third.csv"))
    assert company("12345679").officers == []
    assert count(Company) == 3


def test_idempotent_rerun(register_file: Callable[..., Path]) -> None:
    path = register_file([row(f"1000000{i}") for i in range(5)])
    first = run(path)
    snapshot = [
        (c.br_number, c.name_en, c.status, c.address, len(c.officers))
        for c in db.session.scalars(select(Company).order_by(Company.br_number))
    ]
    second = run(path)
    assert (first.inserted, first.updated) == (5, 0)
    assert (second.inserted, second.updated, second.rejected) == (0, 5, 0)
    db.session.expire_all()
    assert [
        (c.br_number, c.name_en, c.status, c.address, len(c.officers))
        for c in db.session.scalars(select(Company).order_by(Company.br_number))
    ] == snapshot
    assert count(CompanyOfficer) == 10
    assert second.run_id != first.run_id


# --- import: rejects --------------------------------------------------------------------------


REJECTED_ROWS = [
    (row("1234567"), "bad_br_number"),
    (row("1234567a"), "bad_br_number"),
    (
        row("\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18"),
        "bad_br_number",
    ),  # full-width digits are not ASCII digits
    (row("20000001", name_en="  "), "missing_name"),
    (row("20000002", name_en="x" * 301), "bad_name"),
    (row("20000003", name_en="Bad\x07Name"), "bad_name"),
    (row("20000004", status="struck off"), "bad_status"),
    (row("20000005", status=""), "bad_status"),
    (row("20000006", incorporated_on="2001-02-30"), "bad_date"),
    (row("20000007", incorporated_on="03/02/2001"), "bad_date"),
    (row("20000008", as_of="2999-01-01"), "bad_date"),
    (row("20000009", officers="chairman:Chan Tai Man"), "bad_officers"),
    (row("20000010", officers="director"), "bad_officers"),
    (row("20000011", officers="[{"), "bad_officers"),
    (row("20000012", officers='[{"role": "director"}]'), "bad_officers"),
    (
        row("20000013", officers='[{"role": "director", "name": "A", "appointed_on": 5}]'),
        "bad_officers",
    ),
    (row("20000014", company_type="t" * 101), "bad_field"),
    (row("20000015", address="1 Road\x00Street"), "bad_encoding"),
]


def test_every_reject_reason(register_file: Callable[..., Path], tmp_path: Path) -> None:
    path = register_file(
        [
            row("10000001"),
            *(r for r, _ in REJECTED_ROWS),
            ["30000001", "too few fields"],
            row("10000001", name_en="Second Acme Limited"),
            row("10000002"),
        ]
    )
    result = run(path, batch_size=4)
    assert result.inserted == 2
    assert result.rejected == len(REJECTED_ROWS) + 2
    found = rejects(result)
    assert [r["reason"] for r in found] == [
        *(reason for _, reason in REJECTED_ROWS),
        "bad_row",
        "duplicate_br_number",
    ]
    assert [int(r["line"]) for r in found] == list(range(3, 3 + len(found)))
    assert found[-1]["br_number"] == "10000001"
    assert all(r["detail"] for r in found)
    # The first row wins: a later row with the same BR number is rejected, not applied.
    assert company("10000001").name_en == "Company 10000001 Limited"
    assert result.reasons["bad_officers"] == 5
    assert Path(result.rejects_file) == tmp_path / "register.rejects.csv"
    assert set(register.REJECT_REASONS) == {reason for _, reason in REJECTED_ROWS} | {
        "bad_row",
        "duplicate_br_number",
    }


def test_bad_utf8_and_broken_csv_are_rejected_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "bytes.csv"
    lines = [
        ",".join(HEADER).encode(),
        b"10000001,Caf\xe9 Limited,,live,,,,,,",
        b'10000002,"unterminated,,live,,,,,,',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run(path)
    assert rejects(result)[0]["reason"] == "bad_encoding"
    assert result.inserted == 0
    assert result.rejected == 2


def test_header_problems_are_refused_before_anything(tmp_path: Path) -> None:
    missing = write_csv(tmp_path / "missing.csv", [], header=["br_number", "name_en"])
    with pytest.raises(ValidationError, match="status"):
        run(missing)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValidationError, match="empty"):
        run(empty)
    assert count(Company) == 0
    assert [e.details["state"] for e in events("orgs:register:import")] == ["failed", "failed"]


def test_header_any_order_unknown_columns_ignored_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(
        "\ufeffStatus,Name_EN,extra,BR_Number\nlive,Acme Limited,x,12345678\n".encode()
    )
    result = run(path)
    assert result.ignored_columns == ["extra"]
    assert company("12345678").name_en == "Acme Limited"


def test_rejects_path_option(register_file: Callable[..., Path], tmp_path: Path) -> None:
    result = run(register_file([row("1")]), rejects_path=tmp_path / "elsewhere.csv")
    assert result.rejects_file == str(tmp_path / "elsewhere.csv")
    assert [r["reason"] for r in rejects(result)] == ["bad_br_number"]


# --- import: batches, failures and resume -----------------------------------------------------


def fail_in_batch(monkeypatch: pytest.MonkeyPatch, k: int) -> list[int]:
    """Make the k-th batch fail after its companies were written (officers step)."""
    calls: list[int] = []
    real = register._replace_officers

    def flaky(ids: list[int], officers: list[dict[str, Any]]) -> None:
        calls.append(len(ids))
        if len(calls) == k:
            raise OSError("disk on fire")
        real(ids, officers)

    monkeypatch.setattr(register, "_replace_officers", flaky)
    return calls


def test_failing_batch_rolls_back_whole_and_resume_continues(
    register_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [row(f"100000{i:02d}") for i in range(10)]
    rows[1] = row("1")  # a reject in the first batch
    rows[5] = row("2")  # and one in the failing batch: reported once, after it commits
    path = register_file(rows)
    fail_in_batch(monkeypatch, 2)
    with pytest.raises(register.ImportFailed, match="rolled back whole") as failure:
        run(path, batch_size=4)
    assert "--resume" in failure.value.message
    # Batch 1 (records 1-4) committed; batch 2 (5-8) wrote nothing, not even its companies.
    assert sorted(db.session.scalars(select(Company.br_number))) == [
        "10000000",
        "10000002",
        "10000003",
    ]
    failed = db.session.scalars(select(ImportRun)).one()
    assert (failed.state, failed.last_record, failed.last_line) == ("failed", 4, 5)
    assert len(rejects_of(path)) == 1
    assert [e.details["state"] for e in events("orgs:register:import")] == ["failed"]

    monkeypatch.undo()
    result = run(path, batch_size=4, resume=True)
    assert result.run_id == failed.id
    assert result.resumed_from_record == 4
    assert (result.records, result.inserted, result.updated, result.rejected) == (10, 8, 0, 2)
    assert count(Company) == 8
    assert [r["br_number"] for r in rejects_of(path)] == ["1", "2"]
    done = events("orgs:register:import")[-1]
    assert done.details["state"] == "completed"
    assert done.details["inserted"] == 8
    assert done.details["resumed_from_record"] == 4


def rejects_of(path: Path) -> list[dict[str, str]]:
    with register.default_rejects_path(path).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_keeps_duplicate_detection_across_the_restart(
    register_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = register_file(
        [row("10000001"), row("10000002"), row("10000003"), row("10000001", name_en="Later")]
    )
    fail_in_batch(monkeypatch, 2)
    with pytest.raises(register.ImportFailed):
        run(path, batch_size=2)
    monkeypatch.undo()
    result = run(path, batch_size=2, resume=True)
    assert [r["reason"] for r in rejects_of(path)] == ["duplicate_br_number"]
    assert company("10000001").name_en == "Company 10000001 Limited"
    assert result.rejected == 1


def test_resume_of_another_file_starts_over(register_file: Callable[..., Path]) -> None:
    run(register_file([row("10000001")], name="a.csv"))
    result = run(register_file([row("10000002")], name="b.csv"), resume=True)
    assert result.resumed_from_record == 0
    assert result.inserted == 1


def test_resume_after_completion_starts_a_new_idempotent_run(
    register_file: Callable[..., Path],
) -> None:
    path = register_file([row("10000001")])
    first = run(path)
    second = run(path, resume=True)
    assert second.run_id != first.run_id
    assert (second.inserted, second.updated) == (0, 1)


def test_progress_reports_every_byte(register_file: Callable[..., Path]) -> None:
    path = register_file([row(f"100000{i:02d}") for i in range(20)])
    seen: list[int] = []
    run(path, progress=seen.append)
    assert sum(seen) == path.stat().st_size


# --- search -----------------------------------------------------------------------------------


@pytest.fixture
def catalogue(app_ctx: Flask, register_file: Callable[..., Path]) -> None:
    names = [
        ("10000001", "Acme Trading Limited", "亞克美貿易有限公司"),
        ("10000002", "ACME  Holdings Limited", "亞克美控股有限公司"),
        ("10000003", "Acme Trading Limited", "亞洲貿易有限公司"),
        ("10000004", "Acmé Logistics Limited", ""),
        ("10000005", "Bright Star Limited", "明星有限公司"),
        ("10000006", "acme", ""),
    ]
    run(register_file([row(br, name_en=en, name_zh=zh) for br, en, zh in names]))


def brs(found: list[Company]) -> list[str]:
    return [c.br_number for c in found]


@pytest.mark.usefixtures("catalogue")
def test_search_exact_br_number() -> None:
    assert brs(register.search_companies("10000005")) == ["10000005"]
    assert brs(register.search_companies(" 10000005 ")) == ["10000005"]
    assert register.search_companies("99999999") == []
    assert register.search_companies("10000005", after="10000001") == []


@pytest.mark.usefixtures("catalogue")
def test_search_english_prefix_casefolded_ordered() -> None:
    assert brs(register.search_companies("acme")) == [
        "10000006",
        "10000002",
        "10000001",
        "10000003",
    ]
    assert brs(register.search_companies("ACME   trading")) == ["10000001", "10000003"]
    assert brs(register.search_companies("Acmé")) == ["10000004"]
    assert brs(register.search_companies("b")) == ["10000005"]
    assert register.search_companies("zzz") == []
    assert register.search_companies("   ") == []
    # A number that is not 8 digits is a name prefix, not a BR lookup.
    assert register.search_companies("1000") == []


@pytest.mark.usefixtures("catalogue")
def test_search_chinese_prefix() -> None:
    assert brs(register.search_companies("亞克美")) == ["10000002", "10000001"]
    assert brs(register.search_companies("亞")) == ["10000002", "10000001", "10000003"]
    assert brs(register.search_companies("明星有限公司")) == ["10000005"]


@pytest.mark.usefixtures("catalogue")
def test_search_keyset_pagination() -> None:
    pages: list[list[str]] = []
    after = None
    while True:
        page = register.search_companies("acme", limit=1, after=after)
        if not page:
            break
        pages.append(brs(page))
        after = page[-1].br_number
    assert pages == [["10000006"], ["10000002"], ["10000001"], ["10000003"]]
    assert brs(register.search_companies("acme", limit=2, after="10000002")) == [
        "10000001",
        "10000003",
    ]
    # Equal names are ordered by BR number, so none is skipped or repeated.
    assert brs(register.search_companies("acme trading", after="10000001")) == ["10000003"]


@pytest.mark.usefixtures("catalogue")
@pytest.mark.parametrize(
    ("query", "kwargs"),
    [
        ("acme", {"after": "1"}),
        ("acme", {"after": "99999999"}),
        ("x" * 301, {}),
        (5, {}),
    ],
)
def test_search_refuses_bad_input(query: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        register.search_companies(query, **kwargs)


@pytest.mark.usefixtures("catalogue")
def test_search_limit_is_clamped() -> None:
    assert len(register.search_companies("acme", limit=0)) == 1
    assert len(register.search_companies("acme", limit=10_000)) == 4


def test_name_key() -> None:
    assert name_key("  \uff21\uff23\uff2d\uff25\tTrading\n Ltd ") == "acme trading ltd"
    assert name_key("Straße") == "strasse"
    assert name_key("") is None
    assert name_key(None) is None


def test_orm_keeps_search_keys_in_step() -> None:
    acme = Company(br_number="12345678", name_en="Acme Limited", name_zh="亞克美")
    db.session.add(acme)
    db.session.commit()
    acme.name_en = "New  Acme"
    acme.name_zh = None
    db.session.commit()
    assert (acme.name_key, acme.name_zh_key) == ("new acme", None)


# --- status cascade ---------------------------------------------------------------------------


class Signed:
    def __init__(
        self, person: Person, session: LoginSession, grant: Grant, token: str, consent: Consent
    ) -> None:
        self.person = person
        self.session = session
        self.grant = grant
        self.token = token
        self.consent = consent


@pytest.fixture
def signed_in(app_ctx: Flask) -> Callable[[Company], Signed]:
    rp, _ = clients.create_client(
        name="Tax e-service",
        redirect_uris=["https://tax.example.gov.hk/cb"],
        auth_method="none",
        actor="tests",
    )

    def make(target: Company) -> Signed:
        person = Person(display_name="Chan Tai Man", email="chan@acme.example")
        db.session.add(person)
        db.session.flush()
        db.session.add(Membership(person_id=person.id, company_id=target.id, roles=["admin"]))
        db.session.commit()
        session, _ = authn.start_session(
            person=person, security_key_id=None, acr="phrh", amr=["hwk"]
        )
        grant = tokens.create_grant(
            client=rp,
            person=person,
            company=target,
            scope="openid corp",
            session_id=session.id,
            security_key_id=None,
            auth_time=utcnow(),
            acr="phrh",
            amr=["hwk"],
            claims_request=None,
        )
        principal = tokens.principal_for_grant(grant)
        assert principal is not None
        token, _ = tokens.issue_access_token(client=rp, scope="openid corp", principal=principal)
        given = consent.grant_consent(person=person, company=target, client=rp, scopes=["corp"])
        db.session.commit()
        assert tokens.check_access_token(token) is not None
        return Signed(person, session, grant, token, given)

    return make


def make_company(br: str) -> Company:
    target = Company(br_number=br, name_en=f"Company {br}")
    db.session.add(target)
    db.session.commit()
    return target


def assert_ended(signed: Signed, reason: str) -> None:
    db.session.expire_all()
    membership = db.session.scalars(
        select(Membership).where(Membership.person_id == signed.person.id)
    ).one()
    assert membership.status is MembershipStatus.SUSPENDED
    assert db.session.get(LoginSession, signed.session.id).ended_at is not None  # type: ignore[union-attr]
    grant = db.session.get(Grant, signed.grant.id)
    assert grant is not None
    assert grant.revoked_at is not None
    assert grant.revoked_reason == reason
    assert db.session.get(Consent, signed.consent.id).revoked_at is not None  # type: ignore[union-attr]
    assert tokens.check_access_token(signed.token) is None  # introspection: inactive


@pytest.mark.parametrize("status", ["deregistered", "dissolved"])
def test_import_ending_a_company_cascades(
    status: str, register_file: Callable[..., Path], signed_in: Callable[[Company], Signed]
) -> None:
    run(register_file([row("12345678"), row("12345679")], name="first.csv"))
    ending, staying = signed_in(company("12345678")), signed_in(company("12345679"))
    result = run(register_file([row("12345678", status=status), row("12345679")], name="b.csv"))
    assert (result.status_changes, result.companies_ended) == (1, 1)
    assert_ended(ending, f"company_{status}")
    assert not company("12345678").is_active
    # The other company is untouched.
    assert tokens.check_access_token(staying.token) is not None
    assert db.session.get(LoginSession, staying.session.id).ended_at is None  # type: ignore[union-attr]
    (event,) = events("orgs:company:status")
    assert event.subject == "company:12345678"
    assert event.company_id == company("12345678").id
    assert event.details == {
        "from": "live",
        "to": status,
        "via": f"import:{result.run_id}",
        "memberships_suspended": 1,
        "sessions_ended": 1,
        "grants_revoked": 1,
        "consents_revoked": 1,
    }
    assert [e.subject for e in events("authn:session:end")] == [f"sid:{ending.session.sid}"]


def test_import_dormant_is_audited_without_cascade(
    register_file: Callable[..., Path], signed_in: Callable[[Company], Signed]
) -> None:
    run(register_file([row("12345678")], name="a.csv"))
    signed = signed_in(company("12345678"))
    result = run(register_file([row("12345678", status="dormant")], name="b.csv"))
    assert (result.status_changes, result.companies_ended) == (1, 0)
    assert tokens.check_access_token(signed.token) is not None
    assert company("12345678").is_active
    assert [e.details["to"] for e in events("orgs:company:status")] == ["dormant"]
    # An unchanged status on re-import records nothing.
    run(register_file([row("12345678", status="dormant")], name="c.csv"))
    assert len(events("orgs:company:status")) == 1


def test_apply_company_status(signed_in: Callable[[Company], Signed]) -> None:
    target = make_company("12345678")
    signed = signed_in(target)
    assert register.apply_company_status(target, "live", actor="operator:tests") == {}
    counts = register.apply_company_status(target, CompanyStatus.DISSOLVED, actor="operator:alice")
    assert counts == {
        "memberships_suspended": 1,
        "sessions_ended": 1,
        "grants_revoked": 1,
        "consents_revoked": 1,
    }
    assert_ended(signed, "company_dissolved")
    (event,) = events("orgs:company:status")
    assert (event.actor, event.details["via"]) == ("operator:alice", "console")
    # Back to live: audited, memberships stay suspended until someone reinstates them.
    register.apply_company_status(target, "live", actor="operator:alice")
    assert [e.details["to"] for e in events("orgs:company:status")] == ["dissolved", "live"]
    assert tokens.check_access_token(signed.token) is None
    with pytest.raises(ValidationError):
        register.apply_company_status(target, "struck-off", actor="operator:alice")


@pytest.mark.parametrize(
    ("status", "active"),
    [("live", True), ("dormant", True), ("deregistered", False), ("dissolved", False)],
)
def test_only_live_and_dormant_companies_may_act(status: str, active: bool) -> None:
    assert (
        Company(br_number="12345678", name_en="A", status=CompanyStatus(status)).is_active is active
    )
