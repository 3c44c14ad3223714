"""Outbox against a real JSON-RPC node: fee bumping, a node outage (restart with --state), PostgreSQL workers."""
# ruff: noqa: F401, F811  (pytest fixtures imported from fixtures_relay are used as arguments)

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from healthledger.db import session_factory
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import eip712, outbox, relayer
from healthledger.ledger.chain import Chain
from healthledger.ledger.models import OutboxItem
from tests.ledger.fixtures_relay import (
    AnvilNode,
    anvil_chain,
    deploy_ledger,
    key_provider,
    relay_db,
    relay_engine,
    run_workers_concurrently,
)
from tests.ledger.test_outbox import domain_of, granted_events, signed_grant

pytestmark = pytest.mark.anvil

FAST = outbox.OutboxPolicy(base_backoff_seconds=0.0, receipt_poll_seconds=0.0, rebroadcast_after_seconds=0.0)


@pytest.fixture()
def anvil_ledger(
    tmp_path: Path, key_provider: LocalFileKeyProvider
) -> Iterator[tuple[Chain, int, AnvilNode]]:
    node = AnvilNode(state_file=tmp_path / "anvil-state.json").start()
    chain = anvil_chain(node, key_provider, tmp_path / "keys")
    try:
        yield chain, deploy_ledger(chain), node
    finally:
        chain.close()
        node.stop()


def test_stuck_transaction_is_replaced_with_higher_fees(relay_db, anvil_ledger) -> None:
    chain, deployed_at, node = anvil_ledger
    node.rpc("evm_setAutomine", [False])
    with relay_db.begin() as s:
        item_id = relayer.submit_grant(s, domain_of(chain), *signed_grant(chain), now=time.time())
    policy = outbox.OutboxPolicy(base_backoff_seconds=0.0, receipt_poll_seconds=0.0, bump_after_seconds=30.0)
    t0 = time.time()
    first = outbox.process_outbox(relay_db, chain, t0, policy=policy)
    assert first.broadcast == 1 and first.confirmed == 0
    with relay_db() as s:
        item = s.get(OutboxItem, item_id)
        assert item is not None and item.state == "sent"
        nonce, old_fee, old_tip, old_hash = (
            item.nonce,
            item.max_fee_per_gas,
            item.max_priority_fee_per_gas,
            item.tx_hash,
        )
    # Not yet stuck: nothing changes.
    assert outbox.process_outbox(relay_db, chain, t0 + 5, policy=policy).bumped == 0
    bumped = outbox.process_outbox(relay_db, chain, t0 + 31, policy=policy)
    assert bumped.bumped == 1
    with relay_db() as s:
        item = s.get(OutboxItem, item_id)
        assert item is not None
        assert item.nonce == nonce and item.tx_hash != old_hash and item.fee_bumps == 1
        assert item.max_fee_per_gas * 8 >= old_fee * 9 and item.max_priority_fee_per_gas * 8 >= old_tip * 9
        assert json.loads(item.tx_hashes) == [old_hash, item.tx_hash]
        new_hash = item.tx_hash
    node.rpc("evm_mine")
    done = outbox.process_outbox(relay_db, chain, t0 + 32, policy=policy)
    assert done.confirmed == 1
    with relay_db() as s:
        st = outbox.status(s, item_id)
        assert st.state is outbox.OutboxState.CONFIRMED and st.tx_hash == new_hash
    events = granted_events(chain, deployed_at)
    assert len(events) == 1 and "0x" + bytes(events[0]["transactionHash"]).hex() == new_hash


def test_fee_cap_stops_bumping_but_keeps_the_transaction(relay_db, anvil_ledger) -> None:
    chain, _, node = anvil_ledger
    node.rpc("evm_setAutomine", [False])
    with relay_db.begin() as s:
        item_id = relayer.submit_grant(s, domain_of(chain), *signed_grant(chain), now=time.time())
    t0 = time.time()
    outbox.process_outbox(relay_db, chain, t0, policy=FAST)
    with relay_db() as s:
        item = s.get(OutboxItem, item_id)
        assert item is not None and item.max_fee_per_gas is not None
        cap = item.max_fee_per_gas  # any bump (+12.5%) is above it
    capped = outbox.OutboxPolicy(
        base_backoff_seconds=0.0, receipt_poll_seconds=0.0, bump_after_seconds=1.0, fee_cap_wei=cap
    )
    assert outbox.process_outbox(relay_db, chain, t0 + 5, policy=capped).bumped == 0
    with relay_db() as s:
        st = outbox.status(s, item_id)
        assert st.state is outbox.OutboxState.SENT and "fee cap" in (st.last_error or "")
    node.rpc("evm_mine")
    assert outbox.process_outbox(relay_db, chain, t0 + 6, policy=capped).confirmed == 1


def test_node_outage_loses_no_write_and_sends_each_once(relay_db, anvil_ledger) -> None:
    chain, deployed_at, node = anvil_ledger
    domain = domain_of(chain)
    with relay_db.begin() as s:
        for i in range(4):
            relayer.submit_grant(s, domain, *signed_grant(chain, f"org:{i}"), now=time.time())
    outbox.process_outbox(relay_db, chain, time.time(), policy=outbox.OutboxPolicy(batch_size=2, **_fast()))
    # Two confirmed; the next one is broadcast but not mined when the node goes down.
    node.rpc("evm_setAutomine", [False])
    outbox.process_outbox(relay_db, chain, time.time(), policy=outbox.OutboxPolicy(batch_size=1, **_fast()))
    with relay_db() as s:
        assert outbox.counts(s) == {"queued": 1, "sent": 1, "confirmed": 2, "failed": 0}
    node.stop()
    with relay_db.begin() as s:  # the API keeps accepting writes during the outage
        for i in range(4, 7):
            relayer.submit_grant(s, domain, *signed_grant(chain, f"org:{i}"), now=time.time())
    down = outbox.process_outbox(relay_db, chain, time.time(), policy=FAST)
    assert down.confirmed == 0 and down.retried >= 1
    assert any("unreachable" in e for e in down.errors)
    with relay_db() as s:
        assert outbox.counts(s)["confirmed"] == 2 and outbox.counts(s)["failed"] == 0
        assert all(outbox.status(s, i).pending for i in range(3, 8))
    node.start()  # same port, state reloaded from the --state file; its mempool is gone
    report = outbox.drain(relay_db, chain, time.time, policy=FAST, max_passes=20)
    assert report.failed == 0
    with relay_db() as s:
        assert outbox.counts(s) == {"queued": 0, "sent": 0, "confirmed": 7, "failed": 0}
    events = granted_events(chain, deployed_at)
    patients = [e["args"]["patient"] for e in events]
    assert len(events) == 7 and len(set(patients)) == 7


def test_writes_backing_off_for_an_unreachable_node_drain_as_soon_as_it_answers(relay_db, anvil_ledger) -> None:
    """A long outage leaves items minutes into their backoff; the first pass that finds the node answering makes
    them due at once (not up to max_backoff_seconds later); a node still down leaves the backoff standing."""
    chain, deployed_at, node = anvil_ledger
    slow = outbox.OutboxPolicy(base_backoff_seconds=60.0, receipt_poll_seconds=0.0, rebroadcast_after_seconds=0.0)
    node.stop()
    with relay_db.begin() as s:
        for i in range(3):
            relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, f"back:{i}"), now=time.time())
    t0 = time.time()
    for attempt in range(4):  # backoffs 60, 120, 240, 300 s: as after a long outage
        outbox.process_outbox(relay_db, chain, t0 + 1000 * attempt, policy=slow)
    with relay_db() as s:
        waiting = s.scalars(sa.select(OutboxItem)).all()
        assert {i.last_error for i in waiting} == {"chain node is unreachable"}
        assert min(i.next_attempt_at for i in waiting) >= t0 + 3000 + 240
    still_down = outbox.process_outbox(relay_db, chain, t0 + 3010, policy=slow)
    assert still_down.released == 0 and still_down.claimed == 0  # the backoff stands while the node is down

    node.start()
    back = outbox.process_outbox(relay_db, chain, t0 + 3020, policy=slow)
    assert back.released == 3 and back.claimed == 3
    report = outbox.drain(relay_db, chain, lambda: t0 + 3021, policy=slow, max_passes=10)
    assert report.failed == 0
    with relay_db() as s:
        assert outbox.counts(s) == {"queued": 0, "sent": 0, "confirmed": 3, "failed": 0}
    assert len(granted_events(chain, deployed_at)) == 3


def _fast() -> dict[str, float]:
    return {"base_backoff_seconds": 0.0, "receipt_poll_seconds": 0.0, "rebroadcast_after_seconds": 0.0}


@pytest.mark.postgres
def test_concurrent_workers_on_postgresql(postgres_schema_url: tuple[str, str], anvil_ledger) -> None:
    chain, deployed_at, _ = anvil_ledger
    url, _schema = postgres_schema_url
    engine = relay_engine(url)
    db: sessionmaker[Session] = session_factory(engine)
    try:
        with db.begin() as s:  # (the schema is the session's: other tests' items may be in it, done)
            ours = [relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, f"pg:{i}"), now=time.time())
                    for i in range(10)]
        policy = outbox.OutboxPolicy(batch_size=2, **_fast())
        assert not run_workers_concurrently(db, chain, policy, [f"pg{i}" for i in range(3)])
        with db() as s:
            items = s.scalars(sa.select(OutboxItem).where(OutboxItem.id.in_(ours))).all()
            assert len(items) == 10
            assert {i.state for i in items} == {"confirmed"}
            assert len({i.nonce for i in items}) == 10
            assert len({i.lease_owner for i in items}) == 1  # all released (None)
        assert len(granted_events(chain, deployed_at)) == 10
    finally:
        engine.dispose()


def test_revert_when_mined_marks_failed_with_reason(relay_db, anvil_ledger) -> None:
    chain, deployed_at, node = anvil_ledger
    node.rpc("evm_setAutomine", [False])
    msg, sig = signed_grant(chain)
    # Another submitter gets the same signed grant into the mempool first (front-running the relayer).
    r, vs = eip712.compact(sig)
    registry = chain.contract("ConsentRegistry")
    fn = registry.functions.grantBySig(
        msg.patient,
        msg.grantee,
        msg.scope_hash,
        msg.valid_from,
        msg.valid_until,
        msg.nonce,
        msg.deadline,
        r,
        vs,
    )
    chain.sign_and_submit(chain.build(fn))
    with relay_db.begin() as s:
        item_id = relayer.submit_grant(s, domain_of(chain), msg, sig, now=time.time())
    t0 = time.time()
    assert outbox.process_outbox(relay_db, chain, t0, policy=FAST).broadcast >= 1  # estimate still passes
    node.rpc("evm_mine")
    report = outbox.process_outbox(relay_db, chain, t0 + 1, policy=FAST)
    assert report.failed == 1
    with relay_db() as s:
        st = outbox.status(s, item_id)
        assert st.state is outbox.OutboxState.FAILED
        assert "reverted on-chain" in (st.failure_reason or "") and "InvalidNonce(1, 0)" in (
            st.failure_reason or ""
        )
    assert len(granted_events(chain, deployed_at)) == 1


def test_confirmation_depth_keeps_items_sent_until_deep_enough(
    relay_db, tmp_path: Path, key_provider
) -> None:
    from healthledger.ledger.chain import rpc_chain

    node = AnvilNode().start()
    try:
        shallow = anvil_chain(node, key_provider, tmp_path / "keys")
        deployed_at = deploy_ledger(shallow)
        chain = rpc_chain(
            node.url, key_provider, keys_dir=tmp_path / "keys", confirmations=2, poll_seconds=0.05
        )
        chain.register("ConsentRegistry", shallow.address_of("ConsentRegistry"))
        with relay_db.begin() as s:
            item_id = relayer.submit_grant(s, domain_of(chain), *signed_grant(chain), now=time.time())
        first = outbox.process_outbox(relay_db, chain, time.time(), policy=FAST)
        assert first.broadcast == 1 and first.confirmed == 0
        with relay_db() as s:
            st = outbox.status(s, item_id)
            assert st.state is outbox.OutboxState.SENT and st.pending and st.block_number is not None
        node.rpc("anvil_mine", [hex(1)])
        assert outbox.process_outbox(relay_db, chain, time.time(), policy=FAST).confirmed == 0
        node.rpc("anvil_mine", [hex(1)])
        assert outbox.process_outbox(relay_db, chain, time.time(), policy=FAST).confirmed == 1
        assert len(granted_events(chain, deployed_at)) == 1
    finally:
        node.stop()
