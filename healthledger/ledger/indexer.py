"""Event indexer: ConsentRegistry and AccessLogAnchor events into local tables, with reorg rewind.

Each pass reads events from the block after the cursor up to `head - confirmations`, stores them
with their block hash, and remembers the hashes of the last `keep_blocks` processed blocks. Before
reading on, it compares the stored hash of the cursor's block with the chain's: on a mismatch (a
reorganisation, or a node reset) it walks back through the stored hashes to the newest block both
agree on (the common ancestor), deletes every derived row above it and replays from there. If the
reorganisation is deeper than the stored window it replays from the deployment block.
The consent engine reads `grant_state`; the chain stays the authority, these tables are its cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from web3.exceptions import BlockNotFound

from healthledger.errors import BadRequest, ChainError
from healthledger.leases import LeaseLost
from healthledger.ledger.grants import GrantStatus
from healthledger.ledger.models import ConsentEvent, IndexedBlock, IndexerCursor, LogAnchorEvent
from healthledger.ledger.relayer import grant_id
from healthledger.store.generation import bump_generation

DEFAULT_NAME = "ledger"
# The lease (healthledger.leases) whose holder, alone among the replicas' ledger workers, indexes the chain,
# sequences and anchors the access log; a holder that stops renewing loses it after its ttl.
INDEXER_LEASE = "ledger-indexer"
LEASE_MIN_SECONDS = 10.0


@dataclass(frozen=True)
class GrantState:
    """What the indexed chain says about one (patient pseudonym, grantee, scope hash) at `now`."""

    status: GrantStatus
    valid_from: int | None = None
    valid_until: int | None = None
    block_number: int | None = None
    tx_hash: str | None = None

    @property
    def live(self) -> bool:
        return self.status is GrantStatus.LIVE


@dataclass(frozen=True)
class IndexReport:
    from_block: int
    to_block: int  # last block now processed (from_block - 1 when nothing new)
    grants: int = 0
    revokes: int = 0
    anchors: int = 0
    rewound_to: int | None = None  # the common ancestor when a reorganisation was found


@dataclass(frozen=True)
class Lag:
    """How far the indexed state trails the chain head (as of the last pass)."""

    blocks: int
    seconds: int
    last_block: int
    head_block: int


# ---- pure core -------------------------------------------------------------------------------


def state_from_events(events: list[ConsentEvent], now: int) -> GrantState:
    """The latest event (by block, log index) decides; validity is [valid_from, valid_until)."""
    if not events:
        return GrantState(GrantStatus.UNKNOWN)
    last = max(events, key=lambda e: (e.block_number, e.log_index))
    if last.status == "revoked":
        return GrantState(GrantStatus.REVOKED, block_number=last.block_number, tx_hash=last.tx_hash)
    if now < last.valid_from:
        status = GrantStatus.NOT_YET_VALID
    elif now >= last.valid_until:
        status = GrantStatus.EXPIRED
    else:
        status = GrantStatus.LIVE
    return GrantState(status, last.valid_from, last.valid_until, last.block_number, last.tx_hash)


def common_ancestor(stored: dict[int, str], chain_hash: Any) -> int | None:
    """Newest stored block whose hash the chain still has at that height (`chain_hash(n)` -> hash|None)."""
    for number in sorted(stored, reverse=True):
        if chain_hash(number) == stored[number]:
            return number
    return None


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


# ---- queries the consent engine uses -----------------------------------------------------------------


def grant_state(
    session: Session, patient_pseudonym: str, grantee: str, scope_hash: bytes, now: int
) -> GrantState:
    """live / not-yet-valid / expired / revoked / unknown for one grant key, from the indexed events."""
    if len(scope_hash) != 32:
        raise BadRequest("scope hash must be 32 bytes")
    key = _hex(grant_id(patient_pseudonym, grantee, scope_hash))
    events = list(session.scalars(select(ConsentEvent).where(ConsentEvent.grant_id == key)))
    return state_from_events(events, now)


def lag(session: Session, name: str = DEFAULT_NAME) -> Lag | None:
    cursor = session.get(IndexerCursor, name)
    if cursor is None or cursor.head_block is None:
        return None
    seconds = max(
        0, (cursor.head_timestamp or 0) - (cursor.last_block_timestamp or cursor.head_timestamp or 0)
    )
    return Lag(
        blocks=max(0, cursor.head_block - cursor.last_block),
        seconds=seconds,
        last_block=cursor.last_block,
        head_block=cursor.head_block,
    )


# ---- the indexing pass -----------------------------------------------------------------------------



@contextmanager
def guarded_writes(sessions: sessionmaker[Session], guard: Callable[[Session], bool] | None) -> Iterator[Session]:
    """A write transaction of an indexer that may write only while `guard(session)` says so (its lease):
    LeaseLost, nothing written, when it does not. Shared by every indexer (consent grants, the member directory)."""
    with sessions.begin() as session:
        if guard is not None and not guard(session):
            raise LeaseLost("another worker holds the indexer's lease")
        yield session


def block_or_none(chain: Any, number: int | str) -> Any:
    """A block by number or tag, None when the node has none (errors translated to ChainError)."""
    from healthledger.ledger.chain import translate_errors

    with translate_errors():
        try:
            return chain.w3.eth.get_block(number)
        except BlockNotFound:
            return None

class Indexer:
    """Follows our contracts on one chain. `chain` is a healthledger.ledger.chain.Chain."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        chain: Any,
        *,
        from_block: int,
        confirmations: int | None = None,
        name: str = DEFAULT_NAME,
        keep_blocks: int = 128,
        max_blocks_per_pass: int = 2_000,
        guard: Callable[[Session], bool] | None = None,
    ) -> None:
        """`guard(session)`, checked at the start of every write transaction, says whether this indexer may
        still write (a lease it holds: `healthledger.leases.holds`); when it says no, LeaseLost, nothing written."""
        self.sessions = session_factory
        self.guard = guard
        self.chain = chain
        self.from_block = from_block
        self.confirmations = chain.confirmations if confirmations is None else confirmations
        self.name = name
        self.keep_blocks = keep_blocks
        self.max_blocks = max_blocks_per_pass

    def _writing(self) -> AbstractContextManager[Session]:
        return guarded_writes(self.sessions, self.guard)

    # -- chain reads (translated to ChainError) ----------------------------------------------------
    def _block(self, number: int | str) -> Any:
        return block_or_none(self.chain, number)

    def _hash_at(self, number: int) -> str | None:
        block = self._block(number)
        return None if block is None else _hex(block["hash"])

    # -- one pass ---------------------------------------------------------------------------------
    def run_once(self, now: float) -> IndexReport:
        """Check for a reorganisation, then index up to `max_blocks_per_pass` confirmed blocks."""
        rewound_to = self._detect_reorg(now)
        head_block = self._block("latest")
        if head_block is None:
            raise ChainError("chain node returned no head block")
        head = int(head_block["number"])
        with self.sessions() as session:
            cursor = session.get(IndexerCursor, self.name)
            last = cursor.last_block if cursor is not None else self.from_block - 1
        start, end = last + 1, min(head - self.confirmations, last + self.max_blocks)
        if end < start:
            self._save_head(head_block, now)
            return IndexReport(start, last, rewound_to=rewound_to)
        # Each read in pages under the node's eth_getLogs caps (Chain.get_logs).
        granted = self.chain.get_logs("ConsentRegistry", "ConsentGranted", from_block=start, to_block=end)
        revoked = self.chain.get_logs("ConsentRegistry", "ConsentRevoked", from_block=start, to_block=end)
        anchored = self.chain.get_logs("AccessLogAnchor", "Anchored", from_block=start, to_block=end)
        # Hashes of the blocks we will remember; every event must sit on them (else a reorg raced us).
        remember = range(max(start, end - self.keep_blocks + 1), end + 1)
        hashes: dict[int, str] = {}
        for number in remember:
            value = self._hash_at(number)
            if value is None:
                return IndexReport(start, last, rewound_to=rewound_to)  # chain shrank under us: next pass
            hashes[number] = value
        end_block = self._block(end)
        for event in (*granted, *revoked, *anchored):
            number = int(event["blockNumber"])
            if number in hashes and _hex(event["blockHash"]) != hashes[number]:
                return IndexReport(start, last, rewound_to=rewound_to)
        with self._writing() as session:
            # ConsentRevoked carries only (grantId, patient): grantee and scope come from the grant.
            known: dict[str, tuple[str, str]] = {}
            consent = sorted(
                [(e, "granted") for e in granted] + [(e, "revoked") for e in revoked],
                key=lambda pair: (int(pair[0]["blockNumber"]), int(pair[0]["logIndex"])),
            )
            for event, status in consent:
                row = self._consent_row(session, event, status, known)
                known[row.grant_id] = (row.grantee, row.scope_hash)
                session.add(row)
            if consent:
                bump_generation(session)  # consent decisions change with these events, in this transaction
            for event in anchored:
                session.add(
                    LogAnchorEvent(
                        log_id=_hex(event["args"]["logId"]),
                        tree_size=int(event["args"]["treeSize"]),
                        root_hash=_hex(event["args"]["rootHash"]),
                        **self._position(event),
                    )
                )
            for number, value in hashes.items():
                session.merge(IndexedBlock(name=self.name, number=number, hash=value))
            session.execute(
                delete(IndexedBlock).where(
                    IndexedBlock.name == self.name, IndexedBlock.number <= end - self.keep_blocks
                )
            )
            cursor = session.get(IndexerCursor, self.name)
            if cursor is None:
                cursor = IndexerCursor(name=self.name, last_block=end, updated_at=now)
                session.add(cursor)
            cursor.last_block, cursor.last_block_hash = end, hashes[end]
            cursor.last_block_timestamp = int(end_block["timestamp"]) if end_block is not None else None
            cursor.head_block, cursor.head_timestamp = head, int(head_block["timestamp"])
            cursor.updated_at = now
        return IndexReport(start, end, len(granted), len(revoked), len(anchored), rewound_to)

    def catch_up(self, now: float, *, max_passes: int = 100) -> IndexReport:
        """Passes until the cursor reaches the confirmed head (bounded)."""
        report = self.run_once(now)
        for _ in range(max_passes):
            nxt = self.run_once(now)
            if nxt.to_block < nxt.from_block:
                return report if nxt.rewound_to is None else nxt
            report = nxt
        return report

    # -- reorganisations ----------------------------------------------------------------------------
    def _detect_reorg(self, now: float) -> int | None:
        with self.sessions() as session:
            cursor = session.get(IndexerCursor, self.name)
            if cursor is None or cursor.last_block_hash is None or cursor.last_block < self.from_block:
                return None
            if self._hash_at(cursor.last_block) == cursor.last_block_hash:
                return None
            stored = {
                b.number: b.hash
                for b in session.scalars(select(IndexedBlock).where(IndexedBlock.name == self.name))
            }
        ancestor = common_ancestor(stored, self._hash_at)
        target = ancestor if ancestor is not None else self.from_block - 1
        self._rewind(target, now)
        return target

    def _rewind(self, ancestor: int, now: float) -> None:
        """Delete every derived row above `ancestor` and move the cursor there, in one transaction."""
        with self._writing() as session:
            session.execute(delete(ConsentEvent).where(ConsentEvent.block_number > ancestor))
            bump_generation(session)
            session.execute(delete(LogAnchorEvent).where(LogAnchorEvent.block_number > ancestor))
            session.execute(
                delete(IndexedBlock).where(IndexedBlock.name == self.name, IndexedBlock.number > ancestor)
            )
            cursor = session.get(IndexerCursor, self.name)
            assert cursor is not None
            kept = session.get(IndexedBlock, (self.name, ancestor))
            cursor.last_block = ancestor
            cursor.last_block_hash = kept.hash if kept is not None else None
            cursor.updated_at = now

    def _save_head(self, head_block: Any, now: float) -> None:
        with self._writing() as session:
            cursor = session.get(IndexerCursor, self.name)
            if cursor is None:
                cursor = IndexerCursor(name=self.name, last_block=self.from_block - 1, updated_at=now)
                session.add(cursor)
            cursor.head_block, cursor.head_timestamp = int(head_block["number"]), int(head_block["timestamp"])
            cursor.updated_at = now

    # -- rows -------------------------------------------------------------------------------------
    @staticmethod
    def _position(event: Any) -> dict[str, Any]:
        return {
            "block_number": int(event["blockNumber"]),
            "block_hash": _hex(event["blockHash"]),
            "tx_hash": _hex(event["transactionHash"]),
            "log_index": int(event["logIndex"]),
        }

    def _consent_row(
        self, session: Session, event: Any, status: str, known: dict[str, tuple[str, str]]
    ) -> ConsentEvent:
        args = event["args"]
        key = _hex(args["grantId"])
        grantee: str
        scope: str
        if status == "granted":
            grantee, scope = to_checksum_address(args["grantee"]), _hex(args["scopeHash"])
        elif key in known:
            grantee, scope = known[key]
        else:
            earlier = session.scalars(
                select(ConsentEvent)
                .where(ConsentEvent.grant_id == key)
                .order_by(ConsentEvent.block_number.desc())
            ).first()
            grantee, scope = (earlier.grantee, earlier.scope_hash) if earlier is not None else ("", "")
        return ConsentEvent(
            grant_id=key,
            status=status,
            patient=to_checksum_address(args["patient"]),
            grantee=grantee,
            scope_hash=scope,
            valid_from=int(args.get("validFrom", 0)),
            valid_until=int(args.get("validUntil", 0)),
            **self._position(event),
        )
