"""relay: patient keys, pseudonyms, chain outbox, nonces, indexed consent and anchor events

Revision ID: relay_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "relay_0001"
down_revision = None
branch_labels = ("relay",)
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patient_keys",
        sa.Column("patient_ref", sa.String(100), nullable=False),
        sa.Column("kdf_time_cost", sa.Integer(), nullable=False),
        sa.Column("kdf_memory_kib", sa.Integer(), nullable=False),
        sa.Column("kdf_parallelism", sa.Integer(), nullable=False),
        sa.Column("salt", sa.LargeBinary(32), nullable=False),
        sa.Column("password_wrap", sa.LargeBinary(), nullable=False),
        sa.Column("recovery_kek_id", sa.String(64), nullable=False),
        sa.Column("recovery_wrap", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("patient_ref", name="pk_patient_keys"),
    )
    op.create_table(
        "patient_pseudonyms",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("patient_ref", sa.String(100), nullable=False),
        sa.Column("grantee", sa.String(200), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_patient_pseudonyms"),
        sa.UniqueConstraint("patient_ref", "grantee", name="uq_patient_pseudonyms_patient_grantee"),
        sa.UniqueConstraint("address", name="uq_patient_pseudonyms_address"),
    )
    op.create_index("ix_patient_pseudonyms_patient_ref", "patient_pseudonyms", ["patient_ref"])
    op.create_table(
        "chain_outbox",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=True),
        sa.Column("ordering_key", sa.String(200), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Double(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("sender", sa.String(42), nullable=True),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("gas", sa.BigInteger(), nullable=True),
        sa.Column("max_fee_per_gas", sa.BigInteger(), nullable=True),
        sa.Column("max_priority_fee_per_gas", sa.BigInteger(), nullable=True),
        sa.Column("tx_hash", sa.String(66), nullable=True),
        sa.Column("tx_hashes", sa.Text(), nullable=False),
        sa.Column("raw_tx", sa.Text(), nullable=True),
        sa.Column("fee_bumps", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.Double(), nullable=True),
        sa.Column("signed_at", sa.Double(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("failure_reason", sa.String(500), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("confirmed_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_chain_outbox"),
        sa.UniqueConstraint("dedupe_key", name="uq_chain_outbox_dedupe_key"),
    )
    op.create_index("ix_chain_outbox_state", "chain_outbox", ["state"])
    op.create_index("ix_chain_outbox_ordering_key", "chain_outbox", ["ordering_key"])
    op.create_index("ix_chain_outbox_next_attempt_at", "chain_outbox", ["next_attempt_at"])
    op.create_table(
        "chain_nonces",
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("next_nonce", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sender", name="pk_chain_nonces"),
    )
    op.create_table(
        "consent_grants",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("grant_id", sa.String(66), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("patient", sa.String(42), nullable=False),
        sa.Column("grantee", sa.String(42), nullable=False),
        sa.Column("scope_hash", sa.String(66), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_grants"),
        sa.UniqueConstraint("tx_hash", "log_index", name="uq_consent_grants_tx_log"),
    )
    op.create_index("ix_consent_grants_grant_id", "consent_grants", ["grant_id"])
    op.create_index("ix_consent_grants_patient", "consent_grants", ["patient"])
    op.create_index("ix_consent_grants_block_number", "consent_grants", ["block_number"])
    op.create_table(
        "log_anchors",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("log_id", sa.String(66), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(66), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_anchors"),
        sa.UniqueConstraint("tx_hash", "log_index", name="uq_log_anchors_tx_log"),
    )
    op.create_index("ix_log_anchors_log_id", "log_anchors", ["log_id"])
    op.create_index("ix_log_anchors_block_number", "log_anchors", ["block_number"])
    op.create_table(
        "indexer_cursor",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("last_block", sa.BigInteger(), nullable=False),
        sa.Column("last_block_hash", sa.String(66), nullable=True),
        sa.Column("head_block", sa.BigInteger(), nullable=True),
        sa.Column("head_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("last_block_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_indexer_cursor"),
    )
    op.create_table(
        "indexer_blocks",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(66), nullable=False),
        sa.PrimaryKeyConstraint("name", "number", name="pk_indexer_blocks"),
    )


def downgrade() -> None:
    for table in (
        "indexer_blocks",
        "indexer_cursor",
        "log_anchors",
        "consent_grants",
        "chain_nonces",
        "chain_outbox",
        "patient_pseudonyms",
        "patient_keys",
    ):
        op.drop_table(table)
