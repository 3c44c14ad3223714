"""Subsets of a resource: `_summary=true|text|data` and `_elements` (R4 search.html#summary, #elements).

Which elements are "summary" and which are mandatory comes from the R4B models (`summary_element_property`,
required fields), so every resource type is covered. A subset is marked with the `SUBSETTED` tag (R4 3.1.1.5.8):
it must not be used to update the resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Final, Literal

from fhir.resources.R4B import get_fhir_model_class

SUBSETTED: Final = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS: Final = frozenset({"resourceType", "id", "meta"})
Mode = Literal["true", "text", "data"]


@lru_cache(maxsize=256)
def _elements(resource_type: str) -> tuple[frozenset[str], frozenset[str], dict[str, frozenset[str]]]:
    """(summary elements, mandatory elements, choice stem -> its typed names) of a type, by JSON name."""
    model = get_fhir_model_class(resource_type)
    summary: set[str] = set()
    required: set[str] = set()
    choices: dict[str, set[str]] = {}
    for field_name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        name = info.alias or field_name
        if extra.get("summary_element_property"):
            summary.add(name)
        if info.is_required() or extra.get("element_required"):
            required.add(name)
        stem = extra.get("one_of_many")
        if isinstance(stem, str):
            choices.setdefault(stem, set()).add(name)
            if extra.get("one_of_many_required"):
                required.add(name)  # one of them is mandatory: keep whichever is present
    return frozenset(summary), frozenset(required), {k: frozenset(v) for k, v in choices.items()}


def _with_primitive_extensions(names: Iterable[str]) -> set[str]:
    """Each element with its `_name` sibling (a primitive's id and extensions, FHIR 2.6.2.5)."""
    out = set(names)
    out |= {f"_{n}" for n in out}
    return out


def _tagged(resource: Mapping[str, Any], kept: set[str]) -> dict[str, Any]:
    subset = {k: v for k, v in resource.items() if k in kept}
    meta = dict(subset.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if not (isinstance(t, dict) and t.get("code") == SUBSETTED["code"]
                                                     and t.get("system") == SUBSETTED["system"])]
    meta["tag"] = [*tags, dict(SUBSETTED)]
    subset["meta"] = meta
    head: dict[str, Any] = {k: subset[k] for k in ("resourceType", "id", "meta") if k in subset}
    return {**head, **{k: v for k, v in subset.items() if k not in head}}


def summarize(resource: Mapping[str, Any], mode: Mode) -> dict[str, Any]:
    """The `_summary` form of `resource`: `true` summary elements; `text` text, id, meta and mandatory elements;
    `data` everything but the text."""
    resource_type = str(resource.get("resourceType"))
    summary, required, _ = _elements(resource_type)
    kept: set[str]
    if mode == "true":
        kept = set(_ALWAYS | summary)
    elif mode == "text":
        kept = set(_ALWAYS | {"text"} | required)
    else:
        kept = set(resource) - {"text"}
    return _tagged(resource, _with_primitive_extensions(kept))


def select_elements(resource: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The `_elements` form: the named top-level elements (a choice by its stem: `value` keeps `valueQuantity`),
    plus id, meta and the mandatory elements, which a server SHOULD always return (R4 3.1.1.5.9)."""
    resource_type = str(resource.get("resourceType"))
    _, required, choices = _elements(resource_type)
    kept: set[str] = set(_ALWAYS | required)
    for name in names:
        kept.add(name)
        kept |= choices.get(name, frozenset())
    return _tagged(resource, _with_primitive_extensions(kept))
