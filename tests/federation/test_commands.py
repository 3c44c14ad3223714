"""`healthledger federation`: deploy, join, admit, status, members, rotate-key, remove, on the embedded chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from healthledger.cli import cli
from healthledger.config import Settings
from healthledger.federation.keys import MemberKeys, thumbprint_hex
from healthledger.keys import LocalFileKeyProvider


def test_an_operator_joins_rotates_and_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    missing = runner.invoke(cli, ["federation", "members"])
    assert missing.exit_code == 1 and "no member registry is recorded" in missing.output
    assert "MemberRegistry deployed at" in run("federation", "deploy")
    again = runner.invoke(cli, ["federation", "deploy"])
    assert again.exit_code == 1 and "already recorded" in again.output
    nameless = runner.invoke(cli, ["federation", "join", "--name", "A", "--fhir-base-url", "http://a/fhir"])
    assert nameless.exit_code != 0 and "--org-id" in nameless.output
    bad = runner.invoke(cli, ["federation", "join", "--org-id", "bad id!", "--name", "A", "--fhir-base-url", "x"])
    assert bad.exit_code == 1 and "FHIR id" in bad.output

    assert "join requested for hospital-a" in run(
        "federation", "join", "--org-id", "hospital-a", "--name", "Hospital A", "--fhir-base-url", "http://a/fhir")
    assert run("federation", "members").split()[:2] == ["hospital-a", "pending"]
    run("federation", "admit", "hospital-a")
    status = run("federation", "status", "--org-id", "hospital-a")
    assert "hospital-a: active, 'Hospital A'" in status and "on file here" in status and "indexed here: active" in status

    settings = Settings(data_dir=tmp_path / "var")
    before = MemberKeys.load_or_create(settings.keys_dir, LocalFileKeyProvider(settings.keys_dir)).current
    assert "rotated" in run("federation", "rotate-key", "--org-id", "hospital-a")
    after = MemberKeys.load_or_create(settings.keys_dir, LocalFileKeyProvider(settings.keys_dir))
    # The old key stays until the next rotation: this server signs with it until its directory copy names the new one.
    assert [thumbprint_hex(k) for k in after.keys] == [thumbprint_hex(before), thumbprint_hex(after.current)]
    assert thumbprint_hex(after.current)[:18] in run("federation", "members")
    assert "rotated" in run("federation", "rotate-key", "--org-id", "hospital-a")
    third = MemberKeys.load_or_create(settings.keys_dir, LocalFileKeyProvider(settings.keys_dir))
    assert [thumbprint_hex(k) for k in third.keys[:1]] == [thumbprint_hex(after.current)] and len(third.keys) == 2

    run("federation", "remove", "hospital-a")
    assert "hospital-a: removed" in run("federation", "status", "--org-id", "hospital-a")
