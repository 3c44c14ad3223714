"""Ceremony: a new phase-2 contribution on the committed zkey verifies against r1cs + ptau and is recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import node_tool
from zk import ceremony
from zk.build import ARTIFACTS, LOCAL_PTAU_DIR
from zk.cli import build_zk_group
from zk.errors import MalformedInput

FOLDER = ARTIFACTS / "eligibility"
R1CS = FOLDER / "eligibility.r1cs"
ZKEY = FOLDER / "eligibility.zkey"


def committed_ptau() -> Path:
    found = sorted(LOCAL_PTAU_DIR.glob("pot*_local_dev.ptau"))
    assert found, "the local development ptau should be committed in zk/artifacts/ptau/"
    return found[-1]


@pytest.mark.slow  # `snarkjs zkey verify` recomputes the setup: ~1.5-3 min on 2 busy cores
def test_contribute_verify_record(tmp_path: Path) -> None:
    node_tool("snarkjs")
    out = tmp_path / "next.zkey"
    runner = CliRunner()
    result = runner.invoke(build_zk_group(), ["ceremony", "contribute", "--zkey", str(ZKEY), "--out", str(out),
                                              "--name", "Hospital B"])
    assert result.exit_code == 0, result.output
    digest = result.output.strip().split(": ")[1]
    assert len(digest) == 128

    record_path = tmp_path / "record.json"
    result = runner.invoke(build_zk_group(), ["ceremony", "record", "--r1cs", str(R1CS), "--ptau",
                                              str(committed_ptau()), "--zkey", str(out), "--out", str(record_path)])
    assert result.exit_code == 0, result.output
    record = json.loads(record_path.read_text())
    committed = json.loads((FOLDER / "ceremony.json").read_text())
    assert [c["hash"] for c in record["contributions"]] == [committed["contributions"][0]["hash"], digest]
    assert record["contributions"][1]["name"] == "Hospital B"
    assert record["r1cs_sha256"] == committed["r1cs_sha256"] and record["zkey_sha256"] != committed["zkey_sha256"]


def test_contribution_inputs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(MalformedInput, match="at least 32 bytes"):
        ceremony.contribute(ZKEY, tmp_path / "x.zkey", name="A", entropy=os.urandom(8))
    with pytest.raises(MalformedInput, match="printable"):
        ceremony.contribute(ZKEY, tmp_path / "x.zkey", name='A"; rm', entropy=os.urandom(32))
    with pytest.raises(MalformedInput, match="file not found"):
        ceremony.verify(tmp_path / "none.r1cs", ZKEY, ZKEY)
