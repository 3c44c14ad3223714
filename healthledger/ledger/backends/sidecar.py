"""Run `healthledger chain node` beside gunicorn so every worker shares the one embedded chain.

The node is a child of `serve`. It dies with it (PR_SET_PDEATHSIG: a `kill -9` of `serve` leaves no orphan
holding the chain open), and a record it leaves behind when killed (`chain/node.json`) is recognised as
stale at the next start (no process holds the chain's lock) and removed, never mistaken for a live node.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from healthledger.errors import ChainError, ConfigurationError

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
PARENT_ENV = "HEALTHLEDGER_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # prctl(2)


@contextmanager
def chain_node_sidecar(settings: Any) -> Iterator[str | None]:
    """Start the node for the embedded chain of `settings.data_dir` and yield its URL; stop it by PID
    afterwards. Yields None (starts nothing) when `settings.chain_url` names an external node."""
    if settings.chain_url:
        yield None
        return
    node = ChainNode(settings)
    try:
        yield node.start()
    finally:
        node.stop()


class ChainNode:
    """The embedded chain's node process; `start()` again after it died restarts it on the same port, so the
    URL every worker was given stays valid."""

    def __init__(self, settings: Any) -> None:
        self.data_dir = Path(settings.data_dir)
        self.chain_dir = self.data_dir / "chain"
        self.key_provider = settings.key_provider
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        from healthledger.ledger.backends.embedded import NODE_FILE

        clear_stale_node_record(self.chain_dir, NODE_FILE)
        env = {**os.environ, "HEALTHLEDGER_DATA_DIR": str(self.data_dir.resolve()),
               "HEALTHLEDGER_KEY_PROVIDER": self.key_provider, PARENT_ENV: str(os.getpid())}  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "healthledger.cli", "chain", "node", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        url = _wait_for_node(self.process, self.chain_dir)
        self.port = int(url.rsplit(":", 1)[1])
        return url

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def clear_stale_node_record(chain_dir: Path, node_file: str) -> None:
    """Remove `node_file` if no process has the chain open (its LOCK is free); refuse to start beside a live one."""
    record = chain_dir / node_file
    if not record.exists():
        return
    lock_path = chain_dir / "LOCK"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                url = json.loads(record.read_text()).get("url", "?")
            except (OSError, ValueError, AttributeError):
                url = "?"
            raise ConfigurationError(
                f"the embedded chain in {chain_dir} is open in another process (a node at {url}): stop it, "
                f"or run with HEALTHLEDGER_CHAIN_URL={url}"
            ) from None
        record.unlink(missing_ok=True)  # left by a node that was killed: nobody holds the chain
        fcntl.flock(lock, fcntl.LOCK_UN)


def die_with_parent() -> None:
    """In a sidecar started by `serve` (PARENT_ENV set): ask Linux to SIGTERM this process when its parent
    dies, even by SIGKILL, and exit now if the parent is already gone."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; always reaps it."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _wait_for_node(process: subprocess.Popen[bytes], chain_dir: Path) -> str:
    from healthledger.ledger.backends.embedded import NODE_FILE

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ChainError(f"the embedded chain node exited with status {process.returncode}")
        try:
            document = json.loads((chain_dir / NODE_FILE).read_text())
        except (OSError, ValueError):
            document = None
        # Only this process's own record: an older one (a killed node's) names a port nobody serves.
        if isinstance(document, dict) and document.get("pid") == process.pid and isinstance(document.get("url"), str):
            return str(document["url"])
        time.sleep(0.1)
    raise ChainError(f"the embedded chain node did not start within {START_TIMEOUT_SECONDS:.0f} s")
