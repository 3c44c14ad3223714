"""`healthledger relay`: status, work --once, show, requeue, over the embedded chain in a temp data dir."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog.testing
from click.testing import CliRunner

from healthledger.cli import cli
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.keys import key_provider_for
from healthledger.ledger import eip712, relayer
from healthledger.ledger.chain import load_or_create_operator
from healthledger.ledger.deploy import load_deployments
from healthledger.ledger.patient_keys import pseudonym_for


def test_relay_commands_submit_index_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    runner = CliRunner()
    deployed = runner.invoke(cli, ["chain", "deploy"])
    assert deployed.exit_code == 0, deployed.output

    settings = Settings.load()
    engine = make_engine(settings.database_url)
    db = session_factory(engine)
    with db() as s:
        registry = next(r for r in load_deployments(s, 0x484C) if r.name == "ConsentRegistry")
    operator = load_or_create_operator(settings.keys_dir, key_provider_for("file", settings.keys_dir))
    domain = eip712.Domain(0x484C, registry.address)
    patient = pseudonym_for(b"\x07" * 32, "org:cli")
    now = int(time.time())
    grant = eip712.GrantMessage(
        patient.address, operator.address, b"\x11" * 32, now - 5, now + 3600, 0, now + 600
    )
    expired = eip712.GrantMessage(
        patient.address, operator.address, b"\x12" * 32, now - 5, now + 3600, 0, now - 1
    )
    with db.begin() as s:
        good = relayer.submit_grant(s, domain, grant, eip712.sign(bytes(patient.key), domain, grant), now=now)
        bad = relayer.submit_grant(
            s, domain, expired, eip712.sign(bytes(patient.key), domain, expired), now=now
        )
    engine.dispose()

    before = runner.invoke(cli, ["relay", "status"])
    assert before.exit_code == 0 and "queued 2" in before.output and "indexer: not run yet" in before.output

    with structlog.testing.capture_logs() as logged:  # a daemon's progress: log events, not command output
        worked = runner.invoke(cli, ["relay", "work", "--once", "--heartbeat", str(tmp_path / "alive")])
    assert worked.exit_code == 0, worked.output
    passes = [e for e in logged if e["event"] == "ledger.pass"]
    assert passes and passes[0]["confirmed"] == 1 and passes[0]["failed"] == 1
    assert runner.invoke(cli, ["relay", "alive", "--heartbeat", str(tmp_path / "alive")]).exit_code == 0

    after = runner.invoke(cli, ["relay", "status"])
    assert "confirmed 1" in after.output and "failed 1" in after.output and "0 blocks" in after.output
    shown = runner.invoke(cli, ["relay", "show", str(good)])
    assert "confirmed" in shown.output and "tx 0x" in shown.output
    failed = runner.invoke(cli, ["relay", "show", str(bad)])
    assert "SignatureExpired" in failed.output
    assert runner.invoke(cli, ["relay", "requeue", str(bad)]).exit_code == 0
    again = runner.invoke(cli, ["relay", "requeue", str(good)])
    assert again.exit_code != 0 and "only failed items" in again.output
    missing = runner.invoke(cli, ["relay", "show", "999"])
    assert missing.exit_code != 0 and "no such chain write" in missing.output
