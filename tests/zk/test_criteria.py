"""Criteria language: compilation, rejection of what the circuit can't express, reference semantics."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.zk.eligibility_fixtures import (
    CODES,
    DIABETES_STUDY,
    HASH_CONDITION,
    REFERENCE_DATE,
    eligible_patient,
)
from zk.credential import DAY_EPOCH, MAX_DAY, PatientAttributes, encode
from zk.criteria import (
    ALL_SEXES_MASK,
    CriteriaError,
    age_in_years,
    compile_criteria,
    evaluate,
)


def compiled(doc: object, ref: date = REFERENCE_DATE):  # type: ignore[no-untyped-def]
    return compile_criteria(doc, ref, HASH_CONDITION)


def test_empty_criteria_are_neutral() -> None:
    c = compiled({})
    assert (c.min_age_days, c.max_age_days, c.sex_mask, c.flags) == (0, MAX_DAY, ALL_SEXES_MASK, 0)
    assert c.inclusion_codes == (0,) * 8 and c.exclusion_codes == (0,) * 8
    assert evaluate({}, eligible_patient(), REFERENCE_DATE)


def test_diabetes_study_compiles() -> None:
    c = compiled(DIABETES_STUDY)
    assert c.sex_mask == 0b0110  # female (1) and male (2)
    assert c.flags == 0b1011  # inclusion, hba1c (bit 1), egfr (bit 3)
    assert c.lab_lo[0] == 651 and c.lab_hi[0] == 2**32 - 1  # 6.50 -> 650, +1 for "measured"
    assert c.lab_lo[2] == 3001
    assert sorted(x for x in c.inclusion_codes if x) == sorted({HASH_CONDITION("icd10|E11"), HASH_CONDITION("icd10|E11.9")})
    assert HASH_CONDITION("icd10|N18.5") in c.exclusion_codes
    assert evaluate(DIABETES_STUDY, eligible_patient(), REFERENCE_DATE)
    assert c.is_satisfied_by(encode(eligible_patient(), HASH_CONDITION))


def test_hash_depends_on_every_field_and_is_order_independent() -> None:
    base = compiled(DIABETES_STUDY).criteria_hash
    assert compiled(DIABETES_STUDY, REFERENCE_DATE + timedelta(days=1)).criteria_hash != base
    for change in ({"age": {"$between": [41, 75]}}, {"sex": {"$eq": "female"}}, {"hba1c": {"$gte": 6.6}},
                   {"conditions": {"$in": ["icd10|E11"]}}, {"egfr": {"$gt": 30}}):
        assert compiled({**DIABETES_STUDY, **change}).criteria_hash != base
    reordered = {**DIABETES_STUDY, "conditions": {"$nin": ["icd10|N18.5"], "$in": ["icd10|E11.9", "icd10|E11"]}}
    assert compiled(reordered).criteria_hash == base


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "JSON object"),
        ({"weight": {"$gt": 3}}, "unknown attribute 'weight'"),
        ({"age": 40}, "object of operators"),
        ({"age": {}}, "object of operators"),
        ({"age": {"$ne": 40}}, "operator '$ne' is not supported"),
        ({"age": {"$in": [40, 41]}}, "operator '$in' is not supported"),
        ({"age": {"$gte": 40.5}}, "whole years"),
        ({"age": {"$gte": True}}, "whole years"),
        ({"age": {"$between": [60, 40]}}, "low bound is above high bound"),
        ({"age": {"$gt": 60, "$lt": 61}}, "range is empty"),
        ({"age": {"$gt": 200}}, "range is empty"),
        ({"hba1c": {"$ne": 6.5}}, "operator '$ne' is not supported"),
        ({"hba1c": {"$in": [6.5]}}, "operator '$in' is not supported"),
        ({"hba1c": {"$gte": "6.5"}}, "bound must be a number"),
        ({"hba1c": {"$gte": float("nan")}}, "finite"),
        ({"hba1c": {"$between": [7]}}, "expected [low, high]"),
        ({"bmi": {"$lt": 0}}, "range is empty"),
        ({"sex": {"$eq": "woman"}}, "unknown value(s) 'woman'"),
        ({"sex": {"$in": ["female"], "$nin": ["female"]}}, "exclude every value"),
        ({"sex": {"$gt": "female"}}, "operator '$gt' is not supported"),
        ({"conditions": {"$in": []}}, "the list is empty"),
        ({"conditions": {"$in": "icd10|E11"}}, "expected a list"),
        ({"conditions": {"$in": CODES[:9]}}, "at most 8 codes (got 9)"),
        ({"conditions": {"$nin": [f"c{i}" for i in range(9)]}}, "at most 8 codes"),
        ({"conditions": {"$in": ["a"], "$eq": "b"}}, "either $eq or $in"),
        ({"conditions": {"$in": [3]}}, "non-empty string"),
    ],
)
def test_rejects_what_the_circuit_cannot_express(doc: object, message: str) -> None:
    with pytest.raises(CriteriaError) as info:
        compiled(doc)
    assert message in str(info.value)
    with pytest.raises(CriteriaError):
        evaluate(doc, eligible_patient(), REFERENCE_DATE)


def test_duplicate_codes_count_once() -> None:
    c = compiled({"conditions": {"$in": CODES[:8] + CODES[:8]}})
    assert all(c.inclusion_codes)


@pytest.mark.parametrize("reference", [date(2024, 2, 29), date(2023, 2, 28), date(2023, 3, 1), date(2025, 12, 31)])
def test_age_day_bounds_match_the_calendar_for_every_birth_day(reference: date) -> None:
    c = compiled({"age": {"$between": [18, 21]}}, reference)
    ref_day = (reference - DAY_EPOCH).days
    for birth_day in range(ref_day - 23 * 366, ref_day + 3):
        birth = DAY_EPOCH + timedelta(days=birth_day)
        in_years = 18 <= age_in_years(birth, reference) <= 21
        in_days = c.min_age_days <= ref_day - birth_day <= c.max_age_days
        assert in_years == in_days, birth


def test_leap_day_birthday_is_reached_on_march_first() -> None:
    assert age_in_years(date(2000, 2, 29), date(2018, 2, 28)) == 17
    assert age_in_years(date(2000, 2, 29), date(2018, 3, 1)) == 18


def test_missing_lab_never_satisfies_a_lab_criterion() -> None:
    patient = PatientAttributes(birth_date=date(1970, 1, 1), sex="male", labs={"bmi": None})
    doc = {"bmi": {"$lt": 100}}
    assert not evaluate(doc, patient, REFERENCE_DATE)
    assert not compiled(doc).is_satisfied_by(encode(patient, HASH_CONDITION))


def test_strict_bounds_on_two_decimal_values() -> None:
    at = PatientAttributes(birth_date=date(1970, 1, 1), sex="male", labs={"hba1c": Decimal("6.5")})
    for doc, expected in (({"hba1c": {"$gt": 6.5}}, False), ({"hba1c": {"$gte": 6.5}}, True),
                          ({"hba1c": {"$lt": 6.5}}, False), ({"hba1c": {"$lte": 6.5}}, True),
                          ({"hba1c": {"$eq": 6.5}}, True), ({"hba1c": {"$gt": 6.499}}, True),
                          ({"hba1c": {"$lt": 6.501}}, True), ({"hba1c": {"$gt": 6.501}}, False)):
        assert evaluate(doc, at, REFERENCE_DATE) is expected, doc
        assert compiled(doc).is_satisfied_by(encode(at, HASH_CONDITION)) is expected, doc


# --- property: the compiled criteria (what the circuit checks) agree with the reference semantics ---

codes = st.sampled_from(CODES)
lab_values = st.one_of(st.none(), st.decimals(min_value=0, max_value=200, places=2))
patients = st.builds(
    PatientAttributes,
    birth_date=st.dates(min_value=date(1900, 1, 1), max_value=date(2026, 1, 1)),
    sex=st.sampled_from(["female", "male", "other", "unknown"]),
    conditions=st.lists(codes, max_size=8, unique=True).map(tuple),
    labs=st.fixed_dictionaries({"hba1c": lab_values, "bmi": lab_values, "egfr": lab_values}),
)
ages = st.integers(min_value=0, max_value=120)
bounds = st.one_of(st.integers(0, 150), st.decimals(min_value=0, max_value=150, places=3).map(float))


def range_ops(values: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    single = st.sampled_from(["$eq", "$lt", "$lte", "$gt", "$gte"])
    return st.one_of(
        st.dictionaries(single, values, min_size=1, max_size=2),
        st.tuples(values, values).map(lambda t: {"$between": sorted(t)}),  # type: ignore[type-var]
    )


documents = st.fixed_dictionaries(
    {},
    optional={
        "age": range_ops(ages),
        "sex": st.one_of(st.builds(lambda v: {"$in": v}, st.lists(st.sampled_from(["female", "male", "other"]), min_size=1, unique=True)),
                         st.builds(lambda v: {"$ne": v}, st.sampled_from(["female", "male", "unknown"]))),
        "conditions": st.fixed_dictionaries({}, optional={"$in": st.lists(codes, min_size=1, max_size=8, unique=True),
                                                          "$nin": st.lists(codes, min_size=1, max_size=8, unique=True)}),
        "hba1c": range_ops(bounds), "bmi": range_ops(bounds), "egfr": range_ops(bounds),
    },
)


@settings(max_examples=300, deadline=None)
@given(doc=documents, patient=patients, reference=st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31)))
def test_compiled_criteria_agree_with_evaluate(doc: dict[str, object], patient: PatientAttributes, reference: date) -> None:
    try:
        c = compile_criteria(doc, reference, HASH_CONDITION)
    except CriteriaError:
        with pytest.raises(CriteriaError):
            evaluate(doc, patient, reference)
        return
    assert c.is_satisfied_by(encode(patient, HASH_CONDITION)) == evaluate(doc, patient, reference)
