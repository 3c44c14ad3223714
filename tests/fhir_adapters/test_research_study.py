"""The ResearchStudy terms parser every research module shares."""

import json
from datetime import UTC, datetime

import pytest

from fhir_adapters.errors import InvalidResource
from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    MAX_PARTICIPANTS_URL,
    OWNER_URL,
    DataCategory,
    study_terms,
)


def study(**overrides):
    base = {
        "resourceType": "ResearchStudy", "id": "s1", "status": "draft", "title": "Diabetes outcomes",
        "period": {"start": "2027-01-01", "end": "2027-06-30"},
        "enrollment": [{"reference": "Group/c1"}],
        "extension": [
            {"url": CRITERIA_URL, "valueString": json.dumps({"age": {"$between": [40, 75]}})},
            {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": "Observation"},
                                                     {"url": "code", "valueCoding": {"system": "http://loinc.org", "code": "4548-4"}}]},
            {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": "Condition"}]},
            {"url": DATA_PERIOD_URL, "valuePeriod": {"start": "2020-01-01", "end": "2026-12-31"}},
            {"url": MAX_PARTICIPANTS_URL, "valuePositiveInt": 50},
            {"url": OWNER_URL, "extension": [{"url": "principal", "valueString": "user:alice"},
                                             {"url": "organization", "valueReference": {"reference": "Organization/o1"}}]},
        ],
    }
    base.update(overrides)
    return base


def test_terms_read_every_part() -> None:
    t = study_terms(study())
    assert t.criteria == {"age": {"$between": [40, 75]}}
    assert t.categories == (DataCategory("Observation", (("http://loinc.org", "4548-4"),)), DataCategory("Condition"))
    assert t.cohort_group_id == "c1" and t.max_participants == 50 and t.reference == "ResearchStudy/s1"
    assert t.owner_principal == "user:alice" and t.owner_organization == "Organization/o1"
    assert t.enrolment_window is not None and t.enrolment_window.end == datetime(2027, 7, 1, tzinfo=UTC)
    assert t.data_period is not None and t.data_period.start == datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad, words", [
    ({"extension": [{"url": CRITERIA_URL, "valueString": "{not json"}]}, "not JSON"),
    ({"extension": [{"url": CRITERIA_URL, "valueString": "[1]"}]}, "JSON object"),
    ({"extension": [{"url": DATA_CATEGORY_URL, "extension": []}]}, "type"),
    ({"enrollment": [{"reference": "Patient/p"}]}, "Group"),
    ({"extension": [{"valueString": "x"}]}, "url"),
])
def test_malformed_terms_name_the_element(bad, words) -> None:
    with pytest.raises(InvalidResource, match=words):
        study_terms(study(**bad))
