"""Eligibility credentials: a patient's attributes encoded as field elements and committed as a Merkle leaf.

The issuing hospital derives `PatientAttributes` from its records, encodes them with `encode` (condition
codes through a keyed hash the circuit treats as opaque) and inserts `leaf(identity_commitment(secret),
attrs)` into its Poseidon Merkle tree (`zk.merkle`). The layout below is the one
`zk/circuits/eligibility.circom` recomputes; change both together.

    leaf = Poseidon([identityCommitment, birthDays, sex, conditions[0..7], labs[0..2], issuanceEpoch])
    identityCommitment = Poseidon([secret])
    nullifier = Poseidon([secret, studyId])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, hmac

from zk.errors import MalformedInput
from zk.field import R
from zk.poseidon import poseidon

if TYPE_CHECKING:
    from zk.criteria import CompiledCriteria

# Circuit dimensions (Eligibility(20, 8, 3, 8, 8) in eligibility.circom).
TREE_DEPTH = 20
CONDITION_SLOTS = 8
LAB_NAMES: tuple[str, ...] = ("hba1c", "bmi", "egfr")
# Units the issuer normalises to before encoding: HbA1c in % (NGSP), BMI in kg/m2, eGFR in mL/min/1.73m2.
LAB_UNITS: Mapping[str, str] = {"hba1c": "%", "bmi": "kg/m2", "egfr": "mL/min/1.73m2"}
LAB_SCALE = 100  # labs are stored with two decimals
LAB_BITS = 32
# A measured lab is stored as round(value * 100) + 1 so that 0 can mean "not measured".
MAX_LAB_SCALED = 2**LAB_BITS - 2

# Days are counted from 1900-01-01 so that every living patient's birth date is non-negative.
DAY_EPOCH = date(1900, 1, 1)
DAY_BITS = 17
MAX_DAY = 2**DAY_BITS - 1  # 2258-11-13

# FHIR administrative-gender values (http://hl7.org/fhir/administrative-gender) as circuit codes.
SEX_CODES: Mapping[str, int] = {"unknown": 0, "female": 1, "male": 2, "other": 3}

ConditionHasher = Callable[[str], int]
"""Maps a condition code ("system|code") to a non-zero field element; keyed so codes cannot be guessed."""

_CONDITION_HASH_TAG = b"healthledger/zk/condition-code/v1"


def condition_hasher(key: bytes) -> ConditionHasher:
    """Keyed hash of condition codes: HMAC-SHA256(key, tag || code) reduced mod R (0 is reserved)."""
    if len(key) < 16:
        raise MalformedInput("condition_hasher: key must be at least 16 bytes")

    def hash_code(code: str) -> int:
        if not isinstance(code, str) or not code.strip():
            raise MalformedInput("condition code must be a non-empty string")
        mac = hmac.HMAC(key, hashes.SHA256())
        mac.update(_CONDITION_HASH_TAG + b"\x00" + code.strip().encode("utf-8"))
        value = int.from_bytes(mac.finalize(), "big") % R
        return value or 1  # 0 marks an empty slot; a zero digest (probability 2^-254) maps to 1

    return hash_code


def day_number(day: date) -> int:
    """Days since 1900-01-01 (the circuit's day count); raises for dates outside [1900-01-01, 2258]."""
    n = (day - DAY_EPOCH).days
    if not 0 <= n <= MAX_DAY:
        raise MalformedInput("date is outside the range the circuit supports (1900-01-01 to 2258-11-13)")
    return n


def quantize_lab(value: Decimal | float | str) -> Decimal:
    """A lab value as the credential stores it: a non-negative decimal rounded to 0.01 (half even)."""
    if isinstance(value, bool):
        raise MalformedInput("lab value must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedInput("lab value must be finite")
    try:
        exact = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise MalformedInput("lab value must be a number") from None
    if not exact.is_finite():
        raise MalformedInput("lab value must be finite")
    quantized = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    if quantized < 0:
        raise MalformedInput("lab value must not be negative")
    if quantized * LAB_SCALE > MAX_LAB_SCALED:
        raise MalformedInput("lab value is too large for the circuit")
    return quantized


def encode_lab(value: Decimal | float | str | None) -> int:
    """Circuit encoding of a lab value: 0 when not measured, else round(value * 100) + 1."""
    if value is None:
        return 0
    return int(quantize_lab(value) * LAB_SCALE) + 1


@dataclass(frozen=True)
class PatientAttributes:
    """What the issuer knows about a patient, in plain form (PHI: never log or store it unencrypted)."""

    birth_date: date
    sex: str
    conditions: tuple[str, ...] = ()
    labs: Mapping[str, Decimal | None] = field(default_factory=dict)
    issuance_epoch: int = 0

    def lab(self, name: str) -> Decimal | None:
        value = self.labs.get(name)
        return None if value is None else quantize_lab(value)


@dataclass(frozen=True)
class EligibilityAttributes:
    """A credential's attributes as circuit field elements (see the module docstring for the layout)."""

    birth_days: int
    sex: int
    conditions: tuple[int, ...]  # CONDITION_SLOTS entries, 0 = empty slot
    labs: tuple[int, ...]  # one per LAB_NAMES entry, encode_lab encoding
    issuance_epoch: int

    def __post_init__(self) -> None:
        if not (type(self.birth_days) is int and 0 <= self.birth_days <= MAX_DAY):
            raise MalformedInput("birth_days must be an int in [0, 2^17)")
        if self.sex not in SEX_CODES.values() or type(self.sex) is not int:
            raise MalformedInput("sex must be a code 0..3")
        if len(self.conditions) != CONDITION_SLOTS:
            raise MalformedInput(f"conditions must have exactly {CONDITION_SLOTS} slots")
        if any(type(c) is not int or not 0 <= c < R for c in self.conditions):
            raise MalformedInput("each condition must be a field element")
        if len(self.labs) != len(LAB_NAMES):
            raise MalformedInput(f"labs must have exactly {len(LAB_NAMES)} entries")
        if any(type(v) is not int or not 0 <= v <= MAX_LAB_SCALED + 1 for v in self.labs):
            raise MalformedInput("each lab must be an encoded value in [0, 2^32)")
        if not (type(self.issuance_epoch) is int and 0 <= self.issuance_epoch < 2**64):
            raise MalformedInput("issuance_epoch must be an int in [0, 2^64)")

    def field_elements(self) -> list[int]:
        """The attributes in leaf order (after the identity commitment)."""
        return [self.birth_days, self.sex, *self.conditions, *self.labs, self.issuance_epoch]


def encode(patient: PatientAttributes, hash_condition: ConditionHasher) -> EligibilityAttributes:
    """Encode a patient's attributes for the circuit; raises MalformedInput naming what does not fit."""
    if patient.sex not in SEX_CODES:
        raise MalformedInput(f"sex must be one of {', '.join(SEX_CODES)}")
    unknown_labs = set(patient.labs) - set(LAB_NAMES)
    if unknown_labs:
        raise MalformedInput(f"unknown lab(s): {', '.join(sorted(unknown_labs))}")
    codes = sorted({hash_condition(code) for code in patient.conditions})
    if len(codes) > CONDITION_SLOTS:
        raise MalformedInput(f"a credential holds at most {CONDITION_SLOTS} condition codes")
    return EligibilityAttributes(
        birth_days=day_number(patient.birth_date),
        sex=SEX_CODES[patient.sex],
        conditions=tuple(codes + [0] * (CONDITION_SLOTS - len(codes))),
        labs=tuple(encode_lab(patient.labs.get(name)) for name in LAB_NAMES),
        issuance_epoch=patient.issuance_epoch,
    )


def _check_secret(secret: int) -> None:
    if type(secret) is not int or not 0 < secret < R:
        raise MalformedInput("secret must be a non-zero field element")


def identity_commitment(secret: int) -> int:
    """Poseidon([secret]): what the issuer puts in the leaf instead of the patient's secret."""
    _check_secret(secret)
    return poseidon([secret])


def leaf(commitment: int, attrs: EligibilityAttributes) -> int:
    """The credential leaf: Poseidon([identityCommitment, *attributes])."""
    if type(commitment) is not int or not 0 <= commitment < R:
        raise MalformedInput("identity commitment must be a field element")
    return poseidon([commitment, *attrs.field_elements()])


def leaves(pairs: Sequence[tuple[int, EligibilityAttributes]]) -> list[int]:
    """`leaf` of each (identity commitment, attributes) pair, in order (one task of a pool of worker processes:
    importing this module is all a worker needs)."""
    return [leaf(commitment, attrs) for commitment, attrs in pairs]


def nullifier(secret: int, study_id: int) -> int:
    """Poseidon([secret, studyId]): the same for every enrolment of one patient in one study."""
    _check_secret(secret)
    if type(study_id) is not int or not 0 <= study_id < R:
        raise MalformedInput("study id must be a field element")
    return poseidon([secret, study_id])


def credential_inputs(secret: int, attrs: EligibilityAttributes, siblings: Sequence[int],
                      path_bits: Sequence[int]) -> dict[str, object]:
    """The circuit's private credential inputs (witness JSON fragment, numbers as decimal strings)."""
    _check_secret(secret)
    if len(siblings) != TREE_DEPTH or len(path_bits) != TREE_DEPTH:
        raise MalformedInput(f"merkle path must have depth {TREE_DEPTH}")
    return {
        "secret": str(secret),
        "birthDays": str(attrs.birth_days),
        "sex": str(attrs.sex),
        "conditions": [str(c) for c in attrs.conditions],
        "labs": [str(v) for v in attrs.labs],
        "issuanceEpoch": str(attrs.issuance_epoch),
        "siblings": [str(s) for s in siblings],
        "pathBits": [str(b) for b in path_bits],
    }


def enrollee_field(address: str | int) -> int:
    """An Ethereum address (0x-hex or int) as the circuit's `enrollee` public input."""
    if isinstance(address, str):
        text = address.lower().removeprefix("0x")
        if len(text) != 40 or any(ch not in "0123456789abcdef" for ch in text):
            raise MalformedInput("enrollee must be a 20-byte hex address")
        return int(text, 16)
    if type(address) is not int or not 0 <= address < 2**160:
        raise MalformedInput("enrollee must be a 20-byte address")
    return address


def eligibility_inputs(*, secret: int, attrs: EligibilityAttributes, siblings: Sequence[int],
                       path_bits: Sequence[int], root: int, study_id: int, criteria: CompiledCriteria,
                       enrollee: str | int) -> dict[str, object]:
    """The eligibility circuit's full input (public and private), ready for `NodeProver.prove`.

    Public signals come out in the order root, studyId, criteriaHash, enrollee, nullifier.
    """
    return {
        "root": str(root),
        "studyId": str(study_id),
        "criteriaHash": str(criteria.criteria_hash),
        "enrollee": str(enrollee_field(enrollee)),
        "nullifier": str(nullifier(secret, study_id)),
        **credential_inputs(secret, attrs, siblings, path_bits),
        **criteria.circuit_inputs(),
    }
