"""Blind-index terms: what the encrypted store's keyed index holds per resource, and a query's filters.

`index_terms(resource)` gives, per parameter, the normalised terms the store HMACs with a per-parameter key;
`candidate_filters(query)` gives the conjunction of "carries one of these terms" that every match satisfies
(the INVARIANT of `fhir_adapters.search`). Criteria that cannot be narrowed safely (`ne`, `:not`, `:contains`,
`:missing`, open date ranges, numbers) produce no filter.

Terms and what equal HMACs across rows reveal to someone holding the database (the leakage we accept):
- token: `c:code`, `s:system`, `sc:system|code`, `n:code` (no system). Equal codes are linkable across rows
  (e.g. "these 40 Observations share a LOINC code"), as with any deterministic blind index.
- string (FHIR default = case/accent-insensitive starts-with of the whole value; `:exact`): the value is
  normalised (`strings.fold`: NFKD, accents dropped, casefolded, whitespace collapsed) and yields `e:<whole>`
  plus `p:<prefix>` for each length in STRING_PREFIX_LENGTHS = (2, 3, 4, 6, 8). A query of length L uses the
  longest prefix length <= L; a 1-character query, or `:contains`, is not narrowed. Trade-off: more lengths
  narrow better but add terms per value and reveal more shared prefixes; no length-1 term means first-letter
  frequencies (a strong signal for names) are not revealed, lengths stop at 8 so long values are only
  linkable by their first 8 characters or by full equality. The number of terms per value reveals
  min(len, 8)-ish length information.
- date: the value's range (FHIR implicit range of a partial date, or a Period) yields `y:YYYY` for each UTC
  year it overlaps (up to DATE_MAX_YEAR_TERMS, else `y:*`) and `m:YYYY-MM` for each month (up to
  DATE_MAX_MONTH_TERMS, else `m:*`). Reveals the year and month of e.g. birth dates to anyone who can guess
  them (12 x ~120 candidates); days and times stay encrypted. Search with a bounded window uses months when
  the window spans at most DATE_QUERY_MAX_MONTHS, else years; unbounded windows are not narrowed.
- reference: `r:Type/id` and `i:id` (absolute URLs reduced to Type/id), `u:<reference>` for others.
- quantity: `sc:system|code` and `c:code` of the unit (the magnitude is not indexed; `matches` compares it).
- uri: `e:<uri>`.  `_id` is filtered on the store's id column (filter terms are plain ids, no term index);
  `_lastUpdated` is not indexed: `matches` decides it from the store's metadata.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from fhir_adapters.search.dates import Interval, approximate, interval_datetime
from fhir_adapters.search.parameters import COMMON_PARAMETERS, SearchParamDef, search_parameters
from fhir_adapters.search.query import (
    DateValue,
    NumberValue,
    SearchCriterion,
    SearchQuery,
    SearchValue,
    StringValue,
    TokenValue,
    UriValue,
)
from fhir_adapters.search.references import ReferenceValue
from fhir_adapters.search.strings import fold
from fhir_adapters.search.values import (
    element_date_ranges,
    element_quantities,
    element_references,
    element_strings,
    element_tokens,
    element_values,
)

STRING_PREFIX_LENGTHS: Final = (2, 3, 4, 6, 8)
DATE_MAX_YEAR_TERMS: Final = 10
DATE_MAX_MONTH_TERMS: Final = 24
DATE_QUERY_MAX_MONTHS: Final = 24
DATE_QUERY_MAX_YEARS: Final = 200


@dataclass(frozen=True)
class TermFilter:
    """Every result carries at least one of `any_of` among its terms for `param` (conjunction of these)."""

    param: str
    any_of: frozenset[str]


def index_terms(resource: Mapping[str, Any]) -> dict[str, set[str]]:
    """Parameter name -> the normalised terms to blind-index (see the module docstring). `_id` is not included."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return {}
    out: dict[str, set[str]] = {}
    for name, definition in search_parameters(resource_type).items():
        if name in COMMON_PARAMETERS:
            continue
        terms = _terms_for(definition, element_values(resource, definition))
        if terms:
            out[name] = terms
    return out


def _terms_for(definition: SearchParamDef, elements: list[Any]) -> set[str]:
    terms: set[str] = set()
    kind = definition.type
    dates = 0
    for element in elements:
        if kind == "token":
            for token in element_tokens(definition, element):
                terms.update(_token_terms(token))
        elif kind == "string":
            for text in element_strings(element):
                terms.update(_string_terms(fold(text)))
        elif kind == "date":
            for interval in element_date_ranges(element):
                terms.update(date_bucket_terms(interval))
                dates += 1
        elif kind == "reference":
            for ref in element_references(definition, element):
                terms.update(_reference_terms(ref))
        elif kind == "quantity":
            for _number, system, code, unit in element_quantities(element):
                for c in {code, unit} - {None}:
                    terms.add(f"c:{c}")
                    if system is not None:
                        terms.add(f"sc:{system}|{c}")
        elif kind == "uri" and isinstance(element, str):
            terms.add(f"e:{element}")
    if dates > 1 and definition.single:  # malformed data: keep the candidate_filters intersection sound
        terms.update(("y:*", "m:*"))
    return terms


def _token_terms(token: TokenValue) -> set[str]:
    code = token.code or ""
    if token.system:
        return {f"c:{code}", f"s:{token.system}", f"sc:{token.system}|{code}"}
    return {f"c:{code}", f"n:{code}"}


def _string_terms(folded: str) -> set[str]:
    terms = {f"e:{folded}"}
    terms.update(f"p:{folded[:k]}" for k in STRING_PREFIX_LENGTHS if len(folded) >= k)
    return terms


def _reference_terms(ref: ReferenceValue) -> set[str]:
    if ref.type is not None and ref.id is not None:
        return {f"r:{ref.type}/{ref.id}", f"i:{ref.id}"}
    return {f"u:{ref.url}"} if ref.url else set()


def _year_month(us: int) -> tuple[int, int]:
    moment = interval_datetime(us)
    return moment.year, moment.month


def _months_between(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """UTC (year, month) pairs that [lo, hi) overlaps (hi exclusive, lo < hi)."""
    year, month = _year_month(lo)
    last = _year_month(hi - 1)
    while (year, month) <= last:
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def date_bucket_terms(interval: Interval) -> set[str]:
    """`y:` and `m:` bucket terms of a date value's range (`y:*` / `m:*` when too wide or open)."""
    if interval.lo is None or interval.hi is None or interval.hi <= interval.lo:
        return {"y:*", "m:*"}
    first_year, last_year = _year_month(interval.lo)[0], _year_month(interval.hi - 1)[0]
    terms = (
        {"y:*"}
        if last_year - first_year + 1 > DATE_MAX_YEAR_TERMS
        else {f"y:{y:04d}" for y in range(first_year, last_year + 1)}
    )
    months: list[tuple[int, int]] = []
    for ym in _months_between(interval.lo, interval.hi):
        months.append(ym)
        if len(months) > DATE_MAX_MONTH_TERMS:
            break
    if len(months) > DATE_MAX_MONTH_TERMS:
        terms.add("m:*")
    else:
        terms.update(f"m:{y:04d}-{m:02d}" for y, m in months)
    return terms


def candidate_filters(query: SearchQuery) -> list[TermFilter]:
    """Term filters every match satisfies (INVARIANT of fhir_adapters.search); rows must meet them all."""
    filters: list[TermFilter] = []
    windows: dict[str, Interval] = {}
    for criterion in query.criteria:
        definition = criterion.param
        if criterion.missing is not None or criterion.modifier in ("not", "contains"):
            continue
        if definition.name == "_lastUpdated":
            continue  # not in the index: matches() decides it from the store's metadata
        if definition.type == "date":
            hull = _date_hull(criterion, query.now)
            if hull is None:
                continue
            if definition.single:
                # One value T meets every AND-ed window; intervals that meet pairwise share a point (Helly,
                # 1-D), so T meets their intersection, provided it is not empty. Resources holding several
                # values for a `single` parameter carry the `*` bucket terms, which every window admits.
                previous = windows.get(definition.name)
                both = hull if previous is None else _intersect(previous, hull)
                if both.lo is None or both.hi is None or both.lo < both.hi:
                    windows[definition.name] = both
            else:
                _add(filters, definition.name, _window_terms(hull))
            continue
        if definition.name == "_id":
            ids = {v.code for v in criterion.values if isinstance(v, TokenValue) and v.code and not v.system}
            if len(ids) == len(criterion.values):
                filters.append(TermFilter("_id", frozenset(ids)))
            continue
        terms: set[str] = set()
        narrowable = True
        for value in criterion.values:
            value_terms = _query_terms(definition, criterion.modifier, value)
            if value_terms is None:
                narrowable = False
                break
            terms |= value_terms
        if narrowable:
            filters.append(TermFilter(definition.name, frozenset(terms)))
    for name, window in windows.items():
        _add(filters, name, _window_terms(window))
    return filters


def _add(filters: list[TermFilter], name: str, terms: frozenset[str] | None) -> None:
    if terms is not None:
        filters.append(TermFilter(name, terms))


def _query_terms(definition: SearchParamDef, modifier: str | None, value: SearchValue) -> set[str] | None:
    """Terms of which a matching resource carries at least one; None when this value cannot be narrowed."""
    if isinstance(value, TokenValue):
        if value.system is None:
            return {f"c:{value.code}"}
        if value.system == "":
            return {f"n:{value.code}"}
        if value.code is None:
            return {f"s:{value.system}"}
        return {f"sc:{value.system}|{value.code}"}
    if isinstance(value, StringValue):
        if modifier == "exact":
            return {f"e:{value.folded}"}
        usable = [k for k in STRING_PREFIX_LENGTHS if k <= len(value.folded)]
        return {f"p:{value.folded[: usable[-1]]}"} if usable else None
    if isinstance(value, ReferenceValue):
        if value.type is not None and value.id is not None:
            return {f"r:{value.type}/{value.id}"}
        if value.id is not None:
            return (
                {f"r:{t}/{value.id}" for t in definition.targets} if definition.targets else {f"i:{value.id}"}
            )
        return {f"u:{value.url}"}
    if isinstance(value, NumberValue) and definition.type == "quantity":
        if value.code is None:
            return None
        return {f"sc:{value.system}|{value.code}"} if value.system else {f"c:{value.code}"}
    if isinstance(value, UriValue):
        return {f"e:{value.uri}"}
    return None


def _date_hull(criterion: SearchCriterion, now: datetime | None) -> Interval | None:
    """An interval every matching value's range overlaps (convex hull over the OR-ed values); None = unbounded."""
    lo: int | None = None
    hi: int | None = None
    for index, value in enumerate(criterion.values):
        assert isinstance(value, DateValue)
        window = _date_window(value, now)
        if window.lo is None and window.hi is None:
            return None
        if index == 0:
            lo, hi = window.lo, window.hi
        else:
            lo = None if lo is None or window.lo is None else min(lo, window.lo)
            hi = None if hi is None or window.hi is None else max(hi, window.hi)
    return Interval(lo, hi)


def _date_window(value: DateValue, now: datetime | None) -> Interval:
    """Where a target range T must reach for `value` to match (R4 3.1.1.4.2 prefix definitions)."""
    s = value.range
    assert s.lo is not None and s.hi is not None
    prefix = value.prefix
    if prefix == "eq":
        return s  # T inside S
    if prefix in ("gt", "sa"):
        return Interval(s.hi, None)  # T reaches above S
    if prefix == "ge":
        return Interval(s.lo, None)
    if prefix in ("lt", "eb"):
        return Interval(None, s.lo)
    if prefix == "le":
        return Interval(None, s.hi)
    if prefix == "ap":
        return approximate(s, now)
    return Interval(None, None)  # ne


def _intersect(a: Interval, b: Interval) -> Interval:
    lo = b.lo if a.lo is None else a.lo if b.lo is None else max(a.lo, b.lo)
    hi = b.hi if a.hi is None else a.hi if b.hi is None else min(a.hi, b.hi)
    return Interval(lo, hi)


def _window_terms(window: Interval) -> frozenset[str] | None:
    if window.lo is None or window.hi is None:
        return None
    months: list[tuple[int, int]] = []
    for ym in _months_between(window.lo, window.hi):
        months.append(ym)
        if len(months) > DATE_QUERY_MAX_MONTHS:
            break
    if len(months) <= DATE_QUERY_MAX_MONTHS:
        return frozenset({"m:*", *(f"m:{y:04d}-{m:02d}" for y, m in months)})
    first_year, last_year = _year_month(window.lo)[0], _year_month(window.hi - 1)[0]
    if last_year - first_year + 1 > DATE_QUERY_MAX_YEARS:
        return None
    return frozenset({"y:*", *(f"y:{y:04d}" for y in range(first_year, last_year + 1))})
