"""Shared helpers for the eligibility-circuit tests: synthetic patients, trees and circuit inputs."""

from __future__ import annotations

import json
import random
import subprocess
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from eth_account import Account

from zk.credential import (
    EligibilityAttributes,
    PatientAttributes,
    condition_hasher,
    eligibility_inputs,
    encode,
    identity_commitment,
    leaf,
)
from zk.criteria import CompiledCriteria
from zk.merkle import PoseidonMerkleTree

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
HASH_CONDITION = condition_hasher(b"test condition key: 32 bytes...")
REFERENCE_DATE = date(2025, 6, 1)
CODES = [f"icd10|{c}" for c in ("E11", "E11.9", "I10", "N18.3", "N18.5", "J45", "C50", "F32", "E66", "K21")]
SEXES = ["female", "male", "other", "unknown"]
STUDY_ID = 4242
# The patient's wallet in on-chain tests (a test-only key, never a real one); proofs are bound to it.
ENROLLEE_KEY = bytes.fromhex("5a" * 32)
ENROLLEE = Account.from_key(ENROLLEE_KEY).address

DIABETES_STUDY = {
    "age": {"$between": [40, 75]},
    "sex": {"$in": ["female", "male"]},
    "conditions": {"$in": ["icd10|E11", "icd10|E11.9"], "$nin": ["icd10|N18.5"]},
    "hba1c": {"$gte": 6.5},
    "egfr": {"$gte": 30},
}


def eligible_patient() -> PatientAttributes:
    return PatientAttributes(
        birth_date=date(1968, 3, 14), sex="female", conditions=("icd10|E11", "icd10|I10"),
        labs={"hba1c": Decimal("7.4"), "bmi": Decimal("31.25"), "egfr": Decimal(72)}, issuance_epoch=3,
    )


def random_patient(rng: random.Random) -> PatientAttributes:
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 95 * 365))
    labs: dict[str, Decimal | None] = {}
    for name, lo, hi in (("hba1c", 400, 1200), ("bmi", 1600, 4500), ("egfr", 1000, 12000)):
        labs[name] = None if rng.random() < 0.15 else Decimal(rng.randrange(lo, hi)) / 100
    return PatientAttributes(
        birth_date=birth, sex=rng.choice(SEXES), conditions=tuple(rng.sample(CODES, rng.randrange(0, 5))),
        labs=labs, issuance_epoch=rng.randrange(1, 10),
    )


def secret_for(index: int) -> int:
    return 10**30 + 7919 * index


@dataclass
class IssuedCredential:
    secret: int
    patient: PatientAttributes
    attrs: EligibilityAttributes
    index: int


def circuit_input(tree: PoseidonMerkleTree, cred: IssuedCredential, criteria: CompiledCriteria, *,
                  study_id: int = STUDY_ID, enrollee: str = ENROLLEE) -> dict[str, object]:
    path = tree.path(cred.index)
    return eligibility_inputs(secret=cred.secret, attrs=cred.attrs, siblings=path.siblings,
                              path_bits=path.path_bits, root=tree.root, study_id=study_id,
                              criteria=criteria, enrollee=enrollee)


def small_tree(patients: list[PatientAttributes]) -> tuple[PoseidonMerkleTree, list[IssuedCredential]]:
    """A depth-20 tree holding `patients` (Python Poseidon throughout)."""
    tree = PoseidonMerkleTree(20)
    issued = []
    leaves = []
    for i, patient in enumerate(patients):
        attrs = encode(patient, HASH_CONDITION)
        issued.append(IssuedCredential(secret_for(i), patient, attrs, i))
        leaves.append(leaf(identity_commitment(secret_for(i)), attrs))
    tree.insert_many(leaves)
    return tree, issued


_BULK_LEAVES_JS = r"""
const { buildPoseidon } = require(process.argv[1] + "/circomlibjs");
const rows = JSON.parse(require("fs").readFileSync(0, "utf8"));
buildPoseidon().then((poseidon) => {
  const F = poseidon.F;
  const out = rows.map((r) => {
    const commitment = poseidon([BigInt(r.secret)]);
    return F.toString(poseidon([commitment, ...r.attributes.map(BigInt)]));
  });
  require("fs").writeSync(1, JSON.stringify(out));  // synchronous: process.exit would cut a piped write at 64 KiB
  process.exit(0);
});
"""


def bulk_leaves(secrets: list[int], attrs: list[EligibilityAttributes]) -> list[int]:
    """Credential leaves computed by circomlibjs in one Node call (the Python Poseidon takes ~50 ms per
    15-input hash; tests cross-check samples against `zk.credential.leaf`)."""
    rows = [{"secret": str(s), "attributes": [str(v) for v in a.field_elements()]}
            for s, a in zip(secrets, attrs, strict=True)]
    done = subprocess.run(["node", "-e", _BULK_LEAVES_JS, str(NODE_MODULES)], input=json.dumps(rows),
                          capture_output=True, text=True, timeout=120, check=True)
    return [int(x) for x in json.loads(done.stdout)]


def population_tree(size: int, seed: int = 5) -> tuple[PoseidonMerkleTree, list[IssuedCredential]]:
    """A depth-20 tree of `size` synthetic patients (leaf 0 is `eligible_patient()`)."""
    rng = random.Random(seed)
    patients = [eligible_patient()] + [random_patient(rng) for _ in range(size - 1)]
    attrs = [encode(p, HASH_CONDITION) for p in patients]
    secrets = [secret_for(i) for i in range(size)]
    leaves = bulk_leaves(secrets, attrs)
    tree = PoseidonMerkleTree(20)
    tree.insert_many(leaves)
    issued = [IssuedCredential(s, p, a, i) for i, (s, p, a) in enumerate(zip(secrets, patients, attrs, strict=True))]
    return tree, issued
