"""The values a search parameter reads from a resource: elements at its paths, as tokens, strings, ranges...

Shared by the blind index (`terms`) and the post-filter (`matching`), so both see the same values; an element
that cannot be read as its parameter's type (an unparseable date, a contained `#ref`) is invisible to both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final

from fhir_adapters.search.dates import Interval, date_range
from fhir_adapters.search.parameters import SearchParamDef
from fhir_adapters.search.query import TokenValue
from fhir_adapters.search.references import ReferenceValue, parse_reference

Quantity = tuple[Decimal, str | None, str | None, str | None]  # value, system, code, unit


def _walk(node: Any, segments: Sequence[str]) -> Iterator[Any]:
    if not segments:
        if isinstance(node, list):
            yield from (item for item in node if item is not None)
        elif node is not None:
            yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, segments)
        return
    if not isinstance(node, Mapping):
        return
    head, rest = segments[0], segments[1:]
    if head.endswith("[x]"):
        stem = head[:-3]
        for key, value in node.items():
            if key.startswith(stem) and key[len(stem) : len(stem) + 1].isupper():
                yield from _walk(value, rest)
    elif head in node:
        yield from _walk(node[head], rest)


def values_at(resource: Mapping[str, Any], path: str) -> Iterator[Any]:
    """Elements at a dotted path (`subject`, `name.given`, `effective[x]`), arrays flattened, nulls skipped."""
    return _walk(resource, _segments(path))


def element_values(resource: Mapping[str, Any], definition: SearchParamDef) -> list[Any]:
    """The raw elements a parameter reads (arrays flattened)."""
    out: list[Any] = []
    for path in definition.paths:
        out.extend(_walk(resource, _segments(path)))
    return out


@lru_cache(maxsize=1024)
def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def element_tokens(definition: SearchParamDef, element: Any) -> Iterator[TokenValue]:
    """Tokens of a code, boolean, Coding, CodeableConcept, Identifier or ContactPoint (R4 3.1.1.4.10)."""
    if isinstance(element, bool):
        yield TokenValue(definition.system, "true" if element else "false")
    elif isinstance(element, str):
        yield TokenValue(definition.system, element)
    elif isinstance(element, Mapping):
        if "coding" in element:  # CodeableConcept
            codings = element.get("coding")
            for coding in codings if isinstance(codings, list) else ():
                if isinstance(coding, Mapping):
                    yield from element_tokens(definition, coding)
        elif "code" in element or "system" in element and "value" not in element:  # Coding
            code = element.get("code")
            if isinstance(code, str):
                system = element.get("system")
                yield TokenValue(system if isinstance(system, str) else None, code)
        elif "value" in element:  # Identifier, ContactPoint
            value = element.get("value")
            if isinstance(value, str):
                system = element.get("system")
                yield TokenValue(system if isinstance(system, str) else None, value)


_NAME_PARTS: Final = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS: Final = ("text", "line", "city", "district", "state", "postalCode", "country")


def element_strings(element: Any) -> Iterator[str]:
    """The strings a string parameter searches: the text itself, or the parts of a HumanName or Address."""
    if isinstance(element, str):
        yield element
    elif isinstance(element, Mapping):
        for part in (*_NAME_PARTS, *_ADDRESS_PARTS, "display", "name"):
            value = element.get(part)
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))


def element_date_ranges(element: Any) -> Iterator[Interval]:
    """The range of a date, dateTime or instant, or of a Period (open-ended where start or end is absent)."""
    if isinstance(element, str):
        interval = date_range(element)
        if interval is not None:
            yield interval
    elif isinstance(element, Mapping) and ("start" in element or "end" in element):  # Period (R4 2.24.0.9)
        start = date_range(element["start"]) if isinstance(element.get("start"), str) else None
        end = date_range(element["end"]) if isinstance(element.get("end"), str) else None
        if "start" in element and start is None or "end" in element and end is None:
            return  # unparseable: not searchable (consistently for terms and matching)
        yield Interval(start.lo if start else None, end.hi if end else None)


def element_references(definition: SearchParamDef, element: Any) -> Iterator[ReferenceValue]:
    """The target of a Reference, if it is one of the parameter's target types (contained `#id`s are not)."""
    if isinstance(element, Mapping):
        ref = element.get("reference")
        if isinstance(ref, str) and ref and not ref.startswith("#"):
            parsed = parse_reference(ref)
            if parsed.type is None and parsed.id is not None:
                parsed = ReferenceValue(None, None, ref)  # a bare id is not a valid reference in a resource
            if definition.targets and parsed.type not in definition.targets:
                return
            yield parsed


def element_quantities(element: Any) -> Iterator[Quantity]:
    """The value, system, code and unit of a Quantity with a finite numeric value."""
    if isinstance(element, Mapping):
        value = element.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
            except InvalidOperation:  # pragma: no cover
                return
            if not number.is_finite():
                return
            system, code, unit = element.get("system"), element.get("code"), element.get("unit")
            yield (
                number,
                system if isinstance(system, str) else None,
                code if isinstance(code, str) else None,
                unit if isinstance(unit, str) else None,
            )
