"""CapabilityStatement truthfulness and OperationOutcome shape (compartments: test_compartment.py)."""

from __future__ import annotations

import pytest

from fhir_adapters.capability import FHIR_VERSION, GROUP_EXPORT, capability_statement
from fhir_adapters.errors import InvalidResource
from fhir_adapters.outcome import operation_outcome, outcome_for_input_error
from fhir_adapters.search.parameters import SEARCH_PARAMETERS
from fhir_adapters.search.query import parse_search
from fhir_adapters.validation import RESOURCE_TYPES, parse_resource

INTERACTIONS = (
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)


def test_capability_statement_is_valid_and_declares_r4() -> None:
    cs = capability_statement(
        interactions=INTERACTIONS,
        system_interactions=("transaction", "batch"),
        software_version="0.1.0",
        conditional_create=True,
    )
    assert parse_resource(cs) == cs  # a valid (R4B-checked) CapabilityStatement
    assert cs["fhirVersion"] == FHIR_VERSION == "4.0.1"
    assert "4.3.0" in cs["implementation"]["description"]
    rest = cs["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    resources = {r["type"]: r for r in rest["resource"]}
    assert set(resources) == RESOURCE_TYPES
    assert resources["Patient"]["conditionalCreate"] is True
    assert {i["code"] for i in resources["Observation"]["interaction"]} == set(INTERACTIONS)


def test_capability_declares_operations_on_their_types() -> None:
    cs = capability_statement(interactions=("read",), resource_types=("Group", "Patient"),
                              operations={"Group": [("export", GROUP_EXPORT)], "Basic": [("x", "http://x.example")]})
    assert parse_resource(cs) == cs
    group, patient = cs["rest"][0]["resource"]
    assert group["operation"] == [{"name": "export", "definition": GROUP_EXPORT}]
    assert "operation" not in patient  # and Basic, not among the types, is not listed


def test_capability_search_params_are_exactly_the_parseable_ones() -> None:
    cs = capability_statement(interactions=INTERACTIONS)
    for resource in cs["rest"][0]["resource"]:
        declared = {p["name"]: p["type"] for p in resource["searchParam"]}
        expected = SEARCH_PARAMETERS.get(resource["type"], {"_id": None, "_lastUpdated": None})
        assert set(declared) == set(expected)
        for name in declared:  # each declared parameter is accepted by the parser
            parse_search(resource["type"], [(f"{name}:missing", "true")])


def test_capability_without_search_lists_no_search_params() -> None:
    cs = capability_statement(interactions=("read",), resource_types=("Patient",))
    (patient,) = cs["rest"][0]["resource"]
    assert "searchParam" not in patient and patient["readHistory"] is False
    with pytest.raises(ValueError):
        capability_statement(interactions=("teleport",))


def test_operation_outcome() -> None:
    outcome = operation_outcome("error", "not-found", "Patient/1 is not known", "Patient.id")
    assert parse_resource(outcome) == outcome
    assert outcome["issue"] == [
        {
            "severity": "error",
            "code": "not-found",
            "diagnostics": "Patient/1 is not known",
            "expression": ["Patient.id"],
        }
    ]
    with pytest.raises(InvalidResource) as info:
        parse_resource(b'{"resourceType":"Patient","birthDate":"x"}')
    from_error = outcome_for_input_error(info.value)
    assert from_error["issue"][0]["code"] == "structure"
    assert from_error["issue"][0]["expression"] == ["Patient.birthDate"]
    with pytest.raises(ValueError):
        operation_outcome("bad", "x", "y")  # type: ignore[arg-type]


def test_capability_declares_smart_security_and_read_only_types() -> None:
    from fhir_adapters.capability import capability_statement
    from fhir_adapters.validation import parse_resource

    cs = capability_statement(interactions=("read", "create"), oauth_token_url="https://h.example/auth/token",
                              read_only={"AuditEvent": (("patient", "reference"), ("date", "date"))},
                              security_description="SMART Backend Services")
    security = cs["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"] == [{"url": "token", "valueUri": "https://h.example/auth/token"}]
    audit = next(r for r in cs["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert [i["code"] for i in audit["interaction"]] == ["read", "search-type"]
    assert [p["name"] for p in audit["searchParam"]] == ["patient", "date"]
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert {i["code"] for i in patient["interaction"]} == {"read", "create"}
    parse_resource(cs)  # still a valid R4 CapabilityStatement
