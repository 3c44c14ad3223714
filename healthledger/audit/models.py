"""Tables of the access log: entries, the Merkle tree's stored nodes, heads and checkpoints."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class AccessLogEntry(Base):
    """One access attempt. `leaf_index` is assigned by the sequencer (`integrate`), in commit order.

    `patient_pseudonym` and `recorded_at` repeat fields of the body as search indexes (AuditEvent
    search by patient and date, `recorded_at` always in UTC); the Merkle leaf commits to the body
    only, and `verify_log` checks that both columns still agree with it.
    """

    __tablename__ = "access_log"
    __table_args__ = (
        UniqueConstraint("log_id", "leaf_index", name="uq_access_log_leaf"),
        Index("ix_access_log_recorded_at", "log_id", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    # No index of its own: the two composite indexes above begin with it (migration audit_0003).
    log_id: Mapped[str] = mapped_column(String(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)  # canonical encoding (healthledger.audit.entries)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    leaf_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The body's patient pseudonym (hex of a keyed hash, healthledger.audit.pseudonym); NULL when it is empty.
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class AuditNode(Base):
    """Hash of a perfect subtree: 2**level leaves starting at leaf idx * 2**level."""

    __tablename__ = "audit_nodes"

    log_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditHead(Base):
    """The sequencer's position: how many leaves are in the tree, and its root."""

    __tablename__ = "audit_heads"

    log_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditCheckpoint(Base):
    """A tree head chosen for anchoring on-chain (one per batch)."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (UniqueConstraint("log_id", "size", name="uq_audit_checkpoints_size"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    log_id: Mapped[str] = mapped_column(String(32), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    outbox_item: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AccessSpoolMark(Base):
    """How far one access-log spool file has been moved into `access_log` (healthledger.audit.spool).

    Written in the transaction that inserts the lines it covers, so each line is moved exactly once.
    """

    __tablename__ = "access_spool_marks"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    moved_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # the file's first bytes, whole lines
