"""deidentify (HIPAA Safe Harbor), redact_labelled (DS4P inline labels): Synthea, R4B models, properties."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import FIXTURES

from fhir_adapters.bundles import rewrite_references
from fhir_adapters.compartment import COMPARTMENT_PARAMS
from fhir_adapters.deidentify import (
    ATTACHMENT_PAYLOAD,
    DATA_ABSENT_REASON,
    INLINE_SECURITY_LABEL,
    PSEUDED,
    REDACTED,
    REQUIRED_MASKED,
    date_kind,
    deidentify,
    dropped,
    element_labels,
    is_address,
    is_attachment,
    redact_labelled,
)
from fhir_adapters.errors import InvalidResource
from fhir_adapters.validation import R4B_MODELLED_TYPES, parse_resource

SYNTHEA = FIXTURES / "synthea"
EXAMPLES = FIXTURES / "fhir-r4-examples"
NOW_YEAR = 2024
KEY = b"study-key-for-tests"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MASKED = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}


def pseudonym(key: str) -> str:
    """A study pseudonym as the caller would make one: HMAC under a key the recipient does not hold."""
    return hmac.new(KEY, key.encode(), hashlib.sha256).hexdigest()[:32]


def deid(resource: dict[str, Any]) -> dict[str, Any]:
    return deidentify(resource, pseudonym=pseudonym, now_year=NOW_YEAR)


def patient_bundles() -> list[Path]:
    return sorted(p for p in SYNTHEA.glob("*.json") if not p.name.startswith(("hospital", "practitioner")))


def stored_resources(path: Path) -> list[dict[str, Any]]:
    """A Synthea transaction Bundle's resources as the store holds them: `urn:uuid:` references -> Type/id."""
    bundle = json.loads(path.read_text())
    mapping = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
    }
    return [rewrite_references(e["resource"], mapping) for e in bundle["entry"]]


@cache
def synthea() -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Bundle file name -> (stored resources, their de-identified copies), for every Synthea Bundle."""
    out = {}
    for path in sorted(SYNTHEA.glob("*.json")):
        resources = stored_resources(path)
        out[path.name] = (resources, [deid(r) for r in resources])
    return out


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


# --- Synthea patients ---------------------------------------------------------------------------------------


def identifying_values(patient: dict[str, Any]) -> dict[str, set[str]]:
    """What Safe Harbor says must go, read from a Synthea Patient."""
    return {
        "name": {p for n in patient.get("name", []) for p in [n.get("family", ""), *n.get("given", [])]},
        "identifier": {i["value"] for i in patient.get("identifier", [])} | {patient["id"]},
        "telecom": {t["value"] for t in patient.get("telecom", [])},
        "address": {
            part
            for a in patient.get("address", [])
            for part in [*a.get("line", []), a.get("city", ""), a.get("postalCode", "")]
        },
        "birthDate": {patient["birthDate"]},
        "mothersMaidenName": {
            e["valueString"]
            for e in patient.get("extension", [])
            if e["url"].endswith("patient-mothersMaidenName")
        },
    }


@pytest.mark.parametrize("bundle", [p.name for p in patient_bundles()])
def test_synthea_patient_identifiers_do_not_survive(bundle: str) -> None:
    resources, out = synthea()[bundle]
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    found = identifying_values(patient)
    assert all(found[k] - {""} for k in ("name", "identifier", "telecom", "address", "birthDate"))
    text = json.dumps(out)
    for kind, values in found.items():
        for value in values - {""}:
            assert not re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text), (kind, value)
    # nor, as values, those of the practitioners and organisations in the Bundle
    values = set(strings(out))
    for resource in resources:
        assert resource["id"] not in values
        assert not {i["value"] for i in resource.get("identifier", [])} & values
        assert not {t["value"] for t in resource.get("telecom", [])} & values
        if isinstance(resource.get("name"), list):
            assert not {n["family"] for n in resource["name"]} & values


def test_synthea_no_date_finer_than_a_year() -> None:
    date = re.compile(r"\d{4}-\d{2}")
    for _, out in synthea().values():
        for value in strings(out):
            if date.search(value):
                assert re.fullmatch(r"\d{4}-01-01T00:00:00Z", value), value  # instants: the year only


@pytest.mark.parametrize("bundle", [p.name for p in sorted(SYNTHEA.glob("*.json"))])
def test_synthea_output_validates_as_r4b(bundle: str) -> None:
    for resource in synthea()[bundle][1]:
        assert parse_resource(resource) == resource


def test_synthea_codes_values_and_years_survive() -> None:
    checked = 0
    for resources, out in synthea().values():
        for before, after in zip(resources, out, strict=True):
            assert after["resourceType"] == before["resourceType"]
            assert {"system": PSEUDED[0], "code": PSEUDED[1]} in after["meta"]["security"]
            if before["resourceType"] in ("Observation", "Condition", "Procedure", "Immunization"):
                key = "vaccineCode" if before["resourceType"] == "Immunization" else "code"
                assert after[key]["coding"] == before[key]["coding"]
                checked += 1
            if before["resourceType"] == "Observation":
                assert after.get("valueQuantity") == before.get("valueQuantity")
                if "valueCodeableConcept" in before:
                    assert after["valueCodeableConcept"]["coding"] == before["valueCodeableConcept"]["coding"]
                for part, kept in zip(before.get("component", []), after.get("component", []), strict=True):
                    assert kept["code"] == {"coding": part["code"]["coding"]}
                    assert kept["valueQuantity"] == part["valueQuantity"]
                assert after["effectiveDateTime"] == before["effectiveDateTime"][:4]
                assert after["issued"] == before["issued"][:4] + "-01-01T00:00:00Z"
            if before["resourceType"] == "Encounter":
                assert after["period"] == {k: v[:4] for k, v in before["period"].items()}
                assert after["class"] == before["class"]
            if before["resourceType"] == "Patient":
                assert after["birthDate"] == before["birthDate"][:4]
                assert after["gender"] == before["gender"]
                assert after["address"] == [{"country": "US"}]
                assert not {"name", "telecom", "identifier", "text", "contact", "photo"} & after.keys()
    assert checked > 200


def test_synthea_pseudonyms_are_consistent_across_resources() -> None:
    ids: dict[str, set[str]] = {}
    all_out = [r for _, out in synthea().values() for r in out]
    for r in all_out:
        ids.setdefault(r["resourceType"], set()).add(r["id"])
    for bundle in patient_bundles():
        resources, out = synthea()[bundle.name]
        (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
        (new_patient,) = [r for r in out if r["resourceType"] == "Patient"]
        assert new_patient["id"] == pseudonym(f"Patient/{patient['id']}") != patient["id"]
        for before, after in zip(resources, out, strict=True):
            for key in ("subject", "patient", "beneficiary"):
                if key in before:
                    assert after[key] == {"reference": f"Patient/{new_patient['id']}"}
    # every reference of the de-identified data resolves to a de-identified resource (or a contained one)
    refs = [v for r in all_out for k, v in _keyed_strings(r) if k == "reference"]
    assert len(refs) > 1000
    for ref in refs:
        if ref.startswith("#"):
            continue
        kind, _, new_id = ref.partition("/")
        assert new_id in ids[kind], ref
    # the same input gives the same output (a study can de-identify in batches)
    assert [deid(r) for r in next(iter(synthea().values()))[0]] == next(iter(synthea().values()))[1]


def _keyed_strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, item in value.items():
            yield from _keyed_strings(item, k)
    elif isinstance(value, list):
        for item in value:
            yield from _keyed_strings(item, key)
    elif isinstance(value, str):
        yield key, value


def test_contained_resources_and_local_references() -> None:
    eob = next(r for _, out in synthea().values() for r in out if r["resourceType"] == "ExplanationOfBenefit")
    contained = {c["id"] for c in eob["contained"]}
    assert eob["referral"]["reference"][1:] in contained
    assert all("meta" not in c for c in eob["contained"])  # no PSEUDED on contained resources
    # Coverage.payor [{"display": "private"}] is required: masked, not removed
    coverage = next(c for c in eob["contained"] if c["resourceType"] == "Coverage")
    assert coverage["payor"] == [MASKED]


def test_examples_from_the_r4_spec_still_validate() -> None:
    checked = 0
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text())
        try:
            parse_resource(resource)
        except InvalidResource:
            continue  # fixtures/README.md: one example fails R4B as it is
        parse_resource(deid(resource))
        checked += 1
    assert checked > 50


# --- rules, on constructed resources ------------------------------------------------------------------------


def test_dates_are_cut_to_the_year() -> None:
    out = deid({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                  "code": "316049"}]},
        "subject": {"reference": "Patient/1"},
        "authoredOn": "2019-02-25T16:05:00-05:00",
        "dosageInstruction": [{"timing": {
            "event": ["2019-03-01", "2019-03-02T08:00:00Z"],
            "repeat": {"when": ["MORN", "EVE"], "boundsPeriod": {"start": "2019-03-01", "end": "2019-04"}},
        }}],
        "dispenseRequest": {"validityPeriod": {"start": "2019-03-01"}},
        "extension": [{"url": "http://example.org/x", "valueDateTime": "2018-12-31T23:59:59+14:00"}],
    })
    assert out["authoredOn"] == "2019"
    timing = out["dosageInstruction"][0]["timing"]
    assert timing["event"] == ["2019", "2019"]
    assert timing["repeat"] == {"when": ["MORN", "EVE"], "boundsPeriod": {"start": "2019", "end": "2019"}}
    assert out["dispenseRequest"] == {"validityPeriod": {"start": "2019"}}
    assert out["extension"][0]["valueDateTime"] == "2018"
    assert parse_resource(out) == out


def test_instants_keep_their_form() -> None:
    out = deid({
        "resourceType": "Appointment", "status": "booked", "participant": [{"status": "accepted"}],
        "start": "2013-12-10T09:00:00Z", "end": "2013-12-10T11:00:00Z", "created": "2013-10-10",
        "meta": {"lastUpdated": "2020-01-02T03:04:05Z", "versionId": "3", "tag": [{"code": "x"}]},
    })
    assert out["start"] == out["end"] == "2013-01-01T00:00:00Z"
    assert out["created"] == "2013"
    assert out["meta"] == {"security": [{"system": PSEUDED[0], "code": PSEUDED[1]}]}
    assert parse_resource(out) == out


def test_birth_date_and_ages_over_89() -> None:
    def patient(birth: str) -> dict[str, Any]:
        return {"resourceType": "Patient", "birthDate": birth,
                "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                              "valueDateTime": f"{birth}T10:00:00Z"}]}}

    young = deid(patient("1935-05-01"))  # at most 89 in 2024
    assert young["birthDate"] == "1935" and young["_birthDate"]["extension"][0]["valueDateTime"] == "1935"
    old = deid(patient("1934-12-31"))  # 89 or 90 in 2024: may be over 89, so removed
    assert "birthDate" not in old and "_birthDate" not in old

    history = deid({
        "resourceType": "FamilyMemberHistory", "status": "completed", "patient": {"reference": "Patient/1"},
        "relationship": {"coding": [{"code": "FTH"}]},
        "ageAge": {"value": 1100, "unit": "months", "system": "http://unitsofmeasure.org", "code": "mo"},
        "condition": [{"code": {"coding": [{"code": "x"}]}, "onsetAge": {"value": 74, "code": "a"}},
                      {"code": {"coding": [{"code": "y"}]}, "onsetAge": {"value": 93.5, "unit": "years"}}],
    })
    over = {"value": 90, "comparator": ">=", "unit": "years", "system": "http://unitsofmeasure.org",
            "code": "a"}
    assert history["ageAge"] == over
    assert [c["onsetAge"] for c in history["condition"]] == [{"value": 74, "code": "a"}, over]
    assert parse_resource(history) == history


def test_identifiers_free_text_attachments_and_references() -> None:
    resource = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane Roe</div>"},
        "identifier": [{"system": "urn:x", "value": "ACC-123"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}], "text": "CBC for Jane Roe"},
        "subject": {"reference": "https://ehr.example.org/fhir/Patient/p7/_history/2", "display": "Jane Roe"},
        "performer": [{"identifier": {"value": "NPI-1"}, "display": "Dr Who"}],
        "resultsInterpreter": [{"reference": "urn:uuid:AB9E0B3C-0000-4000-8000-000000000001"}],
        "conclusion": "Jane Roe is fine",
        "presentedForm": [{"contentType": "application/pdf", "data": "SmFuZSBSb2U=", "title": "Jane Roe.pdf",
                           "url": "https://ehr.example.org/Binary/9", "creation": "2020-02-02"}],
        "extension": [
            {"url": "http://example.org/mother", "valueString": "Mary Roe"},
            {"url": "http://example.org/home", "valueAddress": {
                "line": ["1 Main St"], "city": "Springfield", "postalCode": "12345", "country": "US"}},
            {"url": "http://example.org/who", "valueHumanName": {"family": "Roe"}},
        ],
    }
    out = deid(resource)
    text = json.dumps(out)
    for secret in ("Jane Roe", "ACC-123", "NPI-1", "Dr Who", "SmFuZSBSb2U=", "ehr.example.org", "Mary Roe",
                   "1 Main St", "Springfield", "12345", "2020-02-02", "p7", "AB9E0B3C"):
        assert secret not in text, secret
    assert out["id"] == pseudonym("DiagnosticReport/r1")
    assert out["subject"] == {"reference": f"Patient/{pseudonym('Patient/p7')}"}
    assert out["performer"] == [MASKED]  # emptied Reference: masked, since required elements may be
    assert out["resultsInterpreter"][0]["reference"].startswith("urn:uuid:")
    # urn:uuid compares as a value: upper or lower case, the same pseudonym
    lowercase = [{"reference": "urn:uuid:ab9e0b3c-0000-4000-8000-000000000001"}]
    lower = deid({**resource, "resultsInterpreter": lowercase})
    assert lower["resultsInterpreter"] == out["resultsInterpreter"]
    assert out["code"] == {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]}
    assert out["presentedForm"] == [{"contentType": "application/pdf", "creation": "2020"}]
    assert out["extension"] == [{"url": "http://example.org/home", "valueAddress": {"country": "US"}}]
    assert "text" not in out and "identifier" not in out
    assert parse_resource(out) == out


def test_required_elements_are_masked_not_removed() -> None:
    out = deid({"resourceType": "Endpoint", "status": "active", "connectionType": {"code": "hl7-fhir-rest"},
                "payloadType": [{"coding": [{"code": "any"}]}], "address": "https://10.1.2.3/fhir"})
    assert "address" not in out and out["_address"] == MASKED
    assert "10.1.2.3" not in json.dumps(out)
    assert parse_resource(out) == out


def test_pseudonym_must_return_an_id() -> None:
    with pytest.raises(ValueError, match="FHIR id"):
        deidentify({"resourceType": "Patient", "id": "1"}, pseudonym=lambda _: "not an id!", now_year=2024)


def test_bundles_are_de_identified_entry_by_entry() -> None:
    bundle = {
        "resourceType": "Bundle", "type": "searchset", "total": 1,
        "link": [{"relation": "self", "url": "https://x.org/fhir/Patient?name=Roe"}],
        "entry": [{"fullUrl": "https://x.org/fhir/Patient/p7",
                   "resource": {"resourceType": "Patient", "id": "p7", "name": [{"family": "Roe"}]},
                   "search": {"mode": "match"}}],
    }
    out = deid(bundle)
    assert "Roe" not in json.dumps(out) and "link" not in out
    entry = out["entry"][0]
    assert entry["resource"]["id"] == pseudonym("Patient/p7")
    assert entry["fullUrl"].startswith("urn:uuid:") and entry["search"] == {"mode": "match"}
    assert parse_resource(out) == out


# --- the rules against every element of the R4B models ------------------------------------------------------


# Datatypes derived from BackboneElement: their elements are named by the datatype, not by the path.
BACKBONE_DATATYPES = frozenset({
    "Dosage", "ElementDefinition", "Timing", "MarketingStatus", "ProdCharacteristic", "ProductShelfLife",
    "Population",
})


@cache
def r4b_elements() -> list[tuple[str, str, str, bool, bool, bool]]:
    """(path of the owning object, JSON name, FHIR type, required, one of a choice, primitive) of every
    element reachable from a resource through elements the rules keep (datatypes: their type name as path)."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.backboneelement import BackboneElement

    found: list[tuple[str, str, str, bool, bool, bool]] = []
    seen_types: set[str] = set()

    def walk(model: Any, path: str, ancestors: frozenset[str] = frozenset()) -> None:
        ancestors |= {model.__name__}
        for field in model.model_fields.values():
            alias, extra = field.alias, field.json_schema_extra or {}
            if not alias or alias.startswith("_") or alias in ("resourceType", "fhir_comments"):
                continue
            annotation = str(field.annotation)
            complex_type = re.search(r"abc\.(\w+)Type", annotation)
            type_name = complex_type.group(1) if complex_type else _primitive_name(field.annotation)
            required = field.is_required() or bool(extra.get("element_required"))
            choice = bool(extra.get("one_of_many"))
            required = required or bool(extra.get("one_of_many_required"))
            found.append((path, alias, type_name, required, choice, complex_type is None))
            value: Any = {} if complex_type else "x"
            if dropped(alias, path, value) or (is_address(alias) and not complex_type):
                continue
            if complex_type and type_name not in ("Resource", "FHIRPrimitiveExtension"):
                nested = get_fhir_model_class(type_name)
                if nested.__name__ in ancestors:
                    continue  # recursive elements (Questionnaire.item.item): seen at the outer level
                if issubclass(nested, BackboneElement) and type_name not in BACKBONE_DATATYPES:
                    walk(nested, f"{path}.{alias}", ancestors)
                elif type_name not in seen_types:
                    seen_types.add(type_name)
                    walk(nested, type_name)

    for resource_type in sorted(R4B_MODELLED_TYPES):  # every model, served or not: the tables cover them all
        walk(get_fhir_model_class(resource_type), resource_type)
    return found


def _primitive_name(annotation: Any) -> str:
    for arg in typing.get_args(annotation) or (annotation,):
        for meta in getattr(arg, "__metadata__", ()):
            return meta.__name__ if isinstance(meta, type) else type(meta).__name__
        if arg is bool:
            return "Boolean"
    return "unknown"


def test_every_date_dateTime_and_instant_element_is_cut() -> None:
    dates = [(p, n, t) for p, n, t, *_ in r4b_elements() if t in ("Date", "DateTime", "Instant")]
    assert len(dates) > 200
    for path, name, kind in dates:
        assert date_kind(name, path) is not None, f"{path}.{name}"
        if kind == "Instant":
            assert date_kind(name, path) == "instant", f"{path}.{name}"
    # and no time-of-day or string element is taken for one by name alone, except where shared names say so
    for path, name, kind, *_ in r4b_elements():
        if kind == "Time":
            assert date_kind(name, path) is None, f"{path}.{name}"


def test_every_identifying_element_is_removed_or_reduced() -> None:
    removed_types = {"HumanName", "ContactPoint", "Identifier", "Annotation", "Narrative", "Signature"}
    counted = 0
    for path, name, kind, *_ in r4b_elements():
        if kind in removed_types:
            assert dropped(name, path, {}), f"{path}.{name}: {kind}"
            counted += 1
        elif kind == "Address":
            assert is_address(name), f"{path}.{name}"
        elif kind == "Attachment":
            assert is_attachment(name) or dropped(name, path, {}), f"{path}.{name}"
    assert counted > 100


# Every string element of patient data (patient-compartment resources, the people and places they point to,
# the datatypes they use) that deidentify keeps, each a decision: units, versions, product and device models.
KEPT_STRING_ELEMENTS = frozenset({
    "Age.unit", "Count.unit", "Distance.unit", "Duration.unit", "Quantity.unit", "Coding.version",
    "Reference.reference",  # pseudonymised
    "SampledData.data",  # measurements
    "AdverseEvent.suspectEntity.causality.productRelatedness",
    "AuditEvent.entity.detail.type", "AuditEvent.source.site",
    "Coverage.class.name", "Coverage.network", "CoverageEligibilityResponse.insurance.item.name",
    "ExplanationOfBenefit.benefitBalance.name",
    "Device.deviceName.name", "Device.manufacturer", "Device.modelNumber", "Device.partNumber",
    "Device.specialization.version", "Device.version.value", "Media.deviceName",
    "Immunization.education.documentType", "Immunization.lotNumber",  # vaccine lots are shared by many
    "Immunization.protocolApplied.doseNumberString", "Immunization.protocolApplied.series",
    "Immunization.protocolApplied.seriesDosesString", "ImmunizationEvaluation.doseNumberString",
    "ImmunizationEvaluation.series", "ImmunizationEvaluation.seriesDosesString",
    "ImmunizationRecommendation.recommendation.doseNumberString",
    "ImmunizationRecommendation.recommendation.series",
    "ImmunizationRecommendation.recommendation.seriesDosesString",
    "MolecularSequence.observedSeq", "MolecularSequence.referenceSeq.genomeBuild",
    "MolecularSequence.repository.name", "MolecularSequence.variant.cigar",
    "MolecularSequence.variant.observedAllele", "MolecularSequence.variant.referenceAllele",
    "NutritionOrder.enteralFormula.additiveProductName",
    "NutritionOrder.enteralFormula.baseFormulaProductName", "NutritionOrder.supplement.productName",
    "QuestionnaireResponse.item.linkId", "RequestGroup.action.prefix",
    "ResearchSubject.actualArm", "ResearchSubject.assignedArm",
    "VisionPrescription.lensSpecification.brand", "VisionPrescription.lensSpecification.color",
})
PATIENT_DATA_TYPES = frozenset(COMPARTMENT_PARAMS) | {"Device"} | {
    "Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "RelatedPerson", "Person",
    "Age", "Count", "Distance", "Duration", "Quantity", "Coding", "CodeableConcept", "Reference",
    "SampledData",
    "Period", "Range", "Ratio", "Money", "Timing", "Dosage", "Extension", "Attachment",
}


def test_every_kept_string_of_patient_data_is_a_decision() -> None:
    kept = {
        f"{path}.{name}"
        for path, name, kind, *_ in r4b_elements()
        if kind in ("String", "Markdown") and name != "id" and path.split(".")[0] in PATIENT_DATA_TYPES
        and not dropped(name, path, "x") and not is_address(name)
        and not (path == "Attachment" and name in ATTACHMENT_PAYLOAD)
    }
    assert kept == KEPT_STRING_ELEMENTS  # free text found by a new rule or a new model: decide about it


def test_required_elements_removed_are_masked_unless_primitive_choices() -> None:
    unmaskable = set()
    for path, name, _, required, choice, primitive in r4b_elements():
        if path.startswith("ElementDefinition"):
            continue  # a datatype of StructureDefinitions only, whose elements no FHIR path rule can name
        value: Any = "x" if primitive else {}
        if not required or not (dropped(name, path, value) or (is_address(name) and primitive)):
            continue
        if f"{path}.{name}" in REQUIRED_MASKED:
            continue
        assert choice and primitive, f"{path}.{name} is required: add it to REQUIRED_MASKED"
        unmaskable.add(f"{path}.{name}")
    # the R4B models refuse a required choice given only as `_name`: these are removed (documented)
    assert {"Communication.payload.contentString", "Immunization.occurrenceString"} <= unmaskable
    for path in REQUIRED_MASKED:  # no stale entries
        owner, _, name = path.rpartition(".")
        assert any(p == owner and n == name and r for p, n, _, r, *_ in r4b_elements()), path


# --- redact_labelled ----------------------------------------------------------------------------------------

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PSY = (CONFIDENTIALITY, "PSY")
ETH = (CONFIDENTIALITY, "ETH")


def label(coding: tuple[str, str]) -> dict[str, Any]:
    return {"url": INLINE_SECURITY_LABEL, "valueCoding": {"system": coding[0], "code": coding[1]}}


def labelled_observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "2"},
        "contained": [
            {"resourceType": "Practitioner", "id": "pr", "extension": [label(PSY)]},
            {"resourceType": "Practitioner", "id": "ok"},
        ],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"},
                            {"system": "http://loinc.org", "code": "2-6", "extension": [label(ETH)]}]},
        "subject": {"reference": "Patient/1"},
        "valueQuantity": {"value": 5, "extension": [label(PSY)]},
        "component": [
            {"code": {"coding": [{"code": "a"}]}, "valueString": "kept"},
            {"code": {"coding": [{"code": "b"}]}, "valueString": "gone",
             "_valueString": {"extension": [label(PSY)]}},
            {"code": {"coding": [{"code": "c", "extension": [label(PSY)]}]}},
        ],
        "interpretation": [{"coding": [{"code": "H"}], "extension": [label(("urn:other", "PSY"))]}],
        "note": [{"text": "one"}, {"text": "two"}],
    }


def test_redact_removes_exactly_the_labelled_elements() -> None:
    resource = labelled_observation()
    before = copy.deepcopy(resource)
    out = redact_labelled(resource, frozenset({PSY}))
    assert resource == before  # the input is not touched
    expected = copy.deepcopy(before)
    expected["contained"] = [{"resourceType": "Practitioner", "id": "ok"}]
    del expected["valueQuantity"]
    expected["component"] = [{"code": {"coding": [{"code": "a"}]}, "valueString": "kept"},
                             {"code": {"coding": [{"code": "b"}]}}]  # the third: emptied, so removed
    expected["meta"] = {"versionId": "2", "security": [{"system": REDACTED[0], "code": REDACTED[1]}]}
    assert out == expected  # ETH and the other system's PSY stay


def test_redact_rule_without_system_matches_any_system() -> None:
    out = redact_labelled(labelled_observation(), frozenset({("", "PSY"), ETH}))
    assert "interpretation" not in out and "valueQuantity" not in out
    assert out["code"]["coding"] == [{"system": "http://loinc.org", "code": "1-8"}]


def test_redact_primitives_in_arrays_keep_their_extensions_aligned() -> None:
    patient = {"resourceType": "Patient", "name": [{
        "given": ["Ann", "Secret", "Mae"],
        "_given": [None, {"extension": [label(PSY)]}, {"extension": [{"url": "urn:x", "valueCode": "y"}]}],
    }], "birthDate": "1970-01-01", "_birthDate": {"extension": [label(PSY)]}}
    out = redact_labelled(patient, frozenset({PSY}))
    assert out["name"] == [{"given": ["Ann", "Mae"],
                            "_given": [None, {"extension": [{"url": "urn:x", "valueCode": "y"}]}]}]
    assert "birthDate" not in out and "_birthDate" not in out


def test_redact_nothing_matching_is_an_equal_copy() -> None:
    resource = labelled_observation()
    out = redact_labelled(resource, frozenset({("urn:none", "NOPE")}))
    assert out == resource and out is not resource
    assert redact_labelled(resource, frozenset()) == resource


def test_redact_a_labelled_root_is_refused() -> None:
    with pytest.raises(InvalidResource, match="meta.security"):
        redact_labelled({"resourceType": "Observation", "extension": [label(PSY)]}, frozenset({PSY}))


def test_element_labels() -> None:
    assert element_labels(labelled_observation()) == {PSY, ETH, ("urn:other", "PSY")}
    unsystematic = {"url": INLINE_SECURITY_LABEL, "valueCoding": {"code": "R"}}
    no_system = {"resourceType": "Basic", "extension": [unsystematic]}
    assert element_labels(no_system) == {("", "R")}
    assert element_labels({"resourceType": "Basic", "code": {"coding": [{"code": "x"}]}}) == frozenset()


def test_redact_then_deidentify() -> None:
    out = deid(redact_labelled(labelled_observation(), frozenset({PSY})))
    security = out["meta"]["security"]
    assert {"system": REDACTED[0], "code": REDACTED[1]} in security
    assert {"system": PSEUDED[0], "code": PSEUDED[1]} in security


# --- properties ---------------------------------------------------------------------------------------------

FHIR_KEYS = [
    "resourceType", "id", "meta", "security", "text", "name", "family", "given", "identifier", "value",
    "system",
    "code", "display", "reference", "subject", "contained", "extension", "url", "valueString", "valueCoding",
    "birthDate", "_birthDate", "address", "country", "line", "telecom", "period", "start", "end", "issued",
    "onsetAge", "note", "description", "content", "data", "fullUrl", "entry", "resource", "_given", "contact",
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["Patient", "Observation", "2019-02-25", "1920-01-01T10:00:00Z",
                                           "Patient/1", "#c1", "urn:uuid:x", "1930", "a"]),
)
KEYS = st.one_of(st.sampled_from(FHIR_KEYS), st.text(max_size=8))
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=30,
)
RESOURCES = st.dictionaries(KEYS, JSON, max_size=8)


def containers(value: Any) -> Iterator[int]:
    if isinstance(value, dict | list):
        yield id(value)
        for item in value.values() if isinstance(value, dict) else value:
            yield from containers(item)


def shape(value: Any, key: str = "") -> Any:
    """The structure with pseudonyms (ids, references, fullUrls) blanked out."""
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v, key) for v in value]
    if key in ("id", "reference", "fullUrl") and isinstance(value, str):
        return "*"
    return value


@SETTINGS
@given(RESOURCES)
def test_deidentify_never_raises_and_copies(resource: dict[str, Any]) -> None:
    before = copy.deepcopy(resource)
    out = deid(resource)
    assert resource == before
    assert out is not resource
    assert not set(containers(out)) & set(containers(resource))  # no shared dict or list
    json.dumps(out)


@SETTINGS
@given(RESOURCES)
def test_deidentify_is_idempotent_on_its_output(resource: dict[str, Any]) -> None:
    once = deid(resource)
    assert shape(deid(once)) == shape(once)


SECRET = st.from_regex(r"\AZ[a-z]{6}q\Z")  # a token that cannot come from the code's own constants


@st.composite
def patients_with_secrets(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    secrets = [draw(SECRET) for _ in range(9)]
    patient = {
        "resourceType": "Patient",
        "id": secrets[0],
        "text": {"status": "generated", "div": f"<div>{secrets[1]}</div>"},
        "identifier": [{"system": "urn:x", "value": secrets[2]}],
        "name": [{"family": secrets[3], "given": [secrets[4]]}],
        "telecom": [{"system": "phone", "value": secrets[5]}],
        "address": [{"line": [secrets[6]], "postalCode": secrets[7], "country": "US"}],
        "generalPractitioner": [{"reference": "Practitioner/x", "display": secrets[8]}],
        "birthDate": "1980-06-15",
        "extension": [draw(JSON)],
    }
    if draw(st.booleans()):
        patient["contained"] = [dict(patient, resourceType="RelatedPerson")]
    return patient, secrets


@SETTINGS
@given(patients_with_secrets())
def test_identifiers_never_reappear(case: tuple[dict[str, Any], list[str]]) -> None:
    patient, secrets = case
    once = deid(patient)
    twice = deid(once)
    for out in (once, twice):
        text = json.dumps(out)
        assert not [s for s in secrets if s in text]
        assert "1980-06-15" not in text


@SETTINGS
@given(RESOURCES, st.sampled_from([PSY, ("", "PSY"), ETH]))
def test_redact_leaves_no_matching_label_below_the_root(
    resource: dict[str, Any], rule: tuple[str, str]
) -> None:
    resource.pop("extension", None)  # a labelled root is refused (tested above)
    resource["nested"] = {"extension": [label(PSY)], "x": [{"extension": [label(ETH)]}, {"y": 1}]}
    before = copy.deepcopy(resource)
    out = redact_labelled(resource, frozenset({rule}))
    assert resource == before and out is not resource
    assert not set(containers(out)) & set(containers(resource))
    left = element_labels(out)
    assert not any(code == rule[1] and (not rule[0] or system == rule[0]) for system, code in left)
