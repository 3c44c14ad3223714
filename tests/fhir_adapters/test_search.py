"""FHIR R4 search semantics (search.html), parsing errors, and the blind-index invariant of fhir_adapters.search."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_adapters.errors import UnsupportedSearch
from fhir_adapters.search.dates import date_range, interval_datetime
from fhir_adapters.search.matching import ResourceMeta, matches
from fhir_adapters.search.parameters import SEARCH_PARAMETERS
from fhir_adapters.search.query import SearchQuery, TokenValue, parse_search, split_unescaped
from fhir_adapters.search.strings import fold
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


# --- string ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("family", "zoe", True),  # case- and accent-insensitive starts-with
        ("family", "ZOË-MÜ", True),
        ("family", "Zoë-Müller", True),
        ("family", "Müller", False),  # starts-with of the whole value, not of a later word
        ("given", "mary", True),
        ("given", "ann", False),
        ("given", "elo", True),
        ("name", "dr mary", True),  # HumanName.text
        ("name", "élodie", True),
        ("name", "x", False),
        ("family:exact", "Zoë-Müller", True),
        ("family:exact", "zoë-müller", False),  # :exact is case- and accent-sensitive
        ("family:exact", "Zoë", False),
        ("given:contains", "ANN", True),
        ("given:contains", "lod", True),
        ("given:contains", "xyz", False),
        ("family", "zoe-muller-extra", False),
        ("given", "Mary,Nobody", True),  # comma = OR
        ("given", "Nobody,Other", False),
    ],
)
def test_string_search(param: str, value: str, expected: bool) -> None:
    assert hits(PATIENT, (param, value)) is expected


def test_fold_is_case_and_accent_insensitive() -> None:
    assert fold("  Zoë   MÜLLER ") == "zoe muller"
    assert fold("Straße") == "strasse"
    assert fold("ﬁ") == "fi"  # NFKD compatibility forms


# --- token -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("identifier", "MRN-001", True),  # code in any system
        ("identifier", "http://hospital.example/mrn|MRN-001", True),
        ("identifier", "http://other.example|MRN-001", False),
        ("identifier", "http://hospital.example/mrn|", True),  # system|: any code in the system
        ("identifier", "|no-system-7", True),  # |code: no system
        ("identifier", "|MRN-001", False),
        ("identifier", "mrn-001", False),  # codes are case-sensitive
        ("gender", "female", True),
        ("gender", "http://hl7.org/fhir/administrative-gender|female", True),  # implicit system of a code
        ("gender", "male", False),
        ("gender", "male,female", True),
        ("gender:not", "male", True),
        ("gender:not", "female", False),
        ("gender:not", "male,female", False),
        ("active", "true", True),
        ("active", "false", False),
    ],
)
def test_token_search(param: str, value: str, expected: bool) -> None:
    assert hits(PATIENT, (param, value)) is expected


def test_token_not_matches_resources_without_the_element() -> None:
    assert hits({"resourceType": "Patient"}, ("gender:not", "male")) is True


def test_escaped_separators() -> None:
    assert split_unescaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    resource = {"resourceType": "Patient", "identifier": [{"system": "s", "value": "a,b|c"}]}
    assert hits(resource, ("identifier", r"s|a\,b\|c")) is True
    assert hits(resource, ("identifier", r"a\,b\|c")) is True
    query = parse_search("Patient", [("identifier", r"s|a\,b\|c")])
    assert query.criteria[0].values == (TokenValue("s", "a,b|c"),)


# --- date (R4 3.1.1.4.2 prefixes with implicit ranges) -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1980", True),  # the range of 1980 contains 1980-05-15
        ("1980-05", True),
        ("1980-05-15", True),
        ("1980-06", False),
        ("eq1980", True),
        ("ne1980", False),
        ("ne1981", True),
        ("lt1980-05-16", True),
        ("lt1980-05-15", False),
        ("le1980-05-15", True),
        ("le1980-05-14", False),
        ("gt1980-05-14", True),
        ("gt1980-05-15", False),
        ("ge1980-05-15", True),
        ("ge1980-05-16", False),
        ("sa1980-05-14", True),
        ("sa1980-05-15", False),
        ("eb1980-05-16", True),
        ("eb1980-05-15", False),
        ("eq1980-05-15T10:00:00Z", False),  # a second does not contain a whole day
        ("lt1980-05-15T10:00:00Z", True),  # but the day starts before it...
        ("gt1980-05-15T10:00:00Z", True),  # ...and ends after it
        ("ap1980-05-15", True),
        ("ap1990", False),
    ],
)
def test_date_search_on_a_day(value: str, expected: bool) -> None:
    assert hits(PATIENT, ("birthdate", value)) is expected


def test_partial_target_date_against_a_finer_search_value() -> None:
    born_1980 = {**PATIENT, "birthDate": "1980"}
    assert hits(born_1980, ("birthdate", "1980-05")) is False  # all of 1980 is not inside May
    assert hits(born_1980, ("birthdate", "lt1980-05")) is True
    assert hits(born_1980, ("birthdate", "gt1980-05")) is True
    assert hits(born_1980, ("birthdate", "1980")) is True


def test_date_and_of_two_bounds() -> None:
    assert hits(PATIENT, ("birthdate", "ge1980-01-01"), ("birthdate", "lt1981-01-01")) is True
    assert hits(PATIENT, ("birthdate", "ge1981-01-01"), ("birthdate", "lt1982-01-01")) is False
    query = parse_search("Patient", [("birthdate", "ge1980-05-01"), ("birthdate", "lt1980-06-01")])
    (only,) = candidate_filters(query)
    assert only.any_of == {"m:*", "m:1980-05"}  # the two half-open windows narrow together


def test_period_targets() -> None:
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"},
    }
    assert hits(encounter, ("date", "2020-01-01")) is True
    assert hits(encounter, ("date", "eq2020-01-01T10:30")) is False
    assert hits(encounter, ("date", "gt2020-01-01T10:30")) is True
    assert hits(encounter, ("date", "lt2020-01-01T10:30")) is True
    assert hits(encounter, ("date", "sa2020-01-01T09:59")) is True
    assert (
        hits(encounter, ("date", "eb2020-01-01T11:00")) is False
    )  # the end is 11:00:00, i.e. up to 11:00:01
    assert hits(encounter, ("date", "eb2020-01-01T11:01")) is True
    ongoing = {**encounter, "period": {"start": "2020-01-01T10:00:00Z"}}  # no end: still going on
    assert hits(ongoing, ("date", "2020")) is False
    assert hits(ongoing, ("date", "ge2020")) is True
    assert hits(ongoing, ("date", "gt2030")) is True
    assert hits(ongoing, ("date", "lt2020")) is False


def test_timezones_are_compared_as_instants() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "effectiveDateTime": "2020-01-01T01:00:00+02:00",
    }
    assert hits(obs, ("date", "2019-12-31")) is True
    assert hits(obs, ("date", "2020-01-01")) is False
    assert hits(obs, ("date", "2019-12-31T23:00:00Z")) is True
    assert hits(obs, ("date", "2020-01-01T01:00:00+02:00")) is True
    assert hits(obs, ("date", "2020-01-01T01:00:00 02:00")) is True  # `+` decoded as a space by a form parser


def test_date_range_precision() -> None:
    year = date_range("2020")
    assert year is not None and year.lo is not None and year.hi is not None
    assert interval_datetime(year.lo) == datetime(2020, 1, 1, tzinfo=UTC)
    assert interval_datetime(year.hi) == datetime(2021, 1, 1, tzinfo=UTC)
    feb = date_range("2024-02")
    assert (
        feb is not None
        and feb.hi is not None
        and interval_datetime(feb.hi) == datetime(2024, 3, 1, tzinfo=UTC)
    )
    minute = date_range("2020-01-01T10:30")
    assert minute is not None and minute.lo is not None and minute.hi == minute.lo + 60_000_000
    millis = date_range("2020-01-01T10:30:00.123Z")
    assert millis is not None and millis.lo is not None and millis.hi == millis.lo + 1000
    assert date_range("9999") is not None
    for bad in ["2020-13", "2020-02-30", "20", "2020-1-1", "2020-01-01T25:00", "2020-01-01T10:00+15:00", "x"]:
        assert date_range(bad) is None


# --- reference ---------------------------------------------------------------------------------------------

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


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("patient", "123", True),
        ("patient", "Patient/123", True),
        ("patient", "http://example.org/fhir/Patient/123", True),
        ("patient", "124", False),
        ("subject", "123", True),
        ("subject:Patient", "123", True),
        ("subject:Group", "123", False),
        ("subject", "Patient/123", True),
        ("code", "http://loinc.org|8867-4", True),
        ("code", "8867-4", True),
        ("category", "vital-signs", True),
        ("value-quantity", "5.4", True),
        ("value-quantity", "5.40", True),  # precision: 5.40 means [5.395, 5.405)
        ("value-quantity", "5", True),  # 5 means [4.5, 5.5) (R4 3.1.1.4.2 implicit range)
        ("value-quantity", "6", False),
        ("value-quantity", "5.3", False),
        ("value-quantity", "gt5", True),
        ("value-quantity", "lt5", False),
        ("value-quantity", "5.4|http://unitsofmeasure.org|mg", True),
        ("value-quantity", "5.4||mg", True),
        ("value-quantity", "5.4||milligram", True),
        ("value-quantity", "5.4|http://unitsofmeasure.org|g", False),
        ("value-quantity", "ap5", True),
    ],
)
def test_observation_search(param: str, value: str, expected: bool) -> None:
    assert hits(OBSERVATION, (param, value)) is expected


def test_patient_parameter_only_follows_patient_references() -> None:
    on_group = {**OBSERVATION, "subject": {"reference": "Group/123"}}
    assert hits(on_group, ("patient", "123")) is False
    assert hits(on_group, ("subject", "123")) is True
    with pytest.raises(UnsupportedSearch):
        parse_search("Observation", [("patient", "Group/123")])


def test_audit_event_patient_follows_entity_and_agent() -> None:
    event = {
        "resourceType": "AuditEvent",
        "type": {"code": "rest"},
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/9"}, "requestor": True}],
        "source": {"observer": {"display": "x"}},
        "entity": [{"what": {"reference": "Patient/42"}}],
    }
    assert hits(event, ("patient", "42")) is True
    assert hits(event, ("agent", "Practitioner/9")) is True
    assert hits(event, ("date", "2024")) is True


# --- _id, _lastUpdated, :missing ---------------------------------------------------------------------------


def test_id_and_last_updated_come_from_meta() -> None:
    assert hits(PATIENT, ("_id", "p1")) is True
    assert hits(PATIENT, ("_id", "p2,p1")) is True
    assert hits(PATIENT, ("_id", "p2")) is False
    assert hits(PATIENT, ("_lastUpdated", "2024-03")) is True
    assert hits(PATIENT, ("_lastUpdated", "gt2024-03-10T12:00:00Z")) is False  # the instant is not above it
    assert hits(PATIENT, ("_lastUpdated", "ge2024-03-10T12:00:00Z")) is True
    query = parse_search("Patient", [("_id", "a,b")])
    assert [(f.param, f.any_of) for f in candidate_filters(query)] == [("_id", frozenset({"a", "b"}))]


def test_missing_modifier() -> None:
    assert hits(PATIENT, ("birthdate:missing", "false")) is True
    assert hits(PATIENT, ("birthdate:missing", "true")) is False
    assert hits({"resourceType": "Patient"}, ("birthdate:missing", "true")) is True


def test_other_types_search_by_id_only() -> None:
    query = parse_search("Practitioner", [("_id", "x")])
    assert query.criteria[0].param.name == "_id"
    with pytest.raises(UnsupportedSearch):
        parse_search("Basic", [("code", "x")])


# --- parsing -----------------------------------------------------------------------------------------------


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
        [("_include", "Patient:organization")],
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


def test_leakage_shape_of_terms() -> None:
    """What the store gets for a birth date and a name: coarse buckets and capped prefixes, no full date."""
    terms = index_terms(PATIENT)
    assert terms["birthdate"] == {"y:1980", "m:1980-05"}
    assert not any("15" in t for t in terms["birthdate"])
    assert all(len(t) <= 2 + 8 for t in terms["given"] if t.startswith("p:"))
    assert "p:m" not in terms["given"]  # no 1-character prefixes (first-letter frequencies)
    assert "_id" not in terms


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
