"""Study criteria: a small JSON language (iden3 query style) compiled into the eligibility circuit's inputs.

A document maps attribute names to operator objects, all of which must hold:

    {"age": {"$between": [40, 75]},                  # whole years at the reference date
     "sex": {"$in": ["female", "other"]},            # FHIR administrative-gender codes
     "conditions": {"$in": ["icd10|E11", "icd10|E11.9"], "$nin": ["icd10|N18.5"]},
     "hba1c": {"$gte": 6.5}, "egfr": {"$between": [30, 90]}}

Attributes and operators:
  age (integer years, 0..150): $eq $lt $lte $gt $gte $between (inclusive).
  sex: $eq $ne $in $nin over unknown/female/male/other.
  conditions: $in / $eq (at least one of up to 8 codes), $nin / $ne (none of up to 8 codes).
  hba1c (%), bmi (kg/m2), egfr (mL/min/1.73m2): $eq $lt $lte $gt $gte $between with numeric bounds;
  a patient without the lab never satisfies a lab criterion. Labs are compared as the credential stores
  them, rounded to 0.01.
Everything else (`$ne` on age or a lab, `$in` on a lab, unknown names, non-numeric bounds, more codes
than the circuit has slots) raises CriteriaError naming the problem.

Age semantics: age = completed years at the reference date (a birthday on 29 February is reached on
1 March in common years). The circuit compares ageDays = referenceDay - birthDays with day bounds that
`compile_criteria` derives exactly from the calendar, so it agrees with `evaluate` for every birth date.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import cached_property

from zk.credential import (
    DAY_EPOCH,
    LAB_NAMES,
    LAB_SCALE,
    MAX_DAY,
    MAX_LAB_SCALED,
    SEX_CODES,
    ConditionHasher,
    EligibilityAttributes,
    PatientAttributes,
    day_number,
)
from zk.errors import CriteriaError, MalformedInput
from zk.poseidon import poseidon

CRITERIA_VERSION = 1  # first input of criteriaHash (domain separation for future circuits)
INCLUSION_SLOTS = 8
EXCLUSION_SLOTS = 8
MAX_AGE_YEARS = 150
FLAG_INCLUSION = 1  # bit 0; bit 1 + i enforces LAB_NAMES[i]
ALL_SEXES_MASK = (1 << len(SEX_CODES)) - 1
MAX_LAB_ENCODED = MAX_LAB_SCALED + 1

_RANGE_OPERATORS = frozenset({"$eq", "$lt", "$lte", "$gt", "$gte", "$between"})
_SET_OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin"})
ATTRIBUTES: Mapping[str, frozenset[str]] = {
    "age": _RANGE_OPERATORS,
    "sex": _SET_OPERATORS,
    "conditions": _SET_OPERATORS,
    **{lab: _RANGE_OPERATORS for lab in LAB_NAMES},
}


@dataclass(frozen=True)
class CompiledCriteria:
    """The criteria as the circuit sees them; `criteria_hash` is the public input committing to them."""

    reference_day: int
    min_age_days: int
    max_age_days: int
    sex_mask: int
    flags: int
    inclusion_codes: tuple[int, ...]
    exclusion_codes: tuple[int, ...]
    lab_lo: tuple[int, ...]
    lab_hi: tuple[int, ...]

    @cached_property
    def criteria_hash(self) -> int:
        return poseidon([
            CRITERIA_VERSION, self.reference_day, self.min_age_days, self.max_age_days, self.sex_mask,
            self.flags, poseidon(list(self.inclusion_codes)), poseidon(list(self.exclusion_codes)),
            *self.lab_lo, *self.lab_hi,
        ])

    def circuit_inputs(self) -> dict[str, object]:
        """The circuit's criteria inputs (witness JSON fragment, numbers as decimal strings)."""
        return {
            "referenceDay": str(self.reference_day),
            "minAgeDays": str(self.min_age_days),
            "maxAgeDays": str(self.max_age_days),
            "sexMask": str(self.sex_mask),
            "flags": str(self.flags),
            "inclusionCodes": [str(c) for c in self.inclusion_codes],
            "exclusionCodes": [str(c) for c in self.exclusion_codes],
            "labLo": [str(v) for v in self.lab_lo],
            "labHi": [str(v) for v in self.lab_hi],
        }

    def is_satisfied_by(self, attrs: EligibilityAttributes) -> bool:
        """The circuit's checks on encoded attributes, in Python (predicts whether a witness exists)."""
        age_days = self.reference_day - attrs.birth_days
        if not self.min_age_days <= age_days <= self.max_age_days:
            return False
        if not self.sex_mask >> attrs.sex & 1:
            return False
        present = [c for c in attrs.conditions if c != 0]
        if self.flags & FLAG_INCLUSION and not any(c in self.inclusion_codes for c in present):
            return False
        if any(c in self.exclusion_codes for c in present):
            return False
        for i, value in enumerate(attrs.labs):
            if self.flags >> (1 + i) & 1 and not self.lab_lo[i] <= value <= self.lab_hi[i]:
                return False
        return True


# --- document validation -------------------------------------------------------------------------


def _operators(document: object) -> dict[str, dict[str, object]]:
    if not isinstance(document, Mapping):
        raise CriteriaError("criteria must be a JSON object mapping attribute names to operators")
    checked: dict[str, dict[str, object]] = {}
    for name, ops in document.items():
        if name not in ATTRIBUTES:
            raise CriteriaError(f"unknown attribute {name!r}; known: {', '.join(ATTRIBUTES)}")
        if not isinstance(ops, Mapping) or not ops:
            raise CriteriaError(f"{name}: expected an object of operators such as {{\"$eq\": ...}}")
        for op in ops:
            if op not in ATTRIBUTES[name]:
                raise CriteriaError(f"{name}: operator {op!r} is not supported for this attribute "
                                    f"(supported: {', '.join(sorted(ATTRIBUTES[name]))})")
        checked[name] = dict(ops)
    return checked


def _number(name: str, op: str, value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise CriteriaError(f"{name} {op}: bound must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CriteriaError(f"{name} {op}: bound must be finite")
    try:
        exact = Fraction(Decimal(str(value))) if isinstance(value, float) else Fraction(value)
    except (InvalidOperation, ValueError, OverflowError):
        raise CriteriaError(f"{name} {op}: bound must be finite") from None
    return exact


def _bounds(name: str, ops: Mapping[str, object]) -> tuple[Fraction | None, bool, Fraction | None, bool]:
    """Intersect range operators into (lo, lo_strict, hi, hi_strict); None means unbounded."""
    lo: Fraction | None = None
    hi: Fraction | None = None
    lo_strict = hi_strict = False

    def raise_lo(value: Fraction, strict: bool) -> None:
        nonlocal lo, lo_strict
        if lo is None or value > lo or (value == lo and strict):
            lo, lo_strict = value, strict

    def lower_hi(value: Fraction, strict: bool) -> None:
        nonlocal hi, hi_strict
        if hi is None or value < hi or (value == hi and strict):
            hi, hi_strict = value, strict

    for op, raw in ops.items():
        if op == "$between":
            if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != 2:
                raise CriteriaError(f"{name} $between: expected [low, high]")
            low, high = _number(name, op, raw[0]), _number(name, op, raw[1])
            if low > high:
                raise CriteriaError(f"{name} $between: low bound is above high bound")
            raise_lo(low, False)
            lower_hi(high, False)
            continue
        value = _number(name, op, raw)
        if op == "$eq":
            raise_lo(value, False)
            lower_hi(value, False)
        elif op == "$gt":
            raise_lo(value, True)
        elif op == "$gte":
            raise_lo(value, False)
        elif op == "$lt":
            lower_hi(value, True)
        elif op == "$lte":
            lower_hi(value, False)
    return lo, lo_strict, hi, hi_strict


def _integer_range(lo: Fraction | None, lo_strict: bool, hi: Fraction | None, hi_strict: bool,
                   floor_value: int, ceil_value: int) -> tuple[int, int]:
    """The integers n with lo (<|<=) n (<|<=) hi, clamped to [floor_value, ceil_value]."""
    low = floor_value
    if lo is not None:
        low = max(low, math.floor(lo) + 1 if lo_strict else math.ceil(lo))
    high = ceil_value
    if hi is not None:
        high = min(high, math.ceil(hi) - 1 if hi_strict else math.floor(hi))
    return low, high


def _codes(name: str, op: str, raw: object) -> list[str]:
    values = [raw] if op in ("$eq", "$ne") else raw
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise CriteriaError(f"{name} {op}: expected a list")
    if op in ("$in", "$nin") and not values:
        raise CriteriaError(f"{name} {op}: the list is empty")
    if any(not isinstance(v, str) or not v.strip() for v in values):
        raise CriteriaError(f"{name} {op}: every value must be a non-empty string")
    return [v.strip() for v in values]


def _sex_mask(ops: Mapping[str, object]) -> int:
    mask = ALL_SEXES_MASK
    for op, raw in ops.items():
        values = _codes("sex", op, raw)
        unknown = [v for v in values if v not in SEX_CODES]
        if unknown:
            raise CriteriaError(f"sex {op}: unknown value(s) {', '.join(map(repr, unknown))}; "
                                f"expected {', '.join(SEX_CODES)}")
        chosen = 0
        for v in values:
            chosen |= 1 << SEX_CODES[v]
        mask &= chosen if op in ("$eq", "$in") else ALL_SEXES_MASK & ~chosen
    if mask == 0:
        raise CriteriaError("sex: the criteria exclude every value (no patient could match)")
    return mask


def _condition_sets(ops: Mapping[str, object]) -> tuple[list[str] | None, list[str]]:
    if "$eq" in ops and "$in" in ops:
        raise CriteriaError("conditions: use either $eq or $in, not both")
    if "$ne" in ops and "$nin" in ops:
        raise CriteriaError("conditions: use either $ne or $nin, not both")
    inclusion: list[str] | None = None
    exclusion: list[str] = []
    for op, raw in ops.items():
        codes = list(dict.fromkeys(_codes("conditions", op, raw)))
        if op in ("$eq", "$in"):
            if len(codes) > INCLUSION_SLOTS:
                raise CriteriaError(f"conditions {op}: at most {INCLUSION_SLOTS} codes (got {len(codes)})")
            inclusion = codes
        else:
            if len(codes) > EXCLUSION_SLOTS:
                raise CriteriaError(f"conditions {op}: at most {EXCLUSION_SLOTS} codes (got {len(codes)})")
            exclusion = codes
    return inclusion, exclusion


def _age_years(ops: Mapping[str, object]) -> tuple[int, int]:
    for op, raw in ops.items():
        values = raw if op == "$between" and isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise CriteriaError(f"age {op}: bounds must be whole years (integers)")
    low, high = _integer_range(*_bounds("age", ops), 0, MAX_AGE_YEARS)
    if low > high:
        raise CriteriaError(f"age: the range is empty (or outside 0..{MAX_AGE_YEARS} years)")
    return low, high


def _lab_range(name: str, ops: Mapping[str, object]) -> tuple[int, int]:
    """Encoded [lo, hi] (scaled by 100, plus 1) for one lab; measured values only."""
    lo, lo_strict, hi, hi_strict = _bounds(name, ops)
    scale = Fraction(LAB_SCALE)
    low, high = _integer_range(None if lo is None else lo * scale, lo_strict,
                               None if hi is None else hi * scale, hi_strict, 0, MAX_LAB_SCALED)
    if low > high:
        raise CriteriaError(f"{name}: the range is empty (or outside what a credential can hold)")
    return low + 1, high + 1


# --- calendar ------------------------------------------------------------------------------------


def age_in_years(birth: date, reference: date) -> int:
    """Completed years at `reference` (negative if born after it)."""
    return reference.year - birth.year - ((reference.month, reference.day) < (birth.month, birth.day))


def _latest_birth_with_age(reference: date, years: int) -> date:
    """The latest birth date whose age at `reference` is at least `years` (age is monotone in birth)."""
    year = reference.year - years
    candidate = date(year, reference.month, min(reference.day, 28))
    # Within a few days of the answer; walk forward while still old enough (bounded: <= 4 steps).
    for _ in range(4):
        nxt = candidate + timedelta(days=1)
        if age_in_years(nxt, reference) < years:
            break
        candidate = nxt
    return candidate


def _age_day_bounds(reference: date, min_years: int, max_years: int) -> tuple[int, int]:
    ref_day = (reference - DAY_EPOCH).days
    min_days = ref_day - (_latest_birth_with_age(reference, min_years) - DAY_EPOCH).days
    # age <= max  <=>  born after the latest birth date with age >= max + 1.
    max_days = ref_day - (_latest_birth_with_age(reference, max_years + 1) - DAY_EPOCH).days - 1
    return min_days, min(max_days, MAX_DAY)


# --- public API ----------------------------------------------------------------------------------


def compile_criteria(document: object, reference_date: date,
                     hash_condition: ConditionHasher) -> CompiledCriteria:
    """Compile a criteria document for `reference_date`; raises CriteriaError for what the circuit can't express."""
    ops = _operators(document)
    try:
        reference_day = day_number(reference_date)
    except MalformedInput as exc:
        raise CriteriaError(f"reference date: {exc}") from None

    min_years, max_years = _age_years(ops["age"]) if "age" in ops else (0, MAX_AGE_YEARS)
    if "age" in ops:
        min_age_days, max_age_days = _age_day_bounds(reference_date, min_years, max_years)
    else:
        min_age_days, max_age_days = 0, MAX_DAY

    sex_mask = _sex_mask(ops["sex"]) if "sex" in ops else ALL_SEXES_MASK

    flags = 0
    inclusion_codes: list[int] = []
    exclusion_codes: list[int] = []
    if "conditions" in ops:
        inclusion, exclusion = _condition_sets(ops["conditions"])
        if inclusion is not None:
            flags |= FLAG_INCLUSION
            inclusion_codes = sorted({hash_condition(c) for c in inclusion})
        exclusion_codes = sorted({hash_condition(c) for c in exclusion})

    lab_lo, lab_hi = [], []
    for i, name in enumerate(LAB_NAMES):
        if name in ops:
            low, high = _lab_range(name, ops[name])
            flags |= 1 << (1 + i)
        else:
            low = high = 0
        lab_lo.append(low)
        lab_hi.append(high)

    return CompiledCriteria(
        reference_day=reference_day,
        min_age_days=min_age_days,
        max_age_days=max_age_days,
        sex_mask=sex_mask,
        flags=flags,
        inclusion_codes=tuple(inclusion_codes + [0] * (INCLUSION_SLOTS - len(inclusion_codes))),
        exclusion_codes=tuple(exclusion_codes + [0] * (EXCLUSION_SLOTS - len(exclusion_codes))),
        lab_lo=tuple(lab_lo),
        lab_hi=tuple(lab_hi),
    )


def _validation_only(code: str) -> int:
    return len(code)  # stand-in for the keyed hash: evaluate compares plain codes


def evaluate(document: object, patient: PatientAttributes, reference_date: date) -> bool:
    """Reference semantics in plain Python: does `patient` meet the criteria at `reference_date`?

    Validates the document like `compile_criteria` (raises CriteriaError for the same documents).
    """
    compile_criteria(document, reference_date, _validation_only)  # rejects exactly what compile rejects
    ops = _operators(document)
    age = age_in_years(patient.birth_date, reference_date)
    if age < 0:
        return False
    if "age" in ops:
        low, high = _age_years(ops["age"])
        if not low <= age <= high:
            return False
    if "sex" in ops and not _sex_mask(ops["sex"]) >> SEX_CODES[patient.sex] & 1:
        return False
    if "conditions" in ops:
        inclusion, exclusion = _condition_sets(ops["conditions"])
        held = {c.strip() for c in patient.conditions}
        if inclusion is not None and not held & set(inclusion):
            return False
        if held & set(exclusion):
            return False
    for name in LAB_NAMES:
        if name in ops:
            lo, lo_strict, hi, hi_strict = _bounds(name, ops[name])
            value = patient.lab(name)
            if value is None:
                return False
            exact = Fraction(value)
            if lo is not None and (exact < lo or (lo_strict and exact == lo)):
                return False
            if hi is not None and (exact > hi or (hi_strict and exact == hi)):
                return False
    return True
