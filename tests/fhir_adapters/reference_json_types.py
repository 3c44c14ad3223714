"""A slow, plain reference of R4 json.html's primitive rules, for tests: which JSON type each primitive takes,
and the first primitive of a resource that breaks them, walked with paths built as it goes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fhir_adapters.json_types import element_specs

# R4 json.html, "primitive types": the table, as written there.
JSON_BOOLEAN = {"boolean"}
JSON_NUMBER_NO_FRACTION = {"integer", "positiveInt", "unsignedInt"}
JSON_NUMBER = {"decimal"}
# Everything else is a JSON string: base64Binary canonical code date dateTime id instant markdown oid string time
# uri url uuid xhtml.


def json_type_ok(datatype: str, value: Any) -> bool:
    """Whether a parsed JSON value may stand for a primitive of `datatype`."""
    if datatype in JSON_BOOLEAN:
        return type(value) is bool
    if datatype in JSON_NUMBER_NO_FRACTION:
        return type(value) is int  # json parses a number with a fraction or exponent to float
    if datatype in JSON_NUMBER:
        return type(value) is not bool and isinstance(value, int | float)
    return type(value) is str


def primitives(value: Any, model: str, path: str) -> Iterator[tuple[str, str, Any]]:
    """(path, FHIR datatype, value) of every primitive under an object of `model`, depth first in JSON order."""
    for name, item in value.items():
        spec = element_specs(model).get(name)
        if spec is None:
            continue
        items = list(enumerate(item)) if isinstance(item, list) else [(None, item)]
        for index, element in items:
            where = f"{path}.{name}" + ("" if index is None else f"[{index}]")
            if element is None:
                continue
            kind, type_name = spec
            if kind == "complex":
                if isinstance(element, Mapping):
                    yield from primitives(element, type_name, where)
            elif kind == "resource":
                if isinstance(element, Mapping) and isinstance(element.get("resourceType"), str):
                    yield from primitives(element, element["resourceType"], where)
            else:
                yield where, type_name, element


def first_wrong(resource: Mapping[str, Any]) -> str | None:
    """The path of the first primitive whose JSON type is wrong, or None."""
    for where, datatype, value in primitives(resource, resource["resourceType"], resource["resourceType"]):
        if not json_type_ok(datatype, value):
            return where
    return None
