"""Ceremony: phase-2 contributions verify against r1cs + ptau and are recorded with their hashes.

The protocol runs on a small circuit built here (a ~360-constraint Poseidon preimage with a range
check, a 2^9 local ptau), so `snarkjs zkey verify` takes seconds; on the committed eligibility zkey it
recomputes the whole setup (~2 minutes), which `healthledger zk ceremony record` does for operators.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import ROOT, node_tool

from zk import ceremony
from zk.build import ARTIFACTS
from zk.cli import zk_group
from zk.errors import MalformedInput

CIRCUIT = ROOT / "tests" / "vectors" / "zk" / "interop" / "preimage_range.circom"
COMMITTED_ZKEY = ARTIFACTS / "eligibility" / "eligibility.zkey"


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """r1cs, prepared ptau and an initial zkey for the small circuit (a local, throwaway phase 1)."""
    node_tool("snarkjs")
    work = tmp_path_factory.mktemp("ceremony")
    subprocess.run([str(node_tool("circom2")), str(CIRCUIT), "--r1cs", "--O2", "-o", str(work),
                    "-l", str(ROOT / "node_modules")], check=True, capture_output=True, cwd=ROOT, timeout=300)
    r1cs = work / "preimage_range.r1cs"
    p0, p1, ptau, zkey0 = work / "p0.ptau", work / "p1.ptau", work / "p.ptau", work / "c0.zkey"
    ceremony.run_snarkjs(["powersoftau", "new", "bn128", "9", str(p0)])
    ceremony.run_snarkjs(["powersoftau", "contribute", str(p0), str(p1), "--name=phase1"], stdin_text=os.urandom(32).hex() + "\n")
    ceremony.run_snarkjs(["powersoftau", "prepare", "phase2", str(p1), str(ptau)])
    ceremony.run_snarkjs(["groth16", "setup", str(r1cs), str(ptau), str(zkey0)])
    return {"r1cs": r1cs, "ptau": ptau, "zkey0": zkey0, "phase1": p1}


def test_contribute_verify_record(small_setup: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    zkeys = [small_setup["zkey0"]]
    digests = []
    for name in ("Hospital A", "Hospital B"):
        out = tmp_path / f"{len(zkeys)}.zkey"
        result = runner.invoke(zk_group, ["ceremony", "contribute", "--zkey", str(zkeys[-1]),
                                                  "--out", str(out), "--name", name])
        assert result.exit_code == 0, result.output
        digests.append(result.output.strip().split(": ")[1])
        zkeys.append(out)
    assert all(len(d) == 128 for d in digests) and digests[0] != digests[1]

    record_path = tmp_path / "record.json"
    result = runner.invoke(zk_group, ["ceremony", "record", "--r1cs", str(small_setup["r1cs"]), "--ptau",
                                              str(small_setup["ptau"]), "--zkey", str(zkeys[-1]),
                                              "--out", str(record_path)])
    assert result.exit_code == 0, result.output
    record = json.loads(record_path.read_text())
    assert [c["hash"] for c in record["contributions"]] == digests
    assert [c["name"] for c in record["contributions"]] == ["Hospital A", "Hospital B"]
    assert record["zkey_sha256"] == ceremony.sha256_file(zkeys[-1]) and record["verified"] is True


def test_a_zkey_that_does_not_derive_from_the_ptau_is_refused(small_setup: dict[str, Path], tmp_path: Path) -> None:
    corrupted = tmp_path / "corrupted.zkey"
    data = bytearray(small_setup["zkey0"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(ceremony.CeremonyError, match="does not verify"):
        ceremony.verify(small_setup["r1cs"], small_setup["ptau"], corrupted)
    with pytest.raises(ceremony.CeremonyError, match="does not verify"):
        ceremony.verify(small_setup["r1cs"], small_setup["phase1"], small_setup["zkey0"])  # not prepared for phase 2


def test_entropy_never_reaches_the_command_line(small_setup: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    seen: list[list[str]] = []
    real_run = subprocess.run

    def spy(args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append([str(a) for a in args])
        return real_run(args, **kwargs)

    monkeypatch.setattr(ceremony.subprocess, "run", spy)
    entropy = os.urandom(32)
    ceremony.contribute(small_setup["zkey0"], tmp_path / "x.zkey", name="A", entropy=entropy)
    assert seen and not any(entropy.hex() in arg for args in seen for arg in args)


def test_contribution_inputs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(MalformedInput, match="at least 32 bytes"):
        ceremony.contribute(COMMITTED_ZKEY, tmp_path / "x.zkey", name="A", entropy=os.urandom(8))
    with pytest.raises(MalformedInput, match="printable"):
        ceremony.contribute(COMMITTED_ZKEY, tmp_path / "x.zkey", name='A"; rm', entropy=os.urandom(32))
    with pytest.raises(MalformedInput, match="file not found"):
        ceremony.verify(tmp_path / "none.r1cs", COMMITTED_ZKEY, COMMITTED_ZKEY)
