"""The search parameter table (fhir_adapters.search.parameters): what each type can be searched by."""

from __future__ import annotations

import pytest

from fhir_adapters.errors import UnsupportedSearch
from fhir_adapters.search.parameters import SEARCH_PARAMETERS
from fhir_adapters.search.query import parse_search


def test_required_parameters_exist() -> None:
    required = {
        "Patient": {"identifier", "name", "family", "given", "birthdate", "gender"},
        "Observation": {"patient", "subject", "code", "category", "date", "value-quantity"},
        "Condition": {"patient", "subject", "code", "clinical-status"},
        "Encounter": {"patient", "subject", "date"},
        "MedicationRequest": {"patient", "subject", "status"},
        "Consent": {"patient", "status"},
        "AuditEvent": {"patient", "date"},
    }
    for resource_type, names in required.items():
        assert names | {"_id", "_lastUpdated"} <= set(SEARCH_PARAMETERS[resource_type])


def test_other_types_search_by_id_only() -> None:
    query = parse_search("Practitioner", [("_id", "x")])
    assert query.criteria[0].param.name == "_id"
    with pytest.raises(UnsupportedSearch):
        parse_search("Basic", [("code", "x")])
