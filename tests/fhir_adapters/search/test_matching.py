"""FHIR R4 search semantics (search.html) of the post-filter, fhir_adapters.search.matching.matches.

Each positive answer also checks the blind-index invariant (search_support.hits).
"""

from __future__ import annotations

import pytest
from search_support import OBSERVATION, PATIENT, hits

from fhir_adapters.errors import UnsupportedSearch
from fhir_adapters.search.query import parse_search

# --- string -------------------------------------------------------------------------------------------------


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


# --- token --------------------------------------------------------------------------------------------------


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


# --- reference and quantity ---------------------------------------------------------------------------------


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


# --- _id, _lastUpdated, :missing ----------------------------------------------------------------------------


def test_id_and_last_updated_come_from_meta() -> None:
    assert hits(PATIENT, ("_id", "p1")) is True
    assert hits(PATIENT, ("_id", "p2,p1")) is True
    assert hits(PATIENT, ("_id", "p2")) is False
    assert hits(PATIENT, ("_lastUpdated", "2024-03")) is True
    assert hits(PATIENT, ("_lastUpdated", "gt2024-03-10T12:00:00Z")) is False  # the instant is not above it
    assert hits(PATIENT, ("_lastUpdated", "ge2024-03-10T12:00:00Z")) is True


def test_missing_modifier() -> None:
    assert hits(PATIENT, ("birthdate:missing", "false")) is True
    assert hits(PATIENT, ("birthdate:missing", "true")) is False
    assert hits({"resourceType": "Patient"}, ("birthdate:missing", "true")) is True
