"""Event indexer over both backends, and a reorganisation on anvil (evm_snapshot / evm_revert)."""
# ruff: noqa: F401, F811  (pytest fixtures imported from fixtures_relay are used as arguments)

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from healthledger.errors import BadRequest
from healthledger.ledger import eip712, indexer, relayer
from healthledger.ledger.chain import Chain
from healthledger.ledger.models import ConsentEvent, IndexedBlock, LogAnchorEvent
from healthledger.ledger.patient_keys import pseudonym_for
from tests.ledger.fixtures_relay import (
    AnvilNode,
    anvil_chain,
    deploy_ledger,
    key_provider,
    ledger_chain,
    relay_db,
)
from tests.ledger.test_outbox import GRANTEE, MASTER, SCOPE, domain_of, drain, signed_grant, signed_revoke


def patient(ref: str = "org:a") -> str:
    return pseudonym_for(MASTER, ref).address


def test_indexes_grants_revokes_anchors_and_answers_grant_state(relay_db, ledger_chain) -> None:
    chain, deployed_at, _ = ledger_chain
    idx = indexer.Indexer(relay_db, chain, from_block=deployed_at, confirmations=0)
    msg, sig = signed_grant(chain)
    with relay_db.begin() as s:
        relayer.submit_grant(s, domain_of(chain), msg, sig, now=time.time())
        relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, "org:b"), now=time.time())
        relayer.submit_anchor(s, b"\x01" * 32, 5, b"\x02" * 32, now=time.time())
    drain(relay_db, chain)
    report = idx.catch_up(time.time())
    assert (report.grants, report.revokes, report.anchors) >= (0, 0, 0)
    now = int(time.time())
    with relay_db() as s:
        state = indexer.grant_state(s, patient(), GRANTEE, SCOPE, now)
        assert state.status is indexer.GrantStatus.LIVE and state.live
        assert state.valid_from == msg.valid_from and state.valid_until == msg.valid_until
        assert state.block_number and state.block_number > deployed_at and state.tx_hash
        assert (
            indexer.grant_state(s, patient(), GRANTEE, SCOPE, msg.valid_until).status
            is indexer.GrantStatus.EXPIRED
        )
        assert (
            indexer.grant_state(s, patient(), GRANTEE, SCOPE, msg.valid_from - 1).status
            is indexer.GrantStatus.NOT_YET_VALID
        )
        assert (
            indexer.grant_state(s, patient(), GRANTEE, b"\x00" * 32, now).status
            is indexer.GrantStatus.UNKNOWN
        )
        with pytest.raises(BadRequest):
            indexer.grant_state(s, patient(), GRANTEE, b"\x00", now)
        anchors = s.scalars(select(LogAnchorEvent)).all()
        assert [(a.log_id, a.tree_size) for a in anchors] == [("0x" + "01" * 32, 5)]
        lag = indexer.lag(s)
        assert lag is not None and lag.blocks == 0 and lag.seconds == 0
    with relay_db.begin() as s:
        relayer.submit_revoke(s, domain_of(chain), *signed_revoke(chain), now=time.time())
    drain(relay_db, chain)
    # Before the indexer runs again it still answers from what it saw: the lag says so.
    with relay_db() as s:
        assert indexer.grant_state(s, patient(), GRANTEE, SCOPE, now).live
    idx.catch_up(time.time())
    with relay_db() as s:
        state = indexer.grant_state(s, patient(), GRANTEE, SCOPE, now)
        assert state.status is indexer.GrantStatus.REVOKED
        assert indexer.grant_state(s, patient("org:b"), GRANTEE, SCOPE, now).live
        assert s.scalar(select(func.count()).select_from(ConsentEvent)) == 3
    # Idempotent: another pass adds nothing.
    again = idx.run_once(time.time())
    assert again.to_block < again.from_block


def test_confirmation_depth_holds_back_recent_blocks(relay_db, ledger_chain) -> None:
    chain, deployed_at, _ = ledger_chain
    with relay_db.begin() as s:
        relayer.submit_grant(s, domain_of(chain), *signed_grant(chain), now=time.time())
    drain(relay_db, chain)
    head = chain.head()
    idx = indexer.Indexer(relay_db, chain, from_block=deployed_at, confirmations=head - deployed_at + 5)
    idx.catch_up(time.time())
    with relay_db() as s:
        assert (
            indexer.grant_state(s, patient(), GRANTEE, SCOPE, int(time.time())).status
            is indexer.GrantStatus.UNKNOWN
        )
        lag = indexer.lag(s)
        assert lag is not None and lag.head_block == head and lag.blocks >= head - deployed_at
    deep = indexer.Indexer(relay_db, chain, from_block=deployed_at, confirmations=0)
    deep.catch_up(time.time())
    with relay_db() as s:
        assert indexer.grant_state(s, patient(), GRANTEE, SCOPE, int(time.time())).live


def test_common_ancestor_and_state_rules() -> None:
    stored = {10: "a", 11: "b", 12: "c"}
    chain_now = {10: "a", 11: "b", 12: "x"}
    assert indexer.common_ancestor(stored, chain_now.get) == 11
    assert indexer.common_ancestor(stored, {}.get) is None
    assert indexer.state_from_events([], 0).status is indexer.GrantStatus.UNKNOWN


def _send_grant(chain: Chain, ref: str) -> None:
    msg, sig = signed_grant(chain, ref)
    r, vs = eip712.compact(sig)
    registry = chain.contract("ConsentRegistry")
    chain.send(
        registry.functions.grantBySig(
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
    )


@pytest.mark.anvil
@pytest.mark.parametrize("keep_blocks", [16, 2], ids=["ancestor-in-window", "deeper-than-window"])
def test_reorg_rewinds_and_replays(relay_db, tmp_path: Path, key_provider, keep_blocks: int) -> None:
    node = AnvilNode().start()
    chain = anvil_chain(node, key_provider, tmp_path / "keys")
    try:
        deployed_at = deploy_ledger(chain)
        idx = indexer.Indexer(
            relay_db, chain, from_block=deployed_at, confirmations=0, keep_blocks=keep_blocks
        )
        idx.catch_up(time.time())
        fork_point = chain.head()
        snapshot = node.rpc("evm_snapshot")
        _send_grant(chain, "org:old-1")
        _send_grant(chain, "org:old-2")
        node.rpc("anvil_mine", [hex(4)])
        idx.catch_up(time.time())
        now = int(time.time())
        with relay_db() as s:
            assert indexer.grant_state(s, patient("org:old-1"), GRANTEE, SCOPE, now).live
            assert indexer.grant_state(s, patient("org:old-2"), GRANTEE, SCOPE, now).live
        # The fork: back to the snapshot, then a different (longer) history.
        assert node.rpc("evm_revert", [snapshot]) is True
        node.rpc("anvil_setBalance", [chain.operator.address, hex(10**22)])
        _send_grant(chain, "org:new-1")
        node.rpc("anvil_mine", [hex(3)])
        report = idx.catch_up(time.time())
        with relay_db() as s:
            assert (
                indexer.grant_state(s, patient("org:old-1"), GRANTEE, SCOPE, now).status
                is indexer.GrantStatus.UNKNOWN
            )
            assert (
                indexer.grant_state(s, patient("org:old-2"), GRANTEE, SCOPE, now).status
                is indexer.GrantStatus.UNKNOWN
            )
            assert indexer.grant_state(s, patient("org:new-1"), GRANTEE, SCOPE, now).live
            rows = s.scalars(select(ConsentEvent)).all()
            assert len(rows) == 1
            # Every remembered block hash is the chain's current one.
            for block in s.scalars(select(IndexedBlock)):
                assert block.hash == "0x" + bytes(chain.w3.eth.get_block(block.number)["hash"]).hex()
        expected = fork_point if keep_blocks > 2 else deployed_at - 1  # common ancestor, or full replay
        assert report.rewound_to == expected
    finally:
        chain.close()
        node.stop()


@pytest.mark.anvil
@pytest.mark.postgres
def test_indexer_and_reorg_on_postgresql(
    postgres_schema_url: tuple[str, str], tmp_path: Path, key_provider
) -> None:
    from healthledger.db import session_factory
    from tests.ledger.fixtures_relay import relay_engine

    engine = relay_engine(postgres_schema_url[0])
    db = session_factory(engine)
    node = AnvilNode().start()
    chain = anvil_chain(node, key_provider, tmp_path / "keys")
    try:
        deployed_at = deploy_ledger(chain)
        idx = indexer.Indexer(db, chain, from_block=deployed_at, confirmations=0, keep_blocks=8)
        snapshot = node.rpc("evm_snapshot")
        _send_grant(chain, "pg:old")
        idx.catch_up(time.time())
        now = int(time.time())
        with db() as s:
            assert indexer.grant_state(s, patient("pg:old"), GRANTEE, SCOPE, now).live
        node.rpc("evm_revert", [snapshot])
        _send_grant(chain, "pg:new")
        node.rpc("anvil_mine", [hex(2)])
        idx.catch_up(time.time())
        with db() as s:
            assert (
                indexer.grant_state(s, patient("pg:old"), GRANTEE, SCOPE, now).status
                is indexer.GrantStatus.UNKNOWN
            )
            assert indexer.grant_state(s, patient("pg:new"), GRANTEE, SCOPE, now).live
            assert indexer.lag(s) is not None
    finally:
        chain.close()
        node.stop()
        engine.dispose()
