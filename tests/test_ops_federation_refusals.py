"""`healthledger federation` says in words why the member registry refused (not only the contract's error)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from healthledger.cli import cli
from healthledger.federation.commands import registry_refusal
from healthledger.ledger.chain import ContractRevert


def test_admitting_an_unknown_or_admitted_organisation_is_explained(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    runner = CliRunner()
    assert runner.invoke(cli, ["federation", "deploy"]).exit_code == 0
    unknown = runner.invoke(cli, ["federation", "admit", "nosuch-org"])
    assert unknown.exit_code == 1
    assert "nosuch-org has not asked to join: there is no such member" in unknown.output
    assert "federation join" in unknown.output and "WrongStatus(" in unknown.output  # the contract's words kept last
    gone = runner.invoke(cli, ["federation", "remove", "nosuch-org"])
    assert gone.exit_code == 1 and "nosuch-org is not in the directory: no such member" in gone.output
    joined = runner.invoke(cli, ["federation", "join", "--org-id", "hospital-a", "--name", "A",
                                 "--fhir-base-url", "http://a/fhir"])
    assert joined.exit_code == 0, joined.output
    assert runner.invoke(cli, ["federation", "admit", "hospital-a"]).exit_code == 0
    again = runner.invoke(cli, ["federation", "admit", "hospital-a"])
    assert again.exit_code == 1 and "hospital-a is already an active member: nothing to admit" in again.output


def test_other_refusals_name_what_to_do() -> None:
    not_admin = ContractRevert("NotAdmin", ("0x00000000000000000000000000000000000000aa",))
    assert "is not the registry's admin" in registry_refusal(not_admin, "b", "admit")
    removed = ContractRevert("WrongStatus", (b"\x01" * 32, 3))
    assert "removed for good" in registry_refusal(removed, "b", "remove")
    other = ContractRevert("SomethingElse", ())
    assert registry_refusal(other, "b", "admit") == other.message
