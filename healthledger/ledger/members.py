"""The consortium's member directory (MemberRegistry) as this service knows it: events into tables.

`MemberIndexer` follows MemberRegistry's events into `federation_member_events` (one row per event, with its
block) and folds them into `federation_members` (one row per organisation: its current status, key thumbprint
and endpoint). It keeps its own cursor ("members"), so a registry attached after the consent indexer started
is read from its deployment block. On a reorganisation (the cursor's block hash changed) it drops what it
derived and replays the registry from its deployment block: a directory is small. Token checks read these
tables (never the chain per request); the chain stays the authority, these tables are its cache, as fresh as
one indexer poll.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from sqlalchemy import BigInteger, Double, Integer, String, Text, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from healthledger.db import Base
from healthledger.errors import ChainError
from healthledger.ledger.indexer import block_or_none, guarded_writes
from healthledger.ledger.models import IndexerCursor

REGISTRY = "MemberRegistry"
CURSOR_NAME = "members"
EVENTS = ("JoinRequested", "MemberJoined", "KeyRotated", "EndpointChanged", "MemberRemoved")
PENDING, ACTIVE, REMOVED = "pending", "active", "removed"
STATUS_CODES = {0: "", 1: PENDING, 2: ACTIVE, 3: REMOVED}  # MemberRegistry.Status


class MemberEventRow(Base):
    """One MemberRegistry event, as mined."""

    __tablename__ = "federation_member_events"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index", name="uq_federation_member_events_tx_log"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_key: Mapped[str] = mapped_column(String(66), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)  # JSON of the event's other arguments
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(String(66))
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)


class MemberRow(Base):
    """A member organisation as the directory's events leave it."""

    __tablename__ = "federation_members"

    org_key: Mapped[str] = mapped_column(String(66), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    fhir_base_url: Mapped[str] = mapped_column(String(256))
    key_thumbprint: Mapped[str] = mapped_column(String(66))  # 0x + the RFC 7638 SHA-256 thumbprint
    controller: Mapped[str] = mapped_column(String(42))
    status: Mapped[str] = mapped_column(String(16))  # pending | active | removed
    block_number: Mapped[int] = mapped_column(BigInteger)  # of the last event
    tx_hash: Mapped[str] = mapped_column(String(66))
    updated_at: Mapped[float] = mapped_column(Double)


@dataclass(frozen=True)
class Member:
    org_key: str
    org_id: str
    name: str
    fhir_base_url: str
    key_thumbprint: str
    controller: str
    status: str
    block_number: int
    tx_hash: str

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


@dataclass(frozen=True)
class MemberEvent:
    """A decoded event: `kind` is one of EVENTS; `args` its arguments as JSON-able values."""

    org_key: str
    kind: str
    args: dict[str, Any]
    block_number: int
    log_index: int
    tx_hash: str


# ---- pure core ------------------------------------------------------------------------------------


def fold(events: Iterable[MemberEvent]) -> dict[str, Member]:
    """Members after these events, applied in chain order. An event for an organisation whose join was
    never seen is ignored (the contract cannot emit one; a partial view must not invent members)."""
    out: dict[str, Member] = {}
    for e in sorted(events, key=lambda e: (e.block_number, e.log_index)):
        if e.kind == "JoinRequested":
            a = e.args
            out[e.org_key] = Member(
                e.org_key, a["orgId"], a["name"], a["fhirBaseUrl"], a["keyThumbprint"], a["controller"], PENDING,
                e.block_number, e.tx_hash,
            )
            continue
        current = out.get(e.org_key)
        if current is None:
            continue
        changes: dict[str, Any] = {}
        if e.kind == "MemberJoined":
            changes["status"] = ACTIVE
        elif e.kind == "KeyRotated":
            changes["key_thumbprint"] = e.args["keyThumbprint"]
        elif e.kind == "EndpointChanged":
            changes["fhir_base_url"] = e.args["fhirBaseUrl"]
        elif e.kind == "MemberRemoved":
            changes["status"] = REMOVED
        out[e.org_key] = Member(**{**current.__dict__, **changes, "block_number": e.block_number,
                                   "tx_hash": e.tx_hash})
    return out


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def decode_event(kind: str, event: Any) -> MemberEvent:
    args = dict(event["args"])
    out: dict[str, Any] = {}
    for name, value in args.items():
        if name == "orgKey":
            continue
        if isinstance(value, (bytes, bytearray)):
            out[name] = _hex(value)
        elif isinstance(value, str) and name in ("controller", "admin"):
            out[name] = to_checksum_address(value)
        else:
            out[name] = value
    return MemberEvent(
        _hex(args["orgKey"]), kind, out, int(event["blockNumber"]), int(event["logIndex"]),
        _hex(event["transactionHash"]),
    )


# ---- queries --------------------------------------------------------------------------------------


def _member(row: MemberRow) -> Member:
    return Member(row.org_key, row.org_id, row.name, row.fhir_base_url, row.key_thumbprint, row.controller,
                  row.status, row.block_number, row.tx_hash)


def member_by_id(session: Session, org_id: str) -> Member | None:
    row = session.scalar(select(MemberRow).where(MemberRow.org_id == org_id))
    return None if row is None else _member(row)


def list_members(session: Session) -> list[Member]:
    return [_member(r) for r in session.scalars(select(MemberRow).order_by(MemberRow.org_id))]


def member_name(session: Session, reference: str) -> str:
    """The directory's name for `Organization/{member id}` ("" when it names no member): how pages and the access
    log name another member hospital, which has no Organization resource here."""
    rtype, _, org_id = reference.partition("/")
    member = member_by_id(session, org_id) if rtype == "Organization" and org_id else None
    return member.name if member is not None else ""


def directory_age(session: Session) -> float | None:
    """When the directory was last brought up to the chain (seconds since the epoch), None if never."""
    cursor = session.get(IndexerCursor, CURSOR_NAME)
    return None if cursor is None else cursor.updated_at


# ---- the indexing pass ----------------------------------------------------------------------------


class MemberIndexer:
    """Follows MemberRegistry on one chain. `chain` is a healthledger.ledger.chain.Chain with the registry
    registered (`chain.register(REGISTRY, address)`)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        chain: Any,
        *,
        from_block: int,
        confirmations: int | None = None,
        max_blocks_per_pass: int = 5_000,
        guard: Callable[[Session], bool] | None = None,
    ) -> None:
        self.sessions = sessions
        self.chain = chain
        self.from_block = from_block
        self.confirmations = chain.confirmations if confirmations is None else confirmations
        self.max_blocks = max_blocks_per_pass
        self.guard = guard

    def _writing(self) -> AbstractContextManager[Session]:
        return guarded_writes(self.sessions, self.guard)

    def _block(self, number: int | str) -> Any:
        return block_or_none(self.chain, number)

    def run_once(self, now: float) -> int:
        """Index up to `max_blocks_per_pass` confirmed blocks; returns how many events were stored."""
        head_block = self._block("latest")
        if head_block is None:
            raise ChainError("chain node returned no head block")
        head = int(head_block["number"])
        with self.sessions() as session:
            cursor = session.get(IndexerCursor, CURSOR_NAME)
            last = cursor.last_block if cursor is not None else self.from_block - 1
            known_hash = cursor.last_block_hash if cursor is not None else None
        if known_hash is not None and last >= self.from_block:
            block = self._block(last)
            if block is None or _hex(block["hash"]) != known_hash:
                last = self._reset(now)  # a reorganisation or a reset node: replay the directory
        start, end = last + 1, min(head - self.confirmations, last + self.max_blocks)
        if end < start:
            with self._writing() as session:
                self._cursor(session, last, known_hash if last >= self.from_block else None, now)
            return 0
        events = [
            decode_event(kind, e)
            for kind in EVENTS
            for e in self.chain.get_logs(REGISTRY, kind, from_block=start, to_block=end)
        ]
        end_block = self._block(end)
        if end_block is None:
            return 0
        with self._writing() as session:
            for e in events:
                session.add(MemberEventRow(
                    org_key=e.org_key, kind=e.kind, data=json.dumps(e.args, sort_keys=True),
                    block_number=e.block_number, block_hash="", tx_hash=e.tx_hash, log_index=e.log_index,
                ))  # fmt: skip
            if events:
                self._refold(session, {e.org_key for e in events}, now)
            self._cursor(session, end, _hex(end_block["hash"]), now)
        return len(events)

    def catch_up(self, now: float, *, max_passes: int = 50) -> int:
        total = 0
        for _ in range(max_passes):
            with self.sessions() as session:
                cursor = session.get(IndexerCursor, CURSOR_NAME)
                before = cursor.last_block if cursor is not None else None
            total += self.run_once(now)
            with self.sessions() as session:
                cursor = session.get(IndexerCursor, CURSOR_NAME)
                if cursor is not None and cursor.last_block == before:
                    break
        return total

    def _refold(self, session: Session, org_keys: set[str], now: float) -> None:
        rows = session.scalars(select(MemberEventRow).where(MemberEventRow.org_key.in_(sorted(org_keys))))
        events = [MemberEvent(r.org_key, r.kind, json.loads(r.data), r.block_number, r.log_index, r.tx_hash) for r in rows]
        for key, m in fold(events).items():
            row = session.get(MemberRow, key) or MemberRow(org_key=key)
            row.org_id, row.name, row.fhir_base_url = m.org_id, m.name, m.fhir_base_url
            row.key_thumbprint, row.controller, row.status = m.key_thumbprint, m.controller, m.status
            row.block_number, row.tx_hash, row.updated_at = m.block_number, m.tx_hash, now
            session.add(row)

    def _reset(self, now: float) -> int:
        with self._writing() as session:
            session.execute(delete(MemberEventRow))
            session.execute(delete(MemberRow))
            self._cursor(session, self.from_block - 1, None, now)
        return self.from_block - 1

    @staticmethod
    def _cursor(session: Session, last: int, last_hash: str | None, now: float) -> None:
        cursor = session.get(IndexerCursor, CURSOR_NAME)
        if cursor is None:
            cursor = IndexerCursor(name=CURSOR_NAME, last_block=last, updated_at=now)
            session.add(cursor)
        cursor.last_block, cursor.last_block_hash, cursor.updated_at = last, last_hash, now


def indexer_for(
    sessions: sessionmaker[Session], chain: Any, records: Iterable[Any], *, guard: Callable[[Session], bool] | None
) -> MemberIndexer | None:
    """The directory's indexer when a MemberRegistry is among these deployment records (else None)."""
    for record in records:
        if record.name == REGISTRY:
            chain.register(REGISTRY, record.address)
            return MemberIndexer(sessions, chain, from_block=record.deployment_block, guard=guard)
    return None
