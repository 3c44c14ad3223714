"""consent enforcement: index generation counter, Consent <-> on-chain grant bindings

Revision ID: consent_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "consent_0001"
down_revision = None
branch_labels = ("consent",)
depends_on = None


def upgrade() -> None:
    generation = op.create_table(
        "consent_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_generation"),
    )
    op.bulk_insert(generation, [{"id": 1, "generation": 0}])
    op.create_table(
        "consent_bindings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("consent_id", sa.String(64), nullable=False),
        sa.Column("grantee_ref", sa.String(200), nullable=False),
        sa.Column("patient_address", sa.String(42), nullable=False),
        sa.Column("grantee_address", sa.String(42), nullable=False),
        sa.Column("scope_hash", sa.String(66), nullable=False),
        sa.Column("grant_id", sa.String(66), nullable=False),
        sa.Column("grant_item", sa.BigInteger(), nullable=True),
        sa.Column("revoke_item", sa.BigInteger(), nullable=True),
        sa.Column("valid_until", sa.BigInteger(), nullable=False),
        sa.Column("signed_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_consent_bindings"),
        sa.UniqueConstraint("tenant", "consent_id", "grantee_ref", name="uq_consent_bindings_grant"),
    )
    op.create_index("ix_consent_bindings_consent_id", "consent_bindings", ["consent_id"])
    op.create_index("ix_consent_bindings_grant_id", "consent_bindings", ["grant_id"])


def downgrade() -> None:
    op.drop_table("consent_bindings")
    op.drop_table("consent_generation")
