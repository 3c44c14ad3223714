"""The generation counter of the consent index's inputs: one row, bumped in the transaction of every change.

In-process caches of decisions (the consent index, `healthledger.consent.index`) hold what they read from
the store and the chain until this counter moves; each operation reads it first, so a cache is never
behind a committed change. It lives here, below its writers: the store bumps it for the resource types
its owner names (`ResourceStore(bump_generation_on=...)`), the ledger's indexer for the grant events it
indexes, the Consent lifecycle for the grants it signs; the consent index reads it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Connection, Integer, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from healthledger.db import Base


class Generation(Base):
    """The one row (id 1) of the counter."""

    __tablename__ = "consent_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


# Built once: the consent index reads it on every operation.
CURRENT = select(Generation.generation).where(Generation.id == 1)


def bump_generation(conn: Connection | Session) -> None:
    """Tell every cache of decision inputs to reload: call in the transaction of the change."""
    conn.execute(update(Generation).where(Generation.id == 1).values(generation=Generation.generation + 1))
