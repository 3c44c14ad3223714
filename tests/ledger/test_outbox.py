"""Durable outbox + relayer over both chain backends: atomic enqueue, exactly-once, retries, ordering."""
# ruff: noqa: F401, F811  (pytest fixtures imported from fixtures_relay are used as arguments)

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa
from eth_utils import to_checksum_address
from sqlalchemy.orm import Session, sessionmaker

from healthledger.errors import BadRequest, NotFound
from healthledger.ledger import calls, eip712, outbox, relayer
from healthledger.ledger.chain import Chain
from healthledger.ledger.models import OutboxItem
from healthledger.ledger.patient_keys import pseudonym_for
from tests.ledger.fixtures_relay import key_provider, ledger_chain, relay_db, run_workers_concurrently

FAST = outbox.OutboxPolicy(base_backoff_seconds=0.0, receipt_poll_seconds=0.0)
MASTER = bytes.fromhex("42" * 32)
GRANTEE = to_checksum_address("0x" + "ab" * 20)
SCOPE = bytes.fromhex("5c" * 32)


def domain_of(chain: Chain) -> eip712.Domain:
    return eip712.Domain(chain.chain_id, chain.address_of("ConsentRegistry"))


def signed_grant(
    chain: Chain,
    grantee_ref: str = "org:a",
    *,
    scope: bytes = SCOPE,
    nonce: int = 0,
    deadline: int | None = None,
    grantee: str = GRANTEE,
) -> tuple[eip712.GrantMessage, bytes]:
    patient = pseudonym_for(MASTER, grantee_ref)
    now = int(time.time())
    msg = eip712.GrantMessage(
        patient.address,
        grantee,
        scope,
        now - 60,
        now + 86_400,
        nonce,
        deadline if deadline is not None else now + 3_600,
    )
    return msg, eip712.sign(bytes(patient.key), domain_of(chain), msg)


def signed_revoke(
    chain: Chain, grantee_ref: str = "org:a", *, scope: bytes = SCOPE, nonce: int = 1, grantee: str = GRANTEE
) -> tuple[eip712.RevokeMessage, bytes]:
    patient = pseudonym_for(MASTER, grantee_ref)
    msg = eip712.RevokeMessage(patient.address, grantee, scope, nonce, int(time.time()) + 3_600)
    return msg, eip712.sign(bytes(patient.key), domain_of(chain), msg)


def is_live(chain: Chain, grantee_ref: str = "org:a", scope: bytes = SCOPE) -> bool:
    patient = pseudonym_for(MASTER, grantee_ref).address
    return bool(chain.call(chain.contract("ConsentRegistry").functions.isLive(patient, GRANTEE, scope)))


def granted_events(chain: Chain, from_block: int) -> list[object]:
    return chain.get_logs("ConsentRegistry", "ConsentGranted", from_block=from_block)


def drain(db: sessionmaker[Session], chain: Chain, passes: int = 20) -> outbox.WorkerReport:
    return outbox.drain(db, chain, time.time, policy=FAST, max_passes=passes)


# ---- database side only --------------------------------------------------------------------------


def test_enqueue_commits_and_rolls_back_with_the_business_change(relay_db) -> None:
    notes = sa.Table(
        "business_notes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.String(20)),
    )
    notes.create(relay_db.kw["bind"])
    with pytest.raises(RuntimeError), relay_db.begin() as s:
        s.execute(notes.insert().values(text="rolled back"))
        outbox.enqueue(s, "anchor", {"x": 1}, now=1.0)
        raise RuntimeError("business rule failed after enqueue")
    with relay_db() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(notes)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(OutboxItem)) == 0
    with relay_db.begin() as s:
        s.execute(notes.insert().values(text="kept"))
        item_id = outbox.enqueue(s, "anchor", {"x": 1}, now=1.0)
    with relay_db() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(notes)) == 1
        st = outbox.status(s, item_id)
        assert st.state is outbox.OutboxState.QUEUED and st.pending and st.tx_hash is None


def test_dedupe_key_returns_the_existing_item_and_status_errors(relay_db) -> None:
    with relay_db.begin() as s:
        a = outbox.enqueue(s, "anchor", {"x": 1}, now=1.0, dedupe_key="k")
        b = outbox.enqueue(s, "anchor", {"x": 2}, now=2.0, dedupe_key="k")
        assert a == b
        with pytest.raises(BadRequest):
            outbox.enqueue(s, "", {}, now=1.0)
        with pytest.raises(NotFound):
            outbox.status(s, 999)
        assert outbox.counts(s)["queued"] == 1


def test_claims_are_exclusive_and_respect_ordering_keys(relay_db) -> None:
    with relay_db.begin() as s:
        first = outbox.enqueue(s, "grant", {}, now=0.0, ordering_key="g1")
        second = outbox.enqueue(s, "revoke", {}, now=0.0, ordering_key="g1")
        other = outbox.enqueue(s, "anchor", {}, now=0.0)
        later = outbox.enqueue(s, "anchor", {}, now=50.0)
    a = outbox.claim(relay_db, "worker-a", 10.0, FAST)
    b = outbox.claim(relay_db, "worker-b", 10.0, FAST)
    assert a == [first, other] and b == []  # `second` waits for `first`; `later` is not due
    # After the lease expires another worker may take them over.
    assert outbox.claim(relay_db, "worker-b", 10.0 + FAST.lease_seconds + 1, FAST) == [first, other, later]
    assert second not in a


def test_backoff_and_replacement_fee_rules() -> None:
    policy = outbox.OutboxPolicy(base_backoff_seconds=2, max_backoff_seconds=60)
    assert [outbox.backoff_seconds(n, policy) for n in range(7)] == [0, 2, 4, 8, 16, 32, 60]
    max_fee, tip = outbox.replacement_fees(1_000, 100, 0, 0)
    assert max_fee >= 1_125 and tip >= 113  # +12.5% rounded up on both caps
    assert outbox.replacement_fees(1_000, 100, 5_000, 300) == (5_000, 300)


def test_nonce_choice_fills_gaps_left_by_a_node_and_skips_held_nonces() -> None:
    assert outbox.choose_nonce(5, 5, set()) == (5, 6)  # the usual case
    assert outbox.choose_nonce(5, 9, set()) == (9, 10)  # the node is ahead (key used elsewhere)
    assert outbox.choose_nonce(9, 5, {5, 6}) == (7, 9)  # node lost 7 and 8: fill the gap, keep the counter
    assert outbox.choose_nonce(7, 5, {5, 6}) == (7, 8)


def test_unknown_kind_and_malformed_payload_fail_with_a_reason(relay_db, ledger_chain) -> None:
    chain, _, _ = ledger_chain
    with relay_db.begin() as s:
        unknown = outbox.enqueue(s, "teleport", {}, now=0.0)
        broken = outbox.enqueue(
            s, calls.ANCHOR, {"log_id": "zz", "tree_size": 1, "root_hash": "0x00"}, now=0.0
        )
    outbox.process_outbox(relay_db, chain, time.time(), policy=FAST)
    with relay_db() as s:
        assert outbox.status(s, unknown).failure_reason == "unknown outbox item kind 'teleport'"
        assert "malformed payload" in (outbox.status(s, broken).failure_reason or "")


# ---- through the chain (embedded and anvil) ----------------------------------------------------


def test_grant_revoke_anchor_confirmed_exactly_once(relay_db, ledger_chain) -> None:
    chain, deployed_at, _ = ledger_chain
    msg, sig = signed_grant(chain)
    with relay_db.begin() as s:
        grant_id = relayer.submit_grant(s, domain_of(chain), msg, sig, now=time.time())
        assert relayer.submit_grant(s, domain_of(chain), msg, sig, now=time.time()) == grant_id  # idempotent
        anchor_id = relayer.submit_anchor(s, b"\x01" * 32, 10, b"\x02" * 32, now=time.time())
    report = drain(relay_db, chain)
    assert report.confirmed == 2 and report.failed == 0
    assert is_live(chain)
    with relay_db() as s:
        st = outbox.status(s, grant_id)
        assert st.state is outbox.OutboxState.CONFIRMED and not st.pending
        assert st.tx_hash and st.block_number and st.block_number > deployed_at
        assert outbox.status(s, anchor_id).state is outbox.OutboxState.CONFIRMED
    anchor = chain.contract("AccessLogAnchor")
    assert chain.call(anchor.functions.latest(b"\x01" * 32))[0] == 10
    # Revoke (nonce 1, left by the grant) goes through the same path.
    rmsg, rsig = signed_revoke(chain)
    with relay_db.begin() as s:
        revoke_id = relayer.submit_revoke(s, domain_of(chain), rmsg, rsig, now=time.time())
    drain(relay_db, chain)
    assert not is_live(chain)
    with relay_db() as s:
        assert outbox.status(s, revoke_id).state is outbox.OutboxState.CONFIRMED
    assert len(granted_events(chain, deployed_at)) == 1


def test_grant_then_revoke_queued_together_are_mined_in_order(relay_db, ledger_chain) -> None:
    chain, deployed_at, _ = ledger_chain
    with relay_db.begin() as s:
        for ref in ("org:a", "org:b"):
            relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, ref), now=time.time())
            relayer.submit_revoke(s, domain_of(chain), *signed_revoke(chain, ref), now=time.time())
    report = drain(relay_db, chain)
    assert report.confirmed == 4 and report.failed == 0
    assert not is_live(chain, "org:a") and not is_live(chain, "org:b")
    revoked = chain.get_logs("ConsentRegistry", "ConsentRevoked", from_block=deployed_at)
    assert len(revoked) == 2


def test_drain_can_wait_for_given_items_only(relay_db, ledger_chain) -> None:
    chain, _, _ = ledger_chain
    with relay_db.begin() as s:
        mine = relayer.submit_anchor(s, b"\x05" * 32, 1, b"\x06" * 32, now=time.time())
        stuck = outbox.enqueue(s, "anchor", {"x": 1}, now=time.time() + 3600)  # not due for an hour
    report = outbox.drain(relay_db, chain, time.time, policy=FAST, max_passes=50, items=[mine])
    assert report.confirmed == 1 and report.claimed == 1
    with relay_db() as s:
        assert outbox.status(s, stuck).pending


def test_revert_marks_failed_with_the_decoded_reason(relay_db, ledger_chain) -> None:
    chain, _, _ = ledger_chain
    expired_msg, expired_sig = signed_grant(chain, deadline=int(time.time()) - 10)
    wrong_nonce = signed_grant(chain, "org:c", nonce=7)
    with relay_db.begin() as s:
        expired = relayer.submit_grant(s, domain_of(chain), expired_msg, expired_sig, now=time.time())
        replay = relayer.submit_grant(s, domain_of(chain), *wrong_nonce, now=time.time())
    drain(relay_db, chain)
    with relay_db() as s:
        assert "SignatureExpired" in (outbox.status(s, expired).failure_reason or "")
        assert "InvalidNonce(0, 7)" in (outbox.status(s, replay).failure_reason or "")
        assert outbox.status(s, expired).state is outbox.OutboxState.FAILED


def test_relayer_rejects_bad_signatures_before_queueing(relay_db, ledger_chain) -> None:
    chain, _, _ = ledger_chain
    msg, sig = signed_grant(chain)
    other, _ = signed_grant(chain, "org:other")
    with relay_db.begin() as s:
        with pytest.raises(BadRequest):
            relayer.submit_grant(s, domain_of(chain), other, sig, now=0.0)  # signed by a different key
        with pytest.raises(BadRequest):
            relayer.submit_grant(s, domain_of(chain), msg, sig[:64], now=0.0)
        with pytest.raises(BadRequest):
            relayer.submit_anchor(s, b"\x01" * 31, 1, b"\x02" * 32, now=0.0)
        assert outbox.counts(s)["queued"] == 0


def test_crash_after_broadcast_never_double_sends(relay_db, ledger_chain, monkeypatch) -> None:
    chain, deployed_at, _ = ledger_chain
    with relay_db.begin() as s:
        item_id = relayer.submit_grant(s, domain_of(chain), *signed_grant(chain), now=time.time())
    real_broadcast = outbox._Worker._broadcast

    def broadcast_then_crash(self: outbox._Worker, item: int, raw: str) -> None:
        self.chain.w3.eth.send_raw_transaction(raw)
        raise KeyboardInterrupt("process killed right after broadcasting")

    monkeypatch.setattr(outbox._Worker, "_broadcast", broadcast_then_crash)
    with pytest.raises(KeyboardInterrupt):
        outbox.process_outbox(relay_db, chain, time.time(), policy=FAST)
    monkeypatch.setattr(outbox._Worker, "_broadcast", real_broadcast)
    with relay_db() as s:
        item = s.get(OutboxItem, item_id)
        assert item is not None and item.state == "sent" and item.nonce is not None
        recorded = item.tx_hash
    drain(relay_db, chain)
    with relay_db() as s:
        st = outbox.status(s, item_id)
        assert st.state is outbox.OutboxState.CONFIRMED and st.tx_hash == recorded
    assert len(granted_events(chain, deployed_at)) == 1


def test_crash_before_broadcast_rebroadcasts_the_recorded_transaction(
    relay_db, ledger_chain, monkeypatch
) -> None:
    chain, deployed_at, _ = ledger_chain
    with relay_db.begin() as s:
        item_id = relayer.submit_grant(s, domain_of(chain), *signed_grant(chain), now=time.time())

    def crash(self: outbox._Worker, item: int, raw: str) -> None:
        raise KeyboardInterrupt("process killed before broadcasting")

    monkeypatch.setattr(outbox._Worker, "_broadcast", crash)
    with pytest.raises(KeyboardInterrupt):
        outbox.process_outbox(relay_db, chain, time.time(), policy=FAST)
    monkeypatch.undo()
    assert granted_events(chain, deployed_at) == []
    drain(relay_db, chain)
    with relay_db() as s:
        assert outbox.status(s, item_id).state is outbox.OutboxState.CONFIRMED
    assert len(granted_events(chain, deployed_at)) == 1


def test_concurrent_workers_send_each_item_once_with_distinct_nonces(relay_db, ledger_chain) -> None:
    chain, deployed_at, _ = ledger_chain
    with relay_db.begin() as s:
        for i in range(8):
            relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, f"org:{i}"), now=time.time())
    policy = outbox.OutboxPolicy(batch_size=2, base_backoff_seconds=0.0, receipt_poll_seconds=0.0)
    assert not run_workers_concurrently(relay_db, chain, policy, [f"w{i}" for i in range(3)])
    with relay_db() as s:
        items = s.scalars(sa.select(OutboxItem)).all()
        assert {i.state for i in items} == {"confirmed"}
        assert len({i.nonce for i in items}) == 8
    assert len(granted_events(chain, deployed_at)) == 8


def test_payload_and_tx_hash_history_are_stored(relay_db, ledger_chain) -> None:
    chain, _, _ = ledger_chain
    msg, sig = signed_grant(chain)
    with relay_db.begin() as s:
        item_id = relayer.submit_grant(s, domain_of(chain), msg, sig, now=time.time())
    drain(relay_db, chain)
    with relay_db() as s:
        item = s.get(OutboxItem, item_id)
        assert item is not None
        assert json.loads(item.payload)["signature"] == "0x" + sig.hex()
        assert json.loads(item.tx_hashes) == [item.tx_hash]
