"""access log: patient pseudonym and date search indexes (AuditEvent search)

Revision ID: audit_0002
Revises: audit_0001
"""
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "audit_0002"
down_revision = "audit_0001"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.add_column(sa.Column("patient_pseudonym", sa.String(64), nullable=True))
    op.create_index("ix_access_log_patient_pseudonym", "access_log", ["patient_pseudonym"])
    op.create_index("ix_access_log_recorded_at", "access_log", ["log_id", "recorded_at"])
    _index_existing_entries()


def _index_existing_entries() -> None:
    """Fill both search-index columns of existing entries from their bodies (JSON, encoding v1 of
    healthledger.audit.entries): the pseudonym, and `recorded_at` in UTC (entries appended with a
    non-UTC time were stored by SQLite with that zone's wall-clock digits and no offset).

    Read straight from the JSON rather than through the application's decoder, so this migration keeps
    working whatever later versions of that module look like; `audit verify` checks the result.
    """
    conn = op.get_bind()
    log = sa.table(
        "access_log",
        sa.column("id", sa.BigInteger()),
        sa.column("body", sa.LargeBinary()),
        sa.column("patient_pseudonym", sa.String(64)),
        sa.column("recorded_at", sa.DateTime(timezone=True)),
    )
    last_id = 0
    while True:
        rows = conn.execute(
            sa.select(log.c.id, log.c.body).where(log.c.id > last_id).order_by(log.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        updates = []
        for row_id, body in rows:
            try:
                fields = json.loads(body)
                pseudonym = fields["patient_pseudonym"] or None
                moment = datetime.strptime(fields["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            except (ValueError, KeyError, TypeError):
                continue  # a damaged body stays as it is, for `audit verify` to report; not a failed upgrade
            updates.append({"row_id": row_id, "pseudonym": pseudonym, "time": moment})
        if updates:
            conn.execute(
                log.update()
                .where(log.c.id == sa.bindparam("row_id"))
                .values(patient_pseudonym=sa.bindparam("pseudonym"), recorded_at=sa.bindparam("time")),
                updates,
            )
        last_id = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_access_log_recorded_at", "access_log")
    op.drop_index("ix_access_log_patient_pseudonym", "access_log")
    with op.batch_alter_table("access_log") as batch:
        batch.drop_column("patient_pseudonym")
