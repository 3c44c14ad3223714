"""Searching definitions (OperationDefinition, StructureDefinition) by `url`, `_id` and `name` (R4 3.1.1.4), sorted
by their `_sort` parameters (SORTABLE).

The server's own definitions are published at `/fhir/{Type}/{id}` (fhir_adapters/operation_definitions.py,
fhir_adapters/extensions.py); a type search lists them, and the HTTP shell adds the stored ones the caller may
read. Matching follows the parameter types of R4: `url` is a uri (exact; a canonical `url|version` also matches
the version), `_id` a token (exact), `name` a string (case-insensitive, starts with). Repeated parameters are
AND-ed, commas inside one value OR-ed (R4 3.1.1.4.12, .13). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from fhir_adapters.errors import FhirInputError, UnsupportedSearch
from fhir_adapters.extensions import EXTENSION_BASE, EXTENSIONS, structure_definition
from fhir_adapters.operation_definitions import OPERATION_BASE, OURS, operation_definition
from fhir_adapters.search.controls import FixedSearch, SortKey
from fhir_adapters.search.matching import ResourceMeta
from fhir_adapters.search.parameters import COMMON_PARAMETERS, SearchParamDef
from fhir_adapters.search.sorting import sort_matches

# What a definitions search answers besides `_count` and paging: the criteria below.
CRITERIA: Final = ("url", "_id", "name")
PUBLISHED_TYPES: Final = frozenset({"OperationDefinition", "StructureDefinition"})
# What `_sort` takes on a definitions search: R4's parameters of both types that have an order (the canonical `url`
# compared as text), with `_id` and `_lastUpdated`.
SORTABLE: Final[Mapping[str, SearchParamDef]] = {
    **COMMON_PARAMETERS,
    "name": SearchParamDef("name", "string", ("name",)),
    "title": SearchParamDef("title", "string", ("title",)),
    "url": SearchParamDef("url", "string", ("url",)),
    "date": SearchParamDef("date", "date", ("date",), single=True),
    "status": SearchParamDef("status", "token", ("status",), single=True),
}
# The canonical base of each type's definitions published here: no stored definition may take a URL under it.
OWN_BASES: Final[Mapping[str, str]] = {"OperationDefinition": OPERATION_BASE, "StructureDefinition": EXTENSION_BASE}
_NEVER: Final = datetime(1, 1, 1, tzinfo=UTC)  # the lastUpdated of a definition without one (ours: built in)


def published(resource_type: str) -> list[dict[str, Any]]:
    """The definitions of `resource_type` this server publishes, in id order (ValueError for another type)."""
    if resource_type == "OperationDefinition":
        return [operation_definition(i) for i in sorted(OURS)]
    if resource_type == "StructureDefinition":
        return [structure_definition(i) for i in sorted(EXTENSIONS)]
    raise ValueError(f"{resource_type} is not a type of definitions this server publishes")


def published_ids(resource_type: str) -> frozenset[str]:
    return frozenset(OURS if resource_type == "OperationDefinition" else EXTENSIONS)


class OwnDefinitionUrl(FhirInputError):
    """A definition to be stored under a canonical URL of this server's own (`check_not_own_url`)."""

    status = 422
    code = "business-rule"


def check_not_own_url(resource: Mapping[str, Any]) -> None:
    """Refuse to store a definition whose `url` lies under this server's canonical base for the type (OWN_BASES),
    where every definition it publishes has its URL (operation_definitions.py, extensions.py). A canonical URL names
    one definition (R4 2.17.0.1); a stored second one would answer a `url` search beside ours and could pass for it.
    Other resource types pass unexamined."""
    resource_type = resource.get("resourceType")
    url = resource.get("url")
    if resource_type not in PUBLISHED_TYPES or not isinstance(url, str):
        return
    bare = url.partition("|")[0]  # (a canonical may carry `|version`)
    if bare.startswith(OWN_BASES[resource_type]):
        raise OwnDefinitionUrl(f"{resource_type}.url is the canonical URL of this server's own definition (or lies "
                               f"under its canonical base {OWN_BASES[resource_type]}): those are published from its "
                               "code, and no stored definition may take their URLs", expression=f"{resource_type}.url")


def check_conditional(resource_type: str, params: Iterable[tuple[str, str]], what: str) -> None:
    """Refuse a conditional interaction (`what`: create, update, delete, reference) on a definition type that selects
    by a criterion only its search answers (`url`, `name`): the conditional search runs over the store's index, which
    has `_id` and `_lastUpdated` for them and neither of those (the search matches them on the resources, see
    healthledger/api/fhir.py `_definitions_page`). Not supported (400), naming what is; other types pass."""
    if resource_type not in PUBLISHED_TYPES:
        return
    named = sorted({name.partition(":")[0] for name, _ in params} & (set(CRITERIA) - set(COMMON_PARAMETERS)))
    if named:
        listed = ", ".join(f"'{n}'" for n in named)
        raise UnsupportedSearch(f"conditional {what} on {resource_type} selects by {' and '.join(COMMON_PARAMETERS)} "
                                f"only; {listed} is answered by a search ({resource_type}?url=...), not in a "
                                "conditional interaction")


def select(definitions: Iterable[Mapping[str, Any]], search: FixedSearch) -> list[Mapping[str, Any]]:
    """The definitions that match every criterion of `search` (those of CRITERIA; others are not looked at)."""
    return [d for d in definitions if _matches(d, search.values)]


def ordered(definitions: Iterable[Mapping[str, Any]], keys: Sequence[SortKey]) -> list[Mapping[str, Any]]:
    """`definitions` in `_sort` order (R4 3.1.1.5.1; keys of SORTABLE), ties in the order given."""
    return sort_matches(list(definitions), keys, lambda d: (d, ResourceMeta(str(d.get("id", "")), _last_updated(d))))


def _last_updated(definition: Mapping[str, Any]) -> datetime:
    meta = definition.get("meta")
    text = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else _NEVER
    except ValueError:
        return _NEVER


def _matches(definition: Mapping[str, Any], values: Mapping[str, Sequence[str]]) -> bool:
    return all(any(_match(name, definition, piece) for piece in _pieces(value))
               for name in CRITERIA for value in values.get(name, ()) if _pieces(value))


def _pieces(value: str) -> list[str]:
    """A value's comma-separated alternatives (R4 3.1.1.4.13; `\\,` is a comma inside one), empty ones dropped."""
    pieces, current, escaped = [], "", False
    for char in value:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            pieces.append(current)
            current = ""
        else:
            current += char
    pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _match(name: str, definition: Mapping[str, Any], wanted: str) -> bool:
    if name == "_id":
        return definition.get("id") == wanted
    if name == "url":
        url, _, version = wanted.partition("|")
        return definition.get("url") == url and (not version or definition.get("version") == version)
    given = definition.get("name")
    return isinstance(given, str) and given.casefold().startswith(wanted.casefold())
