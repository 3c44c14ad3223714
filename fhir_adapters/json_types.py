"""Each primitive value must have the JSON type R4 gives its datatype (json.html), element by element.

The R4B models coerce (`"true"` and `1` pass as a boolean, `"70.5"` as a decimal), so model validation alone
lets a resource through that we would then store and serve as invalid FHIR JSON. This check walks the
client's JSON with a table per model, derived once from the models' own field types: primitives inside
complex types and backbone elements, arrays, choice types (`value[x]`), extensions, the `_name` siblings
(Element: `id` and `extension`) and nested resources (`contained`, `Bundle.entry.resource`,
`Parameters.parameter.resource`). On the same walk it refuses what json.html forbids of any element: null
(except to align a repeating primitive with its `_name` array), empty objects and empty arrays, which the
models would take as absent. Elements the models do not know are left to the models to refuse.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Mapping
from typing import Any, Final

from fhir_adapters.datatypes import JSON_KIND_WORDS, JSON_KINDS, has_json_kind, json_kind_name
from fhir_adapters.errors import InvalidResource

# An element's spec: (JSON kind, name). The kind is a JSON_KINDS value for a primitive (name: its FHIR
# datatype), _COMPLEX (name: the model of the datatype or backbone element) or _RESOURCE (any resource).
Spec = tuple[str, str]
_COMPLEX: Final = "complex"
_RESOURCE: Final = "resource"
_SKIPPED: Final = frozenset({"fhir_comments", "resource_type"})  # Python-side fields, not FHIR JSON names

_TABLES: dict[str, Mapping[str, Spec]] = {}  # model name -> JSON name -> spec (bounded: one per model)


def element_specs(model_name: str) -> Mapping[str, Spec]:
    """JSON name -> spec of every element of a model (e.g. "Patient", "HumanName", "PatientContact")."""
    table = _TABLES.get(model_name)
    if table is None:
        table = _TABLES[model_name] = _derive(model_name)
    return table


def _derive(model_name: str) -> Mapping[str, Spec]:
    from fhir.resources.R4B import get_fhir_model_class  # heavy import, done on first use

    model = get_fhir_model_class(model_name)
    table: dict[str, Spec] = {}
    for field_name, info in model.model_fields.items():
        if field_name in _SKIPPED:
            continue
        spec = _spec(info.annotation)
        if spec is None:
            raise TypeError(f"{model_name}.{field_name}: no FHIR type in {info.annotation}")
        table[info.alias or field_name] = spec
    return table


def _spec(annotation: Any) -> Spec | None:
    """The FHIR type in a field annotation: `bool`, `Annotated[str, Uri()]`, `abc.HumanNameType`, wrapped in
    Optional / List / Union as fhir_core writes them."""
    if annotation is bool:
        return ("boolean", "boolean")
    if annotation is uuid.UUID:  # Extension.valueUuid is typed pydantic's UUID4
        return ("string", "uuid")
    for meta in getattr(annotation, "__metadata__", ()):
        name = type(meta).__name__
        primitive = name[:1].lower() + name[1:]  # fhir_core's Uri(), DateTime(), PositiveInt() ...
        if primitive in JSON_KINDS:
            return (JSON_KINDS[primitive], primitive)
    name = getattr(annotation, "__name__", "")
    if getattr(annotation, "__module__", "") == "abc" and name.endswith("Type"):  # fhir_core's forward types
        return (_RESOURCE, "Resource") if name == "ResourceType" else (_COMPLEX, name.removesuffix("Type"))
    for arg in typing.get_args(annotation):
        found = _spec(arg)
        if found is not None:
            return found
    return None


# What R4 json.html allows instead of a null, an empty object or an empty array, and where the two arrays of
# a repeating primitive (`given`, `_given`) must agree; the messages name the rule, never the value.
_NULL: Final = "null is not allowed (R4 JSON: leave an element without a value out)"
_EMPTY_OBJECT: Final = "an empty object is not allowed (R4 JSON: an element has a value, children or extensions)"
_EMPTY_ARRAY: Final = "an empty array is not allowed (R4 JSON: leave an element without a value out)"


class _Refused(Exception):
    """Input R4 JSON does not allow; `path` collects the steps to it, innermost first."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.path: list[str | int] = []


def _wrong_type(kind: str, datatype: str, value: object) -> _Refused:
    return _Refused(f"a FHIR {datatype} must be a {JSON_KIND_WORDS[kind]}, not {json_kind_name(value)}")


def _unaligned_null(name: str) -> _Refused:
    sibling = name[1:] if name[:1] == "_" else "_" + name
    return _Refused(
        f"null is allowed in {name} only where {sibling} has an entry at the same position "
        "(R4 JSON: a repeating primitive with only an id or extensions)"
    )


def _lengths_differ(name: str) -> _Refused:
    value, extra = (name[1:], name) if name[:1] == "_" else (name, "_" + name)
    return _Refused(f"{value} and {extra} must have the same number of entries (R4 JSON: null fills a position)")


def check_json_types(data: Mapping[str, Any], model_name: str, root: str) -> None:
    """Raise InvalidResource (code `structure`, expression like `Patient.active`) at the first element R4 JSON
    (json.html) does not allow, in JSON order: a primitive whose JSON type is not its datatype's; a null, an
    empty object or an empty array anywhere; a null in an array unless it stands for a repeating primitive
    given only in the `_name` array (or its `_name` entry, where only the value is given); `name` and
    `_name` arrays of different lengths. `data` is an object of the model `model_name` with FHIR names
    (checked by validation._check_names); `root` is its expression (a resource type, or `Bundle.entry[3]`).
    Other structure (an object where an array belongs, unknown names) is left to the model."""
    try:
        _check_object(data, element_specs(model_name))
    except _Refused as exc:
        expression = root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in reversed(exc.path))
        label = root.split(".")[0].split("[")[0]
        raise InvalidResource(f"Invalid {label} at {expression}: {exc.detail}", expression=expression) from None


def _check_object(data: Mapping[str, Any], table: Mapping[str, Spec]) -> None:
    """Walk one JSON object (dicts, as loads_json gives them); paths are built only on failure."""
    for name, value in data.items():
        if value is None:
            exc = _Refused(_NULL)
            exc.path.append(name)
            raise exc
        spec = table.get(name)
        if spec is None:
            continue  # resourceType; names the model refuses
        kind = spec[0]
        if kind == "string" and type(value) is str:
            continue  # most primitives: decided without a call
        try:
            if type(value) is list:
                if not value:
                    raise _Refused(_EMPTY_ARRAY)
                if kind == _COMPLEX and name[0] != "_":  # the common array (codings, extensions): inline
                    nested = _TABLES.get(spec[1]) or element_specs(spec[1])
                    for index, item in enumerate(value):
                        try:
                            if type(item) is dict and item:
                                _check_object(item, nested)
                            elif item is None or type(item) is dict:
                                raise _Refused(_NULL if item is None else _EMPTY_OBJECT)
                        except _Refused as exc:
                            exc.path.append(index)
                            raise
                else:
                    _check_array(data, name, value, spec)
            elif kind == _COMPLEX:
                if isinstance(value, dict):
                    if not value:
                        raise _Refused(_EMPTY_OBJECT)
                    _check_object(value, _TABLES.get(spec[1]) or element_specs(spec[1]))
            else:
                _check_value(value, spec)
        except _Refused as exc:
            exc.path.append(name)
            raise


def _check_array(data: Mapping[str, Any], name: str, items: list[Any], spec: Spec) -> None:
    """The items of `data[name]`. A null may stand in a primitive's array, or in its `_name` array (Element:
    `id`, `extension`), only where the other array has an entry (json.html "Representing primitive elements")."""
    kind, model = spec
    repeating_primitive = kind not in (_COMPLEX, _RESOURCE) or name[:1] == "_"
    sibling = None
    if repeating_primitive:
        sibling = data.get(name[1:] if name[:1] == "_" else "_" + name)
        if type(sibling) is list and len(sibling) != len(items):
            raise _lengths_differ(name)
    nested = (_TABLES.get(model) or element_specs(model)) if kind == _COMPLEX else None
    for index, item in enumerate(items):
        try:
            if item is None:
                if not repeating_primitive or type(sibling) is not list or sibling[index] is None:
                    raise _unaligned_null(name) if repeating_primitive else _Refused(_NULL)
            elif nested is not None:
                if isinstance(item, dict):
                    if not item:
                        raise _Refused(_EMPTY_OBJECT)
                    _check_object(item, nested)
            elif kind == "string" and type(item) is str:
                continue
            else:
                _check_value(item, spec)
        except _Refused as exc:
            exc.path.append(index)
            raise


def _check_value(value: Any, spec: Spec) -> None:
    """One primitive or nested resource (complex elements are walked by _check_object itself)."""
    kind, name = spec
    if kind == _RESOURCE:
        if isinstance(value, dict):
            if not value:
                raise _Refused(_EMPTY_OBJECT)
            if isinstance(value.get("resourceType"), str):
                _check_object(value, element_specs(value["resourceType"]))
    elif not has_json_kind(value, kind):
        raise _wrong_type(kind, name, value)
