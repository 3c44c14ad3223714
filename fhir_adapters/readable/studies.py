"""A ResearchStudy in plain words, for the patient's "Research studies" page and the researcher portal: who runs
it, what for, who may join (the eligibility criteria of `fhir_adapters.research_study`, never the JSON), which
data it receives and until when people may join. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_adapters.readable.text import human_date, parse_date
from fhir_adapters.research_study import StudyTerms, study_terms

# The eligibility circuit's attributes as people say them (zk/criteria.py: age, sex, conditions, labs).
LAB_WORDS: Mapping[str, tuple[str, str]] = {
    "hba1c": ("HbA1c (long-term blood sugar)", "%"),
    "bmi": ("body mass index", "kg/m²"),
    "egfr": ("kidney function (eGFR)", "mL/min/1.73 m²"),
}
SEX_WORDS: Mapping[str, str] = {"female": "women", "male": "men", "other": "people of another sex",
                                "unknown": "people whose sex is not recorded"}
# Code systems of condition codes as people know them (else the system URI is shown).
CODE_SYSTEMS: Mapping[str, str] = {
    "http://snomed.info/sct": "SNOMED CT", "snomed": "SNOMED CT", "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "icd10": "ICD-10", "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
}
# Resource types a study may receive, in words (the share form's vocabulary where it has one).
DATA_WORDS: Mapping[str, str] = {
    "Patient": "your year of birth and sex (never your name, address or record number)",
    "Observation": "test results and measurements", "Condition": "conditions and diagnoses",
    "Procedure": "procedures and operations", "MedicationRequest": "prescriptions",
    "MedicationStatement": "medicines you take", "MedicationAdministration": "medicines given to you",
    "Immunization": "vaccinations", "DiagnosticReport": "test reports", "Encounter": "visits and stays",
    "AllergyIntolerance": "allergies", "CarePlan": "care plans", "Specimen": "samples taken",
    "FamilyMemberHistory": "your family's health history",
}
_RANGE = {"$eq": "exactly", "$lt": "below", "$lte": "at most", "$gt": "above", "$gte": "at least"}


@dataclass(frozen=True)
class StudyView:
    id: str
    title: str
    status: str
    status_text: str
    description: str
    sponsor: str  # the sponsor's name (or reference when unknown)
    investigator: str
    criteria: list[str]  # one sentence per criterion
    data: list[str]
    data_period: str
    window: str  # "You can join until 31 December 2099"
    max_participants: int | None
    cohort_group_id: str | None
    owner_organization: str | None
    open: bool  # active and inside the enrolment window
    terms: StudyTerms


def _number(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def range_words(ops: Mapping[str, Any], unit: str = "") -> str:
    """{"$between": [18, 80]} -> "between 18 and 80"; several operators are joined with "and"."""
    parts = []
    for op, value in ops.items():
        if op == "$between" and isinstance(value, list | tuple) and len(value) == 2:
            parts.append(f"between {_number(value[0])} and {_number(value[1])}")
        elif op in _RANGE:
            parts.append(f"{_RANGE[op]} {_number(value)}")
    return " and ".join(parts) + (f" {unit}" if unit and parts else "")


def code_words(code: str) -> str:
    """"http://snomed.info/sct|44054006" -> "SNOMED CT 44054006"."""
    system, sep, value = code.rpartition("|")
    if not sep:
        return code
    return f"{CODE_SYSTEMS.get(system, system)} {value}"


def _codes(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


def criteria_sentences(criteria: Mapping[str, Any]) -> list[str]:
    """The eligibility criteria, one plain sentence each (what the cohort Group says, for people)."""
    out: list[str] = []
    for name, ops in criteria.items():
        if not isinstance(ops, Mapping):
            continue
        if name == "age":
            out.append(f"Aged {range_words(ops, 'years')}.")
        elif name == "sex":
            for op, value in ops.items():
                who = " or ".join(SEX_WORDS.get(v, v) for v in _codes(value))
                out.append(f"Open to {who}." if op in ("$eq", "$in") else f"Not open to {who}.")
        elif name == "conditions":
            for op, value in ops.items():
                codes = ", ".join(code_words(c) for c in _codes(value))
                if op in ("$eq", "$in"):
                    out.append(f"You have at least one of these conditions in your record: {codes}.")
                else:
                    out.append(f"You have none of these conditions in your record: {codes}.")
        elif name in LAB_WORDS:
            words, unit = LAB_WORDS[name]
            out.append(f"Your latest {words} is {range_words(ops, unit)} "
                       "(without this measurement in your record you cannot join).")
    return out


def _period_words(start: date | None, end: date | None) -> str:
    if start and end:
        return f"from {human_date(start)} to {human_date(end)}"
    if start:
        return f"from {human_date(start)} on"
    if end:
        return f"until {human_date(end)}"
    return "from any time"


STATUS_WORDS: Mapping[str, str] = {
    "draft": "Draft: not published yet", "active": "Open: published on the ledger",
    "closed-to-accrual": "Closed to new participants", "completed": "Completed", "withdrawn": "Withdrawn",
}


def describe_study(study: Mapping[str, Any], names: Mapping[str, str] | None = None, *,
                   today: date | None = None) -> StudyView:
    """`study` in words; `names` maps references (Organization/x, Practitioner/y) to display names."""
    names = names or {}
    terms = study_terms(study)
    sponsor_ref = str((study.get("sponsor") or {}).get("reference") or "")
    pi_ref = str((study.get("principalInvestigator") or {}).get("reference") or "")
    period = study.get("period") or {}
    start, end = parse_date(period.get("start")), parse_date(period.get("end"))
    data_period = terms.data_period
    open_now = terms.status == "active" and (today is None or (
        (start is None or start <= today) and (end is None or today <= end)))
    if end is not None:
        window = f"You can join until {human_date(end)}."
    else:
        window = "There is no closing date."
    return StudyView(
        id=terms.study_id, title=terms.title or "Untitled study", status=terms.status,
        status_text=STATUS_WORDS.get(terms.status, terms.status.replace("-", " ").capitalize()),
        description=str(study.get("description") or ""),
        sponsor=names.get(sponsor_ref) or sponsor_ref.partition("/")[2] or "not named",
        investigator=names.get(pi_ref) or pi_ref.partition("/")[2] or "not named",
        criteria=criteria_sentences(terms.criteria),
        data=[DATA_WORDS.get(c.resource_type, c.resource_type) for c in terms.categories],
        data_period=_period_words(
            data_period.start.date() if data_period and data_period.start else None,
            data_period.end.date() if data_period and data_period.end else None),
        window=window, max_participants=terms.max_participants, cohort_group_id=terms.cohort_group_id,
        owner_organization=terms.owner_organization, open=open_now, terms=terms,
    )
