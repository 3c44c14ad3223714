"""`_sort` (R4 3.1.1.5.1): order search matches by date, string and token parameters, `_id` and `_lastUpdated`.

For an element with several values, ascending order uses the lowest and descending the highest (R4: "the
lowest value when sorting ascending, the highest descending"). Resources without a value sort last in either
direction. Keys apply in the order given; ties keep the order the items came in (the store's: by id).

`sort_position` and `comes_after` say the same order of one resource against a remembered one (a keyset page
cursor): the sort values, then the id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fhir_adapters.search.controls import SortKey
from fhir_adapters.search.matching import ResourceMeta
from fhir_adapters.search.strings import fold
from fhir_adapters.search.values import element_date_ranges, element_strings, element_tokens, element_values

T = TypeVar("T")
Position = tuple[str | int | None, ...]  # each key's sort value (None: none), then the id; JSON-able
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def sort_value(resource: Mapping[str, Any], meta: ResourceMeta, key: SortKey) -> Any:
    """The value `resource` sorts by under `key` (None: it has none, and sorts last)."""
    definition = key.param
    pick = max if key.descending else min
    if definition.name == "_id":
        return meta.id
    if definition.name == "_lastUpdated":
        return meta.last_updated
    elements = element_values(resource, definition)
    if definition.type == "date":
        points: list[int] = []
        for element in elements:
            for span in element_date_ranges(element):
                # The end of a span when sorting down, its start when sorting up (an open side: the other one).
                ends = (span.hi, span.lo) if key.descending else (span.lo, span.hi)
                point = next((p for p in ends if p is not None), None)
                if point is not None:
                    points.append(point)
        return pick(points) if points else None
    if definition.type == "string":
        texts = [fold(t) for e in elements for t in element_strings(e)]
        return pick(texts) if texts else None
    codes = [t.code for e in elements for t in element_tokens(definition, e) if t.code is not None]
    return pick(codes) if codes else None


def sort_matches(
    items: Sequence[T], keys: Sequence[SortKey], view: Callable[[T], tuple[Mapping[str, Any], ResourceMeta]]
) -> list[T]:
    """`items` ordered by `keys` (stable: one pass per key, the last key first)."""
    ordered = list(items)
    for key in reversed(keys):
        valued = [(sort_value(*view(item), key), item) for item in ordered]
        present = [pair for pair in valued if pair[0] is not None]
        present.sort(key=lambda pair: pair[0], reverse=key.descending)
        ordered = [item for _, item in present] + [item for value, item in valued if value is None]
    return ordered


def sort_position(resource: Mapping[str, Any], meta: ResourceMeta, keys: Sequence[SortKey]) -> Position:
    """Where `resource` sits in the order of `keys` (sort_matches over items in id order): its sort values and id."""
    values: list[str | int | None] = []
    for key in keys:
        value = sort_value(resource, meta, key)
        if isinstance(value, datetime):
            moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            value = (moment - _EPOCH) // _MICROSECOND
        values.append(value)
    return (*values, meta.id)


def comes_after(position: Position, anchor: Position, keys: Sequence[SortKey]) -> bool:
    """Whether `position` is past `anchor` in the order of `keys` (missing values last in either direction, then
    ids ascending, as sort_matches orders). Positions of different shapes (a cursor from another sort) compare
    by id alone."""
    if len(position) != len(keys) + 1 or len(anchor) != len(position):
        return str(position[-1]) > str(anchor[-1])
    for key, mine, theirs in zip(keys, position, anchor, strict=False):
        if mine == theirs:
            continue
        if mine is None or theirs is None:
            return mine is None  # missing values come last
        if type(mine) is not type(theirs):
            return str(mine) > str(theirs)
        return mine < theirs if key.descending else mine > theirs  # type: ignore[operator]
    return str(position[-1]) > str(anchor[-1])
