"""The blind-index INVARIANT of fhir_adapters.search, property-tested, and indexing and matching on hostile input.

matches(r, q) implies that the terms of r satisfy every candidate filter of q.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_strategies import CODES, FIELD_NAMES, SETTINGS, SYSTEMS, fhir_dates, fhirish, resources, words
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_adapters.errors import UnsupportedSearch
from fhir_adapters.search.matching import ResourceMeta, matches
from fhir_adapters.search.parameters import SEARCH_PARAMETERS
from fhir_adapters.search.query import SearchQuery, parse_search
from fhir_adapters.search.terms import candidate_filters, index_terms
from fhir_adapters.search.values import element_strings, element_tokens, element_values

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
