"""access log: entries, Merkle nodes, heads, checkpoints

Revision ID: audit_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = ("audit",)
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "access_log",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("leaf_index", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_log"),
        sa.UniqueConstraint("log_id", "leaf_index", name="uq_access_log_leaf"),
    )
    op.create_index("ix_access_log_log_id", "access_log", ["log_id"])
    op.create_table(
        "audit_nodes",
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("log_id", "level", "idx", name="pk_audit_nodes"),
    )
    op.create_table(
        "audit_heads",
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("log_id", name="pk_audit_heads"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outbox_item", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_checkpoints"),
        sa.UniqueConstraint("log_id", "size", name="uq_audit_checkpoints_size"),
    )
    op.create_index("ix_audit_checkpoints_log_id", "audit_checkpoints", ["log_id"])


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_heads")
    op.drop_table("audit_nodes")
    op.drop_index("ix_access_log_log_id", "access_log")
    op.drop_table("access_log")
