"""The chain side of `healthledger serve`: node, contracts, and the ledger worker, as supervised sidecar processes.

- With no `chain_url`, the embedded chain runs in its own process (`healthledger chain node`), because
  py-evm's state lives in one process and gunicorn forks several workers.
- At start the contracts are checked (and, on a fresh embedded chain, deployed): the service refuses
  to start on a chain whose code is not ours. Then the chain is indexed once before the HTTP port opens, so
  consent-dependent reads are not refused as `index-stale` in the first seconds after a start.
- One worker process (`healthledger relay work`) submits the durable outbox, follows contract events
  into the consent index and anchors the access log every `anchor_interval_seconds`.
- A supervisor thread restarts the node or the worker when either dies (with exponential backoff), the node on
  the same port, so the URL the web workers were given stays valid: a killed node delays chain writes by
  seconds (the outbox keeps them), it does not leave them pending until the whole service restarts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session

from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.keys import key_provider_for
from healthledger.ledger.backends.sidecar import PARENT_ENV, ChainNode, stop_process
from healthledger.ledger.chain import chain_for
from healthledger.ledger.deploy import DeploymentRecord, ensure_deployment

log = structlog.get_logger("healthledger.ledger.service")

RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_SECONDS = 60.0  # a child that ran this long is healthy again: its backoff starts over
SUPERVISE_EVERY_SECONDS = 0.5


def check_contracts(settings: Settings, *, embedded: bool) -> list[DeploymentRecord]:
    """Verified deployments for the configured chain (deploying on a fresh embedded chain)."""
    engine = make_engine(settings.database_url)
    chain = chain_for(settings, key_provider_for(settings.key_provider, settings.keys_dir))
    try:
        with Session(engine) as session:
            return ensure_deployment(chain, session, embedded=embedded, now=datetime.now(UTC))
    finally:
        chain.close()
        engine.dispose()


def index_before_serving(settings: Settings, records: list[DeploymentRecord], *, owner: str) -> bool:
    """Catch the consent index up with the chain once, under the indexer's lease (if another replica's worker
    holds it, that one keeps the index fresh). True if this call indexed."""
    from healthledger import leases
    from healthledger.ledger.indexer import INDEXER_LEASE, LEASE_MIN_SECONDS, Indexer
    from healthledger.ledger.members import indexer_for

    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    chain = chain_for(settings, key_provider_for(settings.key_provider, settings.keys_dir))
    for record in records:
        chain.register(record.name, record.address)
    try:
        held = leases.acquire(sessions, INDEXER_LEASE, owner, now=time.time(), ttl=LEASE_MIN_SECONDS * 6)
        if held is None:
            return False
        try:
            indexer = Indexer(
                sessions, chain, from_block=min(r.deployment_block for r in records),
                guard=lambda session: leases.holds(session, held, now=time.time()),
            )  # fmt: skip
            indexer.catch_up(time.time())
            directory = indexer_for(sessions, chain, records, guard=indexer.guard)
            if directory is not None:
                directory.catch_up(time.time())
        finally:
            leases.release(sessions, held)
        return True
    finally:
        chain.close()
        engine.dispose()


@dataclass
class Supervised:
    """A child process kept running: `check()` starts it again when it exited, after a growing pause."""

    name: str
    start: Callable[[], subprocess.Popen[bytes] | None]
    clock: Callable[[], float] = time.monotonic
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _failures: int = 0
    _started_at: float = 0.0
    _retry_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self) -> None:
        with self._lock:
            self.process = self.start()
            self._started_at = self.clock()

    def check(self) -> None:
        """Restart the child if it exited (called by the supervisor; never while stopping)."""
        with self._lock:
            now = self.clock()
            if self.process is not None and self.process.poll() is None:
                if now - self._started_at >= STABLE_AFTER_SECONDS:
                    self._failures = 0
                return
            if self.process is not None:  # it died: plan the restart
                log.warning("ledger.sidecar_exited", sidecar=self.name, **exit_status(self.process.returncode),
                            restart_in=RESTART_BACKOFF_SECONDS[min(self._failures, len(RESTART_BACKOFF_SECONDS) - 1)])
                self._retry_at = now + RESTART_BACKOFF_SECONDS[min(self._failures, len(RESTART_BACKOFF_SECONDS) - 1)]
                self._failures += 1
                self.process = None
            if now < self._retry_at:
                return
            try:
                self.process = self.start()
            except Exception as exc:  # noqa: BLE001 (a failed restart is retried later, never fatal to serve)
                log.warning("ledger.sidecar_restart_failed", sidecar=self.name, error=type(exc).__name__)
                self._retry_at = now + RESTART_BACKOFF_SECONDS[min(self._failures, len(RESTART_BACKOFF_SECONDS) - 1)]
                self._failures += 1
                return
            self._started_at = self.clock()
            self.restarts += 1
            log.info("ledger.sidecar_restarted", sidecar=self.name, restarts=self.restarts)

    def stop(self) -> None:
        with self._lock:
            if self.process is not None:
                stop_process(self.process)


class Supervisor:
    """A daemon thread that checks its children every `every` seconds until `stop()`; then stops them in order.

    `hold()` (the server is stopping: `shutting_down`) ends the checks at once, so that children stopped by the
    same signal as the server are not taken for crashed and started again; `stop()` then stops what is left.
    """

    def __init__(self, children: list[Supervised], every: float = SUPERVISE_EVERY_SECONDS) -> None:
        self.children = children
        self.every = every
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-supervisor", daemon=True)

    def start(self) -> None:
        _RUNNING.add(self)
        self._thread.start()

    def hold(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.wait(self.every):
            for child in self.children:
                if self._stopping.is_set():
                    return
                child.check()

    def stop(self) -> None:
        self._stopping.set()
        _RUNNING.discard(self)
        self._thread.join(timeout=10)
        for child in reversed(self.children):  # the worker before the node it talks to
            child.stop()


_RUNNING: set[Supervisor] = set()  # supervisors started and not yet stopped (this process's `serve`)


def exit_status(returncode: int | None) -> dict[str, object]:
    """A child's exit as logged: `status` is its exit code, or minus the signal that killed it (named in `signal`)."""
    if returncode is None or returncode >= 0:
        return {"status": returncode}
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return {"status": returncode, "signal": name}


def reap_sidecars() -> None:
    """Collect the exit status of every supervised child that has exited (gunicorn's master calls this before it
    reaps with waitpid(-1), which would take the status away: Popen then reports an exit code of 0)."""
    for supervisor in list(_RUNNING):
        for child in supervisor.children:
            process = child.process
            if process is not None:
                process.poll()


def shutting_down() -> None:
    """The server is stopping: no sidecar is restarted from now on (gunicorn's master calls this on its signal)."""
    for supervisor in list(_RUNNING):
        supervisor.hold()


def ledger_worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HEALTHLEDGER_DATA_DIR": str(settings.data_dir.resolve()),
           "HEALTHLEDGER_DATABASE_URL": settings.database_url, "HEALTHLEDGER_CHAIN_URL": settings.chain_url,
           "HEALTHLEDGER_KEY_PROVIDER": settings.key_provider, "HEALTHLEDGER_TENANT": settings.tenant,
           PARENT_ENV: str(os.getpid())}  # fmt: skip
    command = [sys.executable, "-m", "healthledger.cli", "relay", "work",
               "--anchor-interval", str(settings.anchor_interval_seconds)]  # fmt: skip
    return subprocess.Popen(command, env=env)


@contextmanager
def ledger_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    process = ledger_worker_process(settings)
    try:
        yield process
    finally:
        stop_process(process)


@contextmanager
def ledger_sidecars(settings: Settings) -> Iterator[Settings]:
    """Yield the settings the web workers should run with (chain_url pointing at the node), with the node and
    the ledger worker supervised until the block exits."""
    children: list[Supervised] = []
    node: ChainNode | None = None
    run = settings
    supervisor: Supervisor | None = None
    try:
        if not settings.chain_url:
            node = ChainNode(settings)
            url = node.start()
            run = settings.model_copy(update={"chain_url": url})
            embedded_node = node

            def restart_node() -> subprocess.Popen[bytes] | None:
                embedded_node.start()  # same port as before: workers keep their URL
                return embedded_node.process

            children.append(Supervised("chain-node", restart_node, process=node.process))
        records = check_contracts(run, embedded=not settings.chain_url)
        index_before_serving(run, records, owner=f"serve:{os.getpid()}")
        worker = Supervised("ledger-worker", lambda: ledger_worker_process(run))
        worker.launch()
        children.append(worker)
        supervisor = Supervisor(children)
        supervisor.start()
        yield run
    finally:
        if supervisor is not None:
            supervisor.stop()
        else:
            for child in reversed(children):
                child.stop()
        if node is not None:
            node.stop()
