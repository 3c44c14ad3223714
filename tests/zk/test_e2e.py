"""End to end: 1,000 synthetic patients, a proof from the Node worker, verified by our Python Groth16
verifier, by snarkjs and on-chain (embedded EVM and anvil); tampering with any public signal is rejected."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from support import node_tool
from web3.contract import Contract

from healthledger.ledger.chain import Chain, ContractRevert
from tests.ledger.conftest import anvil_url, chain, fund  # noqa: F401  (chain fixtures, embedded + anvil)
from tests.zk.eligibility_fixtures import (
    DIABETES_STUDY,
    ENROLLEE_KEY,
    HASH_CONDITION,
    REFERENCE_DATE,
    STUDY_ID,
    IssuedCredential,
    circuit_input,
    population_tree,
)
from zk import groth16
from zk.credential import identity_commitment, leaf
from zk.criteria import compile_criteria, evaluate
from zk.errors import ProverError
from zk.merkle import PoseidonMerkleTree
from zk.prover import CircuitFiles, NodeProver, ProofResult
from zk.snarkjs_io import load_proof, load_verification_key, solidity_calldata

POPULATION = 1000
FILES = CircuitFiles.committed()


@pytest.fixture(scope="module")
def prover() -> Iterator[NodeProver]:
    node_tool("snarkjs")
    with NodeProver(FILES) as p:
        yield p


@pytest.fixture(scope="module")
def population() -> tuple[PoseidonMerkleTree, list[IssuedCredential]]:
    node_tool("snarkjs")
    tree, issued = population_tree(POPULATION)
    # The bulk leaves came from circomlibjs: cross-check a sample against zk.credential.leaf.
    for cred in random.Random(1).sample(issued, 3) + [issued[0]]:
        assert tree.leaf(cred.index) == leaf(identity_commitment(cred.secret), cred.attrs)
    return tree, issued


@pytest.fixture(scope="module")
def proof(prover: NodeProver, population: tuple[PoseidonMerkleTree, list[IssuedCredential]]) -> ProofResult:
    tree, issued = population
    criteria = compile_criteria(DIABETES_STUDY, REFERENCE_DATE, HASH_CONDITION)
    assert evaluate(DIABETES_STUDY, issued[0].patient, REFERENCE_DATE)
    return prover.prove(circuit_input(tree, issued[0], criteria))


def snarkjs_verifies(tmp_path: Path, proof: dict[str, object], public: list[str]) -> bool:
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "public.json").write_text(json.dumps(public))
    done = subprocess.run([str(node_tool("snarkjs")), "groth16", "verify", str(FILES.verification_key),
                           str(tmp_path / "public.json"), str(tmp_path / "proof.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    return "OK!" in done.stdout and done.returncode == 0


def test_population_tree_has_a_thousand_patients(population: tuple[PoseidonMerkleTree, list[IssuedCredential]]) -> None:
    tree, issued = population
    assert tree.size == len(issued) == POPULATION
    eligible = sum(evaluate(DIABETES_STUDY, c.patient, REFERENCE_DATE) for c in issued)
    assert 0 < eligible < POPULATION  # the synthetic population has both kinds


def test_proof_verifies_in_python_and_snarkjs(proof: ProofResult, tmp_path: Path) -> None:
    vk = load_verification_key(FILES.verification_key)
    assert groth16.verify(vk, load_proof(proof.proof), proof.public_signals)
    assert snarkjs_verifies(tmp_path, proof.proof, proof.public_json())


@pytest.mark.parametrize("index", range(5), ids=["root", "studyId", "criteriaHash", "enrollee", "nullifier"])
def test_any_changed_public_signal_is_rejected(proof: ProofResult, tmp_path: Path, index: int) -> None:
    changed = list(proof.public_signals)
    changed[index] += 1
    vk = load_verification_key(FILES.verification_key)
    assert not groth16.verify(vk, load_proof(proof.proof), changed)
    assert not snarkjs_verifies(tmp_path, proof.proof, [str(s) for s in changed])


def test_non_eligible_patient_cannot_prove(
    prover: NodeProver, population: tuple[PoseidonMerkleTree, list[IssuedCredential]]
) -> None:
    tree, issued = population
    criteria = compile_criteria(DIABETES_STUDY, REFERENCE_DATE, HASH_CONDITION)
    not_eligible = next(c for c in issued[500:] if not evaluate(DIABETES_STUDY, c.patient, REFERENCE_DATE))
    with pytest.raises(ProverError, match="do not satisfy the circuit"):
        prover.prove(circuit_input(tree, not_eligible, criteria))


# --- on-chain: CredentialRegistry + StudyRegistry + the generated verifier, embedded EVM and anvil ---

ENROLMENT_GAS_TARGET = 300_000


@dataclass(frozen=True)
class Registries:
    chain: Chain
    credentials: Contract
    studies: Contract
    enrollee: LocalAccount


@pytest.fixture(scope="module")
def registries(chain: Chain, population: tuple[PoseidonMerkleTree, list[IssuedCredential]]) -> Registries:  # noqa: F811
    op = chain.operator.address
    verifier, _ = chain.deploy("EligibilityVerifier")
    credentials, _ = chain.deploy("CredentialRegistry", op)
    chain.deploy("StudyRegistry", op, verifier, credentials)
    creg, sreg = chain.contract("CredentialRegistry"), chain.contract("StudyRegistry")
    chain.send(creg.functions.grantRole(chain.call(creg.functions.ISSUER()), op))
    chain.send(sreg.functions.grantRole(chain.call(sreg.functions.STUDY_REGISTRAR()), op))
    tree, _ = population
    chain.send(creg.functions.anchorRoot(tree.root, tree.size))
    criteria = compile_criteria(DIABETES_STUDY, REFERENCE_DATE, HASH_CONDITION)
    vk_id = b"\x01" * 32  # a window open since 1970 and a participant limit, as real studies have
    chain.send(sreg.functions.registerStudy(STUDY_ID, criteria.criteria_hash, vk_id, 1, 0, 1000, op))
    chain.send(sreg.functions.registerStudy(STUDY_ID + 1, criteria.criteria_hash, vk_id, 1, 0, 1000, op))
    enrollee = Account.from_key(ENROLLEE_KEY)
    fund(chain, enrollee.address)
    return Registries(chain, creg, sreg, enrollee)


def enrol_args(proof: ProofResult, **changes: int) -> tuple[object, ...]:
    study, root, nullifier, a, b, c = proof.enrol_args()
    args = {"study": study, "root": root, "nullifier": nullifier, **changes}
    return (args["study"], args["root"], args["nullifier"], a, b, c)


def reverts(name: str) -> pytest.RaisesExc[ContractRevert]:
    return pytest.raises(ContractRevert, match=rf"\b{name}\b")


def test_proof_is_bound_to_study_sender_root_and_itself(registries: Registries, proof: ProofResult) -> None:
    r = registries
    other = Account.create()
    fund(r.chain, other.address)
    with reverts("InvalidProof"):  # someone else replays the patient's proof
        r.chain.send(r.studies.functions.enrol(*enrol_args(proof)), gas=600_000, sender=other)
    with reverts("InvalidProof"):  # same criteria, another study
        r.chain.send(r.studies.functions.enrol(*enrol_args(proof, study=STUDY_ID + 1)), gas=600_000,
                     sender=r.enrollee)
    with reverts("UnknownRoot"):
        r.chain.send(r.studies.functions.enrol(*enrol_args(proof, study=STUDY_ID + 1, root=proof.public_signals[0] + 1)),
                     gas=600_000, sender=r.enrollee)
    with reverts("UnknownStudy"):
        r.chain.send(r.studies.functions.enrol(*enrol_args(proof, study=999)), gas=600_000, sender=r.enrollee)
    a, b, c, public = solidity_calldata(load_proof(proof.proof), proof.public_signals)
    with reverts("InvalidProof"):  # a tampered proof point (still on the curve: -A)
        neg_a = (a[0], 21888242871839275222246405745257275088696311157297823662689037894645226208583 - a[1])
        r.chain.send(r.studies.functions.enrol(STUDY_ID + 1, public[0], public[4], neg_a, b, c), gas=600_000,
                     sender=r.enrollee)


def test_enrol_on_chain_once(registries: Registries, proof: ProofResult) -> None:
    r = registries
    receipt = r.chain.send(r.studies.functions.enrol(*enrol_args(proof)), gas=600_000, sender=r.enrollee)
    print(f"\nenrol gas ({r.chain.chain_id}): {receipt['gasUsed']}")
    assert receipt["gasUsed"] <= ENROLMENT_GAS_TARGET
    nullifier = proof.public_signals[4]
    assert r.chain.call(r.studies.functions.enrolledBy(nullifier)) == r.enrollee.address
    events = r.studies.events.Enrolled().process_receipt(receipt)
    assert [(e["args"]["studyId"], e["args"]["enrollee"]) for e in events] == [(STUDY_ID, r.enrollee.address)]
    with reverts("NullifierUsed"):
        r.chain.send(r.studies.functions.enrol(*enrol_args(proof)), gas=600_000, sender=r.enrollee)


def test_root_history_and_issuer_role(registries: Registries, population: tuple[PoseidonMerkleTree, list[IssuedCredential]]) -> None:
    r = registries
    tree, _ = population
    creg, ledger = r.credentials, r.chain
    assert ledger.call(creg.functions.isKnownRoot(tree.root))
    with reverts("MissingRole"):
        ledger.send(creg.functions.anchorRoot(123, 1), sender=r.enrollee)
    with reverts("RootAlreadyAnchored"):
        ledger.send(creg.functions.anchorRoot(tree.root, 1))
    with reverts("InvalidRoot"):
        ledger.send(creg.functions.anchorRoot(0, 1))
    history = ledger.call(creg.functions.ROOT_HISTORY())
    for i in range(history - 1):
        ledger.send(creg.functions.anchorRoot(int.from_bytes(keccak(i.to_bytes(8, "big"))) >> 8, 1))
    assert ledger.call(creg.functions.isKnownRoot(tree.root))  # still among the last ROOT_HISTORY
    ledger.send(creg.functions.anchorRoot(777, 1))
    assert not ledger.call(creg.functions.isKnownRoot(tree.root))  # expired
    assert ledger.call(creg.functions.isKnownRoot(777))
    ledger.send(creg.functions.revokeRole(ledger.call(creg.functions.ISSUER()), ledger.operator.address))
    assert not ledger.call(creg.functions.isKnownRoot(777))  # a revoked issuer's roots stop counting


def test_study_registration_rules(registries: Registries, proof: ProofResult) -> None:
    r = registries
    sreg, ledger = r.studies, r.chain
    field_order = 21888242871839275222246405745257275088548364400416034343698204186575808495617
    op, vk_id = ledger.operator.address, b"\x01" * 32

    def register(study_id: int, criteria_hash: int, opens: int = 0, closes: int = 0) -> tuple[object, ...]:
        return (study_id, criteria_hash, vk_id, opens, closes, 0, op)

    with reverts("MissingRole"):
        ledger.send(sreg.functions.registerStudy(*register(77, 1)), sender=r.enrollee)
    with reverts("StudyExists"):
        ledger.send(sreg.functions.registerStudy(*register(STUDY_ID, 1)))
    for study_id, criteria_hash in ((78, 0), (78, field_order), (field_order, 1)):
        with reverts("InvalidStudy"):
            ledger.send(sreg.functions.registerStudy(*register(study_id, criteria_hash)))
    with reverts("InvalidStudy"):  # a window that closes before it opens
        ledger.send(sreg.functions.registerStudy(*register(78, 1, opens=100, closes=50)))
    ledger.send(sreg.functions.closeStudy(STUDY_ID + 1))
    assert ledger.call(sreg.functions.studies(STUDY_ID + 1))[6] is True
    with reverts("StudyIsClosed"):
        ledger.send(sreg.functions.enrol(*enrol_args(proof, study=STUDY_ID + 1)), gas=600_000, sender=r.enrollee)
    with reverts("UnknownStudy"):
        ledger.send(sreg.functions.closeStudy(79))
    ledger.send(sreg.functions.pause())
    with reverts("ContractPaused"):
        ledger.send(sreg.functions.enrol(*enrol_args(proof, study=STUDY_ID + 1)), gas=600_000, sender=r.enrollee)
    ledger.send(sreg.functions.unpause())


def test_enrol_for_needs_a_relayer_and_an_open_window(
    registries: Registries, prover: NodeProver, population: tuple[PoseidonMerkleTree, list[IssuedCredential]]
) -> None:
    """StudyRegistry.enrolFor: only a RELAYER submits the proof of an enrollee without ether (the service's
    outbox), and the study's enrolment window is enforced on-chain too."""
    r = registries
    tree, issued = population
    sreg, ledger, op = r.studies, r.chain, r.chain.operator.address
    criteria = compile_criteria(DIABETES_STUDY, REFERENCE_DATE, HASH_CONDITION)
    later = STUDY_ID + 5  # enrolment opens in 2^40 seconds
    ledger.send(sreg.functions.registerStudy(later, criteria.criteria_hash, b"\x01" * 32, 2**40, 0, 10, op))
    result = prover.prove(circuit_input(tree, issued[0], criteria, study_id=later))
    study, root, nullifier, a, b, c = result.enrol_args()
    args = (r.enrollee.address, study, root, nullifier, a, b, c)
    with reverts("MissingRole"):
        ledger.send(sreg.functions.enrolFor(*args), gas=600_000, sender=r.enrollee)
    ledger.send(sreg.functions.grantRole(ledger.call(sreg.functions.RELAYER()), op))
    with reverts("EnrolmentNotOpen"):
        ledger.send(sreg.functions.enrolFor(*args), gas=600_000)
