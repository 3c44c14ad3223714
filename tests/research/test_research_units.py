"""The research package's pure parts and its database tree: the SQL node store against zk.merkle's in-memory
reference (hypothesis), `set_leaves` against one-at-a-time inserts, the identity secret, criteria in words,
the outbox payloads of the zk writes, the study checks."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthledger.db import make_engine, upgrade
from healthledger.errors import BadRequest, Unprocessable
from healthledger.ledger import calls
from healthledger.research.credentials import identity_secret
from healthledger.research.criteria_words import characteristics
from healthledger.research.studies import (
    ETHICS_APPROVAL_URL,
    PURPOSE_URL,
    chain_study_id,
    check_study,
    compiled_from_inputs,
)
from healthledger.research.tree import SqlNodeStore, credential_tree
from tests.zk.eligibility_fixtures import HASH_CONDITION
from zk.criteria import compile_criteria
from zk.field import R
from zk.merkle import PoseidonMerkleTree, hash_pairs

FIELD = st.integers(min_value=0, max_value=R - 1)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    built = make_engine(f"sqlite:///{tmp_path_factory.mktemp('tree') / 'tree.db'}")
    upgrade(built)
    yield built
    built.dispose()


@settings(max_examples=15, deadline=None)
@given(first=st.lists(FIELD, min_size=1, max_size=6), updates=st.dictionaries(st.integers(0, 5), FIELD, max_size=3),
       more=st.lists(FIELD, max_size=4))
def test_the_sql_tree_equals_the_reference_tree(engine: Any, first: list[int], updates: dict[int, int],
                                                  more: list[int]) -> None:
    reference = PoseidonMerkleTree(20)
    reference.insert_many(first)
    with engine.connect() as conn:
        tenant = f"t{abs(hash((tuple(first), tuple(updates.items()), tuple(more))))}"
        tree, nodes = credential_tree(conn, tenant)
        tree.set_leaves(dict(enumerate(first)))
        assert tree.root == reference.root and tree.size == len(first)
        changed = {i: v for i, v in updates.items() if i < len(first)}
        batch = {**changed, **{len(first) + k: v for k, v in enumerate(more)}}
        nodes.preload_paths(sorted(batch))  # what a re-issue does: the siblings read in one query
        tree.set_leaves(batch, hash_pairs=hash_pairs)
        for i, v in changed.items():
            reference.update(i, v)
        reference.insert_many(more)
        assert tree.root == reference.root
        assert tree.path(0) == reference.path(0)
        assert SqlNodeStore(conn, tenant).recent_roots(10)[-1] == reference.root
        conn.rollback()


def test_set_leaves_refuses_gaps() -> None:
    tree = PoseidonMerkleTree(4)
    tree.insert_many([1, 2])
    from zk.errors import MalformedInput

    with pytest.raises(MalformedInput, match="without gaps"):
        tree.set_leaves({3: 5})


def test_identity_secret_is_a_nonzero_field_element_unique_per_key() -> None:
    secrets = {identity_secret(bytes([i]) * 32) for i in range(1, 20)}
    assert len(secrets) == 19 and all(0 < s < R for s in secrets)


def test_chain_study_ids_are_field_elements_per_tenant() -> None:
    assert chain_study_id("a", "s1") != chain_study_id("b", "s1")
    assert 0 <= chain_study_id("a", "s1") < 2**248 < R


def test_criteria_in_words() -> None:
    words = characteristics({"age": {"$between": [40, 75]}, "sex": {"$in": ["female"]},
                             "conditions": {"$in": ["icd10|E11"], "$nin": ["icd10|N18.5"]}, "egfr": {"$gt": 30}})
    assert [(c["code"]["text"], c["valueCodeableConcept"]["text"], c["exclude"]) for c in words] == [
        ("Age", "between 40 and 75 years", False),
        ("Administrative gender", "female", False),
        ("Active condition", "at least one of: icd10|E11", False),
        ("Active condition", "none of: icd10|N18.5", True),
        ("eGFR", "above 30 mL/min/1.73m2 (a patient without this measurement does not qualify)", False),
    ]


def test_compiled_criteria_round_trip_through_their_circuit_inputs() -> None:
    compiled = compile_criteria({"age": {"$gte": 18}, "conditions": {"$in": ["icd10|E11"]}}, date(2026, 1, 1),
                                HASH_CONDITION)
    assert compiled_from_inputs(json.loads(json.dumps(compiled.circuit_inputs()))) == compiled


def test_zk_outbox_payloads_are_checked_when_read_back() -> None:
    good = {"enrollee": "0x" + "11" * 20, "study_id": "5", "root": "7", "nullifier": "9",
            "a": ["1", "2"], "b": [["3", "4"], ["5", "6"]], "c": ["7", "8"]}
    call = calls.study_enrol_call(good)
    assert call.function == "enrolFor" and call.args[1:4] == (5, 7, 9)
    for bad in ({**good, "root": str(R)}, {**good, "root": 7}, {**good, "a": ["1"]}, {**good, "enrollee": "0x12"}):
        with pytest.raises(BadRequest):
            calls.study_enrol_call(bad)
    with pytest.raises(BadRequest):
        calls.credential_root_call({"root": "-1", "leaf_count": 1})


def _study(**changes: Any) -> dict[str, Any]:
    from fhir_adapters.research_study import (
        CRITERIA_URL,
        DATA_CATEGORY_URL,
        DATA_PERIOD_URL,
        MAX_PARTICIPANTS_URL,
    )

    body: dict[str, Any] = {
        "resourceType": "ResearchStudy", "title": "T", "sponsor": {"reference": "Organization/u"},
        "principalInvestigator": {"reference": "Practitioner/p"}, "period": {"end": "2030-01-01"},
        "extension": [
            {"url": CRITERIA_URL, "valueString": json.dumps({"age": {"$gte": 18}})},
            {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": "Condition"}]},
            {"url": DATA_PERIOD_URL, "valuePeriod": {"start": "2020-01-01"}},
            {"url": MAX_PARTICIPANTS_URL, "valuePositiveInt": 10},
            {"url": ETHICS_APPROVAL_URL, "valueIdentifier": {"value": "IRB-1"}},
            *changes.pop("extra", []),
        ],
    }
    body.update(changes)
    return body


NOW = datetime(2026, 6, 1, tzinfo=UTC)


def compile_for(document: Any, reference: date) -> Any:
    return compile_criteria(document, reference, HASH_CONDITION)


def test_study_checks() -> None:
    terms = check_study(_study(), now=NOW, compile_for=compile_for)
    assert terms.max_participants == 10
    with pytest.raises(Unprocessable, match="purpose of use is research"):
        check_study(_study(extra=[{"url": PURPOSE_URL, "valueCoding": {"code": "TREAT"}}]), now=NOW,
                    compile_for=compile_for)
    with pytest.raises(Unprocessable, match="ends before it starts"):
        check_study(_study(period={"start": "2029-01-01", "end": "2028-01-01"}), now=NOW, compile_for=compile_for)
    with pytest.raises(Unprocessable, match="needs an end"):
        check_study(_study(period={"start": "2029-01-01"}), now=NOW, compile_for=compile_for)


def test_study_pseudonyms_and_nullifiers_differ_per_study() -> None:
    from healthledger.ledger.patient_keys import pseudonym_for
    from zk.credential import nullifier

    master = bytes(range(32))
    secret = identity_secret(master)
    studies = [f"ResearchStudy/s{i}" for i in range(5)]
    addresses = {pseudonym_for(master, s).address for s in studies}
    assert len(addresses) == 5
    assert pseudonym_for(master, "Organization/clinic").address not in addresses
    ids = [chain_study_id("t", s.split("/")[1]) for s in studies]
    assert len({nullifier(secret, i) for i in ids}) == 5
    assert pseudonym_for(bytes(range(1, 33)), studies[0]).address not in addresses


def test_what_a_credential_can_hold_from_facts() -> None:
    from decimal import Decimal

    from fhir_adapters.eligibility import EligibilityFacts
    from healthledger.research.credentials import patient_attributes

    labs: dict[str, Decimal | None] = {"hba1c": Decimal("7.1"), "bmi": None, "egfr": None}
    many = tuple(f"http://snomed.info/sct|{n}" for n in range(10, 20))
    attrs, note = patient_attributes(EligibilityFacts("p", date(1960, 2, 3), "female", many, labs), 20000)
    assert attrs is not None and attrs.conditions == many[:8] and note == "2 condition codes left out"
    assert attrs.issuance_epoch == 20000 and attrs.labs["hba1c"] == Decimal("7.1")
    none, why = patient_attributes(EligibilityFacts("p", None, "male", (), labs), 1)
    assert none is None and why == "no full birth date"


def test_the_study_consent_releases_exactly_the_study_categories_codes_and_period_patient_included() -> None:
    """`$enrol`'s study Consent, decided by the real consent engine as the export decides (the study, HRESCH):
    each category with its own codes, the data period on dated types only, so the Patient (dated by its birth
    date, before the period) is released; a type the study does not ask for is not."""
    from fhir_adapters.consent import consent_rules
    from fhir_adapters.research_study import DATA_CATEGORY_URL, DATA_PERIOD_URL, study_terms
    from healthledger.consent.engine import Decision, PatientContext, Policy, decide
    from healthledger.consent.facts import resource_facts
    from healthledger.ledger.grants import GrantStatus
    from healthledger.research.enrolment import study_consent
    from healthledger.research.export import in_study_scope, study_principal

    bmi, hba1c, diabetes = ("http://loinc.org", "39156-5"), ("http://loinc.org", "4548-4"), ("http://snomed.info/sct", "44054006")

    def category(resource_type: str, *codes: tuple[str, str]) -> dict[str, Any]:
        return {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": resource_type}, *(
            {"url": "code", "valueCoding": {"system": s, "code": c}} for s, c in codes)]}

    study = {"resourceType": "ResearchStudy", "id": "s1", "status": "active", "extension": [
        category("Patient"), category("Observation", bmi), category("Observation", hba1c), category("Condition"),
        {"url": DATA_PERIOD_URL, "valuePeriod": {"start": "2010-01-01", "end": "2030-12-31"}}]}
    terms = study_terms(study)
    consent = {**study_consent("p1", "s1", terms, "0x" + "ab" * 20, datetime(2026, 1, 1, tzinfo=UTC)), "id": "c1",
               "status": "active"}
    rules = consent_rules(consent)
    ctx = PatientContext("p1", consents=(rules,), grants={"c1": GrantStatus.LIVE})
    principal = study_principal(terms)
    now = datetime(2026, 6, 1, tzinfo=UTC)

    def observation(code: tuple[str, str], when: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": "o", "status": "final", "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": code[0], "code": code[1]}]}, "effectiveDateTime": when}

    cases: list[tuple[str, dict[str, Any], bool]] = [
        ("the Patient, born before the period", {"resourceType": "Patient", "id": "p1", "birthDate": "1961-02-03"}, True),
        ("a BMI in the period", observation(bmi, "2015-04-05"), True),
        ("an HbA1c in the period (the second category's code)", observation(hba1c, "2020-01-01"), True),
        ("a BMI before the period", observation(bmi, "2005-04-05"), False),
        ("an Observation of another code", observation(("http://loinc.org", "8302-2"), "2015-04-05"), False),
        ("a Condition of any code in the period", {"resourceType": "Condition", "id": "d", "subject": {
            "reference": "Patient/p1"}, "code": {"coding": [{"system": diabetes[0], "code": diabetes[1]}]},
            "onsetDateTime": "2012-01-01"}, True),
        ("a Condition without a date", {"resourceType": "Condition", "id": "d", "subject": {
            "reference": "Patient/p1"}, "code": {"coding": [{"system": diabetes[0], "code": diabetes[1]}]}}, False),
        ("an Encounter (not asked for)", {"resourceType": "Encounter", "id": "e", "status": "finished", "class": {
            "code": "AMB"}, "subject": {"reference": "Patient/p1"}, "period": {"start": "2015-01-01"}}, False),
    ]
    for what, resource, released in cases:
        facts = resource_facts(resource["resourceType"], resource["id"], resource)
        outcome = decide(principal, "read", facts, ctx, Policy(), now)  # as `screen` decides an export
        assert (outcome.decision is Decision.PERMIT) is released, (what, outcome)
        # The export's own narrowing by the study's terms agrees with the consent.
        assert in_study_scope(terms, resource["resourceType"], resource) is released, what
    # A revoked grant releases nothing; the consent's own denials still keep the rest out.
    revoked = PatientContext("p1", consents=(rules,), grants={"c1": GrantStatus.REVOKED})
    facts = resource_facts("Patient", "p1", cases[0][1])
    assert decide(principal, "read", facts, revoked, Policy(), now).decision is not Decision.PERMIT


def test_leaves_computed_in_worker_processes_equal_the_leaves_computed_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from healthledger.research import credentials
    from zk.credential import EligibilityAttributes, leaf

    rng = random.Random(5)
    pairs = [(rng.randrange(R), EligibilityAttributes(rng.randrange(40_000), rng.randrange(1, 3),
                                                      tuple(rng.randrange(R) for _ in range(8)),
                                                      tuple(rng.randrange(10_000) for _ in range(3)), 20_000 + k))
             for k in range(24)]
    monkeypatch.setattr(credentials, "PARALLEL_LEAVES", 10)
    in_order = [leaf(c, a) for c, a in pairs]
    assert credentials.leaves_of(pairs, workers=2) == in_order
    assert credentials.leaves_of(pairs[:5], workers=2) == in_order[:5]  # below the threshold: in process
