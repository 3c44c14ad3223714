"""FHIR R4 datatypes in plain words: CodeableConcepts, dates, quantities with their units, reference ranges,
names. Pure; what a reader who is not a clinician can follow, never raw codes when a display exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")

# UCUM units (http://unitsofmeasure.org) as people write them; others are shown as they are.
UNIT_WORDS: Mapping[str, str] = {
    "/min": "per minute", "{beats}/min": "beats per minute", "mm[Hg]": "mmHg", "kg/m2": "kg/m²",
    "Cel": "°C", "[degF]": "°F", "%": "%", "kg": "kg", "g": "g", "cm": "cm", "m": "m", "[in_i]": "inches",
    "[lb_av]": "pounds", "mg/dL": "mg/dL", "mmol/L": "mmol/L", "g/dL": "g/dL", "mL/min/{1.73_m2}": "mL/min/1.73 m²",
    "10*3/uL": "thousand per µL", "10*6/uL": "million per µL", "fL": "fL", "pg": "pg", "U/L": "U/L",
    "{score}": "points", "1": "",
}


def first_coding(concept: Any) -> Mapping[str, Any]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    for coding in codings or []:
        if isinstance(coding, Mapping):
            return coding
    return {}


def concept_text(concept: Any, default: str = "") -> str:
    """A CodeableConcept as words: its text, else a coding's display, else its code."""
    if not isinstance(concept, Mapping):
        return default
    text = concept.get("text")
    if isinstance(text, str) and text.strip():
        return _tidy(text)
    for coding in concept.get("coding") or []:
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str) and coding["display"].strip():
            return _tidy(coding["display"])
    coding = first_coding(concept)
    return str(coding.get("code") or default)


def _tidy(text: str) -> str:
    """SNOMED CT displays carry a semantic tag, "Sepsis (disorder)": the tag is for machines."""
    return re.sub(r"\s\((disorder|finding|procedure|situation|qualifier value|morphologic abnormality|"
                  r"observable entity|substance|regime/therapy)\)$", "", text.strip())


def code_of(concept: Any) -> str:
    return str(first_coding(concept).get("code") or "")


def parse_date(value: Any) -> date | None:
    """The calendar day a FHIR date, dateTime or instant falls on (as written, without zone conversion)."""
    if not isinstance(value, str):
        return None
    m = _DATE.match(value)
    if m is None:
        return None
    year, month, day = int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)
    try:
        return date(year, month, day)
    except ValueError:
        return None


def human_date(value: Any) -> str:
    """"4 March 2024", "March 2024" or "2024": as precise as the value is."""
    if isinstance(value, datetime):
        return f"{value.day} {MONTHS[value.month - 1]} {value.year}"
    if isinstance(value, date):
        return f"{value.day} {MONTHS[value.month - 1]} {value.year}"
    if not isinstance(value, str):
        return ""
    m = _DATE.match(value)
    if m is None:
        return value
    year, month, day = m.group(1), m.group(2), m.group(3)
    if month is None:
        return year
    if not 1 <= int(month) <= 12:
        return value
    if day is None:
        return f"{MONTHS[int(month) - 1]} {year}"
    return f"{int(day)} {MONTHS[int(month) - 1]} {year}"


def human_datetime(value: datetime) -> str:
    """"4 March 2024 at 09:05 UTC"."""
    return f"{human_date(value)} at {value:%H:%M} {value.tzname() or 'UTC'}"


def sort_key(value: Any) -> str:
    """A key that sorts FHIR dates chronologically (ISO strings do; absent ones first)."""
    return value if isinstance(value, str) else ""


def number_text(value: Any) -> str:
    """A FHIR decimal as written (no float rounding): 6.10 stays 6.10."""
    if isinstance(value, bool) or value is None:
        return ""
    try:
        return format(Decimal(str(value)), "f")
    except InvalidOperation:
        return str(value)


def unit_text(quantity: Mapping[str, Any]) -> str:
    code = quantity.get("code") if quantity.get("system") == "http://unitsofmeasure.org" else None
    unit = quantity.get("unit") or code or ""
    return UNIT_WORDS.get(str(code or unit), str(unit))


def quantity_text(quantity: Any) -> str:
    """"72 per minute", "6.1 %", "< 5 mg/dL"."""
    if not isinstance(quantity, Mapping):
        return ""
    comparator = quantity.get("comparator")
    number = number_text(quantity.get("value"))
    unit = unit_text(quantity)
    text = f"{number} {unit}".strip() if unit != "%" else f"{number}%"
    return f"{comparator} {text}" if isinstance(comparator, str) else text


def range_text(ranges: Any) -> str:
    """The first reference range: "normal: 4.0–5.6 %", "normal: above 60", or its text."""
    for r in ranges or []:
        if not isinstance(r, Mapping):
            continue
        low, high = r.get("low"), r.get("high")
        if isinstance(low, Mapping) and isinstance(high, Mapping):
            unit = unit_text(high)
            joined = f"{number_text(low.get('value'))}–{number_text(high.get('value'))}"
            return f"normal: {joined}{'%' if unit == '%' else (' ' + unit if unit else '')}"
        if isinstance(low, Mapping):
            return f"normal: at least {quantity_text(low)}"
        if isinstance(high, Mapping):
            return f"normal: up to {quantity_text(high)}"
        if isinstance(r.get("text"), str):
            return f"normal: {r['text']}"
    return ""


def outside_range(quantity: Any, ranges: Any) -> str:
    """"high" or "low" when a value lies outside its first numeric reference range; "" otherwise."""
    if not isinstance(quantity, Mapping):
        return ""
    try:
        value = Decimal(str(quantity.get("value")))
    except InvalidOperation:
        return ""
    for r in ranges or []:
        if not isinstance(r, Mapping):
            continue
        low, high = r.get("low"), r.get("high")
        try:
            if isinstance(high, Mapping) and value > Decimal(str(high.get("value"))):
                return "high"
            if isinstance(low, Mapping) and value < Decimal(str(low.get("value"))):
                return "low"
        except InvalidOperation:
            return ""
        return ""
    return ""


def human_name(resource: Any) -> str:
    """"Ann Testperson" from the first (official, else any) HumanName; "" when there is none."""
    names = [n for n in (resource.get("name") or []) if isinstance(n, Mapping)] if isinstance(resource, Mapping) else []
    if not names:
        return ""
    name = next((n for n in names if n.get("use") == "official"), names[0])
    if isinstance(name.get("text"), str) and name["text"].strip():
        return str(name["text"]).strip()
    given = " ".join(str(g) for g in name.get("given") or [] if isinstance(g, str))
    family = name.get("family") if isinstance(name.get("family"), str) else ""
    return f"{given} {family}".strip()


def display_of(resource: Any) -> str:
    """What to call a shared resource (Organization, Practitioner, ResearchStudy...): its name or title."""
    if not isinstance(resource, Mapping):
        return ""
    for key in ("name", "title"):
        value = resource.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return human_name(resource)
