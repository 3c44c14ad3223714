"""The Node prover worker: started on demand, reused, restarted after it dies, clear errors."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import node_tool

from tests.zk.eligibility_fixtures import (
    DIABETES_STUDY,
    ENROLLEE,
    HASH_CONDITION,
    REFERENCE_DATE,
    STUDY_ID,
    IssuedCredential,
    circuit_input,
    eligible_patient,
    small_tree,
)
from zk.credential import enrollee_field, nullifier
from zk.criteria import CompiledCriteria, compile_criteria
from zk.errors import ProverError
from zk.merkle import PoseidonMerkleTree
from zk.prover import CircuitFiles, NodeProver


@pytest.fixture(scope="module")
def prover() -> Iterator[NodeProver]:
    node_tool("snarkjs")
    with NodeProver(CircuitFiles.committed()) as p:
        yield p


@pytest.fixture(scope="module")
def statement() -> tuple[PoseidonMerkleTree, IssuedCredential, CompiledCriteria]:
    tree, issued = small_tree([eligible_patient()])
    return tree, issued[0], compile_criteria(DIABETES_STUDY, REFERENCE_DATE, HASH_CONDITION)


def test_prove_cold_then_warm_reuses_the_worker(
    prover: NodeProver, statement: tuple[PoseidonMerkleTree, IssuedCredential, CompiledCriteria]
) -> None:
    tree, cred, criteria = statement
    assert prover.pid is None  # started on demand
    first = prover.prove(circuit_input(tree, cred, criteria))
    pid = prover.pid
    assert pid is not None and first.timings.cold and first.timings.startup_ms > 0
    assert first.public_signals == [tree.root, STUDY_ID, criteria.criteria_hash, enrollee_field(ENROLLEE),
                                    nullifier(cred.secret, STUDY_ID)]
    assert set(first.proof) >= {"pi_a", "pi_b", "pi_c", "protocol"} and first.proof["protocol"] == "groth16"
    second = prover.prove(circuit_input(tree, cred, criteria))
    assert prover.pid == pid and not second.timings.cold
    assert second.timings.prove_ms > 0 and second.timings.witness_ms > 0
    assert second.timings.round_trip_ms >= second.timings.prove_ms
    assert second.proof["pi_a"] != first.proof["pi_a"]  # fresh randomness per proof


def test_unsatisfied_inputs_raise_and_keep_the_worker(
    prover: NodeProver, statement: tuple[PoseidonMerkleTree, IssuedCredential, CompiledCriteria]
) -> None:
    tree, cred, criteria = statement
    prover.check_witness(circuit_input(tree, cred, criteria))
    strict = compile_criteria({"age": {"$gte": 80}}, REFERENCE_DATE, HASH_CONDITION)
    pid_before = prover.pid
    with pytest.raises(ProverError, match="do not satisfy the circuit"):
        prover.prove(circuit_input(tree, cred, strict))
    assert pid_before is not None and prover.pid == pid_before


def test_malformed_requests_are_clear_errors(prover: NodeProver) -> None:
    with pytest.raises(ProverError, match="not booleans"):
        prover.prove({"root": True})
    with pytest.raises(ProverError, match="do not satisfy|prover failed"):
        prover.check_witness({"root": "1"})  # most inputs missing


def test_dead_worker_is_restarted(
    prover: NodeProver, statement: tuple[PoseidonMerkleTree, IssuedCredential, CompiledCriteria]
) -> None:
    tree, cred, criteria = statement
    prover.check_witness(circuit_input(tree, cred, criteria))
    pid = prover.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):  # bounded wait for the kernel to reap it
        if prover.pid is None:
            break
        time.sleep(0.05)
    restarts = prover.restarts
    result = prover.prove(circuit_input(tree, cred, criteria))
    assert result.timings.cold
    assert prover.restarts == restarts + 1 and prover.pid not in (None, pid)


def test_close_stops_the_worker(tmp_path: Path) -> None:
    node_tool("snarkjs")
    p = NodeProver(CircuitFiles.committed())
    with pytest.raises(ProverError):
        p.check_witness({"root": "1"})
    pid = p.pid
    assert pid is not None
    p.close()
    assert p.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped by close()


def test_missing_artifacts_and_node(tmp_path: Path) -> None:
    files = CircuitFiles(tmp_path / "c.wasm", tmp_path / "c.zkey", tmp_path / "vk.json")
    with pytest.raises(ProverError, match="artifact missing"):
        NodeProver(files)
    with pytest.raises(ProverError, match="cannot start the Node prover worker"):
        NodeProver(CircuitFiles.committed(), node=str(tmp_path / "no-node")).check_witness({})
