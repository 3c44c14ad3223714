"""patients enrol with one-time codes the hospital issues; people have a display name (sealed)

Revision ID: auth_0004
Revises: auth_0003
"""
import sqlalchemy as sa
from alembic import op

revision = "auth_0004"
down_revision = "auth_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolment_codes",
        sa.Column("code_index", sa.LargeBinary(32), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("code_index", name="pk_enrolment_codes"),
    )
    op.create_index("ix_enrolment_codes_patient_id", "enrolment_codes", ["patient_id"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("display_name_sealed", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("display_name_sealed")
    op.drop_index("ix_enrolment_codes_patient_id", table_name="enrolment_codes")
    op.drop_table("enrolment_codes")
