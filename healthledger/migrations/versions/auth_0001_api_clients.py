"""API clients and seen client assertions

Revision ID: auth_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "auth_0001"
down_revision = None
branch_labels = ("auth",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_clients",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("auth_method", sa.String(32), nullable=False),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("jwks_url", sa.Text(), nullable=True),
        sa.Column("secret_hash", sa.String(200), nullable=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("organization", sa.String(200), nullable=False),
        sa.Column("default_purpose", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name="pk_api_clients"),
    )
    op.create_table(
        "auth_seen_assertions",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name="pk_auth_seen_assertions"),
    )
    op.create_index("ix_auth_seen_assertions_expires_at", "auth_seen_assertions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_auth_seen_assertions_expires_at", "auth_seen_assertions")
    op.drop_table("auth_seen_assertions")
    op.drop_table("api_clients")
