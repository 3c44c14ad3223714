"""A study's eligibility criteria (the zk criteria language, zk/criteria.py) in readable words, as the cohort
`Group.characteristic` shows them: one characteristic per attribute, `exclude` for the codes that must be absent.
Pure; called only on documents `compile_criteria` accepted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zk.credential import LAB_UNITS

_NAMES = {"age": "Age", "sex": "Administrative gender", "conditions": "Active condition",
          "hba1c": "HbA1c", "bmi": "Body mass index", "egfr": "eGFR"}
_UNITS = {"age": "years", **LAB_UNITS}
_RANGE_WORDS = {"$eq": "equal to", "$lt": "below", "$lte": "at most", "$gt": "above", "$gte": "at least"}


def _number(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _range_text(name: str, ops: Mapping[str, Any]) -> str:
    unit = _UNITS.get(name, "")
    parts = []
    for op, value in ops.items():
        if op == "$between":
            parts.append(f"between {_number(value[0])} and {_number(value[1])}")
        else:
            parts.append(f"{_RANGE_WORDS[op]} {_number(value)}")
    text = " and ".join(parts) + (f" {unit}" if unit else "")
    if name != "age":
        text += " (a patient without this measurement does not qualify)"
    return text


def _codes(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def characteristics(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """FHIR R4 `Group.characteristic` entries describing the criteria in words."""
    out: list[dict[str, Any]] = []

    def add(name: str, text: str, *, exclude: bool = False) -> None:
        out.append({"code": {"text": _NAMES[name]}, "valueCodeableConcept": {"text": text}, "exclude": exclude})

    for name, ops in document.items():
        if name == "sex":
            for op, value in ops.items():
                words = " or ".join(_codes(value))
                add(name, words, exclude=op in ("$ne", "$nin"))
        elif name == "conditions":
            for op, value in ops.items():
                codes = _codes(value)
                if op in ("$eq", "$in"):
                    add(name, "at least one of: " + ", ".join(codes))
                else:
                    add(name, "none of: " + ", ".join(codes), exclude=True)
        else:
            add(name, _range_text(name, ops))
    return out
