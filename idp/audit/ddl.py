"""The append-only guards of audit_events in the generated migration.

Alembic's autogenerate does not see triggers: ``add_guards`` (a ``process_revision_directives``
hook of ``migrations/env.py``) appends them whenever a generated migration creates the
audit_events table (as ``0001`` does), written out as literal SQL per dialect so that the
migration imports no application code.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops

from idp.audit.models import DROP_GUARDS, GUARDS


class AuditGuardsOp(ops.MigrateOperation):
    """Create (or, ``drop=True``, drop) the triggers refusing UPDATE/DELETE on audit_events."""

    def __init__(self, *, drop: bool = False) -> None:
        self.drop = drop

    def reverse(self) -> AuditGuardsOp:
        return AuditGuardsOp(drop=not self.drop)


@renderers.dispatch_for(AuditGuardsOp)
def _render(autogen_context: AutogenContext, op: AuditGuardsOp) -> list[str]:
    statements = DROP_GUARDS if op.drop else GUARDS
    lines = ["# audit_events is append-only (idp.audit.ddl)"]
    for dialect, sql in statements.items():
        lines.append(f"if op.get_bind().dialect.name == {dialect!r}:")
        lines.extend(f"op.execute({statement!r})" for statement in sql)
        lines.append("")  # ends the if block (Alembic's printer dedents on a blank line)
    return lines


def _creates_audit_events(container: Any) -> bool:
    return any(
        isinstance(op, ops.CreateTableOp) and op.table_name == "audit_events"
        for op in getattr(container, "ops", [])
    )


def add_guards(context: Any, revision: Any, directives: list[Any]) -> None:
    """Add the guards after the tables of a migration that creates audit_events, and drop them
    first in its downgrade."""
    for script in directives:
        for upgrade_ops, downgrade_ops in zip(
            script.upgrade_ops_list, script.downgrade_ops_list, strict=True
        ):
            if _creates_audit_events(upgrade_ops):
                upgrade_ops.ops.append(AuditGuardsOp())
                downgrade_ops.ops.insert(0, AuditGuardsOp(drop=True))
