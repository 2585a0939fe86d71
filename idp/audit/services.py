"""Audit events, recorded by services in the same transaction as what they describe."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from idp.audit.models import AuditEvent
from idp.extensions import db

log = logging.getLogger("idp.audit")


@dataclass(frozen=True)
class Origin:
    """Where a request came from, as the view saw it."""

    ip_address: str | None = None
    user_agent: str | None = None


def record(
    tag: str,
    *,
    actor: str,
    subject: str | None = None,
    origin: Origin | None = None,
    company_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the current transaction (the caller commits). Never put secrets
    in ``details``."""
    event = AuditEvent(
        tag=tag,
        actor=actor,
        subject=subject,
        company_id=company_id,
        ip_address=origin.ip_address if origin else None,
        user_agent=(origin.user_agent or "")[:300] if origin else None,
        details=details or {},
    )
    db.session.add(event)
    log.info("audit %s actor=%s subject=%s", tag, actor, subject)
    return event
