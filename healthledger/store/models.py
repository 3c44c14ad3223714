"""Tables of the encrypted FHIR store: resource versions, blind-index terms and wrapped data keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for a growing table.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class StoredVersion(Base):
    """One version of one resource. Only `payload` carries the resource, sealed with a data key.

    `compartment` is a blind index (keyed HMAC) of the patient compartment, never the patient id.
    `is_current` marks the newest version of each (tenant, type, id) for fast reads and search.
    `erased` is set when the compartment's data key was destroyed (crypto-shredding).
    `by_update` marks a version written by an update (PUT Type/id, R4 3.1.0.4), not a create (POST Type): the
    history of a resource created by PUT says so (R4 3.1.0.10, Bundle.entry.request).
    """

    __tablename__ = "store_resources"

    row_id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    erased: Mapped[bool] = mapped_column(Boolean, default=False)
    compartment: Mapped[bytes | None] = mapped_column(LargeBinary(16), nullable=True)
    data_key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    by_update: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        UniqueConstraint("tenant", "resource_type", "resource_id", "version_id", name="uq_store_resources_version"),
        Index("ix_store_resources_current", "tenant", "resource_type", "is_current", "resource_id"),
        Index("ix_store_resources_history", "tenant", "resource_type", "last_updated"),
        Index("ix_store_resources_compartment", "tenant", "compartment"),
    )


class SearchTerm(Base):
    """A blind-index term of the current version of a resource: HMAC(key(type, param), term), truncated."""

    __tablename__ = "store_search_terms"

    row_id: Mapped[int] = mapped_column(RowId, primary_key=True)  # StoredVersion.row_id (no FK: speed)
    param: Mapped[str] = mapped_column(String(64), primary_key=True)
    term: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)

    __table_args__ = (Index("ix_store_search_terms_term", "term", "row_id"),)


class DataKey(Base):
    """A data key wrapped by a key-encryption key (KEK). Destroying it shreds what it sealed.

    `key_class` is `patient` (scope = compartment blind index), `type` (scope = resource type, for
    resources outside any patient compartment) or `index-master` (the blind-index master key).
    """

    __tablename__ = "store_data_keys"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    key_class: Mapped[str] = mapped_column(String(16))
    scope: Mapped[bytes] = mapped_column(LargeBinary(64))
    kek_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant", "key_class", "scope", name="uq_store_data_keys_scope"),
        Index("ix_store_data_keys_kek", "kek_id"),
    )


resources_table: Table = StoredVersion.__table__  # type: ignore[assignment]
terms_table: Table = SearchTerm.__table__  # type: ignore[assignment]
data_keys_table: Table = DataKey.__table__  # type: ignore[assignment]
