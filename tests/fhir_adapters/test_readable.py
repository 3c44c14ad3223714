"""fhir_adapters.readable: records, Consents and access-log entries in plain words."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from support import FIXTURES

from fhir_adapters.audit_event import audit_event
from fhir_adapters.consent import consent_rules
from fhir_adapters.readable.access import describe_access, explain
from fhir_adapters.readable.consents import (
    CHAIN_STATE_URL,
    category_types,
    describe_consent,
    draft_consent,
)
from fhir_adapters.readable.records import SECTIONS, summarise
from fhir_adapters.readable.text import human_date, quantity_text, range_text
from fhir_adapters.validation import parse_resource

HBA1C = {
    "resourceType": "Observation", "id": "o1", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"}]},
    "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-05-01T09:00:00Z",
    "valueQuantity": {"value": 7.2, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    "referenceRange": [{"low": {"value": 4.0, "unit": "%"}, "high": {"value": 5.6, "unit": "%"}}],
}


def test_dates_quantities_and_ranges_in_words() -> None:
    assert human_date("2024-03-04") == "4 March 2024"
    assert human_date("2024-03") == "March 2024"
    assert human_date("2024") == "2024"
    assert human_date("2024-03-04T09:00:00+01:00") == "4 March 2024"
    assert quantity_text({"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}) == "72 per minute"
    assert quantity_text({"value": "6.10", "unit": "%"}) == "6.10%"
    assert quantity_text({"value": 120, "code": "mm[Hg]", "system": "http://unitsofmeasure.org"}) == "120 mmHg"
    assert range_text(HBA1C["referenceRange"]) == "normal: 4.0–5.6%"


def test_an_observation_reads_with_value_unit_date_range_and_flag() -> None:
    sections = {s.key: s for s in summarise([HBA1C])}
    [line] = sections["observations"].lines
    assert line.title == "Hemoglobin A1c"
    assert line.when == "1 May 2024"
    assert line.details == ("7.2%", "normal: 4.0–5.6%")
    assert line.flag == "high"
    assert [s.key for s in summarise([])] == [key for key, *_ in SECTIONS]


def _bulk(resource_type: str, patient_id: str) -> list[dict]:
    path = FIXTURES / "bulk-10-patients" / f"{resource_type}.000.ndjson"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if patient_id in json.dumps(r)]


def test_a_synthea_record_summarises_without_raw_codes() -> None:
    patients = [json.loads(line) for line in (FIXTURES / "bulk-10-patients" / "Patient.000.ndjson").read_text().splitlines()]
    pid = patients[0]["id"]
    resources = [r for t in ("Condition", "MedicationRequest", "AllergyIntolerance", "Immunization", "Encounter")
                 for r in _bulk(t, pid)]
    assert resources
    sections = summarise(resources)
    lines = [line for s in sections for line in s.lines]
    assert len(lines) == len(resources)
    for line in lines:
        assert line.title and not line.title.isdigit()
        assert "(disorder)" not in line.title and "(finding)" not in line.title
    for section in sections:  # newest first
        assert [line.sort for line in section.lines] == sorted((line.sort for line in section.lines), reverse=True)


def test_a_drafted_consent_is_valid_compiles_and_reads_back() -> None:
    consent = draft_consent(
        patient_id="p1", recipient="Organization/clinic", recipient_display="City Clinic", purpose="TREAT",
        categories=["observations", "medications"], start=date(2026, 12, 1), end=date(2027, 12, 1),
        today=date(2026, 12, 1),
    )
    parse_resource(consent, "Consent")
    rules = consent_rules(consent)
    assert rules.status == "proposed" and rules.root.type == "permit"
    assert rules.root.actor_refs == {"Organization/clinic"}
    assert rules.root.purposes == {"TREAT"}
    assert rules.root.classes == {"Patient", "Observation", "DiagnosticReport", "MedicationRequest", "MedicationStatement"}
    view = describe_consent(consent, {})
    assert view.sentence == ("City Clinic may see your medicines and test results and measurements for your care and "
                             "treatment, from 1 December 2026 until 1 December 2027.")
    assert view.is_request and view.chain_state == "unsigned"
    assert category_types(["everything", "observations"]) == ()


def test_a_consent_with_its_chain_state_and_a_refusal() -> None:
    consent = draft_consent(patient_id="p1", recipient="Practitioner/dr", recipient_display="", purpose="HRESCH",
                            categories=["everything"], start=date(2026, 1, 1), end=None, today=date(2026, 1, 1))
    consent["status"] = "active"
    consent["extension"] = [{"url": CHAIN_STATE_URL, "extension": [
        {"url": "state", "valueCode": "active"},
        {"url": "grant", "extension": [
            {"url": "grantee", "valueString": "Practitioner/dr"}, {"url": "state", "valueCode": "active"},
            {"url": "block", "valueInteger": 12}, {"url": "transaction", "valueString": "0xabc"}]},
    ]}]
    view = describe_consent(consent, {"Practitioner/dr": "Dr Bea Okafor"})
    assert view.sentence == "Dr Bea Okafor may see all your data for health research, from 1 January 2026, with no end date."
    assert view.last_block == 12 and view.last_transaction == "0xabc" and view.is_live and not view.is_request
    assert view.grants[0].grantee_name == "Dr Bea Okafor"
    refusal = {"resourceType": "Consent", "status": "active", "patient": {"reference": "Patient/p1"},
               "policyRule": {"coding": [{"code": "OPTOUT"}]},
               "provision": {"actor": [{"reference": {"reference": "Organization/x"}}],
                             "class": [{"code": "MedicationRequest"}]}}
    assert describe_consent(refusal, {"Organization/x": "X Insurance"}).sentence.startswith(
        "X Insurance may not see your medicines for any purpose")


def test_an_access_log_entry_in_words() -> None:
    entry = {
        "time": datetime(2026, 11, 30, 14, 5, tzinfo=UTC), "actor": "client:ehr", "organization": "Organization/h1",
        "role": "clinician", "purpose": "ETREAT", "action": "read", "resource_type": "Observation",
        "resource_id": "o1", "patient_pseudonym": "ab" * 16, "decision": "permit", "reason": "break-glass",
        "break_glass": True,
    }
    event = audit_event(entry, entry_id=7, leaf_index=41, patient_ref="Patient/p1", actor_display="Dr Bea Okafor",
                        organization_display="General Hospital", break_glass_reason="unconscious in A&E")
    view = describe_access(event, me="user:me")
    assert (view.who, view.organization, view.role) == ("Dr Bea Okafor", "General Hospital", "clinician")
    assert (view.action, view.what, view.outcome) == ("opened", "test results and measurements", "permitted")
    assert view.break_glass and view.break_glass_reason == "unconscious in A&E"
    assert view.purpose == "emergency care" and view.leaf_index == 41
    assert view.when == "30 November 2026 at 14:05 UTC"
    mine = describe_access(audit_event({**entry, "actor": "user:me", "reason": "policy:own-data", "break_glass": False},
                                       entry_id=8, leaf_index=None, patient_ref=None), me="user:me")
    assert mine.who == "You" and mine.who_is_me and mine.why == "You looked at your own data."
    anonymous = describe_access(audit_event({**entry, "actor": "client:x"}, entry_id=9, leaf_index=None, patient_ref=None))
    assert anonymous.who == "A connected system"


@pytest.mark.parametrize(("reason", "words"), [
    ("consent:Consent/c1#Consent.provision", "Your consent allowed it."),
    ("policy:treating-organisation", "They care for you, and it was for your treatment."),
    ("no-applicable-consent", "No consent of yours allows it."),
    ("consent-grant-not-live:Consent/c1#Consent.provision(revoked)", "Your consent was not active on the ledger"),
    ("index-stale(consent state is not fresh enough)", "The ledger could not be checked"),
    ("", "No reason was recorded."),
    ("policy:access-request", "They asked you for access. Nothing is shared unless you approve it"),
    ("policy:access-request-limit", "They asked too many patients for access that day"),
    ("policy:own-request", "They read their own request for access"),
])
def test_reasons_in_words(reason: str, words: str) -> None:
    assert explain(reason).startswith(words)


def test_a_consents_nested_provisions_are_its_limits_in_words() -> None:
    """The exceptions a Consent makes (nested provisions) are said, not left out: a study consent narrows a type to
    some codes and a period; a patient's own refusals take labelled or old data out."""
    from datetime import UTC, datetime

    from fhir_adapters.consent import Period
    from fhir_adapters.research_study import DataCategory, StudyTerms, study_consent_provision

    terms = StudyTerms(
        study_id="s1", status="active", title="BMI", cohort_group_id=None, criteria={},
        categories=(DataCategory("Patient"), DataCategory("Observation", (("http://loinc.org", "39156-5"),))),
        data_period=Period(datetime(2020, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
        enrolment_window=None, max_participants=None, owner_principal=None, owner_organization=None)
    study = {"resourceType": "Consent", "status": "active", "provision": study_consent_provision("s1", terms)}
    view = describe_consent(study, {"ResearchStudy/s1": "the BMI study"})
    assert view.kinds_text == "your test results and measurements"
    assert view.exceptions == (("of your test results and measurements, only those coded 39156-5 recorded from "
                                "1 January 2020 to 1 January 2025"),)
    own = {"resourceType": "Consent", "status": "active", "provision": {"type": "permit", "provision": [
        {"type": "deny", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY",
                                            "display": "psychiatry"}]},
        {"type": "deny", "class": [{"code": "Condition"}], "provision": [{"type": "permit", "actor": [
            {"reference": {"reference": "Practitioner/dr"}}]}]}]}}
    assert describe_consent(own, {"Practitioner/dr": "Dr Bea Okafor"}).exceptions == (
        "not your data labelled psychiatry", "of your conditions and diagnoses, only those for Dr Bea Okafor")
    plain = draft_consent(patient_id="p1", recipient="Organization/clinic", recipient_display="", purpose="TREAT",
                          categories=["everything"], start=date(2026, 1, 1), end=None, today=date(2026, 1, 1))
    assert describe_consent(plain, {}).exceptions == ()
