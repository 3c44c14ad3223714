"""federation: the consortium's member directory, indexed from MemberRegistry (healthledger.ledger.members)

Revision ID: federation_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "federation_0001"
down_revision = None
branch_labels = ("federation",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federation_member_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("org_key", sa.String(66), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_federation_member_events"),
        sa.UniqueConstraint("tx_hash", "log_index", name="uq_federation_member_events_tx_log"),
    )
    op.create_index("ix_federation_member_events_org_key", "federation_member_events", ["org_key"])
    op.create_index("ix_federation_member_events_block_number", "federation_member_events", ["block_number"])
    op.create_table(
        "federation_members",
        sa.Column("org_key", sa.String(66), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("fhir_base_url", sa.String(256), nullable=False),
        sa.Column("key_thumbprint", sa.String(66), nullable=False),
        sa.Column("controller", sa.String(42), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_key", name="pk_federation_members"),
        sa.UniqueConstraint("org_id", name="uq_federation_members_org_id"),
    )


def downgrade() -> None:
    op.drop_table("federation_members")
    op.drop_index("ix_federation_member_events_block_number", "federation_member_events")
    op.drop_index("ix_federation_member_events_org_key", "federation_member_events")
    op.drop_table("federation_member_events")
