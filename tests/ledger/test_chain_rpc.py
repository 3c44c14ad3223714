"""Transaction handling on both backends and on a real node: EIP-1559 fees, reverts mined on-chain,
confirmation depth, and nonces shared by concurrent workers."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import pytest

from healthledger.errors import ChainError
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.chain import Chain, ContractRevert, rpc_chain
from tests.ledger.conftest import ANVIL_OPERATOR_BALANCE, Deployed


def test_transactions_are_eip1559_with_fee_caps_above_the_base_fee(deployed: Deployed) -> None:
    chain = deployed.chain
    receipt = chain.send(
        deployed.anchor.functions.anchor(secrets.token_bytes(32), 1, secrets.token_bytes(32))
    )
    tx = chain.w3.eth.get_transaction(receipt["transactionHash"])
    block = chain.w3.eth.get_block(receipt["blockNumber"])
    assert tx["type"] == 2
    assert tx["maxPriorityFeePerGas"] > 0
    assert tx["maxFeePerGas"] >= block["baseFeePerGas"] + tx["maxPriorityFeePerGas"]
    assert tx["chainId"] == chain.chain_id  # EIP-155 replay protection across chains


def test_a_revert_mined_on_chain_is_decoded_from_a_replay(deployed: Deployed) -> None:
    chain = deployed.chain
    call = deployed.anchor.functions.anchor(secrets.token_bytes(32), 1, bytes(32))  # EmptyRoot
    with pytest.raises(ContractRevert, match="EmptyRoot"):
        chain.send(call)  # refused at estimation
    # With gas given there is no estimation: the transaction is mined, fails, and is explained.
    with pytest.raises(ContractRevert, match="EmptyRoot"):
        chain.send(call, gas=100_000)


def _anvil_chain(url: str, keys_dir: Path, confirmations: int = 0) -> Chain:
    chain = rpc_chain(
        url, LocalFileKeyProvider(keys_dir), keys_dir=keys_dir, confirmations=confirmations, poll_seconds=0.02
    )
    chain.w3.provider.make_request("anvil_setBalance", [chain.operator.address, hex(ANVIL_OPERATOR_BALANCE)])  # type: ignore[arg-type]
    return chain


@pytest.mark.anvil
def test_confirmation_depth_holds_receipts_back(anvil_url: str, tmp_path: Path) -> None:
    chain = _anvil_chain(anvil_url, tmp_path / "keys", confirmations=2)
    address, _ = _anvil_chain(anvil_url, tmp_path / "keys").deploy("AccessLogAnchor", chain.operator.address)
    chain.register("AccessLogAnchor", address)
    anchor = chain.contract("AccessLogAnchor")
    tx_hash = chain.sign_and_submit(
        chain.build(anchor.functions.grantRole(secrets.token_bytes(32), chain.operator.address))
    )
    with pytest.raises(ChainError, match="not yet confirmed"):
        chain.wait(tx_hash, timeout=0.5)
    for _ in range(2):
        chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    receipt = chain.wait(tx_hash, timeout=5)
    assert chain.head() >= receipt["blockNumber"] + 2


@pytest.mark.anvil
def test_concurrent_workers_never_reuse_an_operator_nonce(anvil_url: str, tmp_path: Path) -> None:
    # Two Chain objects = two gunicorn workers with the same operator key and data directory.
    workers = [_anvil_chain(anvil_url, tmp_path / "keys") for _ in range(2)]
    address, _ = workers[0].deploy("AccessLogAnchor", workers[0].operator.address)
    for worker in workers:
        worker.register("AccessLogAnchor", address)
    role = workers[0].call(workers[0].contract("AccessLogAnchor").functions.LOG_ANCHORER())
    workers[0].send(
        workers[0].contract("AccessLogAnchor").functions.grantRole(role, workers[0].operator.address)
    )
    hashes: list[bytes] = []
    failures: list[BaseException] = []

    def submit(worker: Chain) -> None:
        try:
            for _ in range(5):
                call = worker.contract("AccessLogAnchor").functions.anchor(
                    secrets.token_bytes(32), 1, secrets.token_bytes(32)
                )
                hashes.append(bytes(worker.sign_and_submit(worker.build(call, gas=100_000))))
        except Exception as exc:  # noqa: BLE001 (collected and asserted on below)
            failures.append(exc)

    threads = [threading.Thread(target=submit, args=(w,)) for w in workers for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    receipts = [workers[0].wait(h, timeout=30) for h in hashes]
    nonces = [workers[0].w3.eth.get_transaction(r["transactionHash"])["nonce"] for r in receipts]
    assert len(set(nonces)) == len(nonces) == 20
    assert all(r["status"] == 1 for r in receipts)


@pytest.mark.anvil
def test_a_revert_caused_earlier_in_its_own_block_is_explained(anvil_url: str, tmp_path: Path) -> None:
    """Two transactions mined in one block: the anchorer's role revoked, then an anchor that this makes revert.
    Replayed on the parent block's state the anchor would succeed ("reverted without reason"); on its own
    block's, it says why. (Pausing no longer stops anchoring: see the contracts README.)"""
    chain = _anvil_chain(anvil_url, tmp_path / "keys")
    address, _ = chain.deploy("AccessLogAnchor", chain.operator.address)
    chain.register("AccessLogAnchor", address)
    anchor = chain.contract("AccessLogAnchor")
    anchorer = chain.call(anchor.functions.LOG_ANCHORER())
    chain.send(anchor.functions.grantRole(anchorer, chain.operator.address))
    rpc = chain.w3.provider.make_request
    rpc("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        revoke = chain.sign_and_submit(
            chain.build(anchor.functions.revokeRole(anchorer, chain.operator.address), gas=100_000))
        doomed = chain.sign_and_submit(
            chain.build(anchor.functions.anchor(secrets.token_bytes(32), 1, secrets.token_bytes(32)), gas=200_000)
        )
        rpc("evm_mine", [])  # type: ignore[arg-type]
    finally:
        rpc("evm_setAutomine", [True])  # type: ignore[arg-type]
    first, second = chain.w3.eth.get_transaction_receipt(revoke), chain.w3.eth.get_transaction_receipt(doomed)
    assert first["blockNumber"] == second["blockNumber"] and first["status"] == 1 and second["status"] == 0
    failure = chain.failure_of(second)
    assert isinstance(failure, ContractRevert) and "MissingRole" in str(failure)
