"""A patient's own FHIR R4 record as a readable summary: conditions, medicines, allergies, vaccinations,
visits, test results and measurements (values with units, dates, normal ranges), procedures. Pure.

Each resource becomes one `RecordLine`: a title in plain words, when, a few details, and a status or flag.
Whatever a resource does not say is left out, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_adapters.readable.text import (
    concept_text,
    human_date,
    number_text,
    outside_range,
    quantity_text,
    range_text,
    sort_key,
)


@dataclass(frozen=True)
class RecordLine:
    title: str
    when: str = ""  # in words
    details: tuple[str, ...] = ()
    status: str = ""  # e.g. "active", "resolved", "stopped"
    flag: str = ""  # "high" / "low" for a value outside its normal range
    sort: str = ""  # ISO date for ordering (newest first)


@dataclass(frozen=True)
class RecordSection:
    key: str  # anchor id
    heading: str
    explanation: str
    resource_types: tuple[str, ...]
    lines: tuple[RecordLine, ...] = field(default_factory=tuple)


# (key, heading, explanation, resource types), in the order the page shows them.
SECTIONS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("conditions", "Conditions", "Illnesses and health problems recorded for you.", ("Condition",)),
    ("medications", "Medicines", "Medicines prescribed for you, or that you take.",
     ("MedicationRequest", "MedicationStatement")),
    ("allergies", "Allergies", "Allergies and intolerances recorded for you.", ("AllergyIntolerance",)),
    ("immunizations", "Vaccinations", "Vaccines you were given.", ("Immunization",)),
    ("encounters", "Visits", "Appointments, stays and other visits.", ("Encounter",)),
    ("observations", "Test results and measurements", "Lab results, vital signs and other measurements.",
     ("Observation",)),
    ("procedures", "Procedures", "Operations and other procedures.", ("Procedure",)),
)
SUMMARY_TYPES: tuple[str, ...] = tuple(t for *_, types in SECTIONS for t in types)


def summarise(resources: Iterable[Mapping[str, Any]]) -> list[RecordSection]:
    """The record in sections (every section, empty ones too), newest first within each."""
    by_type: dict[str, list[RecordLine]] = {}
    for resource in resources:
        rtype = str(resource.get("resourceType"))
        describe = _DESCRIBERS.get(rtype)
        if describe is not None:
            by_type.setdefault(rtype, []).append(describe(resource))
    sections = []
    for key, heading, explanation, types in SECTIONS:
        lines = [line for t in types for line in by_type.get(t, [])]
        lines.sort(key=lambda line: line.sort, reverse=True)
        sections.append(RecordSection(key, heading, explanation, types, tuple(lines)))
    return sections


def _status(resource: Mapping[str, Any], element: str) -> str:
    value = resource.get(element)
    if isinstance(value, str):
        return value
    return concept_text(value)


def _condition(c: Mapping[str, Any]) -> RecordLine:
    onset = c.get("onsetDateTime") or (c.get("onsetPeriod") or {}).get("start") or c.get("recordedDate")
    details = []
    abatement = c.get("abatementDateTime")
    if abatement:
        details.append(f"ended {human_date(abatement)}")
    severity = concept_text(c.get("severity"))
    if severity:
        details.append(f"severity: {severity.lower()}")
    return RecordLine(concept_text(c.get("code"), "Condition"), _since(onset), tuple(details),
                      _status(c, "clinicalStatus"), sort=sort_key(onset))


def _since(value: Any) -> str:
    return f"since {human_date(value)}" if value else ""


def _medication(m: Mapping[str, Any]) -> RecordLine:
    name = concept_text(m.get("medicationCodeableConcept")) or str(
        (m.get("medicationReference") or {}).get("display") or "Medicine")
    when = m.get("authoredOn") or m.get("dateAsserted") or (m.get("effectivePeriod") or {}).get("start")
    details = []
    for dosage in (m.get("dosageInstruction") or m.get("dosage") or [])[:1]:
        if isinstance(dosage, Mapping):
            text = dosage.get("text") or _timing_text(dosage.get("timing"))
            if text:
                details.append(str(text))
    for reason in (m.get("reasonCode") or [])[:1]:
        details.append(f"for {concept_text(reason).lower()}")
    for reason in (m.get("reasonReference") or [])[:1]:
        if isinstance(reason, Mapping) and reason.get("display"):
            details.append(f"for {concept_text({'text': reason['display']}).lower()}")
    verb = "prescribed" if m.get("resourceType") == "MedicationRequest" else "recorded"
    return RecordLine(name, f"{verb} {human_date(when)}" if when else "", tuple(details),
                      _status(m, "status"), sort=sort_key(when))


def _timing_text(timing: Any) -> str:
    repeat = (timing or {}).get("repeat") if isinstance(timing, Mapping) else None
    if not isinstance(repeat, Mapping):
        return ""
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit")
    units = {"h": "hour", "d": "day", "wk": "week", "mo": "month", "a": "year"}
    if frequency is None or period is None or unit not in units:
        return ""
    times = {1: "once", 2: "twice"}.get(int(frequency), f"{frequency} times")
    every = units[str(unit)] if number_text(period) in ("1", "1.0") else f"{number_text(period)} {units[str(unit)]}s"
    return f"{times} a {every}" if every == units[str(unit)] else f"{times} every {every}"


def _allergy(a: Mapping[str, Any]) -> RecordLine:
    details = []
    criticality = a.get("criticality")
    if criticality in ("high", "low"):
        details.append(f"{criticality} risk")
    for reaction in (a.get("reaction") or [])[:1]:
        if isinstance(reaction, Mapping):
            for manifestation in (reaction.get("manifestation") or [])[:2]:
                details.append(f"reaction: {concept_text(manifestation).lower()}")
    category = ", ".join(str(c) for c in a.get("category") or [] if isinstance(c, str))
    if category:
        details.insert(0, category)
    when = a.get("onsetDateTime") or a.get("recordedDate")
    return RecordLine(concept_text(a.get("code"), "Allergy"), f"recorded {human_date(when)}" if when else "",
                      tuple(details), _status(a, "clinicalStatus"), sort=sort_key(when))


def _immunization(i: Mapping[str, Any]) -> RecordLine:
    when = i.get("occurrenceDateTime") or i.get("occurrenceString")
    details = []
    where = (i.get("location") or {}).get("display") if isinstance(i.get("location"), Mapping) else None
    if where:
        details.append(f"at {where}")
    status = _status(i, "status")
    return RecordLine(concept_text(i.get("vaccineCode"), "Vaccine"), f"given {human_date(when)}" if when else "",
                      tuple(details), "" if status == "completed" else status, sort=sort_key(when))


def _encounter(e: Mapping[str, Any]) -> RecordLine:
    period = e.get("period") if isinstance(e.get("period"), Mapping) else {}
    start = period.get("start") if isinstance(period, Mapping) else None
    kinds = [concept_text(t) for t in e.get("type") or []]
    klass = e.get("class") if isinstance(e.get("class"), Mapping) else {}
    class_words = {"AMB": "outpatient visit", "IMP": "hospital stay", "EMER": "emergency visit",
                   "VR": "video or phone visit", "HH": "home visit"}.get(str((klass or {}).get("code")), "")
    title = kinds[0] if kinds and kinds[0] else (class_words.capitalize() or "Visit")
    details = []
    if class_words and kinds and kinds[0]:
        details.append(class_words)
    for reason in (e.get("reasonCode") or [])[:1]:
        details.append(f"because of {concept_text(reason).lower()}")
    provider = (e.get("serviceProvider") or {}).get("display") if isinstance(e.get("serviceProvider"), Mapping) else None
    if provider:
        details.append(f"at {provider}")
    status = _status(e, "status")
    return RecordLine(title, human_date(start) if start else "", tuple(details),
                      "" if status == "finished" else status, sort=sort_key(start))


def _observation(o: Mapping[str, Any]) -> RecordLine:
    when = o.get("effectiveDateTime") or (o.get("effectivePeriod") or {}).get("start") or o.get("issued")
    ranges = o.get("referenceRange")
    value = observation_value(o)
    details = [value] if value else []
    normal = range_text(ranges)
    if normal:
        details.append(normal)
    flag = outside_range(o.get("valueQuantity"), ranges) or _interpretation_flag(o)
    for component in o.get("component") or []:
        if isinstance(component, Mapping):
            part = observation_value(component)
            if part:
                details.append(f"{concept_text(component.get('code'))}: {part}")
    status = _status(o, "status")
    return RecordLine(concept_text(o.get("code"), "Measurement"), human_date(when) if when else "", tuple(details),
                      "" if status in ("final", "amended", "corrected") else status, flag, sort=sort_key(when))


def observation_value(o: Mapping[str, Any]) -> str:
    """value[x] of an Observation (or a component) in words."""
    if "valueQuantity" in o:
        return quantity_text(o["valueQuantity"])
    if "valueCodeableConcept" in o:
        return concept_text(o["valueCodeableConcept"])
    if isinstance(o.get("valueString"), str):
        return str(o["valueString"])
    if isinstance(o.get("valueBoolean"), bool):
        return "yes" if o["valueBoolean"] else "no"
    if "valueInteger" in o:
        return number_text(o["valueInteger"])
    return ""


def _interpretation_flag(o: Mapping[str, Any]) -> str:
    for concept in o.get("interpretation") or []:
        for coding in (concept or {}).get("coding") or []:
            code = (coding or {}).get("code")
            if code in ("H", "HH", "HU"):
                return "high"
            if code in ("L", "LL", "LU"):
                return "low"
    return ""


def _procedure(p: Mapping[str, Any]) -> RecordLine:
    when = p.get("performedDateTime") or (p.get("performedPeriod") or {}).get("start")
    status = _status(p, "status")
    return RecordLine(concept_text(p.get("code"), "Procedure"), human_date(when) if when else "", (),
                      "" if status == "completed" else status, sort=sort_key(when))


_DESCRIBERS = {
    "Condition": _condition,
    "MedicationRequest": _medication,
    "MedicationStatement": _medication,
    "AllergyIntolerance": _allergy,
    "Immunization": _immunization,
    "Encounter": _encounter,
    "Observation": _observation,
    "Procedure": _procedure,
}


def counts(sections: Sequence[RecordSection]) -> dict[str, int]:
    return {section.key: len(section.lines) for section in sections}
