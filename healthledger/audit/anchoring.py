"""Anchoring access-log tree heads on-chain (through the durable outbox) and reading them back.

The on-chain log id is a hash of the tenant and log name, so one AccessLogAnchor contract serves
several tenants and logs without naming them in the clear.

The contract accepts only growing tree sizes per log. A database restored from a backup older than the last anchor
has a shorter log than the chain has anchored: its heads are refused (`TreeSizeNotIncreasing`) until the log grows
past the anchored size, and the anchors made between the backup and the restore stay on-chain as the record of the
entries lost (`audit verify` reports them). `anchor_batch` refuses to queue such a head (`AnchorBehindChain`), so
no outbox item fails for it, and says so in words.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthledger.audit.log import (
    DEFAULT_LOG,
    Anchor,
    InclusionProof,
    checkpoint,
    integrate,
    prove_inclusion,
    tree_head,
)
from healthledger.audit.models import AccessLogEntry, AuditCheckpoint
from healthledger.errors import Conflict, NotFound
from healthledger.ledger.chain import Chain
from healthledger.ledger.models import LogAnchorEvent
from healthledger.ledger.relayer import submit_anchor

LOG_ID_TAG = b"healthledger/access-log-id/v1:"
ANCHOR_CONTRACT = "AccessLogAnchor"


def chain_log_id(tenant: str, log_id: str = DEFAULT_LOG) -> bytes:
    """bytes32 log id on-chain: SHA-256 over a domain tag, the tenant and the log name."""
    return hashlib.sha256(LOG_ID_TAG + f"{tenant}/{log_id}".encode()).digest()


RESTORE_DOCS = "docs/operations.md, \"Restored a backup older than the last anchor\""


class AnchorBehindChain(Conflict):
    """The chain already holds an anchor of this log at a larger tree size than the database's log has."""

    def __init__(self, anchored: int, local: int) -> None:
        super().__init__(behind_chain_words(anchored, local))
        self.anchored = anchored
        self.local = local


def behind_chain_words(anchored: int, local: int) -> str:
    return (f"the chain already holds an anchor of this access log at tree size {anchored}, and this database's log "
            f"has {local} entries: the database was restored from a backup older than the last anchor. Its tree "
            f"heads are refused until the log passes {anchored} entries, and `healthledger audit verify` reports the "
            f"entries lost since the backup (the anchors made after it); see {RESTORE_DOCS}")


_NOT_INCREASING = re.compile(r"TreeSizeNotIncreasing\((\d+), (\d+)\)")


def anchor_failure_words(reason: str | None) -> str:
    """Why the chain refused an anchor, in words an operator can act on (the contract's error kept at the end)."""
    found = _NOT_INCREASING.search(reason or "")
    if found is not None:
        return f"{behind_chain_words(int(found.group(1)), int(found.group(2)))} ({reason})"
    return f"the chain refused the anchor ({reason or 'no reason given'})"


def indexed_anchor_size(session: Session, *, tenant: str, log_id: str = DEFAULT_LOG) -> int:
    """The largest tree size of this log anchored on-chain, as the indexer has read the events so far."""
    chain_id = "0x" + chain_log_id(tenant, log_id).hex()
    return int(session.scalar(select(func.max(LogAnchorEvent.tree_size)).where(LogAnchorEvent.log_id == chain_id)) or 0)


def chain_anchor_size(chain: Chain, *, tenant: str, log_id: str = DEFAULT_LOG) -> int:
    """The largest tree size of this log anchored on-chain, read from the contract now (`latest`)."""
    size, _prefix = chain.call(chain.contract(ANCHOR_CONTRACT).functions.latest(chain_log_id(tenant, log_id)))
    return int(size)


def anchor_batch(
    session: Session, now: datetime, *, tenant: str, log_id: str = DEFAULT_LOG, anchored: int | None = None
) -> AuditCheckpoint | None:
    """Sequence pending entries, record the tree head as a checkpoint and queue it for anchoring,
    all in the caller's transaction (so the checkpoint exists iff its outbox item does).

    Raises AnchorBehindChain, queuing nothing, when the chain already anchored a larger tree of this log
    (`anchored`: its size as read from the contract; by default as indexed).
    """
    anchored = indexed_anchor_size(session, tenant=tenant, log_id=log_id) if anchored is None else anchored
    if anchored:
        local = integrate(session, now, log_id=log_id).size
        if local < anchored:
            raise AnchorBehindChain(anchored, local)
    cp = checkpoint(session, now, log_id=log_id)
    if cp is None:
        return None
    item = submit_anchor(session, chain_log_id(tenant, log_id), cp.size, cp.root, now=now.timestamp())
    cp.outbox_item = str(item)
    session.flush()
    return cp


def anchors_on_chain(chain: Chain, *, tenant: str, log_id: str = DEFAULT_LOG, from_block: int = 0) -> list[Anchor]:
    """Every tree head anchored for this log, from the contract's events (what an auditor trusts)."""
    events = chain.get_logs(
        ANCHOR_CONTRACT, "Anchored", from_block=from_block, argument_filters={"logId": chain_log_id(tenant, log_id)}
    )
    return [
        Anchor(
            size=int(e["args"]["treeSize"]),
            root=bytes(e["args"]["rootHash"]),
            where=f"(block {e['blockNumber']}, tx 0x{bytes(e['transactionHash']).hex()})",
        )
        for e in events
    ]


@dataclass(frozen=True)
class AnchoredHead:
    """A tree head of this log as the ledger worker's indexer read it from the chain (`log_anchors`)."""

    size: int
    root: bytes
    block_number: int
    block_hash: str
    transaction: str


@dataclass(frozen=True)
class EntryProof:
    """What a reader needs to check one entry without trusting the server: the entry's canonical bytes, its
    RFC 6962 audit path to the root of a tree of `proof.tree_size` leaves, and the on-chain anchor of that
    head (None while no anchored head covers the entry yet: the proof is then to the current head)."""

    body: bytes
    proof: InclusionProof
    anchor: AnchoredHead | None


def anchored_proof(
    session: Session, entry_id: int, now: datetime, *, tenant: str, log_id: str = DEFAULT_LOG
) -> EntryProof:
    """The inclusion proof of entry `entry_id` against the first anchored tree head that covers it (the
    smallest anchored size above its leaf index), or against the current head when none does yet.

    Sequences pending entries first (in the caller's transaction) when the entry has no leaf index yet.
    Raises NotFound for an entry of another log or one that does not exist.
    """
    row = session.get(AccessLogEntry, entry_id)
    if row is None or row.log_id != log_id:
        raise NotFound("no such access-log entry")
    if row.leaf_index is None:
        integrate(session, now, log_id=log_id)
        session.refresh(row)
    assert row.leaf_index is not None
    chain_id = "0x" + chain_log_id(tenant, log_id).hex()
    event = session.scalar(
        select(LogAnchorEvent)
        .where(LogAnchorEvent.log_id == chain_id, LogAnchorEvent.tree_size > row.leaf_index)
        .order_by(LogAnchorEvent.tree_size, LogAnchorEvent.block_number)
        .limit(1)
    )
    head = tree_head(session, log_id=log_id)
    if event is not None and event.tree_size <= head.size:
        proof = prove_inclusion(session, entry_id, tree_size=event.tree_size, log_id=log_id)
        anchor = AnchoredHead(event.tree_size, bytes.fromhex(event.root_hash.removeprefix("0x")), event.block_number,
                              event.block_hash, event.tx_hash)
        return EntryProof(row.body, proof, anchor)
    return EntryProof(row.body, prove_inclusion(session, entry_id, log_id=log_id), None)
