"""Encrypted FHIR store: resource versions, blind-index terms, wrapped data keys.

Revision ID: store_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "store_0001"
down_revision = None
branch_labels = ("store",)
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "store_resources",
        sa.Column("row_id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("erased", sa.Boolean(), nullable=False),
        sa.Column("compartment", sa.LargeBinary(16), nullable=True),
        sa.Column("data_key_id", sa.String(40), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("row_id", name="pk_store_resources"),
        sa.UniqueConstraint("tenant", "resource_type", "resource_id", "version_id", name="uq_store_resources_version"),
    )
    op.create_index("ix_store_resources_current", "store_resources", ["tenant", "resource_type", "is_current", "resource_id"])
    op.create_index("ix_store_resources_history", "store_resources", ["tenant", "resource_type", "last_updated"])
    op.create_index("ix_store_resources_compartment", "store_resources", ["tenant", "compartment"])

    op.create_table(
        "store_search_terms",
        sa.Column("row_id", _ROW_ID, nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("term", sa.LargeBinary(16), nullable=False),
        sa.PrimaryKeyConstraint("row_id", "param", "term", name="pk_store_search_terms"),
    )
    op.create_index("ix_store_search_terms_term", "store_search_terms", ["term", "row_id"])

    op.create_table(
        "store_data_keys",
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("key_class", sa.String(16), nullable=False),
        sa.Column("scope", sa.LargeBinary(64), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=True),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_store_data_keys"),
        sa.UniqueConstraint("tenant", "key_class", "scope", name="uq_store_data_keys_scope"),
    )
    op.create_index("ix_store_data_keys_kek", "store_data_keys", ["kek_id"])


def downgrade() -> None:
    op.drop_table("store_data_keys")
    op.drop_table("store_search_terms")
    op.drop_table("store_resources")
