"""Result controls of a search (R4 3.1.1.5): `_sort`, `_include`, `_revinclude`, `_elements`, `_summary`, `_total`,
and the client's `Prefer: handling=strict|lenient` (R4 3.1.1.4, http.html#prefer).

They select nothing, so `parse_search` sets them aside; whoever runs a search reads them here. Under lenient
handling (FHIR's default) an unsupported control is left out and named in `ignored`; under strict handling it
is an UnsupportedSearch (`not-supported`). A value that is malformed (an `_include` that is not
`Type:parameter[:Target]`, a `_summary` that is not one of its codes) is an InvalidSearchValue (`invalid`) either
way. A control with an empty value is ignored, as an empty criterion is (R4 3.1.1.4).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from fhir_adapters.errors import InvalidSearchValue, UnsupportedSearch
from fhir_adapters.search.parameters import SearchParamDef, search_parameters
from fhir_adapters.subsetting import select_elements, summarize
from fhir_adapters.validation import is_resource_type

Summary = Literal["true", "text", "data", "count"]
Total = Literal["none", "estimate", "accurate"]
SUMMARY_VALUES: Final = frozenset({"true", "text", "data", "count", "false"})
TOTAL_VALUES: Final = frozenset({"none", "estimate", "accurate"})
SORTABLE_TYPES: Final = frozenset({"date", "string", "token"})
MAX_SORT_KEYS: Final = 5
MAX_INCLUDES: Final = 10
_ELEMENT = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_INCLUDE_PART = re.compile(r"^[A-Za-z][A-Za-z0-9_\-.]{0,63}$")
_CONTROL_NAMES: Final = frozenset({"_sort", "_include", "_revinclude", "_elements", "_summary", "_total"})


@dataclass(frozen=True)
class SortKey:
    """One `_sort` parameter: ascending unless prefixed with `-` (R4 3.1.1.5.1)."""

    param: SearchParamDef
    descending: bool


@dataclass(frozen=True)
class IncludeSpec:
    """`Source:param[:Target]`: `_include` follows `param` of the matches (Source is the searched type);
    `_revinclude` finds resources of Source whose `param` refers to a match (R4 3.1.1.5.4)."""

    source_type: str
    param: SearchParamDef
    target_type: str | None
    text: str


@dataclass(frozen=True)
class ResultControls:
    summary: Summary | None = None  # None: the whole resource (`_summary=false` or absent)
    total: Total | None = None  # None: not asked (the total is given, exact)
    elements: tuple[str, ...] | None = None
    sort: tuple[SortKey, ...] = ()
    include: tuple[IncludeSpec, ...] = ()
    revinclude: tuple[IncludeSpec, ...] = ()
    ignored: tuple[str, ...] = ()
    kept: tuple[tuple[str, str], ...] = ()  # the controls applied, for paging links

    def subset(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """`resource` as `_summary` / `_elements` ask (R4 3.1.1.5.8, .9; fhir_adapters.subsetting): to apply after
        every decision about it, to what the caller is shown."""
        if self.summary in ("true", "text", "data"):
            return summarize(resource, self.summary)
        if self.elements is not None:
            return select_elements(resource, self.elements)
        return dict(resource)


def is_control(name: str) -> bool:
    return name.partition(":")[0] in _CONTROL_NAMES


def prefers_strict(prefer: str | None) -> bool:
    """`Prefer: handling=strict` (RFC 7240 §4.4, FHIR R4 search.html#errors); lenient otherwise."""
    for token in (prefer or "").split(","):
        for part in token.split(";"):
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == "handling":
                return value.strip().strip('"').lower() == "strict"
    return False


def parse_controls(resource_type: str, params: Sequence[tuple[str, str]], *, strict: bool,
                   sortable: Mapping[str, SearchParamDef] | None = None) -> ResultControls:
    """The result controls among `params` (others are skipped: they are criteria or paging). `sortable`: what
    `_sort` may name, for a search the store's parameter table does not describe (default: that table's)."""
    summary: Summary | None = None
    total: Total | None = None
    elements: list[str] | None = None
    sort: list[SortKey] = []
    include: list[IncludeSpec] = []
    revinclude: list[IncludeSpec] = []
    ignored: list[str] = []
    kept: list[tuple[str, str]] = []

    def unsupported(message: str, name: str) -> None:
        if strict:
            raise UnsupportedSearch(message)
        if name not in ignored:
            ignored.append(name)

    for name, value in params:
        base, _, modifier = name.partition(":")
        if base not in _CONTROL_NAMES or value == "":
            continue
        if modifier:
            unsupported(f"'{base}:{_say(modifier)}' is not supported (no modifiers on {base})", f"{base}:{_say(modifier)}")
            continue
        if base == "_summary":
            if value not in SUMMARY_VALUES:
                raise InvalidSearchValue("_summary must be true, text, data, count or false", expression="_summary")
            summary = None if value == "false" else value  # type: ignore[assignment]
            kept.append((name, value))
        elif base == "_total":
            if value not in TOTAL_VALUES:
                raise InvalidSearchValue("_total must be none, estimate or accurate", expression="_total")
            total = value  # type: ignore[assignment]
            kept.append((name, value))
        elif base == "_elements":
            names = [piece.strip() for piece in value.split(",") if piece.strip()]
            if not names or any(not _ELEMENT.match(n) for n in names):
                raise InvalidSearchValue("_elements takes a comma-separated list of element names", expression="_elements")
            elements = [*(elements or []), *names]
            kept.append((name, value))
        elif base == "_sort":
            applied: list[str] = []
            for piece in value.split(","):
                key = _sort_key(resource_type, piece.strip(), unsupported, sortable)
                if key is not None:
                    sort.append(key)
                    applied.append(piece.strip())
            if len(sort) > MAX_SORT_KEYS:
                raise UnsupportedSearch(f"_sort takes at most {MAX_SORT_KEYS} parameters", expression="_sort")
            if applied:  # the paging links say what was applied: not the keys left out
                kept.append((name, ",".join(applied)))
        else:
            spec = _include_spec(resource_type, base, value, unsupported)
            if spec is not None:
                (include if base == "_include" else revinclude).append(spec)
                kept.append((name, value))
            if len(include) + len(revinclude) > MAX_INCLUDES:
                raise UnsupportedSearch(f"at most {MAX_INCLUDES} _include and _revinclude parameters")
    return ResultControls(
        summary, total, tuple(dict.fromkeys(elements)) if elements is not None else None, tuple(sort),
        tuple(include), tuple(revinclude), tuple(ignored), tuple(kept),
    )


def _say(text: str) -> str:
    return text[:40] if re.match(r"^[A-Za-z0-9_\-.:*]*$", text) else "(invalid)"


def _sort_key(resource_type: str, piece: str, unsupported: Callable[[str, str], None],
              sortable: Mapping[str, SearchParamDef] | None) -> SortKey | None:
    descending = piece.startswith("-")
    name = piece.removeprefix("-")
    if not name:
        raise InvalidSearchValue("_sort takes parameter names, e.g. _sort=-date,_id", expression="_sort")
    definition = (search_parameters(resource_type) if sortable is None else sortable).get(name)
    if definition is None or definition.type not in SORTABLE_TYPES:
        shown = _say(name)
        unsupported(
            f"cannot sort {resource_type} by '{shown}': _sort takes the type's date, string and token parameters, "
            "_id and _lastUpdated",
            f"_sort={shown}",
        )
        return None
    return SortKey(definition, descending)


def _include_spec(resource_type: str, base: str, value: str, unsupported: Callable[[str, str], None]) -> IncludeSpec | None:
    """`Type:parameter[:TargetType]` (R4 3.1.1.5.4). Malformed (another shape, an unknown type): invalid, in either
    handling. Well-formed but beyond this server (a wildcard, a parameter it does not have, another source type
    for `_include`): not-supported, i.e. ignored unless strict."""
    parts = value.split(":")
    wildcard = value == "*" or (len(parts) == 2 and parts[1] == "*" and bool(_INCLUDE_PART.match(parts[0])))
    if wildcard:
        unsupported(f"{base}: the wildcard '*' is not supported; name the parameter", f"{base}={_say(value)}")
        return None
    if len(parts) not in (2, 3) or not all(_INCLUDE_PART.match(part) for part in parts):
        raise InvalidSearchValue(f"{base} takes Type:parameter[:TargetType]", expression=base)
    source, param_name, target = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    if not is_resource_type(source) or (target is not None and not is_resource_type(target)):
        raise InvalidSearchValue(f"{base} names an unknown resource type", expression=base)
    definition = search_parameters(source).get(param_name)
    if definition is None or definition.type != "reference":
        unsupported(f"{base}: {source} has no reference parameter '{_say(param_name)}'", f"{base}={_say(value)}")
        return None
    if target is not None and definition.targets and target not in definition.targets:
        raise UnsupportedSearch(f"{base}: '{source}:{param_name}' cannot refer to {target}", expression=base)
    if base == "_include" and source != resource_type:
        unsupported(f"_include must start with the searched type {resource_type} (no :iterate)", f"_include={_say(value)}")
        return None
    if base == "_revinclude":
        if target is not None and target != resource_type:
            raise UnsupportedSearch(f"_revinclude must point at the searched type {resource_type}", expression=base)
        if definition.targets and resource_type not in definition.targets:
            raise UnsupportedSearch(f"_revinclude: '{source}:{param_name}' cannot refer to {resource_type}", expression=base)
    return IncludeSpec(source, definition, target, value)


# Parameters every search takes whatever it supports: the response format (R4 http.html#mime-type).
_FORMAT_PARAMETERS: Final = frozenset({"_format", "_pretty"})


@dataclass(frozen=True)
class FixedSearch:
    """A search that answers a fixed set of parameters (a type served by a module of its own rather than by
    the store's search): the values given for each supported name, in order, and the names left out."""

    values: dict[str, tuple[str, ...]]
    ignored: tuple[str, ...] = ()
    results: ResultControls = ResultControls()  # `_summary`, `_elements`, `_total`, `_sort`, when taken

    def shown_total(self, total: int) -> int | None:
        """The total unless `_total=none` asked for none (`_summary=count` is a total, whatever `_total` says)."""
        return None if self.results.total == "none" and self.results.summary != "count" else total

    def last(self, name: str) -> str | None:
        given = self.values.get(name)
        return given[-1] if given else None


# The result controls a fixed search takes when it is given what `_sort` may name (`screen_fixed(sortable=)`).
FIXED_RESULT_CONTROLS: Final = frozenset({"_summary", "_elements", "_total", "_sort"})


def screen_fixed(resource_type: str, params: Sequence[tuple[str, str]], supported: frozenset[str], *,
                 strict: bool, what: str = "search parameter",
                 sortable: Mapping[str, SearchParamDef] | None = None) -> FixedSearch:
    """R4 3.1.1.4 for a search over `supported` names only (no modifiers): under `Prefer: handling=strict` any
    other parameter (criterion, modifier or result control) is an UnsupportedSearch; lenient, it is left out and
    named once in `ignored`, as `parse_search` and `parse_controls` do for the store's searches. `_format` and
    `_pretty` are always accepted. Names are echoed only when they look like names; values never are. `what`: how
    the refusal calls a parameter (a history's are not search parameters). `sortable` given: the result controls
    (FIXED_RESULT_CONTROLS) are taken too, `_sort` naming those (`parse_controls`; `_summary` with `_elements`
    is invalid), for whoever runs the search to apply them (`results`)."""
    values: dict[str, list[str]] = {}
    ignored: list[str] = []
    results = ResultControls()
    if sortable is not None:
        results = parse_controls(resource_type, [(n, v) for n, v in params if n in FIXED_RESULT_CONTROLS],
                                 strict=strict, sortable=sortable)
        if results.summary is not None and results.elements is not None:
            raise InvalidSearchValue("use either _summary or _elements, not both", expression="_elements")
        supported = supported | FIXED_RESULT_CONTROLS
        ignored += results.ignored
    for name, value in params:
        if name in _FORMAT_PARAMETERS or (sortable is not None and name in FIXED_RESULT_CONTROLS):
            continue
        if name in supported:
            values.setdefault(name, []).append(value)
            continue
        shown = _say(name)
        if strict:
            raise UnsupportedSearch(f"'{shown}' is not a supported {what} for {resource_type} "
                                    f"(supported: {', '.join(sorted(supported))})")
        if shown not in ignored:
            ignored.append(shown)
    return FixedSearch({k: tuple(v) for k, v in values.items()}, tuple(ignored), results)
