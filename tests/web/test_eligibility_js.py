"""The study page's JavaScript (static/js/eligibility.js, poseidon.js) equals the Python the server and the CLI
use: the eligibility check (zk.criteria.CompiledCriteria.is_satisfied_by) on random credentials and criteria,
Poseidon of two inputs (zk.poseidon, with the constants the app serves at /app/zk/poseidon.json), and the
circuit's full input (zk.credential.eligibility_inputs). Run in Node: the same modules the browser loads."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from healthledger.web.proving import poseidon_parameters
from zk.credential import EligibilityAttributes, credential_inputs, eligibility_inputs
from zk.criteria import CompiledCriteria
from zk.field import R
from zk.poseidon import poseidon

HERE = Path(__file__).parent
pytestmark = pytest.mark.node
CODES = [11, 22, 33, 44, 55]


def run_js(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the JavaScript tests (Node.js 20, as for the rest of the suite)")
    done = subprocess.run([node, str(HERE / "eligibility_js_cases.mjs")],
                          input=json.dumps({"params": poseidon_parameters(), "cases": cases}),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert len(results) == len(cases)
    return results


def random_attrs(rng: random.Random) -> EligibilityAttributes:
    conditions = sorted(rng.sample(CODES, rng.randint(0, 3)))
    return EligibilityAttributes(
        birth_days=rng.randint(0, 30000), sex=rng.randint(0, 3),
        conditions=tuple(conditions + [0] * (8 - len(conditions))),
        labs=tuple(rng.choice([0, rng.randint(1, 20000)]) for _ in range(3)), issuance_epoch=rng.randint(0, 100),
    )


def random_criteria(rng: random.Random) -> CompiledCriteria:
    low = rng.randint(0, 8000)
    inclusion = rng.sample(CODES, rng.choice([0, 0, 2, 3]))
    exclusion = rng.sample(CODES, rng.choice([0, 0, 1]))
    lab_lo = [rng.randint(0, 5000) for _ in range(3)]
    return CompiledCriteria(
        reference_day=30000, min_age_days=low, max_age_days=rng.randint(22000, 30000), sex_mask=rng.randint(1, 15),
        flags=(1 if inclusion else 0) | rng.choice([0, 0, 0, 1, 2, 4]) << 1,
        inclusion_codes=tuple(inclusion + [0] * (8 - len(inclusion))),
        exclusion_codes=tuple(exclusion + [0] * (8 - len(exclusion))),
        lab_lo=tuple(lab_lo), lab_hi=tuple(lo + rng.randint(5000, 15000) for lo in lab_lo),
    )


def attrs_json(a: EligibilityAttributes) -> dict[str, Any]:
    return {"birthDays": str(a.birth_days), "sex": str(a.sex), "conditions": [str(c) for c in a.conditions],
            "labs": [str(v) for v in a.labs]}


def test_the_eligibility_check_in_the_page_equals_the_circuits_rules_in_python() -> None:
    rng = random.Random(12)
    pairs = [(random_attrs(rng), random_criteria(rng)) for _ in range(400)]
    results = run_js([{"kind": "check", "attrs": attrs_json(a), "criteria": c.circuit_inputs()} for a, c in pairs])
    expected = [c.is_satisfied_by(a) for a, c in pairs]
    assert [r["meets"] for r in results] == expected
    assert 20 < sum(expected) < 380  # both answers are exercised


def test_poseidon_and_the_circuit_input_in_the_page_equal_python() -> None:
    rng = random.Random(7)
    pairs = [[0, 0], [1, 2], [R - 1, 5], [rng.randrange(R), rng.randrange(R)]]
    cases: list[dict[str, Any]] = [{"kind": "poseidon", "inputs": [str(x) for x in p]} for p in pairs]
    expected: list[dict[str, Any]] = [{"hash": str(poseidon(p))} for p in pairs]
    for _ in range(3):
        attrs, criteria = random_attrs(rng), random_criteria(rng)
        secret, study_id, root = rng.randrange(1, R), rng.randrange(R), rng.randrange(R)
        siblings, bits = [rng.randrange(R) for _ in range(20)], [rng.randint(0, 1) for _ in range(20)]
        enrollee = "0x" + rng.randbytes(20).hex()
        cases.append({"kind": "inputs", "args": {
            "credential": credential_inputs(secret, attrs, siblings, bits), "root": str(root), "enrollee": enrollee,
            "registration": {"studyId": str(study_id), "criteriaHash": str(criteria.criteria_hash),
                             "circuit": criteria.circuit_inputs()}}})
        expected.append({"inputs": json.loads(json.dumps(eligibility_inputs(
            secret=secret, attrs=attrs, siblings=siblings, path_bits=bits, root=root, study_id=study_id,
            criteria=criteria, enrollee=enrollee)))})
    assert run_js(cases) == expected
