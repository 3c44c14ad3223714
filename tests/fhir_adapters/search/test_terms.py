"""Blind-index terms (fhir_adapters.search.terms): their leakage shape and how queries narrow."""

from __future__ import annotations

import pytest
from search_support import PATIENT, hits

from fhir_adapters.search.query import parse_search
from fhir_adapters.search.terms import candidate_filters, index_terms


def test_leakage_shape_of_terms() -> None:
    """What the store gets for a birth date and a name: coarse buckets and capped prefixes, no full date."""
    terms = index_terms(PATIENT)
    assert terms["birthdate"] == {"y:1980", "m:1980-05"}
    assert not any("15" in t for t in terms["birthdate"])
    assert all(len(t) <= 2 + 8 for t in terms["given"] if t.startswith("p:"))
    assert "p:m" not in terms["given"]  # no 1-character prefixes (first-letter frequencies)
    assert "_id" not in terms


def test_and_ed_date_bounds_narrow_together() -> None:
    query = parse_search("Patient", [("birthdate", "ge1980-05-01"), ("birthdate", "lt1980-06-01")])
    (only,) = candidate_filters(query)
    assert only.any_of == {"m:*", "m:1980-05"}  # the two half-open windows narrow together


def test_id_filters_are_plain_ids() -> None:
    query = parse_search("Patient", [("_id", "a,b")])
    assert [(f.param, f.any_of) for f in candidate_filters(query)] == [("_id", frozenset({"a", "b"}))]


@pytest.mark.parametrize(
    ("period", "params"),
    [
        ({"start": "2020-01-01T10:00:00Z"}, [("date", "ap2020-01")]),  # open end: `*` buckets
        ({"end": "2020-01-01T10:00:00Z"}, [("date", "ap2020-01")]),  # open start
        ({"start": "2021-01-01", "end": "2019-01-01"}, [("date", "eq2020")]),  # inverted: contained in 2020
        (
            {"start": "1990-01-01", "end": "2030-01-01"},
            [("date", "ge2000-01-01"), ("date", "lt2000-03-01")],
        ),  # long
        ({"start": "2019-06-01", "end": "2021-09-01"}, [("date", "ge2020-05-01"), ("date", "le2020-06-30")]),
        ({"start": "2020-01-01T10:00:00Z"}, [("date", "ge2021-05-01"), ("date", "lt2021-06-01")]),
    ],
)
def test_wide_and_open_periods_survive_narrowing(
    period: dict[str, str], params: list[tuple[str, str]]
) -> None:
    """Values too wide for month/year terms carry `*` buckets, which every date window admits."""
    encounter = {"resourceType": "Encounter", "status": "finished", "period": period}
    assert hits(encounter, *params) is True  # hits() also asserts the candidate filters hold
    assert candidate_filters(parse_search("Encounter", params))  # and the query was narrowed


def test_bare_id_on_an_untargeted_reference_parameter() -> None:
    event = {"resourceType": "AuditEvent", "agent": [{"who": {"reference": "Practitioner/9"}}]}
    assert hits(event, ("agent", "9")) is True
    assert [f.any_of for f in candidate_filters(parse_search("AuditEvent", [("agent", "9")]))] == [{"i:9"}]
