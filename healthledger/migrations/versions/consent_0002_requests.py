"""consent requests: which organisation asked a patient for access by recording a proposed Consent, and when

Revision ID: consent_0002
Revises: consent_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "consent_0002"
down_revision = "consent_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("consent_id", sa.String(64), nullable=False),
        sa.Column("organization", sa.String(200), nullable=False),
        sa.Column("requested_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_requests"),
        sa.UniqueConstraint("tenant", "consent_id", name="uq_consent_requests_consent"),
    )
    op.create_index("ix_consent_requests_organization", "consent_requests", ["tenant", "organization", "requested_at"])


def downgrade() -> None:
    op.drop_table("consent_requests")
