"""Eligibility facts from a patient's FHIR R4 record: what a hospital commits into a zk credential.

Pure: resources (JSON dicts) in, `EligibilityFacts` out. The `zk` package encodes the facts for the
circuit; this module only knows FHIR: which resources count, which codes name which lab, and how
units are normalised (UCUM). Anything it cannot read with certainty is left out and said so in
`EligibilityFacts.notes` (codes and reasons only, never values), because a wrong fact in a credential
is worse than a missing one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm")
CONDITION_SYSTEMS = (SNOMED, *ICD10)

# clinicalStatus codes that mean "the patient has it now" (http://terminology.hl7.org/CodeSystem/condition-clinical).
ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})

# LOINC codes per lab, with the UCUM units each may carry and the factor/offset to the credential unit.
# HbA1c: NGSP % (4548-4, 17856-6) or IFCC mmol/mol (59261-8); NGSP = 0.09148 * IFCC + 2.152
# (IFCC-NGSP master equation, Hoelzel et al., Clin Chem 2004).
_LABS: Mapping[str, Mapping[str, tuple[frozenset[str], Decimal, Decimal]]] = {
    "hba1c": {
        "4548-4": (frozenset({"%"}), Decimal(1), Decimal(0)),
        "17856-6": (frozenset({"%"}), Decimal(1), Decimal(0)),
        "59261-8": (frozenset({"mmol/mol"}), Decimal("0.09148"), Decimal("2.152")),
    },
    "bmi": {"39156-5": (frozenset({"kg/m2", "kg/m^2"}), Decimal(1), Decimal(0))},
    "egfr": {
        code: (frozenset({"mL/min/{1.73_m2}", "mL/min/1.73m2", "mL/min/{1.73m2}"}), Decimal(1), Decimal(0))
        for code in ("33914-3", "48642-3", "48643-1", "62238-1", "69405-9", "98979-8")
    },
}
LAB_NAMES = tuple(_LABS)


@dataclass(frozen=True)
class EligibilityFacts:
    """A patient's eligibility facts in plain form. PHI: keep it in memory, never log it."""

    patient_id: str
    birth_date: date | None
    sex: str  # FHIR administrative-gender; "unknown" when absent
    conditions: tuple[str, ...]  # active condition codes as "system|code", sorted
    labs: Mapping[str, Decimal | None]  # latest final value per lab, in the credential's units
    notes: tuple[str, ...] = field(default=())  # what was left out and why (no values)


def eligibility_facts(patient: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> EligibilityFacts:
    """Facts of `patient` from its compartment's resources (others are ignored)."""
    pid = str(patient.get("id", ""))
    ref = f"Patient/{pid}"
    notes: list[str] = []
    birth = _birth_date(patient.get("birthDate"), notes)
    gender = patient.get("gender")
    sex = gender if isinstance(gender, str) and gender in ("female", "male", "other", "unknown") else "unknown"

    conditions: set[str] = set()
    latest: dict[str, tuple[datetime, Decimal]] = {}
    for res in resources:
        if _subject(res) != ref:
            continue
        if res.get("resourceType") == "Condition":
            conditions.update(_active_condition_codes(res))
        elif res.get("resourceType") == "Observation":
            _take_lab(res, latest, notes)
    return EligibilityFacts(
        patient_id=pid,
        birth_date=birth,
        sex=sex,
        conditions=tuple(sorted(conditions)),
        labs={name: latest[name][1] if name in latest else None for name in LAB_NAMES},
        notes=tuple(notes),
    )


def _birth_date(value: Any, notes: list[str]) -> date | None:
    if not isinstance(value, str):
        notes.append("Patient.birthDate missing")
        return None
    if len(value) != 10:
        notes.append("Patient.birthDate is partial: age criteria cannot be proven")
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        notes.append("Patient.birthDate unreadable")
        return None


def _subject(res: Mapping[str, Any]) -> str:
    ref = (res.get("subject") or res.get("patient") or {}).get("reference", "")
    return str(ref)


def _codes(concept: Any, systems: Iterable[str]) -> list[tuple[str, str]]:
    wanted = tuple(systems)
    return [
        (c["system"], c["code"])
        for c in (concept or {}).get("coding", [])
        if isinstance(c, Mapping) and c.get("system") in wanted and isinstance(c.get("code"), str)
    ]


def _status(concept: Any) -> set[str]:
    return {str(c.get("code")) for c in (concept or {}).get("coding", []) if isinstance(c, Mapping)}


def _active_condition_codes(cond: Mapping[str, Any]) -> list[str]:
    if not _status(cond.get("clinicalStatus")) & ACTIVE_CLINICAL:
        return []
    if _status(cond.get("verificationStatus")) & EXCLUDED_VERIFICATION:
        return []
    if cond.get("abatementDateTime") or cond.get("abatementPeriod"):
        return []
    return [f"{system}|{code}" for system, code in _codes(cond.get("code"), CONDITION_SYSTEMS)]


def _when(obs: Mapping[str, Any]) -> datetime | None:
    raw = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("end") or obs.get("issued")
    if not isinstance(raw, str):
        return None
    try:
        t = datetime.fromisoformat(raw)  # Python 3.11 reads FHIR's "Z" and partial dates
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _take_lab(obs: Mapping[str, Any], latest: dict[str, tuple[datetime, Decimal]], notes: list[str]) -> None:
    if obs.get("status") not in FINAL_OBSERVATION:
        return
    for _, code in _codes(obs.get("code"), (LOINC,)):
        for name, codes in _LABS.items():
            if code not in codes:
                continue
            units, factor, offset = codes[code]
            q = obs.get("valueQuantity") or {}
            unit = q.get("code") or q.get("unit")
            if unit not in units:
                notes.append(f"{name}: LOINC {code} with unit not understood, left out")
                return
            try:
                value = Decimal(str(q["value"])) * factor + offset
            except (KeyError, InvalidOperation):
                notes.append(f"{name}: LOINC {code} without a numeric value, left out")
                return
            when = _when(obs)
            if when is None:
                notes.append(f"{name}: LOINC {code} without an effective time, left out")
                return
            if name not in latest or when > latest[name][0]:
                latest[name] = (when, value)
            return
