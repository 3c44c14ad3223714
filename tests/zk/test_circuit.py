"""The eligibility circuit's constraints, checked by witness generation on the committed wasm.

circom's witness calculator asserts every `===` constraint, so "no witness" means "no proof". Each case
is predicted by the Python mirror of the circuit (`CompiledCriteria.is_satisfied_by`) and, where the
input is honest, by the reference semantics (`zk.criteria.evaluate`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import date

import pytest
from support import node_tool

from tests.zk.eligibility_fixtures import (
    DIABETES_STUDY,
    HASH_CONDITION,
    REFERENCE_DATE,
    IssuedCredential,
    circuit_input,
    eligible_patient,
    random_patient,
    small_tree,
)
from zk.credential import PatientAttributes, identity_commitment, nullifier
from zk.criteria import compile_criteria, evaluate
from zk.errors import ProverError
from zk.field import R
from zk.merkle import PoseidonMerkleTree
from zk.poseidon import poseidon
from zk.prover import CircuitFiles, NodeProver

BROAD_STUDY = {"age": {"$gte": 18}, "conditions": {"$nin": ["icd10|C50"]}, "bmi": {"$lt": 35}}


@pytest.fixture(scope="module")
def prover() -> Iterator[NodeProver]:
    node_tool("snarkjs")
    with NodeProver(CircuitFiles.committed()) as p:
        yield p


def witness_exists(prover: NodeProver, inputs: dict[str, object]) -> bool:
    try:
        prover.check_witness(inputs)
    except ProverError as exc:
        assert "do not satisfy the circuit" in str(exc)
        return False
    return True


def test_witness_agrees_with_the_criteria_semantics(prover: NodeProver) -> None:
    rng = random.Random(11)
    patients = [eligible_patient()] + [random_patient(rng) for _ in range(7)]
    tree, issued = small_tree(patients)
    outcomes = set()
    for doc in (DIABETES_STUDY, BROAD_STUDY):
        criteria = compile_criteria(doc, REFERENCE_DATE, HASH_CONDITION)
        for cred in issued[:5] if doc is BROAD_STUDY else issued:
            expected = evaluate(doc, cred.patient, REFERENCE_DATE)
            assert criteria.is_satisfied_by(cred.attrs) == expected
            assert witness_exists(prover, circuit_input(tree, cred, criteria)) == expected, cred.index
            outcomes.add(expected)
    assert outcomes == {True, False}


@pytest.fixture(scope="module")
def one_patient() -> tuple[PoseidonMerkleTree, IssuedCredential]:
    tree, issued = small_tree([eligible_patient()])
    return tree, issued[0]


def test_honest_input_has_a_witness(prover: NodeProver, one_patient: tuple[PoseidonMerkleTree, IssuedCredential]) -> None:
    tree, cred = one_patient
    assert witness_exists(prover, circuit_input(tree, cred, compile_criteria(DIABETES_STUDY, REFERENCE_DATE, HASH_CONDITION)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nullifier", lambda i: str(nullifier(10**30, 4243))),  # nullifier for another study
        ("criteriaHash", lambda i: str(int(str(i["criteriaHash"])) + 1)),
        ("root", lambda i: str(int(str(i["root"])) + 1)),
        ("sexMask", lambda i: "15"),  # criteria changed without changing the hash
        ("pathBits", lambda i: ["2"] + list(i["pathBits"])[1:]),  # non-binary direction bit
        ("labs", lambda i: ["742", *list(i["labs"])[1:]]),  # attribute not in the leaf
    ],
)
def test_tampered_inputs_have_no_witness(prover: NodeProver, one_patient: tuple[PoseidonMerkleTree, IssuedCredential],
                                         field: str, value: object) -> None:
    tree, cred = one_patient
    inputs = circuit_input(tree, cred, compile_criteria(DIABETES_STUDY, REFERENCE_DATE, HASH_CONDITION))
    inputs[field] = value(inputs)  # type: ignore[operator]
    assert not witness_exists(prover, inputs)


def _forged_tree(cred: IssuedCredential, labs: tuple[int, ...] | None = None,
                 birth_days: int | None = None) -> tuple[PoseidonMerkleTree, IssuedCredential]:
    """A tree whose leaf carries raw attribute values EligibilityAttributes would refuse (an issuer bug)."""
    attrs = replace(cred.attrs)
    if labs is not None:
        object.__setattr__(attrs, "labs", labs)
    if birth_days is not None:
        object.__setattr__(attrs, "birth_days", birth_days)
    tree = PoseidonMerkleTree(20)
    tree.insert(poseidon([identity_commitment(cred.secret), *attrs.field_elements()]))
    return tree, IssuedCredential(cred.secret, cred.patient, attrs, 0)


def test_range_checks_stop_field_wrap_around(prover: NodeProver, one_patient: tuple[PoseidonMerkleTree, IssuedCredential]) -> None:
    _, cred = one_patient
    criteria = compile_criteria({"hba1c": {"$gte": 6.5}}, REFERENCE_DATE, HASH_CONDITION)
    # A "lab value" of R - 1 (i.e. -1) would pass an unchecked LessThan(32) against [651, 2^32 - 1].
    tree, forged = _forged_tree(cred, labs=(R - 1, 0, 0))
    assert not witness_exists(prover, circuit_input(tree, forged, criteria))
    # A birth day after the reference day makes ageDays wrap around to a huge field element.
    criteria = compile_criteria({"age": {"$lte": 150}}, REFERENCE_DATE, HASH_CONDITION)
    tree, forged = _forged_tree(cred, birth_days=criteria.reference_day + 10)
    assert not witness_exists(prover, circuit_input(tree, forged, criteria))


def test_empty_slots_never_match_padding(prover: NodeProver) -> None:
    no_conditions = PatientAttributes(birth_date=date(1970, 1, 1), sex="male")
    tree, issued = small_tree([no_conditions])
    inclusion = compile_criteria({"conditions": {"$in": ["icd10|E11"]}}, REFERENCE_DATE, HASH_CONDITION)
    exclusion = compile_criteria({"conditions": {"$nin": ["icd10|E11"]}}, REFERENCE_DATE, HASH_CONDITION)
    assert not witness_exists(prover, circuit_input(tree, issued[0], inclusion))
    assert witness_exists(prover, circuit_input(tree, issued[0], exclusion))
