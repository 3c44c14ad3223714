"""federation: record locators made by patients (at A) and the record links they become (at B)

Revision ID: federation_0002
Revises: federation_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "federation_0002"
down_revision = "federation_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federation_record_locators",
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("consent_id", sa.String(64), nullable=False),
        sa.Column("member", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("redeemed_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("secret_hash", name="pk_federation_record_locators"),
    )
    op.create_index("ix_federation_record_locators_consent_id", "federation_record_locators", ["consent_id"])
    op.create_table(
        "federation_record_links",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("source_org", sa.String(64), nullable=False),
        sa.Column("consent_ref", sa.String(128), nullable=False),
        sa.Column("source_patient", sa.String(128), nullable=False),
        sa.Column("linked_at", sa.Double(), nullable=False),
        sa.Column("linked_by", sa.String(256), nullable=False),
        sa.Column("last_fetch_at", sa.Double(), nullable=True),
        sa.Column("fetched_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_federation_record_links"),
        sa.UniqueConstraint("tenant", "source_org", "consent_ref", name="uq_federation_record_links_source"),
    )
    op.create_index("ix_federation_record_links_patient_id", "federation_record_links", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_federation_record_links_patient_id", "federation_record_links")
    op.drop_table("federation_record_links")
    op.drop_index("ix_federation_record_locators_consent_id", "federation_record_locators")
    op.drop_table("federation_record_locators")
