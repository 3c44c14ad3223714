"""Tables of the relay side of the ledger: patient keys, pseudonyms, the chain outbox, indexed events."""

from __future__ import annotations

from sqlalchemy import BigInteger, Double, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

# Times are Unix seconds (float): the same comparison semantics on SQLite and PostgreSQL.


class PatientKeyRecord(Base):
    """A patient's secp256k1 master key, stored only wrapped (see healthledger.ledger.patient_keys)."""

    __tablename__ = "patient_keys"

    patient_ref: Mapped[str] = mapped_column(String(100), primary_key=True)
    kdf_time_cost: Mapped[int] = mapped_column(Integer)
    kdf_memory_kib: Mapped[int] = mapped_column(Integer)
    kdf_parallelism: Mapped[int] = mapped_column(Integer)
    salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    password_wrap: Mapped[bytes] = mapped_column(LargeBinary)
    recovery_kek_id: Mapped[str] = mapped_column(String(64))
    recovery_wrap: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


class PatientPseudonym(Base):
    """The service's mapping from a patient and a grantee to the pseudonymous address used on-chain."""

    __tablename__ = "patient_pseudonyms"
    __table_args__ = (
        UniqueConstraint("patient_ref", "grantee", name="uq_patient_pseudonyms_patient_grantee"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    patient_ref: Mapped[str] = mapped_column(String(100), index=True)
    grantee: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(42), unique=True)
    created_at: Mapped[float] = mapped_column(Double)


class OutboxItem(Base):
    """One chain write: queued -> sent -> confirmed | failed. See healthledger.ledger.outbox."""

    __tablename__ = "chain_outbox"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, no PHI (pseudonyms and keyed hashes only)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    # Items with the same ordering key are submitted one after another, in id order (e.g. a grant before
    # its revoke: the revoke's signature carries the nonce the grant leaves behind).
    ordering_key: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Double, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Double, nullable=True)
    sender: Mapped[str | None] = mapped_column(String(42), nullable=True)
    nonce: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    gas: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_fee_per_gas: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_priority_fee_per_gas: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)  # the latest signed transaction
    tx_hashes: Mapped[str] = mapped_column(Text, default="[]")  # JSON list: every hash ever signed for it
    raw_tx: Mapped[str | None] = mapped_column(Text, nullable=True)  # hex of the latest signed transaction
    fee_bumps: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[float | None] = mapped_column(Double, nullable=True)  # last (re)broadcast
    signed_at: Mapped[float | None] = mapped_column(Double, nullable=True)  # when the latest fees were set
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    confirmed_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class SenderNonce(Base):
    """Next transaction nonce per operator account, allocated under a row lock (survives restarts)."""

    __tablename__ = "chain_nonces"

    sender: Mapped[str] = mapped_column(String(42), primary_key=True)
    next_nonce: Mapped[int] = mapped_column(BigInteger)


class ConsentEvent(Base):
    """One ConsentGranted / ConsentRevoked event, as indexed; the latest per grant_id is its state."""

    __tablename__ = "consent_grants"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index", name="uq_consent_grants_tx_log"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    grant_id: Mapped[str] = mapped_column(String(66), index=True)
    status: Mapped[str] = mapped_column(String(8))  # granted | revoked
    patient: Mapped[str] = mapped_column(String(42), index=True)  # the pseudonymous address
    grantee: Mapped[str] = mapped_column(String(42))
    scope_hash: Mapped[str] = mapped_column(String(66))
    valid_from: Mapped[int] = mapped_column(BigInteger)
    valid_until: Mapped[int] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(String(66))
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)


class LogAnchorEvent(Base):
    """One Anchored event of AccessLogAnchor."""

    __tablename__ = "log_anchors"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index", name="uq_log_anchors_tx_log"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    log_id: Mapped[str] = mapped_column(String(66), index=True)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(66))
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(String(66))
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)


class IndexerCursor(Base):
    """How far an indexer got: the last processed block (number + hash) and the head it last saw."""

    __tablename__ = "indexer_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_block: Mapped[int] = mapped_column(BigInteger)
    last_block_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    head_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    head_timestamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_block_timestamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[float] = mapped_column(Double)


class IndexedBlock(Base):
    """Hashes of recently processed blocks, to detect a reorganisation and find the common ancestor."""

    __tablename__ = "indexer_blocks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[str] = mapped_column(String(66))
