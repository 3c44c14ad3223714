"""fhir_adapters on real data written by others: Synthea Bundles, Bulk Data NDJSON, Microsoft's Bundle edge cases."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_adapters.bundles import plan_bundle, read_ndjson, references_in, rewrite_references
from fhir_adapters.compartment import PatientReferenceError, patient_compartment
from fhir_adapters.errors import InvalidBundle, MalformedJson
from fhir_adapters.search.matching import ResourceMeta, matches
from fhir_adapters.search.query import parse_search
from fhir_adapters.search.terms import candidate_filters, index_terms
from fhir_adapters.validation import parse_resource

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
SYNTHEA = FIXTURES / "synthea"
BULK = FIXTURES / "bulk-10-patients"
EDGE = FIXTURES / "transaction-bundles"
META = ResourceMeta("x", datetime(2024, 1, 1, tzinfo=UTC))


def synthea_bundles() -> list[Path]:
    return sorted(SYNTHEA.glob("*.json"))


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict[str, Any]]]:
    """Every resource of the Synthea Bundles and the bulk NDJSON, validated, by type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for path in synthea_bundles():
        for entry in plan_bundle(path.read_bytes()).entries:
            assert entry.resource is not None
            by_type.setdefault(entry.resource["resourceType"], []).append(entry.resource)
    for path in sorted(BULK.glob("*.ndjson")):
        for line_no, item in read_ndjson(path.read_text().splitlines()):
            assert isinstance(item, dict), (path.name, line_no, item)
            if line_no % 3 == 1:  # R4B-validate a third of the 5,945 lines (keeps this module fast)
                assert parse_resource(item) == item
            by_type.setdefault(item["resourceType"], []).append(item)
    return by_type


def test_corpus_size(corpus: dict[str, list[dict[str, Any]]]) -> None:
    bulk = sum(1 for p in BULK.glob("*.ndjson") for line in p.read_text().splitlines() if line.strip())
    assert bulk == 5945
    assert sum(len(v) for v in corpus.values()) == bulk + sum(
        len(json.loads(p.read_text())["entry"]) for p in synthea_bundles()
    )


def _check(resources: list[dict[str, Any]], params: list[tuple[str, str]]) -> tuple[int, int]:
    """(matches, candidates) of a query over resources; asserts every match is a candidate (the INVARIANT)."""
    query = parse_search(resources[0]["resourceType"], params)
    filters = candidate_filters(query)
    hits = candidates = 0
    for resource in resources:
        terms = index_terms(resource)
        meta = ResourceMeta(resource.get("id", "x"), META.last_updated)
        is_candidate = all(
            (meta.id in f.any_of) if f.param == "_id" else bool(terms.get(f.param, set()) & f.any_of)
            for f in filters
        )
        if matches(resource, query, meta):
            assert is_candidate, (params, resource.get("id"))
            hits += 1
        candidates += is_candidate
    return hits, candidates


def test_search_on_real_patients(corpus: dict[str, list[dict[str, Any]]]) -> None:
    patients = corpus["Patient"]
    for patient in patients:
        family = patient["name"][0]["family"]
        identifier = patient["identifier"][-1]
        for params in (
            [("family", family[:3].lower())],
            [("family:exact", family)],
            [("name", patient["name"][0]["given"][0][:4].upper())],
            [("birthdate", patient["birthDate"][:4])],
            [("birthdate", "ge" + patient["birthDate"]), ("birthdate", "le" + patient["birthDate"])],
            [("gender", patient["gender"])],
            [("identifier", f"{identifier['system']}|{identifier['value']}")],
            [("_id", patient["id"])],
        ):
            hits, candidates = _check(patients, params)
            assert hits >= 1, params
            assert candidates >= hits


def test_search_on_real_clinical_data(corpus: dict[str, list[dict[str, Any]]]) -> None:
    encounters, conditions, observations = corpus["Encounter"], corpus["Condition"], corpus["Observation"]
    stored = next(
        e for e in encounters if e["subject"]["reference"].startswith("Patient/")
    )  # bulk, not Synthea urn
    patient_ref = stored["subject"]["reference"]
    hits, candidates = _check(encounters, [("patient", patient_ref)])
    assert 1 <= hits == candidates < len(encounters)  # reference terms narrow exactly
    start = stored["period"]["start"]
    hits, candidates = _check(encounters, [("date", start[:7])])
    assert 1 <= hits <= candidates < len(encounters) / 5  # month buckets narrow a lot
    coding = conditions[0]["code"]["coding"][0]
    hits, candidates = _check(conditions, [("code", f"{coding['system']}|{coding['code']}")])
    assert 1 <= hits == candidates
    hits, _ = _check(conditions, [("clinical-status", "active,resolved")])
    assert hits >= 1
    obs = next(o for o in observations if "valueQuantity" in o)
    q = obs["valueQuantity"]
    hits, _ = _check(observations, [("value-quantity", f"{q['value']}|{q['system']}|{q['code']}")])
    assert hits >= 1
    hits, _ = _check(
        observations, [("code", obs["code"]["coding"][0]["code"]), ("date", "ge2000"), ("date", "lt2030")]
    )
    assert hits >= 1


def test_every_clinical_resource_is_in_a_patient_compartment(corpus: dict[str, list[dict[str, Any]]]) -> None:
    patient_ids = {p["id"] for p in corpus["Patient"]}
    for resource_type in (
        "Encounter",
        "Condition",
        "MedicationRequest",
        "Procedure",
        "Immunization",
        "AllergyIntolerance",
    ):
        for resource in corpus[resource_type]:
            reference = resource.get("subject", resource.get("patient", {})).get("reference", "")
            if reference.startswith("urn:uuid:"):
                # Synthea's placeholders: resolved by the transaction before storing, refused anywhere else.
                with pytest.raises(PatientReferenceError) as info:
                    patient_compartment(resource)
                assert info.value.expression in (f"{resource_type}.subject", f"{resource_type}.patient")
            else:
                assert patient_compartment(resource) in patient_ids
    assert {patient_compartment(p) for p in corpus["Patient"]} == patient_ids
    assert all(patient_compartment(o) is None for o in corpus["Organization"])


# --- Bundles -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", synthea_bundles(), ids=lambda p: p.name)
def test_synthea_transactions_plan_and_resolve(path: Path) -> None:
    plan = plan_bundle(path.read_bytes())
    assert plan.type == "transaction"
    assert [e.method for e in plan.entries] == sorted(
        (e.method for e in plan.entries), key=["DELETE", "POST", "PUT", "GET"].index
    )
    mapping = {e.full_url: f"{e.resource_type}/id{e.index}" for e in plan.entries if e.full_url}
    assert len(mapping) == len(plan.entries)
    compartments: set[str | None] = set()
    for entry in plan.entries:
        assert entry.resource is not None and entry.resource_type == entry.resource["resourceType"]
        rewritten = rewrite_references(entry.resource, mapping)
        left = [ref for _path, ref in references_in(rewritten) if ref.startswith("urn:uuid:")]
        assert left == []
        if entry.resource_type != "Patient":
            compartments.add(patient_compartment(rewritten))  # once rewritten, every entry resolves
    # One patient per Synthea file (none in the hospital and practitioner files): everything about
    # someone is about the file's Patient.
    patients = {f"Patient/{c}" for c in compartments if c is not None}
    has_patient = any(e.resource_type == "Patient" for e in plan.entries)
    assert patients == ({f"Patient/id{e.index}" for e in plan.entries if e.resource_type == "Patient"} if has_patient else set())


def test_references_in_and_rewrite() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "urn:uuid:0F0A0F0A-0000-4000-8000-000000000001"},
        "performer": [{"reference": "Practitioner/1"}, {"display": "x"}],
        "contained": [
            {"resourceType": "Patient", "link": [{"other": {"reference": "Patient?identifier=a|b"}}]}
        ],
    }
    assert references_in(obs) == [
        ("subject.reference", "urn:uuid:0F0A0F0A-0000-4000-8000-000000000001"),
        ("performer[0].reference", "Practitioner/1"),
        ("contained[0].link[0].other.reference", "Patient?identifier=a|b"),
    ]
    out = rewrite_references(
        obs,
        {
            "urn:uuid:0f0a0f0a-0000-4000-8000-000000000001": "Patient/9",
            "Patient?identifier=a|b": "Patient/10",
        },
    )
    assert out["subject"] == {"reference": "Patient/9"}
    assert out["contained"][0]["link"][0]["other"] == {"reference": "Patient/10"}
    assert obs["subject"]["reference"].startswith("urn:uuid:")  # the input is not modified


def _plan_error(name: str) -> InvalidBundle:
    with pytest.raises(InvalidBundle) as info:
        plan_bundle((EDGE / name).read_bytes())
    assert info.value.status == 400
    return info.value


def test_duplicate_full_url_is_rejected_naming_the_entry() -> None:
    # bdl-7: fullUrl unique unless meta.versionId differs; the whole Bundle is invalid (batch or transaction).
    error = _plan_error("Bundle-TransactionWithMultipleResourcesWithSameFullUrl.json")
    assert error.entry_index == 1 and error.expression == "Bundle.entry[1].fullUrl"
    assert "entry 1" in error.message and "entry 0" in error.message
    assert (
        _plan_error("Bundle-Batch.json").entry_index == 4
    )  # entries 2 and 4 share http://example.org/fhir/Patient/123
    assert _plan_error("Bundle-BatchWithDuplicatedItems.json").entry_index == 2
    assert _plan_error("Bundle-FhirPatch.json").entry_index == 1


def test_bundle_type_must_be_batch_or_transaction() -> None:
    assert _plan_error("Bundle-InvalidBundleType.json").expression == "Bundle.type"
    assert "missing" in _plan_error("Bundle-TypeMissing.json").message


def test_malformed_bundle_json() -> None:
    with pytest.raises(MalformedJson) as info:
        plan_bundle((EDGE / "Bundle-TransactionWithInvalidBundleEntry.json").read_bytes())
    assert "line 39" in info.value.message


@pytest.mark.parametrize(
    ("name", "index", "expression", "words"),
    [
        # A conditional reference to a type that does not exist (Patientt?identifier=...).
        (
            "Bundle-TransactionWithInvalidResourceType.json",
            0,
            "Bundle.entry[0].resource.subject.reference",
            "Patientt",
        ),
        # urn:uuid reference to no entry of the transaction (R4 3.1.0.11.2 cannot resolve it).
        (
            "Bundle-TransactionWithForeignReferenceInResourceBody.json",
            0,
            "Bundle.entry[0].resource.subject.reference",
            "urn:uuid",
        ),
        # PUT Binary/null with no id in the body: R4 3.1.0.4 update requires the body id to equal the URL id.
        ("Bundle-TransactionWithInvalidProcessingRecord.json", 5, "Bundle.entry[5].resource.id", "no id"),
        # PUT Observation/observation-rollback-1 whose body says observation-rollback-0.
        ("Bundle-TransactionForRollBackWithDelete.json", 2, "Bundle.entry[2].resource.id", "differs"),
        # PUT and DELETE of Patient/123 in one transaction (R4 3.1.0.11.2: identities must not overlap).
        (
            "Bundle-TransactionWithMultipleEntriesModifyingSameResource.json",
            2,
            "Bundle.entry[2]",
            "already changed",
        ),
        # Operations ($lookup) are not processed in bundles here.
        ("Bundle-TransactionWithInvalidProcessingRoutes.json", 1, "Bundle.entry[1]", "operations"),
        ("Bundle-Transaction.json", 7, "Bundle.entry[7]", "operations"),
        # A relative fullUrl (Patient/123) is not allowed: fullUrl is absolute (Bundle.entry.fullUrl).
        ("Bundle-TransactionWithPOSTFullUrlMatchesWithPUTRequestUrl.json", 1, "Bundle.entry[1]", "absolute"),
        # Microsoft-specific `?_meta-history=false` on an instance URL.
        ("Bundle-TransactionWithMetaHistory.json", 0, "Bundle.entry[0]", "both an id and search"),
        # The ImagingStudy lacks series.modality and series.instance.sopClass, both 1..1 in R4 and R4B.
        (
            "Bundle-TransactionWithConditionalCreateAndReference.json",
            1,
            "Bundle.entry[1].resource.series[0].instance[0].sopClass",
            "required",
        ),
        (
            "Bundle-TransactionWithConditionalUpdateAndReference.json",
            1,
            "Bundle.entry[1].resource.series[0].instance[0].sopClass",
            "required",
        ),
    ],
)
def test_invalid_transaction_entries_are_named(name: str, index: int, expression: str, words: str) -> None:
    error = _plan_error(name)
    assert error.entry_index == index
    assert error.expression == expression
    assert words in error.message and f"entry {index}" in error.message


def test_valid_transactions_are_planned_in_processing_order() -> None:
    plan = plan_bundle((EDGE / "Bundle-TransactionWithAllValidRoutes.json").read_bytes())
    assert [(e.index, e.method) for e in plan.entries] == [
        (0, "POST"),
        (1, "POST"),
        (2, "PUT"),
        (3, "PUT"),
        (4, "GET"),
        (5, "GET"),
    ]
    assert plan.entries[1].if_none_exist == "identifier=http:/example.org/fhir/ids|234235"
    assert plan.entries[3].conditional == (("identifier", "http:/example.org/fhir/ids|456456"),)
    assert plan.entries[2].id == "456456"
    same = plan_bundle(
        (EDGE / "Bundle-TransactionWithConditionalReferenceReferringToSameResource.json").read_bytes()
    )
    assert [(e.index, e.method) for e in same.entries] == [(1, "POST"), (0, "PUT")]
    refs = plan_bundle((EDGE / "Bundle-TransactionWithConditionalReferenceInResourceBody.json").read_bytes())
    assert [ref for e in refs.entries for _p, ref in references_in(e.resource or {})] == [
        "Patient?identifier=12345",
        "Patient?identifier=12345",
    ]
    rollback = plan_bundle((EDGE / "Bundle-TransactionForRollBack.json").read_bytes())
    assert [(e.method, e.resource_type, e.id) for e in rollback.entries] == [
        ("POST", "Patient", None),
        ("GET", "Patient", "12345"),
    ]
    valid = plan_bundle((EDGE / "Bundle-TransactionWithValidBundleEntry.json").read_bytes())
    assert len(valid.entries) == 4


def test_batch_entries_fail_alone() -> None:
    plan = plan_bundle((EDGE / "Bundle-MissingIdentifier.json").read_bytes())
    assert plan.type == "batch"
    (entry,) = plan.entries
    assert entry.error is not None and entry.resource is None
    assert entry.error.expression == "Bundle.entry[0]" and "UUID" in entry.error.message
    plan = plan_bundle((EDGE / "Bundle-BatchWithConditionalUpdateByIdentifier.json").read_bytes())
    assert [e.error for e in plan.entries] == [None] * 4
    assert all(
        e.method == "PUT" and e.conditional and e.conditional[0][0] == "identifier" for e in plan.entries
    )


def test_batch_with_invalid_elements_reports_each_entry() -> None:
    """Bundle-BatchWithInvalidEleEnums without its (bdl-7) duplicate: invalid Patients fail their entry only."""
    bundle = json.loads((EDGE / "Bundle-BatchWithInvalidEleEnums.json").read_text(encoding="utf-8-sig"))
    del bundle["entry"][4]
    plan = plan_bundle(bundle)
    errors = {e.index: e.error for e in plan.entries if e.error is not None}
    assert errors[0] is not None and errors[0].expression == "Bundle.entry[0].resource.gender1"
    assert 2 in errors and 3 not in errors
    assert "operations" in errors[6].message  # POST ValueSet/$lookup (index 6 after the deletion)
    assert plan.entries[7].method == "GET" and plan.entries[7].error is None


def test_ndjson_lines() -> None:
    lines = [
        '{"resourceType":"Patient","id":"a"}',
        "",
        "  ",
        "{",
        "[1]",
        '{"resourceType":"Nope"}',
        b"\xff\xfe",
        '{"resourceType":"Patient","birthDate":"x"}',
    ]
    out = list(read_ndjson(lines))
    assert [n for n, _ in out] == [1, 4, 5, 6, 7, 8]
    assert out[0][1] == {"resourceType": "Patient", "id": "a"}
    kinds = Counter(type(item).__name__ for _, item in out)
    assert kinds == Counter({"dict": 2, "MalformedJson": 2, "InvalidResource": 2})
    validated = list(read_ndjson(lines, validate=True))
    assert type(validated[-1][1]).__name__ == "InvalidResource"


def test_bulk_ndjson_validates(corpus: dict[str, list[dict[str, Any]]]) -> None:
    assert len(corpus["Procedure"]) >= 2056 and len(corpus["MedicationRequest"]) >= 1745
    # Every bulk resource, re-validated alone, is unchanged by validation (round-trip).
    for resource in corpus["Patient"][:13]:
        assert parse_resource(json.dumps(resource)) == resource


def test_entry_elements_are_checked_per_entry() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/1", "ifMatch": 5}},
            {"request": {"method": "GET", "url": "Patient/1"}, "full_url": "urn:uuid:x"},
            {"request": {"method": "GET", "url": "Patient/3"}},
        ],
    }
    plan = plan_bundle(bundle)
    assert [e.error.expression if e.error else None for e in plan.entries] == [
        "Bundle.entry[0].request.ifMatch",
        "Bundle.entry[1].full_url",
        None,
    ]
    with pytest.raises(InvalidBundle) as info:
        plan_bundle({**bundle, "type": "transaction"})
    assert info.value.entry_index == 0
    with pytest.raises(InvalidBundle) as shell:
        plan_bundle({"resourceType": "Bundle", "type": "batch", "id": "not valid!"})
    assert shell.value.expression == "Bundle.id" and shell.value.entry_index is None
