"""research_data: feasibility privacy budgets and releases, Bulk Data export jobs and files

Revision ID: research_data_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "research_data_0001"
down_revision = None
branch_labels = ("research_data",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "research_privacy_budgets",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(160), nullable=False),
        sa.Column("total_micro", sa.BigInteger(), nullable=False),
        sa.Column("spent_micro", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "holder", name="pk_research_privacy_budgets"),
    )
    op.create_table(
        "research_feasibility_releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("question_hash", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(160), nullable=False),
        sa.Column("epsilon_micro", sa.BigInteger(), nullable=False),
        sa.Column("reference_date", sa.String(10), nullable=False),
        sa.Column("noisy_count", sa.Integer(), nullable=True),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("half_width", sa.Integer(), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_research_feasibility_releases"),
        sa.UniqueConstraint("tenant", "study_id", "question_hash", name="uq_research_feasibility_releases_tenant"),
    )
    op.create_table(
        "research_export_jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(160), nullable=False),
        sa.Column("request_url", sa.Text(), nullable=False),
        sa.Column("types", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.String(90), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("transaction_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_polled", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_research_export_jobs"),
    )
    op.create_index("ix_research_export_jobs_status", "research_export_jobs", ["status"])
    op.create_table(
        "research_export_files",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "name", name="pk_research_export_files"),
    )


def downgrade() -> None:
    op.drop_table("research_export_files")
    op.drop_index("ix_research_export_jobs_status", table_name="research_export_jobs")
    op.drop_table("research_export_jobs")
    op.drop_table("research_feasibility_releases")
    op.drop_table("research_privacy_budgets")
