"""A grant names the authorization code redeemed for it (grants.code_id), instead of the code
naming its grant (authorization_codes.grant_id): the grant is written with it, so redeeming a
code no longer updates the code row afterwards. A code presented again finds its grant by
grants.code_id (indexed) and revokes it, as before.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 12:12:43
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("code_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_grants_code_id"), ["code_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_grants_code_id_authorization_codes"),
            "authorization_codes",
            ["code_id"],
            ["id"],
            ondelete="SET NULL",
        )
    # The links already made, turned around.
    op.execute(
        "UPDATE grants SET code_id = (SELECT authorization_codes.id FROM authorization_codes "
        "WHERE authorization_codes.grant_id = grants.id) "
        "WHERE EXISTS (SELECT 1 FROM authorization_codes "
        "WHERE authorization_codes.grant_id = grants.id)"
    )
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_authorization_codes_grant_id_grants"), type_="foreignkey"
        )
        batch_op.drop_column("grant_id")


def downgrade() -> None:
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grant_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_authorization_codes_grant_id_grants"),
            "grants",
            ["grant_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.execute(
        "UPDATE authorization_codes SET grant_id = (SELECT grants.id FROM grants "
        "WHERE grants.code_id = authorization_codes.id) "
        "WHERE EXISTS (SELECT 1 FROM grants WHERE grants.code_id = authorization_codes.id)"
    )
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_grants_code_id_authorization_codes"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_grants_code_id"))
        batch_op.drop_column("code_id")
