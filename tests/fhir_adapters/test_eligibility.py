"""Eligibility facts from FHIR: Synthea records, statuses, units; the facts drive a real circuit witness."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest
from support import FIXTURES

from fhir_adapters.bundles import rewrite_references
from fhir_adapters.eligibility import eligibility_facts

SYNTHEA = FIXTURES / "synthea"


def synthea_patient(name_prefix: str) -> tuple[dict, list[dict]]:
    """A Synthea patient and its resources, references rewritten as a store would hold them."""
    path = next(p for p in SYNTHEA.glob(f"{name_prefix}_*.json"))
    resources = [e["resource"] for e in json.loads(path.read_text())["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    mapping = {f"urn:uuid:{r['id']}": f"{r['resourceType']}/{r['id']}" for r in resources if "id" in r}
    return patient, [rewrite_references(r, mapping) for r in resources]


def test_facts_of_a_synthea_patient() -> None:
    patient, resources = synthea_patient("Liz_Conn")
    facts = eligibility_facts(patient, resources)
    assert facts.birth_date == date.fromisoformat(patient["birthDate"]) and facts.sex == patient["gender"]
    active = {f"{c['code']['coding'][0]['system']}|{c['code']['coding'][0]['code']}" for c in resources
              if c["resourceType"] == "Condition" and c["clinicalStatus"]["coding"][0]["code"] == "active"}
    assert set(facts.conditions) == active and all(code.startswith("http://snomed.info/sct|") for code in facts.conditions)
    # The latest BMI and eGFR, in the credential's units.
    def latest(loinc: str) -> Decimal:
        obs = [r for r in resources if r["resourceType"] == "Observation"
               and r["code"]["coding"][0]["code"] == loinc]
        return Decimal(str(max(obs, key=lambda o: o["effectiveDateTime"])["valueQuantity"]["value"]))
    assert facts.labs == {"hba1c": None, "bmi": latest("39156-5"), "egfr": latest("33914-3")}
    assert facts.notes == ()


def test_every_synthea_patient_yields_facts() -> None:
    for path in SYNTHEA.glob("*_*-*.json"):
        patient, resources = synthea_patient(path.name.split("_")[0])
        facts = eligibility_facts(patient, resources)
        assert facts.birth_date is not None and facts.sex in ("female", "male")


def obs(code: str, value: float, unit: str, when: str, status: str = "final", system: str = "http://loinc.org") -> dict:
    return {"resourceType": "Observation", "status": status, "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def cond(code: str, clinical: str = "active", verification: str = "confirmed", system: str = "http://snomed.info/sct",
         **extra) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/p"},
            "clinicalStatus": {"coding": [{"code": clinical}]},
            "verificationStatus": {"coding": [{"code": verification}]},
            "code": {"coding": [{"system": system, "code": code}]}, **extra}


PATIENT = {"resourceType": "Patient", "id": "p", "birthDate": "1960-02-29", "gender": "female"}


def test_statuses_units_and_latest_value() -> None:
    facts = eligibility_facts(PATIENT, [
        cond("44054006"), cond("E11.9", system="http://hl7.org/fhir/sid/icd-10-cm"),
        cond("38341003", clinical="resolved"), cond("195967001", verification="refuted"),
        cond("271737000", abatementDateTime="2020-01-01"), cond("x", system="http://example.org/local"),
        obs("4548-4", 6.1, "%", "2024-01-01"),
        obs("59261-8", 53, "mmol/mol", "2025-01-01"),        # IFCC, newer: 0.09148 * 53 + 2.152 = 7.00044 %
        obs("4548-4", 9.9, "%", "2025-06-01", status="preliminary"),
        obs("39156-5", 31.2, "kg/m2", "2025-02-01"),
        obs("33914-3", 88, "mL/min/{1.73_m2}", "2025-02-01"),
        obs("33914-3", 40, "mg/dL", "2025-03-01"),           # wrong unit: left out, said so
        {**obs("39156-5", 99, "kg/m2", "2025-05-01"), "subject": {"reference": "Patient/someone-else"}},
    ])
    assert facts.conditions == ("http://hl7.org/fhir/sid/icd-10-cm|E11.9", "http://snomed.info/sct|44054006")
    assert facts.labs == {"hba1c": Decimal("7.00044"), "bmi": Decimal("31.2"), "egfr": Decimal(88)}
    assert facts.notes == ("egfr: LOINC 33914-3 with unit not understood, left out",)
    assert "40" not in " ".join(facts.notes)  # notes never carry values


@pytest.mark.parametrize("birth, note", [(None, "missing"), ("1960", "partial"), ("1960-13-40", "unreadable")])
def test_unusable_birth_dates_are_left_out(birth: str | None, note: str) -> None:
    facts = eligibility_facts({**PATIENT, "birthDate": birth}, [])
    assert facts.birth_date is None and note in facts.notes[0]
    assert eligibility_facts({k: v for k, v in PATIENT.items() if k != "gender"}, []).sex == "unknown"


@pytest.mark.node
def test_facts_from_fhir_prove_eligibility_in_the_circuit() -> None:
    """FHIR record -> facts -> credential leaf in a tree -> a witness for a study the patient meets, none for one
    it does not."""
    from tests.zk.eligibility_fixtures import ENROLLEE, HASH_CONDITION, STUDY_ID
    from zk.credential import PatientAttributes, eligibility_inputs, encode, identity_commitment, leaf
    from zk.criteria import compile_criteria, evaluate
    from zk.errors import ProverError
    from zk.merkle import PoseidonMerkleTree
    from zk.prover import CircuitFiles, NodeProver

    facts = eligibility_facts(PATIENT, [cond("44054006"), obs("59261-8", 53, "mmol/mol", "2025-01-01"),
                                        obs("33914-3", 88, "mL/min/{1.73_m2}", "2025-02-01")])
    attrs = PatientAttributes(birth_date=facts.birth_date, sex=facts.sex, conditions=facts.conditions,
                              labs=dict(facts.labs), issuance_epoch=1)
    encoded = encode(attrs, HASH_CONDITION)
    secret = 987654321987654321
    tree = PoseidonMerkleTree(20)
    index = tree.insert(leaf(identity_commitment(secret), encoded))
    path = tree.path(index)
    ref = date(2026, 1, 1)
    diabetic_study = {"age": {"$between": [50, 80]}, "conditions": {"$in": ["http://snomed.info/sct|44054006"]},
                      "hba1c": {"$gte": 6.5}}
    strict_study = {**diabetic_study, "hba1c": {"$gte": 7.5}}
    assert evaluate(diabetic_study, attrs, ref) and not evaluate(strict_study, attrs, ref)
    prover = NodeProver(CircuitFiles.committed())
    try:
        def inputs(doc: dict) -> dict:
            return eligibility_inputs(secret=secret, attrs=encoded, siblings=path.siblings, path_bits=path.path_bits,
                                      root=tree.root, study_id=STUDY_ID, criteria=compile_criteria(doc, ref, HASH_CONDITION),
                                      enrollee=ENROLLEE)
        prover.check_witness(inputs(diabetic_study))
        with pytest.raises(ProverError):
            prover.check_witness(inputs(strict_study))
    finally:
        prover.close()
