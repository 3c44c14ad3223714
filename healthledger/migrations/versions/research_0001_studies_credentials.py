"""research: identity commitments, credentials, the credential tree and its roots, studies, enrolments

Revision ID: research_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "research_0001"
down_revision = None
branch_labels = ("research",)
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FIELD = 78


def upgrade() -> None:
    op.create_table(
        "research_identities",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("patient_ref", sa.String(100), nullable=False),
        sa.Column("commitment", sa.String(_FIELD), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "patient_ref", name="pk_research_identities"),
    )
    op.create_table(
        "research_credentials",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("patient_ref", sa.String(100), nullable=False),
        sa.Column("leaf_index", sa.Integer(), nullable=False),
        sa.Column("leaf", sa.String(_FIELD), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(32), nullable=False),
        sa.Column("sealed_attributes", sa.LargeBinary(), nullable=False),
        sa.Column("data_key_id", sa.String(40), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "patient_ref", name="pk_research_credentials"),
        sa.UniqueConstraint("tenant", "leaf_index", name="uq_research_credentials_leaf"),
    )
    op.create_table(
        "research_tree_nodes",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "level", "idx", name="pk_research_tree_nodes"),
    )
    op.create_table(
        "research_tree_roots",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("root", sa.String(_FIELD), nullable=False),
        sa.Column("leaf_count", sa.Integer(), nullable=False),
        sa.Column("anchor_item", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_research_tree_roots"),
    )
    op.create_index("ix_research_tree_roots_tenant", "research_tree_roots", ["tenant"])
    op.create_table(
        "research_studies",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("chain_study_id", sa.String(_FIELD), nullable=False),
        sa.Column("criteria_hash", sa.String(_FIELD), nullable=False),
        sa.Column("circuit", sa.Text(), nullable=False),
        sa.Column("opens_at", sa.BigInteger(), nullable=False),
        sa.Column("closes_at", sa.BigInteger(), nullable=False),
        sa.Column("max_participants", sa.Integer(), nullable=False),
        sa.Column("owner_address", sa.String(42), nullable=False),
        sa.Column("register_item", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("published_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "study_id", name="pk_research_studies"),
        sa.UniqueConstraint("chain_study_id", name="uq_research_studies_chain_study_id"),
    )
    op.create_table(
        "research_enrolments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("nullifier", sa.String(_FIELD), nullable=False),
        sa.Column("enrollee", sa.String(42), nullable=False),
        sa.Column("root", sa.String(_FIELD), nullable=False),
        sa.Column("enrol_item", sa.BigInteger(), nullable=False),
        sa.Column("consent_id", sa.String(64), nullable=False),
        sa.Column("enrolled_at", sa.Double(), nullable=False),
        sa.Column("left_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_research_enrolments"),
        sa.UniqueConstraint("nullifier", name="uq_research_enrolments_nullifier"),
        sa.UniqueConstraint("tenant", "study_id", "enrollee", name="uq_research_enrolments_enrollee"),
    )
    op.create_index("ix_research_enrolments_study_id", "research_enrolments", ["study_id"])


def downgrade() -> None:
    for index, table in (("ix_research_enrolments_study_id", "research_enrolments"),
                         ("ix_research_tree_roots_tenant", "research_tree_roots")):
        op.drop_index(index, table_name=table)
    for table in ("research_enrolments", "research_studies", "research_tree_roots", "research_tree_nodes",
                  "research_credentials", "research_identities"):
        op.drop_table(table)
