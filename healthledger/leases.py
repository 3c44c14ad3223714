"""Leases: at most one holder at a time of a named piece of background work, across processes and replicas.

Several replicas of the service share one database. Work that must not run twice at once (following the chain
into the index, anchoring, a research export) takes a lease by name: a row (name, owner, expires, fencing
token) claimed or renewed by one atomic upsert, which PostgreSQL and SQLite both serialise on the row. A holder
that stalls past its expiry loses the lease to another, and its fencing token no longer matches: writes
that check `holds(...)` in their own transaction are refused, so a late holder cannot write over the new one's
work (Kleppmann, "How to do distributed locking", 2016: fencing tokens). Work that is already safe item by
item (the chain outbox: `SELECT ... FOR UPDATE SKIP LOCKED` and per-item leases) needs no lease.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Double, String, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from healthledger.db import Base
from healthledger.errors import HealthLedgerError


class LeaseLost(HealthLedgerError):
    """This worker no longer holds the lease its write depends on (another took it over): nothing written."""

    status = 409
    code = "conflict"


class Lease(Base):
    """Who holds the named work until when; `token` grows by one at every change of holder."""

    __tablename__ = "ops_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Double)
    token: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class Held:
    """A lease this owner holds until `expires_at`, with its fencing `token`."""

    name: str
    owner: str
    expires_at: float
    token: int


# One statement: insert the lease, or take it over if it expired, or renew it if it is ours already.
# The conditional DO UPDATE is atomic on both databases (PostgreSQL locks the conflicting row; SQLite has
# one writer). The token changes only when the holder changes.
_ACQUIRE = text(
    "INSERT INTO ops_leases (name, owner, expires_at, token) VALUES (:name, :owner, :expires, 1) "
    "ON CONFLICT (name) DO UPDATE SET "
    "token = CASE WHEN ops_leases.owner = excluded.owner THEN ops_leases.token ELSE ops_leases.token + 1 END, "
    "owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE ops_leases.owner = excluded.owner OR ops_leases.expires_at < :now "
    "RETURNING token"
)


def acquire(sessions: sessionmaker[Session], name: str, owner: str, *, now: float, ttl: float) -> Held | None:
    """Take or renew the lease `name` for `ttl` seconds from `now`; None while another owner holds it."""
    if ttl <= 0:
        raise ValueError("a lease's ttl must be positive")
    with sessions.begin() as session:
        token = session.execute(
            _ACQUIRE, {"name": name, "owner": owner, "expires": now + ttl, "now": now}
        ).scalar_one_or_none()
    return None if token is None else Held(name, owner, now + ttl, int(token))


def release(sessions: sessionmaker[Session], held: Held) -> None:
    """Give the lease up early (on a clean stop), if it is still this holder's."""
    with sessions.begin() as session:
        session.execute(
            text("UPDATE ops_leases SET expires_at = 0 WHERE name = :name AND owner = :owner AND token = :token"),
            {"name": held.name, "owner": held.owner, "token": held.token},
        )


def holds(session: Session, held: Held, *, now: float) -> bool:
    """In the caller's transaction: is `held` still the lease (same owner and token, not expired)? The row is
    locked on PostgreSQL until the transaction ends, so no other holder can take it over meanwhile."""
    row = session.execute(select(Lease).where(Lease.name == held.name).with_for_update()).scalar_one_or_none()
    return row is not None and row.owner == held.owner and row.token == held.token and row.expires_at >= now


def holder(session: Session, name: str) -> Lease | None:
    return session.get(Lease, name)
