"""Resources and `hits` for the search tests: each positive answer also checks the blind-index invariant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_adapters.search.matching import ResourceMeta, matches
from fhir_adapters.search.query import SearchQuery, parse_search
from fhir_adapters.search.terms import candidate_filters, index_terms

META = ResourceMeta("p1", datetime(2024, 3, 10, 12, 0, tzinfo=UTC))


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {"system": "http://hospital.example/mrn", "value": "MRN-001"},
        {"value": "no-system-7"},
    ],
    "name": [{"family": "Zoë-Müller", "given": ["Mary Ann", "Élodie"]}, {"text": "Dr Mary Ann Zoe-Muller"}],
    "gender": "female",
    "birthDate": "1980-05-15",
    "active": True,
    "managingOrganization": {"reference": "Organization/org1"},
}


OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/123"},
    "effectiveDateTime": "2021-06-01T08:00:00Z",
    "valueQuantity": {"value": 5.4, "system": "http://unitsofmeasure.org", "code": "mg", "unit": "milligram"},
}


def hits(resource: dict[str, Any], *params: tuple[str, str], meta: ResourceMeta = META) -> bool:
    query = parse_search(resource["resourceType"], list(params))
    result = matches(resource, query, meta)
    if result:  # every positive here also exercises the invariant
        assert_filters_hold(resource, query, meta)
    return result


def assert_filters_hold(resource: dict[str, Any], query: SearchQuery, meta: ResourceMeta) -> None:
    terms = index_terms(resource)
    for f in candidate_filters(query):
        if f.param == "_id":
            assert meta.id in f.any_of, (f, meta.id)
        else:
            assert terms.get(f.param, set()) & f.any_of, (f, sorted(terms.get(f.param, set())))
