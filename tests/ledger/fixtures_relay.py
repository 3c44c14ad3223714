"""Database fixtures for the relay side of the ledger (patient keys, outbox, indexer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from healthledger.db import Base, make_engine, session_factory
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import models
from healthledger.store.generation import Generation

RELAY_TABLES = [
    models.PatientKeyRecord.__table__,
    models.PatientPseudonym.__table__,
    models.OutboxItem.__table__,
    models.SenderNonce.__table__,
    models.ConsentEvent.__table__,
    models.LogAnchorEvent.__table__,
    models.IndexerCursor.__table__,
    models.IndexedBlock.__table__,
    Generation.__table__,  # the indexer tells consent indexes to reload through it
]


def relay_engine(url: str) -> Engine:
    engine = make_engine(url)
    Base.metadata.create_all(engine, tables=RELAY_TABLES)
    return engine


@pytest.fixture()
def relay_db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A session factory over a fresh SQLite file holding this package's tables."""
    engine = relay_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture()
def key_provider(tmp_path: Path) -> LocalFileKeyProvider:
    return LocalFileKeyProvider(tmp_path / "keys")


# ---- chains with the ledger contracts deployed ---------------------------------------------------


import socket
import subprocess
import time

import requests

from healthledger.ledger.chain import Chain, embedded_chain, rpc_chain

ROOT = Path(__file__).resolve().parents[2]
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AnvilNode:
    """anvil on loopback, restartable on the same port with its state kept in a file (`--state`)."""

    def __init__(self, state_file: Path | None = None, port: int | None = None) -> None:
        if not ANVIL.exists():
            pytest.fail("anvil missing: run `make test` (it runs `npm ci`)")
        self.port = port or _free_port()
        self.state_file = state_file
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AnvilNode:
        args = [
            str(ANVIL),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            "1337",
            "--hardfork",
            "prague",
            "--silent",
        ]
        if self.state_file is not None:
            args += ["--state", str(self.state_file)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                requests.post(
                    self.url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                    timeout=1,
                ).raise_for_status()
                return self
            except requests.RequestException:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        pytest.fail("anvil did not start")

    def rpc(self, method: str, params: list[object] | None = None) -> object:
        reply = requests.post(
            self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=10
        ).json()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: anvil writes its --state file on the way out
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


def deploy_ledger(chain: Chain) -> int:
    """Deploy ConsentRegistry and AccessLogAnchor with the operator as admin, relayer and anchorer.

    Returns the deployment block (the indexer's starting point).
    """
    _, receipt = chain.deploy("ConsentRegistry", chain.operator.address)
    chain.deploy("AccessLogAnchor", chain.operator.address)
    registry, anchor = chain.contract("ConsentRegistry"), chain.contract("AccessLogAnchor")
    chain.send(registry.functions.grantRole(chain.call(registry.functions.RELAYER()), chain.operator.address))
    chain.send(
        anchor.functions.grantRole(chain.call(anchor.functions.LOG_ANCHORER()), chain.operator.address)
    )
    return int(receipt["blockNumber"])


def anvil_chain(node: AnvilNode, key_provider: LocalFileKeyProvider, keys_dir: Path) -> Chain:
    chain = rpc_chain(node.url, key_provider, keys_dir=keys_dir, poll_seconds=0.05)
    node.rpc("anvil_setBalance", [chain.operator.address, hex(10**22)])
    return chain


@pytest.fixture(params=["embedded", "anvil"])
def ledger_chain(
    request: pytest.FixtureRequest, tmp_path: Path, key_provider: LocalFileKeyProvider
) -> Iterator[tuple[Chain, int, AnvilNode | None]]:
    """(chain, deployment block, anvil node or None) over each backend, contracts deployed."""
    node: AnvilNode | None = None
    if request.param == "embedded":
        chain = embedded_chain(tmp_path / "var", key_provider, keys_dir=tmp_path / "keys")
    else:
        node = AnvilNode().start()
        chain = anvil_chain(node, key_provider, tmp_path / "keys")
    try:
        yield chain, deploy_ledger(chain), node
    finally:
        chain.close()
        if node is not None:
            node.stop()


def run_workers_concurrently(
    sessions: sessionmaker[Session], chain: object, policy: object, names: list[str], *, passes: int = 30
) -> list[BaseException]:
    """Outbox workers, one thread each, until nothing is queued or sent; the exceptions they raised."""
    import threading
    import time

    from healthledger.ledger import outbox

    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(passes):
                outbox.process_outbox(sessions, chain, time.time(), policy=policy, worker_id=name)  # type: ignore[arg-type]
                with sessions() as s:
                    left = outbox.counts(s)
                if left["queued"] + left["sent"] == 0:
                    break
        except Exception as exc:  # noqa: BLE001  surfaced by the caller's assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors
