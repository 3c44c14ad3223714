"""The ledger worker's heartbeat and `healthledger relay alive`, the liveness probe that reads only its age."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from healthledger.cli import cli
from healthledger.ledger import heartbeat


def test_a_beat_sets_the_age_and_creates_a_private_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.alive"
    assert heartbeat.age(path, 1000.0) is None
    heartbeat.beat(path, 1000.0)
    assert heartbeat.age(path, 1030.0) == pytest.approx(30.0)
    assert path.stat().st_size == 0 and path.stat().st_mode & 0o077 == 0
    heartbeat.beat(path, 1100.0)
    assert heartbeat.age(path, 1100.5) == pytest.approx(0.5)


def test_relay_alive_reads_the_file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings that would fail any start-up work: the probe must not touch the database (or the chain).
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "never-made"))
    monkeypatch.setenv("HEALTHLEDGER_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    path = tmp_path / "worker.alive"
    runner = CliRunner()
    missing = runner.invoke(cli, ["relay", "alive", "--heartbeat", str(path)])
    assert missing.exit_code == 1 and "no heartbeat" in missing.output
    heartbeat.beat(path, time.time() - 5)
    fresh = runner.invoke(cli, ["relay", "alive", "--heartbeat", str(path)])
    assert fresh.exit_code == 0 and "alive: last pass" in fresh.output
    old = time.time() - 300
    os.utime(path, (old, old))
    stuck = runner.invoke(cli, ["relay", "alive", "--max-age", "120"], env={heartbeat.HEARTBEAT_ENV: str(path)})
    assert stuck.exit_code == 1 and "300 s ago (bound 120 s)" in stuck.output
    assert runner.invoke(cli, ["relay", "alive", "--heartbeat", str(path), "--max-age", "600"]).exit_code == 0
    assert not (tmp_path / "never-made").exists()
