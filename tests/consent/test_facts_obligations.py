"""What the engine is told about a resource, and how its obligations are carried out."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from healthledger.consent.engine import Obligation
from healthledger.consent.facts import resource_facts
from healthledger.consent.obligations import Obligations
from healthledger.principal import Principal
from healthledger.store.envelope import BlindIndexer

LABEL_URL = "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-inline-sec-label"
PSY = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")


def observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "subject": {"reference": "Patient/p1"},
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        **extra,
    }


def test_facts_name_patient_labels_codes_and_clinical_time() -> None:
    facts = resource_facts("Observation", "", observation(effectiveDateTime="2024-05"))
    assert facts.patient_id == "p1" and facts.resource_id == "o1"
    assert ("http://loinc.org", "4548-4") in facts.codes
    assert ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory") in facts.codes
    assert facts.security_labels == {("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")}
    assert facts.date_range == (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC))
    open_period = resource_facts("Encounter", "e", {"resourceType": "Encounter", "period": {"start": "2024-01-02"}})
    assert open_period.date_range == (datetime(2024, 1, 2, tzinfo=UTC),) * 2
    assert resource_facts("Organization", "x", {"resourceType": "Organization"}).patient_id == ""
    assert resource_facts("Observation", "x", None).patient_id == ""


def test_inline_labels_are_facts_and_redaction_removes_exactly_those_elements() -> None:
    note = {"text": "sensitive", "extension": [{"url": LABEL_URL, "valueCoding": {"system": PSY[0], "code": "PSY"}}]}
    resource = observation(note=[note, {"text": "routine"}])
    assert PSY in resource_facts("Observation", "", resource).element_labels
    store = SimpleNamespace(indexer=BlindIndexer(b"k" * 32, "t"))
    shown = Obligations(store)(resource, Obligation("redact-security-labels", frozenset({PSY})),
                               Principal("dr", "clinician"))
    assert shown["note"] == [{"text": "routine"}] and resource["note"][0]["text"] == "sensitive"


def test_de_identification_pseudonyms_are_stable_per_recipient_and_unlinkable_across() -> None:
    store = SimpleNamespace(indexer=BlindIndexer(b"k" * 32, "t"))
    obligations = Obligations(store)
    deid = Obligation("de-identify")
    a1 = obligations(observation(), deid, Principal("client:uni-a", "researcher"))
    a2 = obligations(observation(), deid, Principal("client:uni-a", "researcher"))
    b = obligations(observation(), deid, Principal("client:uni-b", "researcher"))
    assert a1["subject"] == a2["subject"] != b["subject"]
    assert "p1" not in str(a1) and a1["code"] == observation()["code"]


def test_a_resource_labelled_as_a_whole_is_withheld_not_failed() -> None:
    store = SimpleNamespace(indexer=BlindIndexer(b"k" * 32, "t"))
    labelled = observation(extension=[{"url": LABEL_URL, "valueCoding": {"system": PSY[0], "code": "PSY"}}])
    shown = Obligations(store)(labelled, Obligation("redact-security-labels", frozenset({PSY})),
                               Principal("dr", "clinician"))
    assert shown is None
