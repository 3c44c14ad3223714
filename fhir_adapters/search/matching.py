"""The exact post-filter: whether a decrypted resource satisfies a query, with FHIR R4 search semantics.

The blind index (`terms`) only narrows; `matches` decides. `_id` and `_lastUpdated` are read from the store's
metadata (ResourceMeta), every other parameter from the resource through `values`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from fhir_adapters.search.dates import END_OF_TIME, Interval, approximate, instant_range
from fhir_adapters.search.parameters import SearchParamDef
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
    Quantity,
    element_date_ranges,
    element_quantities,
    element_references,
    element_strings,
    element_tokens,
    element_values,
)


@dataclass(frozen=True)
class ResourceMeta:
    """What the store knows about a stored resource that the searched JSON may not carry."""

    id: str
    last_updated: datetime


def matches(resource: Mapping[str, Any], query: SearchQuery, meta: ResourceMeta) -> bool:
    """Whether the resource satisfies every criterion, with FHIR R4 semantics (the exact post-filter)."""
    if resource.get("resourceType") != query.resource_type:
        return False
    return all(_criterion_holds(resource, criterion, meta, query.now) for criterion in query.criteria)


def _criterion_holds(
    resource: Mapping[str, Any], criterion: SearchCriterion, meta: ResourceMeta, now: datetime | None
) -> bool:
    definition = criterion.param
    elements: list[Any]
    if definition.name == "_id":
        elements = [meta.id]
    elif definition.name == "_lastUpdated":
        elements = [meta.last_updated]
    else:
        elements = element_values(resource, definition)
    present = _present_values(definition, elements)
    if criterion.missing is not None:
        return criterion.missing == (not present)
    if criterion.modifier == "not":  # R4 3.1.1.5.7: no value matches (incl. resources without the element)
        return not any(
            _value_matches(definition, criterion.modifier, value, present, now) for value in criterion.values
        )
    return any(
        _value_matches(definition, criterion.modifier, value, present, now) for value in criterion.values
    )


def _present_values(definition: SearchParamDef, elements: list[Any]) -> list[Any]:
    kind = definition.type
    out: list[Any] = []
    for element in elements:
        if isinstance(element, datetime):
            out.append(instant_range(element))
        elif kind == "token":
            out.extend(element_tokens(definition, element))
        elif kind == "string":
            out.extend(element_strings(element))
        elif kind == "date":
            out.extend(element_date_ranges(element))
        elif kind == "reference":
            out.extend(element_references(definition, element))
        elif kind == "quantity":
            out.extend(element_quantities(element))
        elif kind == "uri" and isinstance(element, str):
            out.append(element)
        elif kind == "number" and isinstance(element, int | float) and not isinstance(element, bool):
            out.append((Decimal(repr(element)), None, None, None))
    return out


def _value_matches(
    definition: SearchParamDef,
    modifier: str | None,
    value: SearchValue,
    present: list[Any],
    now: datetime | None,
) -> bool:
    if isinstance(value, TokenValue):
        return any(_token_matches(value, token) for token in present)
    if isinstance(value, StringValue):
        if modifier == "exact":
            return any(text == value.text for text in present)
        if modifier == "contains":
            return any(value.folded in fold(text) for text in present)
        return any(fold(text).startswith(value.folded) for text in present)
    if isinstance(value, DateValue):
        return any(date_prefix_matches(value.prefix, value.range, target, now) for target in present)
    if isinstance(value, ReferenceValue):
        return any(_reference_matches(definition, value, ref) for ref in present)
    if isinstance(value, NumberValue):
        return any(_number_matches(value, q) for q in present)
    if isinstance(value, UriValue):
        return any(uri == value.uri for uri in present)
    return False  # pragma: no cover


def _token_matches(query: TokenValue, token: TokenValue) -> bool:
    if query.system is None:  # code in any system
        return token.code == query.code
    if query.system == "":  # |code: no system
        return not token.system and token.code == query.code
    if token.system != query.system:
        return False
    return query.code is None or token.code == query.code


def date_prefix_matches(prefix: str, s: Interval, t: Interval, now: datetime | None = None) -> bool:
    """R4 3.1.1.4.2 for a search range S and a target range T (T may be open-ended, e.g. a Period)."""
    assert s.lo is not None and s.hi is not None
    t_lo = -1 if t.lo is None else t.lo
    t_hi = END_OF_TIME + 1 if t.hi is None else t.hi
    contains = s.lo <= t_lo and t_hi <= s.hi
    if prefix == "eq":
        return contains
    if prefix == "ne":
        return not contains
    if prefix == "gt":
        return t_hi > s.hi
    if prefix == "lt":
        return t_lo < s.lo
    if prefix == "ge":
        return t_hi > s.hi or contains
    if prefix == "le":
        return t_lo < s.lo or contains
    if prefix == "sa":
        return t_lo >= s.hi
    if prefix == "eb":
        return t_hi <= s.lo
    if prefix == "ap":
        return approximate(s, now).overlaps(Interval(t_lo, t_hi))
    return False


def _reference_matches(definition: SearchParamDef, query: ReferenceValue, ref: ReferenceValue) -> bool:
    if query.id is not None and query.type is None:
        return ref.id == query.id and (not definition.targets or ref.type in definition.targets)
    if query.id is not None:
        return ref.type == query.type and ref.id == query.id
    return ref.url == query.url


def _number_matches(query: NumberValue, quantity: Quantity) -> bool:
    number, system, code, unit = quantity
    if query.code is not None:
        if query.system is not None and system != query.system:
            return False
        if query.code not in (code, unit):
            return False
    prefix = query.prefix
    if prefix == "eq":
        return query.low <= number < query.high
    if prefix == "ne":
        return not query.low <= number < query.high
    if prefix in ("gt", "sa"):
        return number > query.value
    if prefix in ("lt", "eb"):
        return number < query.value
    if prefix == "ge":
        return number >= query.value
    if prefix == "le":
        return number <= query.value
    if prefix == "ap":  # within 10% of the value (R4 3.1.1.4.2)
        slack = abs(query.value) / 10
        return query.value - slack <= number <= query.value + slack
    return False
