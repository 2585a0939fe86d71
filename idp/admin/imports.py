"""Importing the company register from the operator console: an uploaded CSV file is checked
(UTF-8 text, a ``.csv`` name), written to a private temporary directory and handed to
``idp.orgs.register.import_register``; the report keeps the first rejected rows and the audit
event the import wrote. Big registers go through the CLI (``idp companies import``)."""

from __future__ import annotations

import csv
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from idp.audit.models import AuditEvent
from idp.errors import ValidationError
from idp.extensions import db
from idp.orgs import register

# Rejected rows shown on the report page (all of them are counted).
MAX_REJECTS_SHOWN = 20
MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class UploadReport:
    """What an uploaded import did: the service's result, its first rejects, its audit event."""

    result: register.ImportResult
    rejects: list[register.Rejected]
    event: AuditEvent | None


def safe_name(filename: str) -> str:
    """The upload's base name reduced to ``[A-Za-z0-9._-]`` (it becomes the import's source).
    Raises ``ValidationError`` unless it names a ``.csv`` file."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if not base.lower().endswith(".csv"):
        raise ValidationError("Choose a CSV file (a name ending in .csv).")
    stem = _UNSAFE.sub("_", base[:-4]).strip("._")[: MAX_NAME - 4] or "register"
    return f"{stem}.csv"


def _check_text(data: bytes) -> None:
    if not data.strip():
        raise ValidationError("The file is empty: a header row is required.")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"The file is not UTF-8 text (byte {exc.start}): save the register as CSV UTF-8."
        ) from None
    if b"\x00" in data:
        raise ValidationError("The file is not a CSV text file (it holds NUL bytes).")


def _first_rejects(path: Path, limit: int) -> list[register.Rejected]:
    found: list[register.Rejected] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # the header
        for row in reader:
            if len(found) >= limit:
                break
            if len(row) == len(register.REJECT_COLUMNS):
                found.append(register.Rejected(int(row[0]), row[1], row[2], row[3]))
    return found


def import_upload(
    data: bytes, *, filename: str, actor: str, max_rejects: int = MAX_REJECTS_SHOWN
) -> UploadReport:
    """Import the register CSV ``data`` (uploaded as ``filename``) for ``actor``.

    Raises ``ValidationError`` for a file that is not a UTF-8 ``.csv`` register (nothing is
    written then, but for the failed run's audit event when the header is wrong) and
    ``ImportFailed`` as ``import_register`` does."""
    name = safe_name(filename)
    _check_text(data)
    with tempfile.TemporaryDirectory(prefix="corpid-register-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        result = register.import_register(path, actor=actor)
        rejects = _first_rejects(Path(result.rejects_file), max_rejects)
    event = db.session.scalar(
        select(AuditEvent)
        .where(
            AuditEvent.tag == "orgs:register:import",
            AuditEvent.subject == f"import:{result.run_id}",
        )
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    return UploadReport(result=result, rejects=rejects, event=event)
