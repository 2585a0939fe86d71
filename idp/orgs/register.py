"""The company register: bulk import from CSV, search, and status changes with their cascade.

Import (``import_register``; ``idp companies import FILE.csv``)
    A UTF-8 CSV file with a header row naming its columns (any order; unknown columns are
    ignored; ``br_number``, ``name_en`` and ``status`` are required):

    ``br_number``        8 digits (the Business Registration number has no published check
                         digit, so only the form is checked)
    ``name_en``          English name, required, at most 300 characters
    ``name_zh``          Chinese name, optional
    ``status``           live, dormant, deregistered or dissolved (any case)
    ``address``          registered address, optional (line breaks kept), at most 1000 characters
    ``incorporated_on``  date of incorporation, YYYY-MM-DD, optional, not in the future
    ``company_type``     as the register names it, optional, at most 100 characters
    ``officers``         the complete list of directors and secretaries, either JSON
                         (``[{"role": "director", "name_en": "..", "name_zh": "..",
                         "appointed_on": "YYYY-MM-DD"}]``) or ``role:name;role:name``;
                         empty means none. Each import replaces a company's officers wholesale.
    ``source``           where the data came from, optional (default: the file's name)
    ``as_of``            the date the data describes, YYYY-MM-DD, optional

    Rows are upserted by BR number in batches, one transaction per batch, with bulk Core
    statements (``INSERT .. ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL). A bad row is
    rejected with a reason (written to the rejects file, never aborting the import); a BR number
    seen again later in the same file is rejected (``duplicate_br_number``: the first row wins,
    as an ambiguous register must not silently overwrite itself). A failing batch is rolled back
    whole and stops the run; ``resume=True`` continues after the last committed batch of the
    same file (``import_runs``). Re-importing a file is idempotent anyway.

Status
    When a company becomes deregistered or dissolved, its memberships are suspended and its
    sign-in sessions (those in which one of its members acted for it), tokens and consents end;
    each change is audited (``orgs:company:status``). Returning to live or dormant does not
    reinstate memberships: an operator or admin does that.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from sqlalchemy import Table, delete, insert, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError

from idp.audit.services import Origin, record
from idp.authn.models import LoginSession
from idp.consent.models import Consent
from idp.db import utcnow
from idp.errors import ConflictError, IdpError, ValidationError
from idp.extensions import db
from idp.oauth import backchannel, tokens
from idp.oauth.models import Grant
from idp.orgs.models import (
    Company,
    CompanyOfficer,
    CompanyStatus,
    ImportRun,
    Membership,
    MembershipStatus,
    OfficerRole,
    name_key,
)

COLUMNS = (
    "br_number",
    "name_en",
    "name_zh",
    "status",
    "address",
    "incorporated_on",
    "company_type",
    "officers",
    "source",
    "as_of",
)
REQUIRED_COLUMNS = ("br_number", "name_en", "status")
REJECT_COLUMNS = ("line", "br_number", "reason", "detail")
# Why a row can be rejected (the ``reason`` column of the rejects file).
REJECT_REASONS = (
    "bad_row",  # not a CSV record of the header's width
    "bad_encoding",  # not UTF-8, or NUL bytes
    "bad_br_number",
    "missing_name",
    "bad_name",
    "bad_status",
    "bad_date",
    "bad_officers",
    "bad_field",  # too long or control characters (address, company_type, source)
    "duplicate_br_number",
)
INACTIVE = frozenset({CompanyStatus.DEREGISTERED, CompanyStatus.DISSOLVED})
DEFAULT_BATCH_SIZE = 2000
MAX_SEARCH_LIMIT = 100
MAX_QUERY_LENGTH = 300
MAX_OFFICERS = 200
IMPORT_KIND = "companies"

_BR = re.compile(r"[0-9]{8}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Bytes that were not UTF-8 (decoded with surrogateescape) or NUL (replaced by U+FFFD).
_BAD_TEXT = re.compile("[\udc80-\udcff\ufffd]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
_ROLES = frozenset(r.value for r in OfficerRole)
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")
_CJK = re.compile("[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff]")
_TOP = "\U0010ffff"
# Progress is reported after at least this many bytes (a call per line would cost more).
_PROGRESS_STEP = 1 << 20


# --- search -----------------------------------------------------------------------------------


def search_companies(query: str, *, limit: int = 20, after: str | None = None) -> list[Company]:
    """Companies matching ``query``: 8 digits is an exact BR number lookup (0 or 1 company);
    anything else is a name prefix, compared in search form (``name_key``: NFKC, casefolded,
    whitespace collapsed) against the Chinese name when the query holds CJK characters, else
    against the English name.

    Name results are ordered by (name, BR number) and keyset-paginated: pass the BR number of
    the last company of a page as ``after`` for the next page. Every status is returned.
    ``limit`` is clamped to 1..100. Each page is one range scan of a B-tree index, so it stays
    fast at millions of rows. Raises ``ValidationError`` for a query that is not a string or
    too long, or a malformed or unknown ``after``.
    """
    if not isinstance(query, str):
        raise ValidationError("the search query must be text")
    text = query.strip()
    if len(text) > MAX_QUERY_LENGTH:
        raise ValidationError(f"the search query is longer than {MAX_QUERY_LENGTH} characters")
    if after is not None and (not isinstance(after, str) or not _BR.fullmatch(after)):
        raise ValidationError("after: a BR number (8 digits) is required")
    limit = max(1, min(int(limit), MAX_SEARCH_LIMIT))
    if _BR.fullmatch(text):
        if after is not None:
            return []  # an exact lookup has a single page
        found = db.session.scalar(select(Company).where(Company.br_number == text))
        return [found] if found is not None else []
    key = name_key(text)
    if not key:
        return []
    column = Company.name_zh_key if _CJK.search(key) else Company.name_key
    statement = select(Company).where(column >= key, column < key + _TOP)
    if after is not None:
        anchor = db.session.scalar(select(column).where(Company.br_number == after))
        if anchor is None:
            raise ValidationError("after: no such company in these results")
        # A row-value comparison, so the index scan starts right after the anchor; with
        # "column > anchor OR br_number > after" PostgreSQL walked every company sharing the
        # anchor's name key first (p99 177 ms on 1.8 M rows for common names).
        statement = statement.where(tuple_(column, Company.br_number) > tuple_(anchor, after))
    return list(
        db.session.scalars(statement.order_by(column, Company.br_number).limit(limit)).all()
    )


# --- status and its cascade -------------------------------------------------------------------


def _end_company_access(company_id: int, *, reason: str, actor: str) -> dict[str, int]:
    """Suspend a company's memberships and end its sessions, grants and consents (the caller
    commits). Returns the counts."""
    now = utcnow()
    suspended = db.session.execute(
        update(Membership)
        .where(Membership.company_id == company_id, Membership.status == MembershipStatus.ACTIVE)
        .values(status=MembershipStatus.SUSPENDED)
        .execution_options(synchronize_session="fetch")
    )
    # Sessions are a person's; those in which someone acted for this company carry its grants.
    session_ids = (
        select(Grant.session_id)
        .where(Grant.company_id == company_id, Grant.session_id.is_not(None))
        .distinct()
    )
    sessions = db.session.scalars(
        select(LoginSession).where(
            LoginSession.id.in_(session_ids), LoginSession.ended_at.is_(None)
        )
    ).all()
    grants = 0
    for session in sessions:
        session.ended_at = now
        grants += tokens.revoke_grants(reason=reason, actor=actor, session_id=session.id)
        backchannel.queue_for_session(session)
        record(
            "authn:session:end",
            actor=actor,
            subject=f"sid:{session.sid}",
            company_id=company_id,
            details={"reason": reason},
        )
    grants += tokens.revoke_grants(reason=reason, actor=actor, company_id=company_id)
    consents = db.session.execute(
        update(Consent)
        .where(Consent.company_id == company_id, Consent.revoked_at.is_(None))
        .values(revoked_at=now, updated_at=now)
        .execution_options(synchronize_session="fetch")
    )
    return {
        "memberships_suspended": int(getattr(suspended, "rowcount", 0) or 0),
        "sessions_ended": len(sessions),
        "grants_revoked": grants,
        "consents_revoked": int(getattr(consents, "rowcount", 0) or 0),
    }


def _status_changed(
    *,
    company_id: int,
    br_number: str,
    before: CompanyStatus,
    after: CompanyStatus,
    actor: str,
    origin: Origin | None = None,
    via: str,
) -> dict[str, int]:
    counts: dict[str, int] = {}
    if after in INACTIVE:
        counts = _end_company_access(company_id, reason=f"company_{after.value}", actor=actor)
    record(
        "orgs:company:status",
        actor=actor,
        subject=f"company:{br_number}",
        company_id=company_id,
        origin=origin,
        details={"from": before.value, "to": after.value, "via": via, **counts},
    )
    return counts


def apply_company_status(
    company: Company,
    status: CompanyStatus | str,
    *,
    actor: str,
    origin: Origin | None = None,
) -> dict[str, int]:
    """Set ``company``'s register status. Becoming deregistered or dissolved suspends its
    memberships and ends its sessions, tokens and consents; the change is audited
    (``orgs:company:status``). Committed.

    Returns the counts of what ended (empty when the company stays active, or when the status
    does not change: then nothing is written). Raises ``ValidationError`` for an unknown status.
    """
    try:
        new = CompanyStatus(status)
    except ValueError:
        choices = ", ".join(s.value for s in CompanyStatus)
        raise ValidationError(f"status: choose from {choices}") from None
    old = company.status
    if new is old:
        return {}
    company.status = new
    company.updated_at = utcnow()
    db.session.flush()
    counts = _status_changed(
        company_id=company.id,
        br_number=company.br_number,
        before=old,
        after=new,
        actor=actor,
        origin=origin,
        via="console",
    )
    db.session.commit()
    return counts


# --- import: parsing --------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Rejected:
    """A row the import refused: its first file line, BR number (as given), reason and detail."""

    line: int
    br_number: str
    reason: str
    detail: str


def _text(
    value: str, *, field: str, limit: int, reason: str = "bad_field", newlines: bool = False
) -> str | None:
    if not value:
        return None
    if len(value) > limit:
        raise _Reject(reason, f"{field}: longer than {limit} characters")
    if (_CONTROL_BUT_NEWLINE if newlines else _CONTROL).search(value):
        raise _Reject(reason, f"{field}: control characters are not allowed")
    return value


def _date(value: str, *, field: str, today: dt.date) -> dt.date | None:
    if not value:
        return None
    if not _DATE.fullmatch(value):
        raise _Reject("bad_date", f"{field}: a date YYYY-MM-DD is required")
    try:
        parsed = dt.date.fromisoformat(value)
    except ValueError:
        raise _Reject("bad_date", f"{field}: no such date {value}") from None
    if parsed > today:
        raise _Reject("bad_date", f"{field}: {value} is in the future")
    return parsed


def _officer_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Reject("bad_officers", "officers: names must be text")
    return _text(value.strip(), field="officers", limit=300, reason="bad_officers")


def _officer(
    role: object, name_en: object, name_zh: object, appointed: object, today: dt.date
) -> dict[str, Any]:
    role_value = role.strip().lower() if isinstance(role, str) else None
    if role_value not in _ROLES:
        choices = ", ".join(r.value for r in OfficerRole)
        raise _Reject("bad_officers", f"officers: role must be one of {choices}")
    english, chinese = _officer_name(name_en), _officer_name(name_zh)
    if not english and not chinese:
        raise _Reject("bad_officers", "officers: each officer needs a name")
    appointed_on = None
    if appointed is not None:
        if not isinstance(appointed, str):
            raise _Reject("bad_officers", "officers: appointed_on must be a date YYYY-MM-DD")
        try:
            appointed_on = _date(appointed.strip(), field="officers", today=today)
        except _Reject as exc:
            raise _Reject("bad_officers", exc.detail) from None
    # Plain values: the rows go to a bulk Core INSERT.
    return {
        "role": role_value,
        "name_en": english,
        "name_zh": chinese,
        "appointed_on": appointed_on,
    }


def parse_officers(value: str, *, today: dt.date | None = None) -> list[dict[str, Any]]:
    """The officers column: JSON (a list of objects with ``role``, ``name_en`` and/or
    ``name_zh``, optional ``appointed_on``) or ``role:name;role:name``. A name given the short
    way is stored as the Chinese name when it holds CJK characters, else as the English name.
    Raises ``ValueError`` (a ``_Reject``) for a malformed value."""
    today = today or dt.date.today()
    value = value.strip()
    if not value:
        return []
    officers: list[dict[str, Any]] = []
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            raise _Reject("bad_officers", "officers: malformed JSON") from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise _Reject("bad_officers", "officers: a JSON list of objects is required")
        for item in items:
            name_en = item.get("name_en", item.get("name"))
            officers.append(
                _officer(
                    item.get("role"), name_en, item.get("name_zh"), item.get("appointed_on"), today
                )
            )
    else:
        for part in value.split(";"):
            if not part.strip():
                continue
            role, sep, name = part.partition(":")
            if not sep:
                raise _Reject("bad_officers", "officers: role:name;role:name or JSON expected")
            name = name.strip()
            chinese = bool(_CJK.search(name))
            officers.append(
                _officer(role, None if chinese else name, name if chinese else None, None, today)
            )
    if len(officers) > MAX_OFFICERS:
        raise _Reject("bad_officers", f"officers: more than {MAX_OFFICERS}")
    return officers


@dataclass
class _Row:
    line: int
    company: dict[str, Any]
    officers: list[dict[str, Any]]


class _Parser:
    def __init__(self, header: list[str], *, source: str, today: dt.date) -> None:
        names = [h.strip().lower() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise ValidationError(
                f"the header lacks the column(s) {', '.join(missing)}; "
                f"expected {', '.join(COLUMNS)}"
            )
        duplicated = sorted({n for n in names if n in COLUMNS and names.count(n) > 1})
        if duplicated:
            raise ValidationError(f"the header names {', '.join(duplicated)} twice")
        self.width = len(names)
        self.index = {name: i for i, name in enumerate(names) if name in COLUMNS}
        self.ignored = [n for n in names if n not in COLUMNS]
        self.source = source
        self.today = today
        # One bit per possible BR number (12.5 MB): duplicates found without keeping the file.
        self.seen = bytearray(12_500_000)

    def _get(self, fields: list[str], name: str) -> str:
        i = self.index.get(name)
        return fields[i].strip() if i is not None else ""

    def parse(self, fields: list[str], line: int) -> _Row:
        if len(fields) != self.width:
            raise _Reject("bad_row", f"{len(fields)} fields, the header has {self.width}")
        if _BAD_TEXT.search("".join(fields)):
            raise _Reject("bad_encoding", "not valid UTF-8 (or NUL bytes)")
        get = self._get
        br = get(fields, "br_number")
        if not _BR.fullmatch(br):
            raise _Reject("bad_br_number", "a BR number is exactly 8 digits")
        name_en = get(fields, "name_en")
        if not name_en:
            raise _Reject("missing_name", "name_en: the English name is required")
        name_en = _SPACES.sub(" ", name_en)
        _text(name_en, field="name_en", limit=300, reason="bad_name")
        name_zh = _text(get(fields, "name_zh"), field="name_zh", limit=300, reason="bad_name")
        raw_status = get(fields, "status").lower()
        try:
            status = CompanyStatus(raw_status)
        except ValueError:
            choices = ", ".join(s.value for s in CompanyStatus)
            raise _Reject(
                "bad_status", f"status: {raw_status or 'missing'}; one of {choices}"
            ) from None
        company = {
            "br_number": br,
            "name_en": name_en,
            "name_zh": name_zh,
            "name_key": name_key(name_en) or "",
            "name_zh_key": name_key(name_zh),
            "status": status,
            "address": _text(get(fields, "address"), field="address", limit=1000, newlines=True),
            "incorporated_on": _date(
                get(fields, "incorporated_on"), field="incorporated_on", today=self.today
            ),
            "company_type": _text(get(fields, "company_type"), field="company_type", limit=100),
            "source": _text(get(fields, "source"), field="source", limit=200) or self.source,
            "as_of": _date(get(fields, "as_of"), field="as_of", today=self.today),
        }
        officers = parse_officers(get(fields, "officers"), today=self.today)
        number = int(br)
        byte, bit = divmod(number, 8)
        if self.seen[byte] & (1 << bit):
            raise _Reject("duplicate_br_number", f"{br} is on an earlier line of this file")
        self.seen[byte] |= 1 << bit
        return _Row(line=line, company=company, officers=officers)


def _lines(fh: Iterable[bytes], progress: Callable[[int], None] | None) -> Iterator[str]:
    pending = 0
    first = True
    for raw in fh:
        if first:
            raw = raw.removeprefix(codecs.BOM_UTF8)
            first = False
        pending += len(raw)
        if progress is not None and pending >= _PROGRESS_STEP:
            progress(pending)
            pending = 0
        text = raw.decode("utf-8", "surrogateescape")
        yield text.replace("\x00", "\ufffd") if "\x00" in text else text
    if progress is not None and pending:
        progress(pending)


def _records(reader: Any) -> Iterator[tuple[int, int, list[str] | None, str | None]]:
    """``(first_line, last_line, fields, error)`` per CSV record; blank lines skipped."""
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, reader.line_num, None, str(exc)
            continue
        if fields:
            yield start, reader.line_num, fields, None


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, read in chunks."""
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


# --- import: writing --------------------------------------------------------------------------


def _insert_for_dialect() -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    name = db.session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise ConflictError(f"the register import supports SQLite and PostgreSQL, not {name}")


UPSERT_COLUMNS = (
    "name_en",
    "name_zh",
    "name_key",
    "name_zh_key",
    "status",
    "address",
    "incorporated_on",
    "company_type",
    "source",
    "as_of",
    "updated_at",
)


def _upsert_companies(rows: list[dict[str, Any]]) -> None:
    dialect_insert = _insert_for_dialect()
    statement = dialect_insert(Company.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["br_number"],
        set_={name: statement.excluded[name] for name in UPSERT_COLUMNS},
    )
    db.session.execute(statement, rows)


def _replace_officers(company_ids: list[int], officers: list[dict[str, Any]]) -> None:
    db.session.execute(
        delete(CompanyOfficer)
        .where(CompanyOfficer.company_id.in_(company_ids))
        .execution_options(synchronize_session=False)
    )
    if officers:
        db.session.execute(insert(cast(Table, CompanyOfficer.__table__)), officers)


@dataclass
class ImportResult:
    """What a run did. Counts cover the whole file, resumed runs included."""

    run_id: int
    file: str
    rejects_file: str
    records: int = 0
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    status_changes: int = 0
    companies_ended: int = 0
    resumed_from_record: int = 0
    seconds: float = 0.0
    ignored_columns: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "inserted": self.inserted,
            "updated": self.updated,
            "rejected": self.rejected,
            "status_changes": self.status_changes,
            "companies_ended": self.companies_ended,
            "reasons": dict(sorted(self.reasons.items())),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "file": self.file,
            "rejects_file": self.rejects_file,
            "resumed_from_record": self.resumed_from_record,
            "seconds": round(self.seconds, 3),
            "ignored_columns": self.ignored_columns,
            **self.counts(),
        }


class ImportFailed(ConflictError):
    """A batch could not be written: it was rolled back whole and the run stopped."""


def default_rejects_path(path: Path) -> Path:
    """Where the rejects report goes by default: ``NAME.rejects.csv`` beside ``NAME.csv``."""
    return path.with_name(f"{path.stem}.rejects.csv")


class _Writer:
    def __init__(self, run: ImportRun, result: ImportResult, rejects: TextIO, actor: str) -> None:
        self.run = run
        self.result = result
        self.rejects = csv.writer(rejects)
        self.rejects_fh = rejects
        self.actor = actor

    def commit(
        self, rows: list[_Row], rejected: list[Rejected], *, records: int, line: int
    ) -> None:
        """Write one batch in one transaction, then its rejects; roll back whole on error."""
        result = self.result
        try:
            inserted, updated, changes, ended = self._write(rows)
            self.run.last_record = records
            self.run.last_line = line
            result.records = records
            result.inserted += inserted
            result.updated += updated
            result.status_changes += changes
            result.companies_ended += ended
            result.rejected += len(rejected)
            for reject in rejected:
                result.reasons[reject.reason] = result.reasons.get(reject.reason, 0) + 1
            self.run.counts = result.counts()
            self.run.updated_at = utcnow()
            db.session.commit()
        except (SQLAlchemyError, IdpError, OSError, ValueError) as exc:
            db.session.rollback()
            first = rows[0].line if rows else (rejected[0].line if rejected else line)
            raise ImportFailed(
                f"the batch from line {first} to {line} failed and was rolled back whole "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                f"{self.run.last_record} records are committed; run again with --resume"
            ) from exc
        for reject in rejected:
            self.rejects.writerow([reject.line, reject.br_number, reject.reason, reject.detail])
        self.rejects_fh.flush()

    def _write(self, rows: list[_Row]) -> tuple[int, int, int, int]:
        if not rows:
            return 0, 0, 0, 0
        brs = [r.company["br_number"] for r in rows]
        existing = {
            br: status
            for br, status in db.session.execute(
                select(Company.br_number, Company.status).where(Company.br_number.in_(brs))
            )
        }
        now = utcnow()
        _upsert_companies([{**r.company, "updated_at": now} for r in rows])
        ids = {
            br: id_
            for br, id_ in db.session.execute(
                select(Company.br_number, Company.id).where(Company.br_number.in_(brs))
            )
        }
        _replace_officers(
            list(ids.values()),
            [{**o, "company_id": ids[r.company["br_number"]]} for r in rows for o in r.officers],
        )
        changes = ended = 0
        for r in rows:
            br = r.company["br_number"]
            before = existing.get(br)
            after = r.company["status"]
            if before is None or before is after:
                continue
            changes += 1
            ended += after in INACTIVE and before not in INACTIVE
            _status_changed(
                company_id=ids[br],
                br_number=br,
                before=before,
                after=after,
                actor=self.actor,
                via=f"import:{self.run.id}",
            )
        return len(rows) - len(existing), len(existing), changes, ended


def _open_run(path: Path, digest_: str, *, actor: str, resume: bool) -> tuple[ImportRun, bool]:
    run = None
    if resume:
        run = db.session.scalar(
            select(ImportRun)
            .where(
                ImportRun.kind == IMPORT_KIND,
                ImportRun.file_digest == digest_,
                ImportRun.state != "completed",
            )
            .order_by(ImportRun.id.desc())
            .limit(1)
        )
    resumed = run is not None
    if run is None:
        run = ImportRun(
            kind=IMPORT_KIND,
            file_digest=digest_,
            file_name=str(path)[-500:],
            actor=actor,
            state="running",
            last_record=0,
            last_line=0,
            counts={},
        )
        db.session.add(run)
    run.state = "running"
    run.error = None
    run.updated_at = utcnow()
    db.session.commit()
    return run, resumed


def _finish(run: ImportRun, result: ImportResult, *, state: str, error: str | None) -> None:
    run.state = state
    run.error = error[:500] if error else None
    run.finished_at = run.updated_at = utcnow()
    record(
        "orgs:register:import",
        actor=run.actor,
        subject=f"import:{run.id}",
        details={
            "state": state,
            "file": Path(run.file_name).name,
            "file_digest": run.file_digest,
            "resumed_from_record": result.resumed_from_record,
            **result.counts(),
        },
    )
    db.session.commit()


def import_register(
    path: str | os.PathLike[str],
    *,
    actor: str,
    rejects_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import the register CSV at ``path`` (format in this module's docstring).

    Streams the file; upserts by BR number in batches of ``batch_size`` records, each batch one
    transaction; writes rejected rows (line, BR number, reason, detail) to ``rejects_path``
    (default ``default_rejects_path(path)``); calls ``progress(nbytes)`` as it reads. With
    ``resume``, continues the last unfinished run of the same file (same SHA-256) after its
    last committed batch, appending to the rejects file; without one it starts from the top.
    Audited once per run (``orgs:register:import``, with the counts).

    Returns an ``ImportResult``. Raises ``ValidationError`` when the file cannot be read as a
    register (no header, a required column missing) and ``ImportFailed`` when a batch could not
    be written (rolled back whole; earlier batches stay committed and ``resume`` continues).
    """
    source_path = Path(path)
    if batch_size < 1:
        raise ValidationError("the batch size must be positive")
    try:
        digest_ = file_digest(source_path)
    except OSError as exc:
        raise ValidationError(f"cannot read {source_path}: {exc.strerror or exc}") from None
    run, resumed = _open_run(source_path, digest_, actor=actor, resume=resume)
    skip = run.last_record if resumed else 0
    rejects_file = Path(rejects_path) if rejects_path else default_rejects_path(source_path)
    result = ImportResult(
        run_id=run.id,
        file=str(source_path),
        rejects_file=str(rejects_file),
        resumed_from_record=skip,
    )
    if skip:
        previous = run.counts or {}
        for name in ("inserted", "updated", "rejected", "status_changes", "companies_ended"):
            setattr(result, name, int(previous.get(name, 0)))
        result.reasons = dict(previous.get("reasons", {}))
        result.records = skip
    started = time.monotonic()
    append = bool(skip) and rejects_file.exists()
    try:
        with (
            source_path.open("rb") as fh,
            rejects_file.open("a" if append else "w", encoding="utf-8", newline="") as out,
        ):
            writer = _Writer(run, result, out, actor)
            if not append:
                writer.rejects.writerow(REJECT_COLUMNS)
            _run_import(
                fh,
                writer,
                source=source_path.name,
                skip=skip,
                batch_size=batch_size,
                progress=progress,
                result=result,
            )
    except ImportFailed as exc:
        result.seconds = time.monotonic() - started
        _finish(run, result, state="failed", error=exc.message)
        raise
    except ValidationError as exc:
        _finish(run, result, state="failed", error=exc.message)
        raise
    except OSError as exc:
        db.session.rollback()
        _finish(run, result, state="failed", error=str(exc))
        raise ValidationError(f"cannot write the rejects file {rejects_file}: {exc}") from None
    result.seconds = time.monotonic() - started
    _finish(run, result, state="completed", error=None)
    return result


def _run_import(
    fh: Iterable[bytes],
    writer: _Writer,
    *,
    source: str,
    skip: int,
    batch_size: int,
    progress: Callable[[int], None] | None,
    result: ImportResult,
) -> None:
    reader = csv.reader(_lines(fh, progress), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationError("the file is empty: a header row is required") from None
    except csv.Error as exc:
        raise ValidationError(f"the header row is not CSV: {exc}") from None
    if _BAD_TEXT.search("".join(header)):
        raise ValidationError("the header row is not valid UTF-8")
    parser = _Parser(header, source=source, today=dt.date.today())
    result.ignored_columns = parser.ignored
    rows: list[_Row] = []
    rejected: list[Rejected] = []
    records = 0
    last_line = 1
    for first, last, fields, error in _records(reader):
        records += 1
        last_line = last
        replay = records <= skip  # committed by the run we resume: parsed only for duplicates
        try:
            if fields is None:
                raise _Reject("bad_row", f"not a CSV record: {error}")
            row = parser.parse(fields, first)
        except _Reject as exc:
            if not replay:
                br = (
                    fields[parser.index["br_number"]]
                    if fields and len(fields) == parser.width
                    else ""
                )
                rejected.append(Rejected(first, br.strip()[:20], exc.reason, exc.detail))
        else:
            if not replay:
                rows.append(row)
        if not replay and len(rows) + len(rejected) >= batch_size:
            writer.commit(rows, rejected, records=records, line=last_line)
            rows, rejected = [], []
    if rows or rejected or records > result.records:
        writer.commit(rows, rejected, records=records, line=last_line)
