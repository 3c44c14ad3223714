"""chain: deployed ledger contracts (address, deployment block, expected runtime code hash)

Revision ID: chain_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "chain_0001"
down_revision = None
branch_labels = ("chain",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_contracts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("deployment_block", sa.BigInteger(), nullable=False),
        sa.Column("code_hash", sa.String(66), nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chain_contracts"),
        sa.UniqueConstraint("chain_id", "name", name="uq_chain_contracts_chain_id_name"),
    )


def downgrade() -> None:
    op.drop_table("chain_contracts")
