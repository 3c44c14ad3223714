"""Hypothesis strategies for FHIR-shaped data, importable by name (`from fhir_strategies import ...`).

Resources whose values collide often (so that searches match), and hostile JSON for the parsers.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- resources with values that collide often ---------------------------------------------------------------


WORDS = [
    "Ann",
    "Anna",
    "anne",
    "Zoë",
    "ZOE",
    "Müller",
    "Mueller",
    "O'Brien",
    "Ng",
    "Élodie",
    "ß",
    "Straße",
    "李",
    "a b",
]


SYSTEMS = [None, "http://a.example", "http://b.example", ""]


CODES = ["x1", "X1", "x12", "a,b", "a|b", "male", "female", "true"]


REFS = [
    "Patient/1",
    "Patient/2",
    "Group/1",
    "Device/1",
    "http://other.example/fhir/Patient/1",
    "Patient/1/_history/3",
    "urn:uuid:0f0a0f0a-0000-4000-8000-000000000001",
    "#contained",
    "1",
]


TZS = ["Z", "+05:30", "-11:00", ""]


@st.composite
def fhir_dates(draw: st.DrawFn) -> str:
    year = draw(st.integers(1998, 2002))
    precision = draw(st.sampled_from(["y", "m", "d", "t", "f"]))
    if precision == "y":
        return f"{year}"
    month = draw(st.integers(1, 12))
    if precision == "m":
        return f"{year}-{month:02d}"
    day = draw(st.integers(1, 28))
    if precision == "d":
        return f"{year}-{month:02d}-{day:02d}"
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    tz = draw(st.sampled_from(TZS)) or "Z"
    fraction = "." + str(draw(st.integers(0, 999))).zfill(3) if precision == "f" else ""
    return f"{year}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{tz}"


words = st.sampled_from(WORDS) | st.text(alphabet="aAéÉß -", min_size=0, max_size=6)


codings = st.builds(
    lambda s, c: {k: v for k, v in {"system": s, "code": c}.items() if v is not None},
    st.sampled_from(SYSTEMS),
    st.sampled_from(CODES),
)


concepts = st.builds(lambda cs: {"coding": cs}, st.lists(codings, max_size=3))


periods = st.builds(
    lambda a, b: {k: v for k, v in {"start": a, "end": b}.items() if v is not None},
    st.none() | fhir_dates(),
    st.none() | fhir_dates(),
)


references = st.builds(lambda r: {"reference": r}, st.sampled_from(REFS))


quantities = st.builds(
    lambda v, s, c: {
        k: x for k, x in {"value": v, "system": s, "code": c, "unit": c}.items() if x is not None
    },
    st.sampled_from([0, 1, 5, 5.4, 5.45, 100, -2.5, 1e-3]),
    st.sampled_from(SYSTEMS),
    st.sampled_from(["mg", "g", None]),
)


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, [], {})}


patients = st.builds(
    lambda ident, names, gender, birth, active, texts: _compact(
        {
            "resourceType": "Patient",
            "identifier": [_compact({"system": s, "value": v}) for s, v in ident],
            "name": [_compact({"family": f, "given": g, "text": t}) for f, g, t in names],
            "gender": gender,
            "birthDate": birth,
            "active": active,
            "address": [{"city": c} for c in texts],
        }
    ),
    st.lists(st.tuples(st.sampled_from(SYSTEMS), st.sampled_from(CODES)), max_size=3),
    st.lists(st.tuples(st.none() | words, st.lists(words, max_size=2), st.none() | words), max_size=2),
    st.none() | st.sampled_from(["male", "female", "other"]),
    st.none() | fhir_dates(),
    st.none() | st.booleans(),
    st.lists(words, max_size=2),
)


observations = st.builds(
    lambda subject, code, cats, effective, value: _compact(
        {
            "resourceType": "Observation",
            "status": "final",
            "subject": subject,
            "code": code,
            "category": cats,
            **effective,
            "valueQuantity": value,
        }
    ),
    st.none() | references,
    concepts,
    st.lists(concepts, max_size=2),
    st.sampled_from([{}])
    | st.builds(lambda d: {"effectiveDateTime": d}, fhir_dates())
    | st.builds(lambda p: {"effectivePeriod": p}, periods),
    st.none() | quantities,
)


encounters = st.builds(
    lambda subject, period: _compact(
        {"resourceType": "Encounter", "status": "finished", "subject": subject, "period": period}
    ),
    st.none() | references,
    st.none() | periods,
)


resources = st.one_of(patients, observations, encounters)


# --- hostile JSON -------------------------------------------------------------------------------------------


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


FIELD_NAMES = [
    "resourceType",
    "id",
    "name",
    "given",
    "family",
    "birthDate",
    "gender",
    "identifier",
    "subject",
    "reference",
    "coding",
    "code",
    "system",
    "value",
    "effectiveDateTime",
    "period",
    "start",
    "end",
    "contained",
    "extension",
    "url",
    "_birthDate",
    "valueQuantity",
    "meta",
    "entry",
    "resource",
    "request",
    "method",
    "fullUrl",
    "type",
]


fhirish = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(
        ["Patient", "Observation", "Bundle", "2020-01-01", "Patient/1", "urn:uuid:x", "POST", "transaction"]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=5)
    ),
    max_leaves=25,
)
