"""Parsing search parameters (fhir_adapters.search.query): escapes, result parameters, errors that echo no values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir_strategies import FIELD_NAMES, SETTINGS
from hypothesis import given
from hypothesis import strategies as st
from search_support import hits

from fhir_adapters.errors import UnsupportedSearch
from fhir_adapters.search.matching import ResourceMeta, matches
from fhir_adapters.search.query import TokenValue, parse_search, split_unescaped
from fhir_adapters.search.terms import candidate_filters


def test_escaped_separators() -> None:
    assert split_unescaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    resource = {"resourceType": "Patient", "identifier": [{"system": "s", "value": "a,b|c"}]}
    assert hits(resource, ("identifier", r"s|a\,b\|c")) is True
    assert hits(resource, ("identifier", r"a\,b\|c")) is True
    query = parse_search("Patient", [("identifier", r"s|a\,b\|c")])
    assert query.criteria[0].values == (TokenValue("s", "a,b|c"),)


def test_result_parameters_are_set_aside() -> None:
    query = parse_search(
        "Patient",
        [
            ("name", "ann"),
            ("_count", "10"),
            ("_summary", "count"),
            ("_sort", "-birthdate,_id"),
            ("_format", "json"),
            ("_pretty", "true"),
            ("gender", ""),
        ],
    )
    assert [c.param.name for c in query.criteria] == ["name"]  # an empty value is ignored


@pytest.mark.parametrize(
    "params",
    [
        [("nickname", "x")],
        [("name:sounds-like", "x")],
        [("gender:exact", "x")],
        [("birthdate", "1980-13")],
        [("birthdate", "xx1980")],
        [("birthdate", "yesterday")],
        [("birthdate:missing", "maybe")],
        [("identifier", "a|b|c")],
        [("identifier", "|")],
        [("_contained", "true")],
        [("subject:Nope", "1")],
        [("value-quantity", "five")],
        [("value-quantity", "5|mg")],
        [("name", "a,,b")],
    ],
)
def test_bad_search_is_rejected_clearly(params: list[tuple[str, str]]) -> None:
    resource_type = "Observation" if params[0][0] in ("subject:Nope", "value-quantity") else "Patient"
    with pytest.raises(UnsupportedSearch) as info:
        parse_search(resource_type, params)
    assert info.value.status == 400 and info.value.message


def test_unknown_type_is_404() -> None:
    with pytest.raises(UnsupportedSearch) as info:
        parse_search("Nope", [])
    assert info.value.status == 404


def test_error_messages_do_not_echo_values() -> None:
    for params in ([("birthdate", "Mary Smith 1970")], [("identifier", "SSN-123|x|y")]):
        with pytest.raises(UnsupportedSearch) as info:
            parse_search("Patient", params)
        assert "Mary" not in info.value.message and "SSN" not in info.value.message


@SETTINGS
@given(
    st.sampled_from(["Patient", "Observation", "Encounter", "Consent", "AuditEvent", "Basic"]),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    *FIELD_NAMES,
                    "_count",
                    "_sort",
                    "_summary",
                    "_id",
                    "_lastUpdated",
                    "birthdate",
                    "date",
                    "patient",
                    "subject:Patient",
                    "name:exact",
                    "gender:not",
                    "code:text",
                    "value-quantity",
                    "x:missing",
                ]
            )
            | st.text(max_size=12),
            st.text(max_size=30),
        ),
        max_size=4,
    ),
)
def test_parse_search_only_raises_unsupported_search(
    resource_type: str, params: list[tuple[str, str]]
) -> None:
    try:
        query = parse_search(resource_type, params)
    except UnsupportedSearch as exc:
        assert exc.message
        return
    candidate_filters(query)
    matches({"resourceType": resource_type, "birthDate": "2000"}, query, ResourceMeta("1", datetime.now(UTC)))


def test_lenient_handling_sets_unknown_parameters_and_modifiers_aside() -> None:
    """FHIR's default (R4 3.1.1.4): unknown names and modifiers are left out and named; bad values still fail."""
    query = parse_search(
        "Patient", [("nickname", "x"), ("name:sounds-like", "y"), ("family", "Doe"), ("_contained", "true")],
        strict=False,
    )
    assert [c.param.name for c in query.criteria] == ["family"]
    assert query.ignored == ("nickname", "name:sounds-like", "_contained")
    with pytest.raises(UnsupportedSearch):
        parse_search("Patient", [("birthdate", "yesterday")], strict=False)


def test_has_parses_one_level_of_reverse_chaining() -> None:
    query = parse_search("Patient", [("_has:Observation:patient:code", "http://loinc.org|1234-5")])
    [clause] = query.has
    assert (clause.source_type, clause.reference) == ("Observation", "patient")
    assert [c.param.name for c in clause.inner.criteria] == ["code"]
    for bad in ("_has:Observation:patient:nope", "_has:Observation:code:code", "_has:Nope:patient:code",
                "_has:Observation:patient"):
        with pytest.raises(UnsupportedSearch):
            parse_search("Patient", [(bad, "1")])
        assert parse_search("Patient", [(bad, "1")], strict=False).ignored == (bad,)
