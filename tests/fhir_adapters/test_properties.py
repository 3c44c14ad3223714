"""Property tests: the blind-index invariant of search, and parsers that only ever raise FhirInputError."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_adapters.bundles import BundlePlan, plan_bundle, read_ndjson
from fhir_adapters.errors import FhirInputError, UnsupportedSearch
from fhir_adapters.search.dates import date_range
from fhir_adapters.search.matching import ResourceMeta, matches
from fhir_adapters.search.parameters import SEARCH_PARAMETERS
from fhir_adapters.search.query import SearchQuery, parse_search
from fhir_adapters.search.terms import candidate_filters, index_terms
from fhir_adapters.search.values import element_strings, element_tokens, element_values
from fhir_adapters.validation import parse_resource

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- generators of resources with values that collide often ---------------------------------------------------

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

PREFIXES = ["", "eq", "ne", "lt", "le", "gt", "ge", "sa", "eb", "ap"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


@st.composite
def query_value(draw: st.DrawFn, resource_type: str, name: str) -> tuple[str, str]:
    """A `(name[:modifier], value)` for the parameter; often built from values likely present."""
    definition = SEARCH_PARAMETERS[resource_type][name]
    kind = definition.type
    if kind == "string":
        modifier = draw(st.sampled_from(["", ":exact", ":contains"]))
        word = draw(words)
        cut = draw(st.integers(0, len(word)))
        value = word[:cut] if modifier != ":exact" else word
        return name + modifier, _escape(value) or "x"
    if kind == "token":
        modifier = draw(st.sampled_from(["", "", ":not"]))
        system, code = draw(st.sampled_from(SYSTEMS)), draw(st.sampled_from(CODES))
        if name == "_id":
            return name, draw(st.sampled_from(["r1", "r2", "r1,r2"]))
        form = draw(st.sampled_from(["code", "sys|code", "|code", "sys|"]))
        if form == "code" or (not system and form != "|code"):
            return name + modifier, _escape(code)
        if form == "|code":
            return name + modifier, "|" + _escape(code)
        if form == "sys|":
            return name + modifier, _escape(system or "s") + "|"
        return name + modifier, f"{_escape(system or 's')}|{_escape(code)}"
    if kind == "date":
        values = draw(st.lists(st.tuples(st.sampled_from(PREFIXES), fhir_dates()), min_size=1, max_size=2))
        return name, ",".join(p + d.replace("+", "+") for p, d in values)
    if kind == "reference":
        ref = draw(
            st.sampled_from(
                [
                    "1",
                    "2",
                    "Patient/1",
                    "Group/1",
                    "Device/1",
                    "http://x.example/fhir/Patient/1",
                    "urn:uuid:0f0a0f0a-0000-4000-8000-000000000001",
                ]
            )
        )
        modifier = draw(st.sampled_from(["", "", ":Patient"]))
        return name + modifier, ref
    if kind == "quantity":
        number = draw(st.sampled_from(["5", "5.4", "5.40", "100", "-2.5", "0.001", "1e2"]))
        prefix = draw(st.sampled_from(PREFIXES))
        unit = draw(st.sampled_from(["", "|http://a.example|mg", "||mg", "||g"]))
        return name, prefix + number + unit
    return name, "x"  # pragma: no cover


@st.composite
def derived_value(draw: st.DrawFn, resource: dict[str, Any], name: str) -> tuple[str, str] | None:
    """A `(name, value)` built from a value the resource really has (so that matches are frequent)."""
    definition = SEARCH_PARAMETERS[resource["resourceType"]][name]
    elements = element_values(resource, definition)
    if not elements:
        return None
    element = draw(st.sampled_from(elements))
    kind = definition.type
    if kind == "string":
        texts = [t for t in element_strings(element) if t]
        if not texts:
            return None
        text = draw(st.sampled_from(texts))
        modifier = draw(st.sampled_from(["", "", ":exact", ":contains"]))
        if modifier != ":exact":
            start = draw(st.integers(0, len(text) - 1)) if modifier == ":contains" else 0
            text = text[start : draw(st.integers(start + 1, len(text)))]
            text = draw(st.sampled_from([text, text.upper(), text.lower()]))
        return name + modifier, _escape(text)
    if kind == "token":
        tokens = list(element_tokens(definition, element))
        if not tokens:
            return None
        token = draw(st.sampled_from(tokens))
        form = draw(st.sampled_from(["code", "sys|code", "|code", "sys|"]))
        code = _escape(token.code or "")
        system = _escape(token.system or "")
        value = {"code": code, "sys|code": f"{system}|{code}", "|code": f"|{code}", "sys|": f"{system}|"}[
            form
        ]
        return (name, value) if value not in ("", "|") else None
    if kind == "date":
        texts = [element] if isinstance(element, str) else [v for v in element.values() if isinstance(v, str)]
        if not texts:
            return None
        return name, draw(st.sampled_from(PREFIXES)) + draw(st.sampled_from(texts))
    if kind == "reference":
        ref = element.get("reference") if isinstance(element, dict) else None
        if not isinstance(ref, str) or not ref or ref.startswith("#"):
            return None
        return name, draw(st.sampled_from([ref, ref.rsplit("/", 1)[-1]]))
    if kind == "quantity" and isinstance(element, dict) and "value" in element:
        unit = f"|{element.get('system', '')}|{element['code']}" if element.get("code") else ""
        return name, draw(st.sampled_from(PREFIXES)) + repr(element["value"]) + draw(
            st.sampled_from(["", unit])
        )
    return None


@st.composite
def resource_and_query(
    draw: st.DrawFn, kinds: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A resource and a query on it; `kinds` focuses the query on parameters of those types."""
    resource = draw(resources)
    names = sorted(SEARCH_PARAMETERS[resource["resourceType"]])
    focused = [
        n
        for n in names
        if SEARCH_PARAMETERS[resource["resourceType"]][n].type in kinds and n != "_lastUpdated"
    ]
    names = focused or names
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
    params = []
    for n in chosen:
        if n == "_lastUpdated":
            continue
        derived = draw(derived_value(resource, n)) if draw(st.booleans()) else None
        params.append(derived or draw(query_value(resource["resourceType"], n)))
    if draw(st.booleans()):
        params.append((f"{draw(st.sampled_from(names))}:missing", draw(st.sampled_from(["true", "false"]))))
    return resource, params


def filters_hold(resource: dict[str, Any], query: SearchQuery, meta: ResourceMeta) -> bool:
    terms = index_terms(resource)
    for f in candidate_filters(query):
        have = {meta.id} if f.param == "_id" else terms.get(f.param, set())
        if not have & f.any_of:
            return False
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resource_and_query(), st.sampled_from(["r1", "r2"]))
def test_blind_index_never_loses_a_match(
    case: tuple[dict[str, Any], list[tuple[str, str]]], rid: str
) -> None:
    """INVARIANT of fhir_adapters.search: matches(r, q) implies r's terms satisfy every candidate filter."""
    resource, params = case
    meta = ResourceMeta(rid, datetime(2000, 6, 1, tzinfo=UTC))
    try:
        query = parse_search(resource["resourceType"], params)
    except UnsupportedSearch:
        return
    if matches(resource, query, meta):
        assert filters_hold(resource, query, meta), (params, index_terms(resource))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resource_and_query(kinds=("date",)))
def test_date_windows_never_lose_a_match(case: tuple[dict[str, Any], list[tuple[str, str]]]) -> None:
    """The invariant again, focused on dates: open, inverted and long Periods against bounded windows."""
    test_blind_index_never_loses_a_match.hypothesis.inner_test(case, "r1")  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resource_and_query(kinds=("reference", "token")))
def test_reference_and_token_terms_never_lose_a_match(
    case: tuple[dict[str, Any], list[tuple[str, str]]],
) -> None:
    test_blind_index_never_loses_a_match.hypothesis.inner_test(case, "r1")  # type: ignore[attr-defined]


def test_the_generators_do_produce_matches() -> None:
    """The invariant test above is not vacuous: its generators hit matches with narrowing filters."""
    found: list[int] = []

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(resource_and_query())
    def probe(case: tuple[dict[str, Any], list[tuple[str, str]]]) -> None:
        resource, params = case
        try:
            query = parse_search(resource["resourceType"], params)
        except UnsupportedSearch:
            return
        meta = ResourceMeta("r1", datetime(2000, 6, 1, tzinfo=UTC))
        if matches(resource, query, meta) and candidate_filters(query):
            found.append(1)

    probe()
    assert len(found) >= 20


# --- parsers raise FhirInputError subclasses and nothing else -------------------------------------------------

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


@SETTINGS
@given(
    st.sampled_from(["Patient", "Observation", "Encounter", "Consent", "AuditEvent", "Basic"]),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    *FIELD_NAMES,
                    "_count",
                    "_sort",
                    "_summary",
                    "_id",
                    "_lastUpdated",
                    "birthdate",
                    "date",
                    "patient",
                    "subject:Patient",
                    "name:exact",
                    "gender:not",
                    "code:text",
                    "value-quantity",
                    "x:missing",
                ]
            )
            | st.text(max_size=12),
            st.text(max_size=30),
        ),
        max_size=4,
    ),
)
def test_parse_search_only_raises_unsupported_search(
    resource_type: str, params: list[tuple[str, str]]
) -> None:
    try:
        query = parse_search(resource_type, params)
    except UnsupportedSearch as exc:
        assert exc.message
        return
    candidate_filters(query)
    matches({"resourceType": resource_type, "birthDate": "2000"}, query, ResourceMeta("1", datetime.now(UTC)))


@SETTINGS
@given(st.text(max_size=40) | fhir_dates())
def test_date_range_never_raises(text: str) -> None:
    interval = date_range(text)
    if interval is not None:
        assert interval.lo is not None and interval.hi is not None and interval.lo < interval.hi


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(FIELD_NAMES), fhirish, max_size=6),
    st.sampled_from(["Patient", "Observation", "Encounter", "AuditEvent", "Consent"]),
)
def test_search_functions_survive_hostile_resources(body: dict[str, Any], resource_type: str) -> None:
    resource = {**body, "resourceType": resource_type}
    index_terms(resource)
    for params in ([("date", "2020")], [("patient", "1")], [("code", "a|b")], [("_id", "1")]):
        try:
            query = parse_search(resource_type, params)
        except UnsupportedSearch:
            continue
        matches(resource, query, ResourceMeta("1", datetime(2020, 1, 1, tzinfo=UTC)))


@SETTINGS
@given(json_values | fhirish | st.dictionaries(st.sampled_from(FIELD_NAMES), fhirish, max_size=6))
def test_parse_resource_on_hostile_json(value: Any) -> None:
    for raw in (value, json.dumps(value)):
        try:
            result = parse_resource(raw)
        except FhirInputError as exc:
            assert exc.message and 400 <= exc.status < 500
        else:
            assert isinstance(result, dict)


@SETTINGS
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_parse_resource_on_hostile_bytes(raw: bytes) -> None:
    try:
        parse_resource(raw)
    except FhirInputError as exc:
        assert exc.message


@SETTINGS
@given(st.lists(st.binary(max_size=30) | st.text(max_size=30) | json_values.map(json.dumps), max_size=6))
def test_read_ndjson_yields_a_result_per_non_blank_line(lines: list[Any]) -> None:
    results = list(read_ndjson(lines))
    for line_no, item in results:
        assert 1 <= line_no <= len(lines)
        assert isinstance(item, dict | FhirInputError)
    assert [n for n, _ in results] == sorted({n for n, _ in results})


@SETTINGS
@given(
    st.fixed_dictionaries(
        {"resourceType": st.just("Bundle"), "type": st.sampled_from(["batch", "transaction", "collection"])},
        optional={
            "entry": st.lists(
                st.dictionaries(
                    st.sampled_from(["fullUrl", "resource", "request", "search"]),
                    fhirish
                    | st.fixed_dictionaries(
                        {
                            "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "X"]),
                            "url": st.sampled_from(
                                ["Patient", "Patient/1", "Patient?x=1", "Nope/1", "", "Patient/$op"]
                            ),
                        }
                    ),
                    max_size=3,
                ),
                max_size=4,
            )
        },
    )
)
def test_plan_bundle_on_hostile_bundles(bundle: dict[str, Any]) -> None:
    try:
        plan = plan_bundle(bundle)
    except FhirInputError as exc:
        assert exc.message and exc.status == 400
    else:
        assert isinstance(plan, BundlePlan)
        assert sorted(e.index for e in plan.entries) == list(range(len(bundle.get("entry", []))))
