"""SMART App Launch: apps' redirect URIs, patients' authorisations of apps, authorization codes, refresh tokens

Revision ID: auth_0005
Revises: auth_0004
"""
import sqlalchemy as sa
from alembic import op

revision = "auth_0005"
down_revision = "auth_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(sa.Column("redirect_uris", sa.Text(), nullable=True))
    op.create_table(
        "app_authorizations",
        sa.Column("authorization_id", sa.String(32), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("authorization_id", name="pk_app_authorizations"),
    )
    op.create_index("ix_app_authorizations_client_id", "app_authorizations", ["client_id"])
    op.create_index("ix_app_authorizations_user_id", "app_authorizations", ["user_id"])
    op.create_table(
        "app_authorization_codes",
        sa.Column("code_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("authorization_id", sa.String(32), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("nonce", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("code_hash", name="pk_app_authorization_codes"),
    )
    op.create_index("ix_app_authorization_codes_authorization_id", "app_authorization_codes", ["authorization_id"])
    op.create_table(
        "app_refresh_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("authorization_id", sa.String(32), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_app_refresh_tokens"),
    )
    op.create_index("ix_app_refresh_tokens_authorization_id", "app_refresh_tokens", ["authorization_id"])


def downgrade() -> None:
    op.drop_index("ix_app_refresh_tokens_authorization_id", table_name="app_refresh_tokens")
    op.drop_table("app_refresh_tokens")
    op.drop_index("ix_app_authorization_codes_authorization_id", table_name="app_authorization_codes")
    op.drop_table("app_authorization_codes")
    op.drop_index("ix_app_authorizations_user_id", table_name="app_authorizations")
    op.drop_index("ix_app_authorizations_client_id", table_name="app_authorizations")
    op.drop_table("app_authorizations")
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("redirect_uris")
