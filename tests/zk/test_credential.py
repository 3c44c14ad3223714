"""Credential encoding, leaf layout and nullifiers."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from tests.zk.eligibility_fixtures import HASH_CONDITION, eligible_patient
from zk.credential import (
    CONDITION_SLOTS,
    EligibilityAttributes,
    PatientAttributes,
    condition_hasher,
    day_number,
    encode,
    encode_lab,
    enrollee_field,
    identity_commitment,
    leaf,
    nullifier,
)
from zk.errors import MalformedInput
from zk.field import R
from zk.poseidon import poseidon


def test_leaf_layout_is_the_circuit_layout() -> None:
    attrs = encode(eligible_patient(), HASH_CONDITION)
    commitment = identity_commitment(99)
    assert commitment == poseidon([99])
    expected = poseidon([commitment, attrs.birth_days, attrs.sex, *attrs.conditions, *attrs.labs, attrs.issuance_epoch])
    assert leaf(commitment, attrs) == expected
    assert len(attrs.field_elements()) == 14


def test_encoding() -> None:
    attrs = encode(eligible_patient(), HASH_CONDITION)
    assert attrs.birth_days == (date(1968, 3, 14) - date(1900, 1, 1)).days
    assert attrs.sex == 1
    assert attrs.labs == (741, 3126, 7201)  # value * 100 + 1 ("measured")
    assert sorted(c for c in attrs.conditions if c) == sorted([HASH_CONDITION("icd10|E11"), HASH_CONDITION("icd10|I10")])
    assert attrs.conditions.count(0) == CONDITION_SLOTS - 2


def test_lab_encoding_rounds_half_even_and_marks_missing() -> None:
    assert encode_lab(None) == 0
    assert encode_lab(0) == 1
    assert encode_lab(Decimal("6.505")) == 651 and encode_lab(Decimal("6.515")) == 653
    assert encode_lab(7.1) == 711
    for bad in (-1, float("inf"), "abc", True, 10**8):
        with pytest.raises(MalformedInput):
            encode_lab(bad)  # type: ignore[arg-type]


def test_condition_hasher_is_keyed_and_non_zero() -> None:
    other = condition_hasher(b"another key of at least 16 bytes")
    assert HASH_CONDITION("icd10|E11") != other("icd10|E11")
    assert HASH_CONDITION("icd10|E11") == HASH_CONDITION(" icd10|E11 ")
    assert 0 < HASH_CONDITION("x") < R
    with pytest.raises(MalformedInput):
        condition_hasher(b"short")
    with pytest.raises(MalformedInput):
        HASH_CONDITION("")


def test_rejects_what_a_credential_cannot_hold() -> None:
    base = eligible_patient()
    too_many = PatientAttributes(base.birth_date, "female", tuple(f"c{i}" for i in range(9)))
    with pytest.raises(MalformedInput, match="at most 8 condition codes"):
        encode(too_many, HASH_CONDITION)
    with pytest.raises(MalformedInput, match="sex must be one of"):
        encode(PatientAttributes(base.birth_date, "F"), HASH_CONDITION)
    with pytest.raises(MalformedInput, match="unknown lab"):
        encode(PatientAttributes(base.birth_date, "male", labs={"ldl": Decimal(1)}), HASH_CONDITION)
    with pytest.raises(MalformedInput, match="outside the range"):
        day_number(date(1899, 12, 31))
    with pytest.raises(MalformedInput):
        EligibilityAttributes(birth_days=1, sex=1, conditions=(0,) * 7, labs=(0, 0, 0), issuance_epoch=0)
    with pytest.raises(MalformedInput):
        EligibilityAttributes(birth_days=1, sex=1, conditions=(0,) * 8, labs=(0, 0, 2**32), issuance_epoch=0)


def test_nullifier_is_per_study_and_secret_checked() -> None:
    assert nullifier(5, 1) == poseidon([5, 1]) != nullifier(5, 2)
    for bad in (0, R, -1):
        with pytest.raises(MalformedInput):
            identity_commitment(bad)


def test_enrollee_field() -> None:
    assert enrollee_field("0x" + "00" * 19 + "ff") == 255
    assert enrollee_field("0x" + "AB" * 20) == int("ab" * 20, 16)
    for bad in ("0x1234", "0x" + "zz" * 20, 2**160):
        with pytest.raises(MalformedInput):
            enrollee_field(bad)
