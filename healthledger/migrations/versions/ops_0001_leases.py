"""ops: leases for background work shared by several replicas (healthledger.leases)

Revision ID: ops_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "ops_0001"
down_revision = None
branch_labels = ("ops",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ops_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ops_leases"),
    )


def downgrade() -> None:
    op.drop_table("ops_leases")
