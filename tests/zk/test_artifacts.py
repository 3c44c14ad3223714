"""The committed circuit artifacts are consistent: hashes, verification key vs zkey, Solidity verifier."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from support import node_tool

from zk.build import ARTIFACTS, CONTRACTS, VERIFIER_CONTRACT, export_verifier
from zk.snarkjs_io import load_verification_key

FOLDER = ARTIFACTS / "eligibility"


def test_sha256sums_match_the_files() -> None:
    lines = (FOLDER / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
    expected = {"eligibility.wasm", "eligibility.zkey", "eligibility.r1cs", "verification_key.json", "ceremony.json"}
    assert set(listed) == expected
    for name, digest in listed.items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name


def test_verification_key_is_exported_from_the_committed_zkey(tmp_path: Path) -> None:
    out = tmp_path / "vk.json"
    subprocess.run([str(node_tool("snarkjs")), "zkey", "export", "verificationkey", str(FOLDER / "eligibility.zkey"),
                    str(out)], check=True, capture_output=True, timeout=300)
    assert json.loads(out.read_text()) == json.loads((FOLDER / "verification_key.json").read_text())
    vk = load_verification_key(FOLDER / "verification_key.json")
    assert len(vk.ic) == 6  # 5 public signals + 1


def test_solidity_verifier_is_the_one_deployed(tmp_path: Path) -> None:
    node_tool("snarkjs")
    exported = tmp_path / f"{VERIFIER_CONTRACT}.sol"
    export_verifier(FOLDER / "eligibility.zkey", exported)  # what the committed zkey yields today
    committed = (CONTRACTS / f"{VERIFIER_CONTRACT}.sol").read_text()
    assert exported.read_text() == committed
    assert f"contract {VERIFIER_CONTRACT}" in committed and "uint[5] calldata _pubSignals" in committed
    vk = json.loads((FOLDER / "verification_key.json").read_text())
    assert vk["IC"][1][0] in committed  # the verifier embeds this key's constants


def test_build_notes_say_the_ptau_is_local_development_only() -> None:
    notes = (FOLDER / "BUILD.md").read_text()
    assert "LOCAL DEVELOPMENT PTAU" in notes and "perpetual powers of tau" in notes
    record = json.loads((FOLDER / "ceremony.json").read_text())
    assert record["verified"] and len(record["contributions"]) == 1
    assert record["zkey_sha256"] == hashlib.sha256((FOLDER / "eligibility.zkey").read_bytes()).hexdigest()
