"""`healthledger serve` end to end on embedded defaults from a fresh data directory (gunicorn on loopback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import append_to_session_log

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, token: str | None = "dev-token") -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
    env["HEALTHLEDGER_DATA_DIR"] = str(data_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "healthledger.cli", "serve", "--port", str(port), "--workers", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise AssertionError("serve did not answer within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_serve_from_a_fresh_data_dir_loads_demo_data_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    proc = start(data_dir, port)
    try:
        status, capability = fetch(f"{base}/metadata", token=None)
        assert status == 200 and capability["fhirVersion"] == "4.0.1"
        status, outcome = fetch(f"{base}/Patient", token=None)
        assert status == 401 and outcome["resourceType"] == "OperationOutcome"
        status, bundle = fetch(f"{base}/Patient?_summary=count")
        assert status == 200 and bundle["total"] > 0
        demo_patients = bundle["total"]
        status, page = fetch(f"{base}/Observation?_count=2")
        assert status == 200 and len(page["entry"]) == 2
        assert any(link["relation"] == "next" for link in page["link"])
        assert fetch(f"{base}/Patient?family=Quuxworthy-Zebedee")[0] == 200
    finally:
        stop(proc)
    log = proc.stdout.read().decode()  # type: ignore[union-attr]
    append_to_session_log(log)
    # One JSON line per request, by route rule, without query strings:
    assert '"method": "GET", "route": "/fhir/<resource_type>", "status": 200' in log
    assert "Quuxworthy" not in log  # search values (names, birth dates, identifiers) stay out of logs
    assert (data_dir / "healthledger.db").exists()
    assert (data_dir / "keys" / "kek.json").stat().st_mode & 0o777 == 0o600

    proc = start(data_dir, port)  # a restart does not load the demo data again
    try:
        assert fetch(f"{base}/Patient?_summary=count")[1]["total"] == demo_patients
    finally:
        stop(proc)
