"""Anchoring access-log tree heads on-chain (through the durable outbox) and reading them back.

The on-chain log id is a hash of the tenant and log name, so one AccessLogAnchor contract serves
several tenants and logs without naming them in the clear.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy.orm import Session

from healthledger.audit.log import DEFAULT_LOG, Anchor, checkpoint
from healthledger.audit.models import AuditCheckpoint
from healthledger.ledger.chain import Chain
from healthledger.ledger.relayer import submit_anchor

LOG_ID_TAG = b"healthledger/access-log-id/v1:"
ANCHOR_CONTRACT = "AccessLogAnchor"


def chain_log_id(tenant: str, log_id: str = DEFAULT_LOG) -> bytes:
    """bytes32 log id on-chain: SHA-256 over a domain tag, the tenant and the log name."""
    return hashlib.sha256(LOG_ID_TAG + f"{tenant}/{log_id}".encode()).digest()


def anchor_batch(session: Session, now: datetime, *, tenant: str, log_id: str = DEFAULT_LOG) -> AuditCheckpoint | None:
    """Sequence pending entries, record the tree head as a checkpoint and queue it for anchoring,
    all in the caller's transaction (so the checkpoint exists iff its outbox item does)."""
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
