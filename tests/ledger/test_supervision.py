"""`serve` supervises the chain side: a killed node or ledger worker comes back by itself, a killed `serve` leaves
no orphan and no record that stops the next start, and readiness is green as soon as the port opens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from serving import Served, http, wait_for

from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_access
from healthledger.audit.spool import ingest
from healthledger.db import make_engine

pytestmark = pytest.mark.slow


def _log_accesses(engine: sa.Engine, n: int, tag: str) -> None:
    with engine.begin() as conn:
        for i in range(n):
            record_access(conn, AccessEntry(
                time=datetime.now(UTC), actor="ehr", organization="Organization/h", role="system",
                purpose="TREAT", action="read", resource_type="Patient", resource_id=f"{tag}{i}",
                patient_pseudonym="ab" * 16, decision="permit", reason="policy"))  # fmt: skip


def _anchored(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("select coalesce(max(tree_size), 0) from log_anchors")).scalar_one())


def _appended(engine: sa.Engine) -> int:
    ingest(engine)
    with engine.connect() as conn:
        return int(conn.execute(sa.text("select count(*) from access_log")).scalar_one())


def test_killed_node_and_worker_are_restarted_and_a_killed_serve_starts_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    served = Served(data_dir, args=["--workers", "2"])
    engine = make_engine(f"sqlite:///{(data_dir / 'healthledger.db').resolve()}")
    served.start()
    try:
        # The index was caught up before the port opened: ready at once, not after the worker's first pass.
        status, body = http("GET", served.base + "/readyz", token=None)
        assert status == 200, body
        _log_accesses(engine, 3, "a")
        assert wait_for(lambda: _anchored(engine) >= _appended(engine), 30), "nothing anchored"

        old_node = served.node_pid()
        assert old_node is not None
        os.kill(old_node, signal.SIGKILL)
        started = time.monotonic()
        assert wait_for(lambda: served.node_pid() not in (None, old_node), 30), served.output()[-2000:]
        _log_accesses(engine, 3, "b")
        assert wait_for(lambda: _anchored(engine) >= _appended(engine), 45), "anchoring did not resume"
        node_recovery = time.monotonic() - started

        worker = served.pid_of("relay work")
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: served.pid_of("relay work") not in (None, worker), 30), served.output()[-2000:]
        _log_accesses(engine, 3, "c")
        assert wait_for(lambda: _anchored(engine) >= _appended(engine), 45), "the restarted worker did not anchor"
        # Each death is logged with the signal that caused it (gunicorn's master, which reaps any child, took the
        # status away before: both were logged as "status": 0).
        exits = {line["sidecar"]: line for line in _events(served.output(), "ledger.sidecar_exited")}
        for sidecar in ("chain-node", "ledger-worker"):
            assert exits[sidecar]["status"] == -signal.SIGKILL and exits[sidecar]["signal"] == "SIGKILL", exits

        # Two gunicorn workers, one /metrics: the counts of both are in every scrape (multiprocess mode).
        for _ in range(6):
            http("GET", served.base + "/fhir/metadata", token=None)
        status, text = http("GET", served.base + "/metrics", token=None)
        assert status == 200
        count = [line for line in text.splitlines()
                 if line.startswith('healthledger_http_request_duration_seconds_count{method="GET",route="/fhir/metadata"')]
        assert count and float(count[0].rsplit(" ", 1)[1]) >= 6.0
        assert "healthledger_indexer_last_pass_age_seconds" in text

        # kill -9 of serve itself: its node and worker die with it (no orphan keeps the chain open) ...
        master = served.process.pid  # type: ignore[union-attr]
        node = served.node_pid()
        os.kill(master, signal.SIGKILL)
        served.process.wait(timeout=10)  # type: ignore[union-attr]
        assert wait_for(lambda: not _alive(node), 15), "the chain node outlived serve"
        # A node killed outright (SIGKILL, OOM killer) leaves its record behind, and its pid may be reused by
        # any live process by the next start: here, this test's own.
        (data_dir / "chain" / "node.json").write_text(f'{{"url": "http://127.0.0.1:1", "pid": {os.getpid()}}}')
    finally:
        served.kill()
    # That record does not stop the next start.
    again = Served(data_dir, args=["--workers", "1"]).start(wait="/readyz")
    try:
        assert again.node_pid() not in (None, node)
        sidecars = [pid for pid, command in again.members() if pid != again.process.pid]  # type: ignore[union-attr]
        assert len(sidecars) >= 2, again.members()  # the node and the ledger worker (and the gunicorn worker)
    finally:
        # Ctrl-C: the whole group gets SIGINT, the sidecars with the master. They stopped because serve is
        # stopping, not because they crashed: none is reported as exited or started again, and none outlives serve.
        status = again.interrupt()
    assert status == 0, again.output()[-3000:]
    assert "ledger.sidecar_exited" not in again.output(), again.output()[-3000:]
    assert "ledger.sidecar_restarted" not in again.output(), again.output()[-3000:]
    assert wait_for(lambda: not any(_alive(pid) for pid in sidecars), 15), "a sidecar outlived serve after Ctrl-C"
    assert "ledger.sidecar_restarted" in served.output()
    print(f"\nsupervision: node back and anchoring again {node_recovery:.1f} s after kill -9")
    engine.dispose()


def _events(output: str, event: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        start = line.find("{")
        if event in line and start >= 0:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line[start:]))
    return found


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
