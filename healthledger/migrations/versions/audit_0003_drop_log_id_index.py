"""access log: drop ix_access_log_log_id, which the (log_id, recorded_at) and (log_id, leaf_index) indexes cover

Every query of the log names its log_id and is served by one of those (AuditEvent counts by the covering
(log_id, recorded_at), pages by patient pseudonym or, the service having one log, in row order; the sequencer's
pending rows by (log_id, leaf_index IS NULL)); the single-column index only cost every appended entry - each
enforced request appends one - another B-tree insert.

Revision ID: audit_0003
Revises: audit_0002
"""
from alembic import op

revision = "audit_0003"
down_revision = "audit_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_access_log_log_id", "access_log")


def downgrade() -> None:
    op.create_index("ix_access_log_log_id", "access_log", ["log_id"])
