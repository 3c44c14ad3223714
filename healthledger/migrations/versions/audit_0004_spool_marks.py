"""access log: access_spool_marks, how far each spool file of reads' entries has been moved into access_log

On SQLite, reads append their access-log entries to a spool file of their worker process before answering
(healthledger.audit.spool) instead of committing a transaction each; the files are moved into access_log in
batches, and this table, written in the same transaction as the rows it covers, keeps each line moved once.

Revision ID: audit_0004
Revises: audit_0003
"""
import sqlalchemy as sa
from alembic import op

revision = "audit_0004"
down_revision = "audit_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_spool_marks",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("moved_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_access_spool_marks"),
    )


def downgrade() -> None:
    op.drop_table("access_spool_marks")
