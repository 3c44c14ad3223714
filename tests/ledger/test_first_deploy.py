"""A first deployment (deploy/README.md): the operator key is made outside the cluster with no chain and no
database (`chain operator`), and `chain deploy` keeps trying a node that answers only after the job started
(compose, a Kubernetes Job beside new validators) for a bounded time, then says why."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from healthledger.cli import cli
from healthledger.errors import ChainError
from healthledger.keys import key_provider_for
from healthledger.ledger.chain import load_or_create_operator
from healthledger.ledger.commands import wait_for_chain
from tests.ledger.fixtures_relay import AnvilNode, _free_port
from tests.reliability.faults import TcpProxy


def test_chain_operator_makes_the_key_once_without_chain_or_database(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "first-deploy"))
    monkeypatch.setenv("HEALTHLEDGER_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")  # never reached
    monkeypatch.setenv("HEALTHLEDGER_CHAIN_URL", "http://127.0.0.1:1")  # never reached
    runner = CliRunner()
    first = runner.invoke(cli, ["chain", "operator"])
    assert first.exit_code == 0, first.output
    assert runner.invoke(cli, ["chain", "operator"]).stdout == first.stdout  # made once, then read
    keys = tmp_path / "first-deploy" / "keys"
    assert sorted(p.name for p in keys.iterdir()) == ["chain-operator.json", "kek.json"]
    assert first.stdout.strip() == load_or_create_operator(keys, key_provider_for("file", keys)).address


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_wait_for_chain_retries_with_growing_pauses_until_the_node_answers() -> None:
    clock, heard, tries = _Clock(), [], iter([ChainError("down"), ChainError("down"), ChainError("down")])

    def open_chain() -> str:
        failure = next(tries, None)
        if failure is not None:
            raise failure
        return "chain"

    got = wait_for_chain(open_chain, timeout=60, on_wait=lambda reason, left: heard.append((reason, left)),  # type: ignore[arg-type]
                         clock=lambda: clock.now, sleep=clock.sleep)
    assert got == "chain" and clock.slept == [1.0, 2.0, 4.0]
    assert heard == [("down", 60.0), ("down", 59.0), ("down", 57.0)]


def test_wait_for_chain_gives_up_at_the_bound() -> None:
    clock = _Clock()

    def never() -> None:
        raise ChainError("chain node at http://validator1:8545 is unreachable")

    with pytest.raises(ChainError, match="unreachable"):
        wait_for_chain(never, timeout=12, on_wait=lambda _r, _l: None, clock=lambda: clock.now, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.slept == [1.0, 2.0, 4.0, 5.0] and sum(clock.slept) == 12.0  # never past the bound


def test_deploy_against_a_node_that_never_answers_fails_in_bound_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    monkeypatch.setenv("HEALTHLEDGER_CHAIN_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["chain", "deploy", "--wait-for-node", "1.5"])
    took = time.monotonic() - started
    assert result.exit_code == 1
    assert f"waiting for the chain: chain node at http://127.0.0.1:{port} is unreachable" in result.stderr
    assert result.stderr.endswith("after 2 s of trying: is the node running, and does HEALTHLEDGER_CHAIN_URL name it?\n")
    assert took < 15


@pytest.fixture
def late_node(tmp_path: Path) -> Iterator[tuple[AnvilNode, TcpProxy]]:
    node = AnvilNode().start()
    proxy = TcpProxy("127.0.0.1", node.port)
    try:
        yield node, proxy
    finally:
        proxy.close()
        node.stop()


@pytest.mark.anvil
def test_deploy_waits_for_a_node_that_answers_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late_node: tuple[AnvilNode, TcpProxy]
) -> None:
    node, proxy = late_node
    keys = tmp_path / "var" / "keys"
    operator = load_or_create_operator(keys, key_provider_for("file", keys))  # made outside, funded at genesis
    node.rpc("anvil_setBalance", [operator.address, hex(10**22)])
    proxy.cut()  # the node's address refuses connections until it "starts"
    threading.Timer(2.5, proxy.restore).start()
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    monkeypatch.setenv("HEALTHLEDGER_CHAIN_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("HEALTHLEDGER_CHAIN_NETWORK", "anvil")
    result = CliRunner().invoke(cli, ["chain", "deploy", "--wait-for-node", "60"])
    assert result.exit_code == 0, result.output
    assert "waiting for the chain" in result.stderr and f"by operator {operator.address}" in result.stdout
