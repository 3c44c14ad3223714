"""`healthledger serve` runs the chain side too: node, contracts, worker that anchors the access log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_access
from healthledger.db import make_engine

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
    env.update(HEALTHLEDGER_DATA_DIR=str(data_dir), HEALTHLEDGER_LOAD_DEMO_DATA="false",
               HEALTHLEDGER_ANCHOR_INTERVAL_SECONDS="1", HEALTHLEDGER_CHAIN_POLL_SECONDS="0.3")
    proc = subprocess.Popen([sys.executable, "-m", "healthledger.cli", "serve", "--port", str(port), "--workers", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode()[-3000:])  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    _stop(proc)
    raise AssertionError("serve did not answer in 90 s")


def _stop(proc: subprocess.Popen[bytes]) -> str:
    os.kill(proc.pid, signal.SIGTERM)  # the master only: it must stop its sidecars itself
    try:
        out, _ = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return out.decode()


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-g", str(pgid)], capture_output=True, text=True, check=False).stdout
    return out.splitlines()


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_serve_deploys_once_and_anchors_the_access_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    engine = make_engine(f"sqlite:///{(data_dir / 'healthledger.db').resolve()}")
    proc = _serve(data_dir, _free_port())
    try:
        with engine.begin() as conn:
            contracts = conn.execute(sa.text("select name, address from chain_contracts order by name")).all()
            assert [c[0] for c in contracts] == [
                "AccessLogAnchor", "ConsentRegistry", "CredentialRegistry", "EligibilityVerifier", "StudyRegistry"]
            for i in range(3):
                record_access(conn, AccessEntry(
                    time=datetime.now(UTC), actor="ehr", organization="Organization/h", role="system",
                    purpose="TREAT", action="read", resource_type="Patient", resource_id=f"p{i}",
                    patient_pseudonym="ab" * 16, decision="permit", reason="policy"))

        def anchored() -> bool:
            with engine.connect() as conn:
                return conn.execute(sa.text("select count(*) from log_anchors")).scalar_one() > 0

        assert _wait(anchored, 60), "the worker did not anchor the access log"
        assert len(_group_members(proc.pid)) >= 4  # master, gunicorn worker, chain node, ledger worker
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out[-3000:]
    # Every sidecar (chain node, ledger worker) and gunicorn worker stopped with the master.
    assert _wait(lambda: not _group_members(proc.pid), 10), _group_members(proc.pid)
    # A restart finds the recorded contracts on the persisted chain and does not redeploy.
    proc = _serve(data_dir, _free_port())
    _stop(proc)
    with engine.connect() as conn:
        again = conn.execute(sa.text("select name, address from chain_contracts order by name")).all()
    assert again == contracts
    engine.dispose()
