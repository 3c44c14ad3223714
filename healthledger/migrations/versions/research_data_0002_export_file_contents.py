"""research_data: export files' sealed contents, in the database (every replica can serve them)

Revision ID: research_data_0002
Revises: research_data_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "research_data_0002"
down_revision = "research_data_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "research_export_file_contents",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "name", name="pk_research_export_file_contents"),
    )


def downgrade() -> None:
    op.drop_table("research_export_file_contents")
