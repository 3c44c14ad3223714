"""The page's JavaScript RFC 6962 verifier (static/js/merkle.js) against the same vectors and corruptions as the
Python one (healthledger/audit/merkle.py, tests/audit/test_merkle.py), and equal to it on every proof of every
tree up to 70 leaves. Run in Node: the same module the browser loads, with Web Crypto's SHA-256."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from healthledger.audit.merkle import (
    ProofError,
    inclusion_proof,
    leaf_hash,
    root_from_inclusion_proof,
    verify_inclusion,
)
from tests.audit.test_merkle import ENTRIES, VECTORS, _inclusion_probes, store_of

HERE = Path(__file__).parent
pytestmark = pytest.mark.node


def run_js(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the JavaScript verifier tests (Node.js 20, as for the rest of the suite)")
    done = subprocess.run([node, str(HERE / "merkle_js_cases.mjs")], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert len(results) == len(cases)
    return results


def case(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> dict[str, Any]:
    return {"kind": "inclusion", "index": index, "size": size, "leaf": leaf.hex(), "proof": [p.hex() for p in proof],
            "root": root.hex()}


def python_verdict(c: dict[str, Any]) -> bool:
    try:
        verify_inclusion(c["index"], c["size"], bytes.fromhex(c["leaf"]), [bytes.fromhex(p) for p in c["proof"]],
                         bytes.fromhex(c["root"]))
    except (ProofError, ValueError):
        return False
    return True


def test_leaf_hashes_match_the_vectors() -> None:
    results = run_js([{"kind": "leaf", "entry": e.hex()} for e in ENTRIES])
    assert [r["leaf"] for r in results] == VECTORS["leaf_hashes"]


def test_the_vectors_verify_and_every_corruption_fails_as_in_python() -> None:
    cases = []
    for vec in VECTORS["inclusion"]:
        proof = [bytes.fromhex(p) for p in vec["proof"]]
        root = bytes.fromhex(VECTORS["roots_by_size"][str(vec["size"])])
        leaf = leaf_hash(ENTRIES[vec["index"]])
        cases.append(case(vec["index"], vec["size"], leaf, proof, root))
        for _name, i, n, lf, pr, rt in _inclusion_probes(vec["index"], vec["size"], proof, root, leaf):
            cases.append(case(i, n, lf, pr, rt))
    results = run_js(cases)
    assert results[0]["verified"] is True
    for c, result in zip(cases, results, strict=True):
        assert result["verified"] is python_verdict(c), c
    assert sum(not r["verified"] for r in results) > 3 * len(VECTORS["inclusion"])  # the probes did fail


def test_every_proof_of_small_trees_leads_to_the_same_root_as_python() -> None:
    entries = [f"entry {i}".encode() for i in range(70)]
    cases, expected = [], []
    for size in range(1, 71):
        store = store_of(entries[:size])
        for index in range(0, size, max(1, size // 9)):
            proof = inclusion_proof(index, size, store.read)
            leaf = leaf_hash(entries[index])
            cases.append(case(index, size, leaf, proof, store.frontier.root()))
            expected.append(root_from_inclusion_proof(index, size, leaf, proof).hex())
    results = run_js(cases)
    assert [r["root"] for r in results] == expected
    assert all(r["verified"] for r in results)


def test_sizes_beyond_32_bits() -> None:
    """Leaf indexes and tree sizes above 2^31 (JavaScript's bit operators are 32-bit): BigInt arithmetic."""
    size, index = 2**33 + 5, 2**32 + 3
    leaf = leaf_hash(b"far")
    cases, expected = [], []
    for length in range(30, 38):  # one of these is the path length for this index and size
        proof = [leaf_hash(str(i).encode()) for i in range(length)]
        try:
            expected.append(root_from_inclusion_proof(index, size, leaf, proof).hex())
        except ProofError:
            expected.append(None)
        cases.append(case(index, size, leaf, proof, leaf))
    assert sum(e is not None for e in expected) == 1
    assert [r.get("root") for r in run_js(cases)] == expected
