"""Chain fixtures: one shared suite runs against the embedded EVM and a real anvil node on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import node_tool
from web3.contract import Contract

from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.chain import Chain, embedded_chain, rpc_chain
from tests.integration.anvil import running_anvil

CHAIN_KINDS = ["embedded", "anvil"]
ANVIL_OPERATOR_BALANCE = 10**24


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    """One anvil per test session (fails, not skips, when the npm tool is missing)."""
    with running_anvil(node_tool("anvil")) as url:
        yield url


def open_chain(kind: str, data_dir: Path, request: pytest.FixtureRequest) -> Chain:
    """A fresh chain of `kind` with its own operator key under `data_dir` (funded on anvil by
    anvil_setBalance: the well-known dev keys are never used)."""
    key_provider = LocalFileKeyProvider(data_dir / "keys")
    if kind == "embedded":
        return embedded_chain(data_dir, key_provider)
    url = request.getfixturevalue("anvil_url")
    chain = rpc_chain(url, key_provider, keys_dir=data_dir / "keys", poll_seconds=0.02)
    chain.w3.provider.make_request("anvil_setBalance", [chain.operator.address, hex(ANVIL_OPERATOR_BALANCE)])  # type: ignore[arg-type]
    return chain


@pytest.fixture(scope="module", params=CHAIN_KINDS)
def chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    opened = open_chain(request.param, tmp_path_factory.mktemp(f"chain-{request.param}"), request)
    yield opened
    opened.close()


@dataclass(frozen=True)
class Deployed:
    chain: Chain
    registry: Contract
    anchor: Contract
    deployment_block: int


@pytest.fixture(scope="module")
def deployed(chain: Chain) -> Deployed:
    """Both contracts, admin = operator, operator holding RELAYER and LOG_ANCHORER."""
    block = chain.head()
    chain.deploy("ConsentRegistry", chain.operator.address)
    chain.deploy("AccessLogAnchor", chain.operator.address)
    registry, anchor = chain.contract("ConsentRegistry"), chain.contract("AccessLogAnchor")
    chain.send(registry.functions.grantRole(chain.call(registry.functions.RELAYER()), chain.operator.address))
    chain.send(
        anchor.functions.grantRole(chain.call(anchor.functions.LOG_ANCHORER()), chain.operator.address)
    )
    return Deployed(chain, registry, anchor, block)


def chain_now(chain: Chain) -> int:
    return int(chain.w3.eth.get_block("latest")["timestamp"])


def advance_time(chain: Chain, seconds: int) -> int:
    """Mine a block `seconds` later than the latest one; returns its timestamp."""
    target = chain_now(chain) + seconds
    provider = chain.w3.provider
    if chain.chain_id == 1337:  # anvil
        provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
        provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    else:
        provider.make_request("testing_timeTravel", [target])  # type: ignore[arg-type]
    return chain_now(chain)


def fund(chain: Chain, address: str, wei: int = 10**20) -> None:
    """Give a test account gas money from the operator (a plain value transfer)."""
    fees = chain.fees()
    tx = {
        "from": chain.operator.address,
        "to": address,
        "value": wei,
        "gas": 21_000,
        "chainId": chain.chain_id,
        "maxFeePerGas": fees.max_fee,
        "maxPriorityFeePerGas": fees.priority_fee,
    }
    chain.wait(chain.sign_and_submit(tx))  # type: ignore[arg-type]
