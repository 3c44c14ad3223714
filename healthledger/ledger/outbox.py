"""Durable chain outbox: writes enqueued in the business transaction, submitted exactly once by workers.

Life of an item: queued -> sent -> confirmed | failed(reason).
- `enqueue` adds a row in the caller's transaction: the business change and its chain write commit
  or roll back together ("nothing acknowledged is lost").
- A worker claims items with a lease (PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED; SQLite: one
  atomic UPDATE ... RETURNING, SQLite serialising writers), so concurrent workers never share one.
- Before broadcasting, the worker allocates the nonce in the database (`chain_nonces`, raised to the
  node's pending count when the node is ahead), signs, and commits the signed bytes, hash and nonce.
  A crash after that commit is harmless: the next pass finds the receipt of a recorded hash or
  rebroadcasts the same signed bytes. A transaction is therefore never executed twice.
- A sent transaction not mined after `bump_after_seconds` is replaced with the same nonce and fees
  raised by at least 12.5% (geth's txpool needs +10% on both caps; EIP-1559 base fees move by at most
  12.5% per block). Every hash ever signed for the item is kept: whichever one gets mined counts.
- Chain errors (node down, timeouts, paused contract) retry with exponential backoff, forever: an
  outage delays writes but never drops them. Only a revert is final: `failed` with the decoded reason.
  Items backing off because the node was unreachable are due again as soon as a pass finds the node
  answering (`release_when_reachable`): after a long outage the writes drain when the node returns, not
  up to `max_backoff_seconds` later.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker
from web3 import Web3

from healthledger.errors import BadRequest, ChainError, HealthLedgerError, NotFound
from healthledger.ledger.calls import RELAY_CALLS, CallBuilders, ContractCall
from healthledger.ledger.models import OutboxItem, SenderNonce


class OutboxState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"


# Reverts that an operator can clear (unpause, grant the role): retried, never final.
TRANSIENT_REVERTS = frozenset({"ContractPaused", "MissingRole"})
# Node answers to a rebroadcast of a transaction it already has (or already mined): not errors.
_ALREADY_KNOWN = ("already known", "already imported", "known transaction", "already exists", "nonce too low")
MAX_TEXT = 480


class ChainPort(Protocol):
    """The part of `healthledger.ledger.chain.Chain` the worker uses."""

    w3: Web3
    operator: LocalAccount
    confirmations: int

    def contract(self, name: str) -> Any: ...
    def build(
        self, fn_call: Any, *, gas: int | None = ..., nonce: int | None = ..., fees: Any = ...
    ) -> Any: ...
    def call(self, fn_call: Any) -> Any: ...
    def fees(self) -> Any: ...
    def receipt(self, tx_hash: HexBytes | str) -> Any: ...
    def head(self) -> int: ...
    def failure_of(self, receipt: Any) -> ChainError: ...


@dataclass(frozen=True)
class OutboxPolicy:
    """Worker tuning. Seconds are wall-clock seconds of the `now` values passed in."""

    batch_size: int = 50
    lease_seconds: float = 60.0
    base_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    receipt_poll_seconds: float = 1.0
    bump_after_seconds: float = 30.0
    rebroadcast_after_seconds: float = 10.0  # a node that restarted has forgotten its mempool
    fee_cap_wei: int = 500 * 10**9  # never bid above 500 gwei per gas without a human deciding to


@dataclass(frozen=True)
class OutboxStatus:
    """What the API tells a caller about one write ("pending" while queued or sent)."""

    id: int
    kind: str
    state: OutboxState
    attempts: int
    tx_hash: str | None
    block_number: int | None
    failure_reason: str | None
    last_error: str | None

    @property
    def pending(self) -> bool:
        return self.state in (OutboxState.QUEUED, OutboxState.SENT)


@dataclass
class WorkerReport:
    """Counts of what one `process_outbox` pass did."""

    claimed: int = 0
    broadcast: int = 0
    confirmed: int = 0
    failed: int = 0
    retried: int = 0
    bumped: int = 0
    requeued: int = 0
    released: int = 0  # items backing off for an unreachable node, due again because it answers
    errors: list[str] = field(default_factory=list)


# ---- pure core -------------------------------------------------------------------------------


def backoff_seconds(attempts: int, policy: OutboxPolicy) -> float:
    """Exponential backoff: base * 2^(attempts-1), capped."""
    if attempts <= 0:
        return 0.0
    return min(policy.max_backoff_seconds, policy.base_backoff_seconds * 2 ** min(attempts - 1, 30))


def replacement_fees(
    old_max_fee: int, old_priority: int, current_max_fee: int, current_priority: int
) -> tuple[int, int]:
    """Fees for a same-nonce replacement: >= +12.5% on both caps (rounded up), and >= the current market."""
    bump = lambda v: v + (v + 7) // 8
    priority = max(bump(old_priority), current_priority)
    max_fee = max(bump(old_max_fee), current_max_fee, priority)
    return max_fee, priority


def canonical_payload(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


# ---- enqueue and status (called in the caller's transaction) -------------------------------------


def enqueue(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    *,
    now: float,
    dedupe_key: str | None = None,
    ordering_key: str | None = None,
) -> int:
    """Add a chain write to the caller's transaction; returns its id (the existing one for a known dedupe key)."""
    if not kind:
        raise BadRequest("outbox item kind must not be empty")
    if dedupe_key is not None:
        existing = session.scalar(select(OutboxItem.id).where(OutboxItem.dedupe_key == dedupe_key))
        if existing is not None:
            return int(existing)
    item = OutboxItem(
        kind=kind,
        payload=canonical_payload(payload),
        dedupe_key=dedupe_key,
        ordering_key=ordering_key,
        state=OutboxState.QUEUED.value,
        attempts=0,
        next_attempt_at=now,
        tx_hashes="[]",
        fee_bumps=0,
        created_at=now,
        updated_at=now,
    )
    session.add(item)
    session.flush()
    return int(item.id)


def status(session: Session, item_id: int) -> OutboxStatus:
    item = session.get(OutboxItem, item_id)
    if item is None:
        raise NotFound("no such chain write")
    return _status_of(item)


def _status_of(item: OutboxItem) -> OutboxStatus:
    return OutboxStatus(
        id=int(item.id),
        kind=item.kind,
        state=OutboxState(item.state),
        attempts=item.attempts,
        tx_hash=item.tx_hash,
        block_number=item.block_number,
        failure_reason=item.failure_reason,
        last_error=item.last_error,
    )


def counts(session: Session) -> dict[str, int]:
    """Items per state (for `healthledger chain outbox` and health checks)."""
    from sqlalchemy import func

    rows = session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all()
    return {state.value: 0 for state in OutboxState} | {str(s): int(n) for s, n in rows}


def requeue_failed(session: Session, item_id: int, *, now: float) -> None:
    """Operator action after fixing a cause (e.g. an expired signature re-signed upstream is a NEW item)."""
    item = session.get(OutboxItem, item_id)
    if item is None:
        raise NotFound("no such chain write")
    if item.state != OutboxState.FAILED.value:
        raise BadRequest("only failed items can be requeued")
    item.state, item.failure_reason, item.next_attempt_at, item.updated_at = (
        OutboxState.QUEUED.value,
        None,
        now,
        now,
    )
    item.nonce, item.tx_hash, item.raw_tx, item.tx_hashes, item.fee_bumps = None, None, None, "[]", 0


# ---- the worker ------------------------------------------------------------------------------------


def claim(
    session_factory: sessionmaker[Session], worker_id: str, now: float, policy: OutboxPolicy
) -> list[int]:
    """Lease up to `batch_size` due items to this worker, oldest first, respecting ordering keys."""
    earlier = aliased(OutboxItem)
    blocked = exists().where(
        and_(
            earlier.ordering_key == OutboxItem.ordering_key,
            earlier.id < OutboxItem.id,
            earlier.state.in_([OutboxState.QUEUED.value, OutboxState.SENT.value]),
        )
    )
    due = (
        select(OutboxItem.id)
        .where(
            OutboxItem.state.in_([OutboxState.QUEUED.value, OutboxState.SENT.value]),
            OutboxItem.next_attempt_at <= now,
            (OutboxItem.lease_until.is_(None)) | (OutboxItem.lease_until < now),
            (OutboxItem.ordering_key.is_(None)) | ~blocked,
        )
        .order_by(OutboxItem.id)
        .limit(policy.batch_size)
    )
    with session_factory.begin() as session:
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True, of=OutboxItem)
        ids = session.scalars(
            update(OutboxItem)
            .where(OutboxItem.id.in_(due.scalar_subquery()))
            .values(lease_owner=worker_id, lease_until=now + policy.lease_seconds)
            .returning(OutboxItem.id)
        ).all()
    return sorted(int(i) for i in ids)


def process_outbox(
    session_factory: sessionmaker[Session],
    chain: ChainPort,
    now: float,
    *,
    calls: CallBuilders | None = None,
    policy: OutboxPolicy = OutboxPolicy(),
    worker_id: str | None = None,
) -> WorkerReport:
    """One pass: claim due items, submit queued ones, check (and if needed bump) sent ones."""
    if calls is None:
        calls = RELAY_CALLS
    worker = _Worker(session_factory, chain, now, calls, policy, worker_id or "w-" + secrets.token_hex(6))
    worker.report.released = release_when_reachable(session_factory, chain, now)
    for item_id in claim(session_factory, worker.worker_id, now, policy):
        worker.report.claimed += 1
        worker.handle(item_id)
    return worker.report


def release_when_reachable(session_factory: sessionmaker[Session], chain: ChainPort, now: float) -> int:
    """Items waiting out a backoff because the node could not be reached: if the node answers now, they are due
    now (a node back after a long outage does not wait out backoffs of minutes). Asks the node only while such
    an item waits; how many were released."""
    from healthledger.ledger.chain import UNREACHABLE

    waiting = (
        OutboxItem.state.in_([OutboxState.QUEUED.value, OutboxState.SENT.value]),
        OutboxItem.next_attempt_at > now,
        OutboxItem.last_error == UNREACHABLE,
    )
    with session_factory() as session:
        if session.scalar(select(OutboxItem.id).where(*waiting).limit(1)) is None:
            return 0
    try:
        chain.head()
    except ChainError:
        return 0  # still down: the backoff stands
    with session_factory.begin() as session:
        released = session.scalars(update(OutboxItem).where(*waiting).values(next_attempt_at=now)
                                   .returning(OutboxItem.id)).all()
    return len(released)


def drain(
    session_factory: sessionmaker[Session],
    chain: ChainPort,
    clock: Callable[[], float],
    *,
    calls: CallBuilders | None = None,
    policy: OutboxPolicy = OutboxPolicy(),
    max_passes: int = 1000,
    sleep: Callable[[float], None] | None = None,
    items: Collection[int] | None = None,
) -> WorkerReport:
    """Run passes until nothing (or none of `items`) is pending, or `max_passes` is reached; the totals."""
    total = WorkerReport()
    for _ in range(max_passes):
        report = process_outbox(session_factory, chain, clock(), calls=calls, policy=policy)
        for name in ("claimed", "broadcast", "confirmed", "failed", "retried", "bumped", "requeued"):
            setattr(total, name, getattr(total, name) + getattr(report, name))
        total.errors.extend(report.errors)
        with session_factory() as session:
            if items is not None:
                if not any(status(session, item_id).pending for item_id in items):
                    break
            else:
                pending = counts(session)
                if pending[OutboxState.QUEUED.value] + pending[OutboxState.SENT.value] == 0:
                    break
        if sleep is not None and report.claimed == 0:
            sleep(policy.receipt_poll_seconds)
    return total


class _Worker:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        chain: ChainPort,
        now: float,
        calls: CallBuilders,
        policy: OutboxPolicy,
        worker_id: str,
    ) -> None:
        self.sessions = session_factory
        self.chain = chain
        self.now = now
        self.calls = calls
        self.policy = policy
        self.worker_id = worker_id
        self.report = WorkerReport()
        self._contracts: dict[str, Any] = {}
        self._fees: Any = None  # one fee quote per pass: blocks do not change faster than a pass

    def _fn_call(self, call: ContractCall) -> Any:
        if call.contract not in self._contracts:
            self._contracts[call.contract] = self.chain.contract(call.contract)
        return getattr(self._contracts[call.contract].functions, call.function)(*call.args)

    def _market_fees(self) -> Any:
        if self._fees is None:
            self._fees = self.chain.fees()
        return self._fees

    # -- item dispatch -------------------------------------------------------------------------
    def handle(self, item_id: int) -> None:
        with self.sessions() as session:
            item = session.get(OutboxItem, item_id)
            if item is None or item.lease_owner != self.worker_id:
                return
            state = item.state
        try:
            if state == OutboxState.QUEUED.value:
                self._submit(item_id)
            elif state == OutboxState.SENT.value:
                self._check_sent(item_id)
        except HealthLedgerError as exc:  # node down, timeouts, contract not registered yet: try again later
            self._retry_later(item_id, exc)
        finally:
            self._release(item_id)

    def _mine(self, session: Session, item_id: int) -> OutboxItem | None:
        """The item, if this worker still holds its lease (locked on PostgreSQL)."""
        item = session.execute(
            select(OutboxItem).where(OutboxItem.id == item_id).with_for_update()
        ).scalar_one_or_none()
        if item is None or item.lease_owner != self.worker_id:
            return None
        return item

    def _release(self, item_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(OutboxItem)
                .where(OutboxItem.id == item_id, OutboxItem.lease_owner == self.worker_id)
                .values(lease_owner=None, lease_until=None)
            )

    def _retry_later(self, item_id: int, exc: Exception) -> None:
        with self.sessions.begin() as session:
            item = self._mine(session, item_id)
            if item is None:
                return
            item.attempts += 1
            item.last_error = _short(str(exc))
            item.next_attempt_at = self.now + backoff_seconds(item.attempts, self.policy)
            item.updated_at = self.now
        self.report.retried += 1
        self.report.errors.append(_short(str(exc)))

    def _fail(self, item_id: int, reason: str) -> None:
        with self.sessions.begin() as session:
            item = self._mine(session, item_id)
            if item is None:
                return
            item.state = OutboxState.FAILED.value
            item.failure_reason = _short(reason)
            item.updated_at = self.now
        self.report.failed += 1

    # -- queued: build, allocate a nonce, sign, record, broadcast --------------------------------
    def _submit(self, item_id: int) -> None:
        from healthledger.ledger.chain import ContractRevert

        with self.sessions() as session:
            item = session.get(OutboxItem, item_id)
            assert item is not None
            kind, payload = item.kind, json.loads(item.payload)
        builder = self.calls.get(kind)
        if builder is None:
            self._fail(item_id, f"unknown outbox item kind {kind!r}")
            return
        try:
            call = builder(payload)
        except (BadRequest, KeyError, ValueError, TypeError) as exc:
            self._fail(item_id, f"malformed payload: {exc}")
            return
        fn_call = self._fn_call(call)
        try:
            if call.gas_limit is not None:
                self.chain.call(fn_call)  # a revert here is the contract's answer
            tx = self.chain.build(fn_call, gas=call.gas_limit, fees=self._market_fees())
        except ContractRevert as exc:
            if exc.error_name in TRANSIENT_REVERTS:
                raise ChainError(str(exc)) from exc
            self._fail(item_id, str(exc))
            return
        sender = self.chain.operator.address
        pending_nonce = self._nonce_count(sender, "pending")
        with self.sessions.begin() as session:
            item = self._mine(session, item_id)
            if item is None:
                return
            nonce = _allocate_nonce(session, sender, pending_nonce)
            tx["nonce"] = nonce
            signed = self.chain.operator.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            item.sender, item.nonce, item.gas = sender, nonce, int(tx["gas"])
            item.max_fee_per_gas, item.max_priority_fee_per_gas = (
                int(tx["maxFeePerGas"]),
                int(tx["maxPriorityFeePerGas"]),
            )
            item.tx_hash, item.raw_tx = tx_hash, "0x" + bytes(signed.raw_transaction).hex()
            item.tx_hashes = json.dumps(json.loads(item.tx_hashes) + [tx_hash])
            item.state, item.signed_at, item.sent_at = OutboxState.SENT.value, self.now, None
            item.attempts += 1
            item.updated_at = self.now
            raw = item.raw_tx
        # Recorded and committed: from here a crash leads to a rebroadcast of these exact bytes.
        self._broadcast(item_id, raw)
        self._check_sent(item_id)

    def _broadcast(self, item_id: int, raw_tx: str) -> None:
        from healthledger.ledger.chain import translate_errors

        try:
            with translate_errors():
                self.chain.w3.eth.send_raw_transaction(HexBytes(raw_tx))
        except ChainError as exc:
            if not any(marker in str(exc).lower() for marker in _ALREADY_KNOWN):
                raise
        with self.sessions.begin() as session:
            item = self._mine(session, item_id)
            if item is not None:
                item.sent_at = self.now
                item.next_attempt_at = self.now + self.policy.receipt_poll_seconds
                item.updated_at = self.now
        self.report.broadcast += 1

    # -- sent: receipt, confirmation depth, rebroadcast, fee bump, foreign nonce ------------------
    def _find_receipt(self, hashes: list[str]) -> Any:
        for tx_hash in reversed(hashes):
            receipt = self.chain.receipt(tx_hash)
            if receipt is not None:
                return receipt
        return None

    def _check_sent(self, item_id: int) -> None:
        with self.sessions() as session:
            item = session.get(OutboxItem, item_id)
            assert item is not None
            if item.state != OutboxState.SENT.value:
                return
            hashes: list[str] = json.loads(item.tx_hashes)
            nonce, sender, raw, signed_at, sent_at = (
                item.nonce,
                item.sender,
                item.raw_tx,
                item.signed_at,
                item.sent_at,
            )
        receipt = self._find_receipt(hashes)
        if receipt is None:
            assert nonce is not None and sender is not None and raw is not None
            mined_nonce = self._nonce_count(sender, "latest")
            if mined_nonce > nonce:
                receipt = self._find_receipt(hashes)  # mined between the two reads?
                if receipt is None:
                    self._requeue_foreign_nonce(item_id)
                    return
            elif signed_at is not None and self.now - signed_at >= self.policy.bump_after_seconds:
                self._bump(item_id)
                return
            elif sent_at is None or self.now - sent_at >= self.policy.rebroadcast_after_seconds:
                self._broadcast(item_id, raw)  # never broadcast (crash) or the node may have lost it
                return
            else:
                self._poll_later(item_id)
                return
        self._settle(item_id, receipt)

    def _poll_later(self, item_id: int) -> None:
        with self.sessions.begin() as session:
            item = self._mine(session, item_id)
            if item is not None:
                item.next_attempt_at = self.now + self.policy.receipt_poll_seconds

    def _settle(self, item_id: int, receipt: Any) -> None:
        block = int(receipt["blockNumber"])
        if self.chain.confirmations and self.chain.head() < block + self.chain.confirmations:
            with self.sessions.begin() as session:
                item = self._mine(session, item_id)
                if item is not None:
                    item.block_number = block
                    item.next_attempt_at = self.now + self.policy.receipt_poll_seconds
            return
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        if int(receipt["status"]) == 1:
            with self.sessions.begin() as session:
                item = self._mine(session, item_id)
                if item is None:
                    return
                item.state, item.tx_hash, item.block_number = OutboxState.CONFIRMED.value, tx_hash, block
                item.confirmed_at = item.updated_at = self.now
                item.last_error = None
            self.report.confirmed += 1
            return
        self._fail(item_id, f"reverted on-chain in tx {tx_hash}: {self._revert_reason(receipt)}")

    def _nonce_count(self, sender: str, block: str) -> int:
        from healthledger.ledger.chain import translate_errors

        with translate_errors():
            return int(self.chain.w3.eth.get_transaction_count(sender, block))  # type: ignore[arg-type]

    def _revert_reason(self, receipt: Any) -> str:
        return str(self.chain.failure_of(receipt))

    def _requeue_foreign_nonce(self, item_id: int) -> None:
        # Our nonce was consumed by a transaction we never signed for this item (the operator key was
        # used elsewhere): none of our signed transactions can be mined any more, so re-signing with a
        # new nonce cannot double-execute.
        with self.sessions.begin() as session:
            item = self._mine(session, item_id)
            if item is None:
                return
            item.state, item.nonce, item.raw_tx, item.signed_at = OutboxState.QUEUED.value, None, None, None
            item.last_error = "nonce used by another transaction; re-signing with a new nonce"
            item.next_attempt_at = item.updated_at = self.now
        self.report.requeued += 1

    def _bump(self, item_id: int) -> None:
        with self.sessions() as session:
            item = session.get(OutboxItem, item_id)
            assert item is not None
            old_fee, old_tip = int(item.max_fee_per_gas or 0), int(item.max_priority_fee_per_gas or 0)
            gas, nonce, payload, kind = (
                int(item.gas or 0),
                int(item.nonce or 0),
                json.loads(item.payload),
                item.kind,
            )
        current = self.chain.fees()  # fresh: a stuck transaction means the market moved
        max_fee, tip = replacement_fees(old_fee, old_tip, int(current.max_fee), int(current.priority_fee))
        if max_fee > self.policy.fee_cap_wei:
            # Keep the current bid alive (the node may have dropped it) and say why it is not raised.
            with self.sessions.begin() as session:
                item = self._mine(session, item_id)
                if item is not None:
                    item.last_error = "transaction is stuck and a fee bump would exceed the fee cap"
                    raw = item.raw_tx
            if item is not None and raw is not None:
                self._broadcast(item_id, raw)
            return
        call = self.calls[kind](payload)
        fn_call = self._fn_call(call)
        from healthledger.ledger.chain import Fees

        tx = self.chain.build(fn_call, gas=gas, nonce=nonce, fees=Fees(max_fee=max_fee, priority_fee=tip))
        signed = self.chain.operator.sign_transaction(tx)
        tx_hash = "0x" + bytes(signed.hash).hex()
        with self.sessions.begin() as session:
            item = self._mine(session, item_id)
            if item is None:
                return
            item.max_fee_per_gas, item.max_priority_fee_per_gas = max_fee, tip
            item.tx_hash, item.raw_tx = tx_hash, "0x" + bytes(signed.raw_transaction).hex()
            item.tx_hashes = json.dumps(json.loads(item.tx_hashes) + [tx_hash])
            item.fee_bumps += 1
            item.signed_at = item.updated_at = self.now
            raw = item.raw_tx
        self.report.bumped += 1
        self._broadcast(item_id, raw)


def choose_nonce(db_next: int, pending_nonce: int, held: set[int]) -> tuple[int, int]:
    """(nonce to use, new database counter) given the counter, the node's pending count and the nonces
    held by items already sent. The lowest free nonce at or above the node's count is taken: normally
    the counter itself; below it only when the node lost transactions we no longer hold (a chain reset
    or reorganisation), which would otherwise leave a gap that stalls every later transaction.
    """
    nonce = pending_nonce
    while nonce in held:
        nonce += 1
    return nonce, max(db_next, nonce + 1)


def _allocate_nonce(session: Session, sender: str, pending_nonce: int) -> int:
    """Allocate under the sender's row lock (PostgreSQL FOR UPDATE; SQLite's single write lock, taken by
    the INSERT), in the caller's transaction, so two workers never get the same nonce and a restart
    continues from the stored counter.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    session.execute(
        insert(SenderNonce).values(sender=sender, next_nonce=pending_nonce).on_conflict_do_nothing()
    )
    row = session.execute(
        select(SenderNonce).where(SenderNonce.sender == sender).with_for_update()
    ).scalar_one()
    held = set(
        session.scalars(
            select(OutboxItem.nonce).where(
                OutboxItem.sender == sender,
                OutboxItem.state == OutboxState.SENT.value,
                OutboxItem.nonce >= pending_nonce,
            )
        )
    )
    nonce, row.next_nonce = choose_nonce(
        int(row.next_nonce), pending_nonce, {int(n) for n in held if n is not None}
    )
    session.flush()
    return nonce
