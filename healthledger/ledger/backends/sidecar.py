"""Run `healthledger chain node` beside gunicorn so every worker shares the one embedded chain."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from healthledger.errors import ChainError
from healthledger.ledger.chain import running_node_url

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


@contextmanager
def chain_node_sidecar(settings: Any) -> Iterator[str | None]:
    """Start the node for the embedded chain of `settings.data_dir` and yield its URL; stop it by PID
    afterwards. Yields None (starts nothing) when `settings.chain_url` names an external node."""
    if settings.chain_url:
        yield None
        return
    chain_dir = Path(settings.data_dir) / "chain"
    env = {**os.environ, "HEALTHLEDGER_DATA_DIR": str(Path(settings.data_dir).resolve()),
           "HEALTHLEDGER_KEY_PROVIDER": settings.key_provider}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "healthledger.cli", "chain", "node", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        url = _wait_for_node(process, chain_dir)
        yield url
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; always reaps it."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _wait_for_node(process: subprocess.Popen[bytes], chain_dir: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ChainError(f"the embedded chain node exited with status {process.returncode}")
        url = running_node_url(chain_dir)
        if url is not None:
            return url
        time.sleep(0.1)
    raise ChainError(f"the embedded chain node did not start within {START_TIMEOUT_SECONDS:.0f} s")
