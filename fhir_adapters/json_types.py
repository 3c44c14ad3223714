"""Each primitive value must have the JSON type R4 gives its datatype (json.html), element by element.

The R4B models coerce (`"true"` and `1` pass as a boolean, `"70.5"` as a decimal), so model validation alone
lets a resource through that we would then store and serve as invalid FHIR JSON. This check walks the
client's JSON with a table per model, derived once from the models' own field types: primitives inside
complex types and backbone elements, arrays, choice types (`value[x]`), extensions, the `_name` siblings
(Element: `id` and `extension`) and nested resources (`contained`, `Bundle.entry.resource`,
`Parameters.parameter.resource`). Elements the models do not know are left to the models to refuse.
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


class _WrongType(Exception):
    """A primitive of the wrong JSON type; `path` collects the steps to it, innermost first."""

    def __init__(self, kind: str, datatype: str, value: object) -> None:
        super().__init__(kind)
        self.kind, self.datatype, self.found = kind, datatype, json_kind_name(value)
        self.path: list[str | int] = []


def check_json_types(data: Mapping[str, Any], model_name: str, root: str) -> None:
    """Raise InvalidResource (code `structure`, expression like `Patient.active`) at the first primitive
    whose JSON type is not its datatype's. `data` is an object of the model `model_name`, already cleaned
    (FHIR names, no empties); `root` is its expression (a resource type, or e.g. `Bundle.entry[3]`). Structure
    (an object where an array belongs, unknown names) is not judged here but left to the model."""
    try:
        _check_object(data, element_specs(model_name))
    except _WrongType as exc:
        expression = root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in reversed(exc.path))
        label = root.split(".")[0].split("[")[0]
        raise InvalidResource(
            f"Invalid {label} at {expression}: a FHIR {exc.datatype} must be a {JSON_KIND_WORDS[exc.kind]}, "
            f"not {exc.found}",
            expression=expression,
        ) from None


def _check_object(data: Mapping[str, Any], table: Mapping[str, Spec]) -> None:
    """Walk one JSON object (dicts, as loads_json and _drop_empty give them); paths are built only on failure."""
    for name, value in data.items():
        spec = table.get(name)
        if spec is None or value is None:
            continue  # resourceType; names the model refuses; a null aligning `_name` arrays
        kind = spec[0]
        if kind == "string" and type(value) is str:
            continue  # most primitives: decided without a call
        try:
            if kind == _COMPLEX:
                nested = _TABLES.get(spec[1]) or element_specs(spec[1])
                if isinstance(value, dict):
                    _check_object(value, nested)
                elif isinstance(value, list):
                    for index, item in enumerate(value):
                        if isinstance(item, dict):
                            try:
                                _check_object(item, nested)
                            except _WrongType as exc:
                                exc.path.append(index)
                                raise
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    try:
                        if item is not None:
                            _check_value(item, spec)
                    except _WrongType as exc:
                        exc.path.append(index)
                        raise
            else:
                _check_value(value, spec)
        except _WrongType as exc:
            exc.path.append(name)
            raise


def _check_value(value: Any, spec: Spec) -> None:
    """One primitive or nested resource (complex elements are walked by _check_object itself)."""
    kind, name = spec
    if kind == _RESOURCE:
        if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
            _check_object(value, element_specs(value["resourceType"]))
    elif not has_json_kind(value, kind):
        raise _WrongType(kind, name, value)
