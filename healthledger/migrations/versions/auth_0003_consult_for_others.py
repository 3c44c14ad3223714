"""API clients: registered as consent-decision consumers for others (CDS Hooks `context.actor`)

Revision ID: auth_0003
Revises: auth_0002
"""
import sqlalchemy as sa
from alembic import op

revision = "auth_0003"
down_revision = "auth_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing clients ask only about themselves: the default is false (docs/consent-semantics.md).
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(
            sa.Column("consult_for_others", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("consult_for_others")
