"""Required code bindings the models do not check: wrong codes are refused with the path, never the value."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_adapters.errors import InvalidResource
from fhir_adapters.validation import parse_resource


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ({"resourceType": "Patient", "gender": "x"}, "Patient.gender"),
        (
            {"resourceType": "Patient", "name": [{"use": "official"}, {"use": "secret-name"}]},
            "Patient.name[1].use",
        ),
        (
            {"resourceType": "Patient", "identifier": [{"use": "main", "value": "1"}]},
            "Patient.identifier[0].use",
        ),
        (
            {"resourceType": "Patient", "telecom": [{"system": "pigeon", "value": "1"}]},
            "Patient.telecom[0].system",
        ),
        ({"resourceType": "Encounter", "status": "finshed", "class": {"code": "AMB"}}, "Encounter.status"),
        ({"resourceType": "Observation", "status": "done", "code": {"text": "x"}}, "Observation.status"),
        (
            {
                "resourceType": "AuditEvent",
                "type": {"code": "x"},
                "action": "X",
                "recorded": "2020-01-01T00:00:00Z",
                "agent": [{"requestor": True}],
                "source": {"observer": {"display": "x"}},
            },
            "AuditEvent.action",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {"status": "made-up", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            },
            "Patient.text.status",
        ),
        (
            {"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "gender": "y"}]},
            "Patient.contained[0].gender",
        ),
        (
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {"resourceType": "Patient", "gender": "z"}}],
            },
            "Bundle.entry[0].resource.gender",
        ),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "FETCH", "url": "x"}}],
            },
            "Bundle.entry[0].request.method",
        ),
    ],
)
def test_code_outside_required_value_set(resource: dict[str, Any], expression: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(resource)
    assert info.value.expression == expression
    assert "required value set" in info.value.message


def test_valid_codes_pass() -> None:
    for gender in ("male", "female", "other", "unknown"):
        assert parse_resource({"resourceType": "Patient", "gender": gender})["gender"] == gender
    assert parse_resource({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}})
