"""store: whether a version was written by an update (PUT), for history entries of update-as-create

Revision ID: store_0002
Revises: store_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "store_0002"
down_revision = "store_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing versions: unknown, shown as before (a first version as a POST create).
    with op.batch_alter_table("store_resources") as batch:
        batch.add_column(sa.Column("by_update", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("store_resources") as batch:
        batch.drop_column("by_update")
