"""The pure parts of the research data releases, as properties: what a kick-off asks (every input is either
refused with a BadRequest or gives types within the study's categories), what "the same question" is, the
interval and the threshold of a release, and the study's own narrowing of exported resources."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from research_support import study_resource

from fhir_adapters.research_study import study_terms
from healthledger.errors import BadRequest
from healthledger.research.export import in_study_scope, kickoff_request
from healthledger.research.feasibility import Release, canonical_question, half_width

TERMS = study_terms({**study_resource("s", categories=("Patient", "Condition", "Encounter")), "id": "s"})
NAMES = st.sampled_from(["_type", "_since", "_outputFormat", "_typeFilter", "patient", "_elements", "_type "])
VALUES = st.one_of(
    st.sampled_from(["Condition", "Patient,Encounter", "Observation", "Nonsense", "", ",", "Condition,Condition",
                     "2024-01-01T00:00:00Z", "2024-01-01", "yesterday", "application/fhir+ndjson", "ndjson",
                     "text/csv"]),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=4))
def test_a_kickoff_is_refused_or_stays_within_the_study(params: list[tuple[str, str]]) -> None:
    try:
        types, since = kickoff_request(params, TERMS)
    except BadRequest as refusal:
        assert refusal.message and len(refusal.message) < 300
        return
    assert types and set(types) <= {"Patient", "Condition", "Encounter"} and len(set(types)) == len(types)
    assert since is None or since.tzinfo is not None
    names = [n for n, _ in params]
    assert set(names) <= {"_type", "_since", "_outputFormat"} and len(names) == len(set(names))


def _respelt(value: Any, rng: random.Random) -> Any:
    """The same document written another way: keys reordered, 6.5 as Decimal("6.50")."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _respelt(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_respelt(v, rng) for v in value]
    if isinstance(value, float):
        return Decimal(repr(value) + "0")
    return value


CRITERIA = st.fixed_dictionaries({}, optional={
    "age": st.tuples(st.integers(0, 60), st.integers(61, 120)).map(lambda r: {"$between": list(r)}),
    "sex": st.sampled_from(["female", "male"]).map(lambda s: {"$eq": s}),
    "hba1c": st.floats(4.0, 12.0).map(lambda v: {"$gte": round(v, 2)}),
    "conditions": st.lists(st.sampled_from(["a|1", "b|2", "c|3"]), min_size=1, unique=True).map(lambda c: {"$in": c}),
})


@given(CRITERIA, st.integers(0, 2**32))
def test_the_same_question_written_differently_is_the_same_question(document: dict[str, Any], seed: int) -> None:
    assert canonical_question(_respelt(document, random.Random(seed))) == canonical_question(document)


@given(CRITERIA, CRITERIA)
def test_different_questions_are_different(a: dict[str, Any], b: dict[str, Any]) -> None:
    if canonical_question(a)[0] != canonical_question(b)[0]:
        assert canonical_question(a)[1] != canonical_question(b)[1]


@given(st.one_of(st.none(), st.integers(11, 10_000)), st.sampled_from([0.1, 0.25, 1.0, 2.0]))
def test_an_interval_discloses_nothing_below_the_threshold(count: int | None, epsilon: float) -> None:
    release = Release("s", "h", epsilon, date(2026, 1, 1), count, 11, half_width(epsilon), datetime.now(UTC))
    low, high = release.interval
    if count is None:
        assert (low, high) == (0, 10 + half_width(epsilon))  # the same for every suppressed count
    else:
        assert low <= count <= high and high - count == half_width(epsilon)


@pytest.mark.parametrize(("resource", "inside"), [
    ({"resourceType": "Condition", "onsetDateTime": "2015-02-03"}, True),
    ({"resourceType": "Condition", "onsetDateTime": "1995-02-03"}, False),
    ({"resourceType": "Condition"}, False),  # no date: a period cannot vouch for it
    ({"resourceType": "Encounter", "period": {"start": "2010-01-01", "end": "2010-01-02"}}, True),
    ({"resourceType": "Observation", "effectiveDateTime": "2015-01-01"}, False),  # not a category
    ({"resourceType": "Patient", "birthDate": "1950-01-01"}, True),  # undated: the participant themself
])
def test_the_study_narrows_by_category_and_period(resource: dict[str, Any], inside: bool) -> None:
    assert in_study_scope(TERMS, resource["resourceType"], resource) is inside


def test_a_category_code_set_narrows_by_code() -> None:
    study = study_resource("coded", categories=())
    study["extension"].append({"url": "https://healthledger.dev/fhir/StructureDefinition/study-data-category",
                               "extension": [{"url": "type", "valueCode": "Condition"},
                                             {"url": "code", "valueCoding": {"system": "http://snomed.info/sct",
                                                                             "code": "44054006"}}]})
    terms = study_terms(study)
    coded = {"resourceType": "Condition", "onsetDateTime": "2015-02-03",
             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}
    other = {**coded, "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}}
    assert in_study_scope(terms, "Condition", coded) and not in_study_scope(terms, "Condition", other)
