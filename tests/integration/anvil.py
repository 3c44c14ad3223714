"""Start and stop a real anvil JSON-RPC node (npm @foundry-rs/anvil) on a free loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ANVIL_CHAIN_ID = 1337
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rpc(url: str, method: str, params: list[object] | None = None, *, timeout: float = 5.0) -> object:
    """One JSON-RPC call with the standard library (no web3), for setup and health checks."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


@contextmanager
def running_anvil(
    anvil: Path, *, chain_id: int = ANVIL_CHAIN_ID, state_file: Path | None = None
) -> Iterator[str]:
    """Yield the URL of a fresh anvil on 127.0.0.1; stop it by its PID afterwards."""
    port = free_port()
    command = [
        str(anvil), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id),
        "--hardfork", "prague", "--silent",
    ]  # fmt: skip
    if state_file is not None:
        command += ["--state", str(state_file)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"anvil exited with {process.returncode}: {stderr[:500]}")
            try:
                if int(str(rpc(url, "eth_chainId", timeout=1.0)), 16) == chain_id:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"anvil did not answer within {STARTUP_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        if process.stderr:
            process.stderr.close()
