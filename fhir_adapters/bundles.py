"""Batch/transaction Bundle planning (R4 3.1.0.11 http.html#transaction), references in resources, NDJSON lines.

`plan_bundle` checks a Bundle without touching any store and returns its entries, for a transaction in the
processing order of R4 3.1.0.11.2 (DELETE, then POST, then PUT/PATCH, then GET/HEAD; stable by entry index).
A transaction is all-or-nothing, so the first bad entry raises InvalidBundle naming it; in a batch each entry
stands alone (R4 3.1.0.11.1), so a bad entry is returned with `error` set and `resource` None, and the caller
answers that entry with the error. Bundle-level faults (not a batch/transaction, duplicate fullUrl: invariant
bdl-7) reject either kind whole.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qsl

from fhir_adapters.errors import (
    FhirInputError,
    InvalidBundle,
    InvalidResource,
    MalformedJson,
    UnknownResourceType,
)
from fhir_adapters.search.query import parse_search
from fhir_adapters.validation import is_resource_type, loads_json, parse_resource, validate_element

Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
# R4 3.1.0.11.2 processing order.
PROCESSING_ORDER: Final[Mapping[str, int]] = {
    "DELETE": 0,
    "POST": 1,
    "PUT": 2,
    "PATCH": 2,
    "GET": 3,
    "HEAD": 3,
}
_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE: Final = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


@dataclass(frozen=True)
class PlannedEntry:
    """One Bundle entry, checked. `url` is the request URL as sent (relative to the server base).

    `resource_type`/`id` come from the URL (`Type`, `Type/id`, `Type/id/_history/vid`, `Type?query`);
    `conditional` holds the parsed `?query` of a conditional update/delete or a search (GET).
    """

    index: int
    method: Method
    url: str
    resource_type: str | None
    id: str | None
    version_id: str | None = None
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    conditional: tuple[tuple[str, str], ...] | None = None
    # a read's (GET/HEAD `Type/id[/_history/vid]?...`) parameters: `_summary` and `_elements` apply, as in REST
    read_params: tuple[tuple[str, str], ...] = ()
    error: InvalidBundle | None = None  # batch only: why this entry cannot be processed
    # batch only, with `routed_reads`: a GET/HEAD entry the caller answers as the same REST request (`error`, if
    # set, is only why the plan could not read its URL, which that request may well serve: `Patient/_history`)
    routed: bool = False


@dataclass(frozen=True)
class BundlePlan:
    type: Literal["batch", "transaction"]
    entries: tuple[PlannedEntry, ...]  # transaction: processing order; batch: as sent
    full_urls: Mapping[str, int] = field(default_factory=dict)  # fullUrl -> entry index


def response_status(status: int) -> str:
    """Bundle.entry.response.status (R4 bundle.html: "status code starting with a 3 digit HTTP code, may contain
    text"): the code and its reason phrase (RFC 9110 §15), for an error as for a success: `"404 Not Found"`."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def plan_bundle(bundle: Mapping[str, Any] | bytes | str, *, searched_elsewhere: frozenset[str] = frozenset(),
                routed_reads: bool = False) -> BundlePlan:
    """Check a batch/transaction Bundle and plan its entries (see module docstring). Raises InvalidBundle.

    `searched_elsewhere`: types whose GET searches are not the store's (a module of their own answers and checks
    them, with parameters of its own): their query is kept as given, not parsed here.
    `routed_reads`: the caller answers a batch's GET and HEAD entries as the same REST requests (R4 3.1.0.11.1):
    such an entry is checked as an entry (request, method, url) and marked `routed`; its URL is parsed if it can
    be, and what the plan cannot read in it is left for that request to answer (lenient search, history,
    metadata), kept in `error` for a caller that does not route it after all."""
    data = loads_json(bundle) if isinstance(bundle, bytes | bytearray | str) else bundle
    if not isinstance(data, Mapping) or data.get("resourceType") != "Bundle":
        raise InvalidBundle("Expected a Bundle resource", expression="resourceType")
    kind = data.get("type")
    if kind not in ("batch", "transaction"):
        detail = "is missing" if kind is None else "must be 'batch' or 'transaction'"
        raise InvalidBundle(f"Bundle.type {detail} for processing", expression="Bundle.type")
    entries = data.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidBundle("Bundle.entry must be an array", expression="Bundle.entry")
    if "entry" in data and not entries:  # (a Bundle of nothing leaves `entry` out)
        raise InvalidBundle("Bundle.entry must not be an empty array (R4 JSON): leave it out", expression="Bundle.entry")
    _check_bundle_shell(data)
    full_urls = _check_full_urls(entries)
    transaction = kind == "transaction"
    if transaction:
        _check_overlaps(entries)
    planned: list[PlannedEntry] = []
    for index, entry in enumerate(entries):
        try:
            planned.append(_plan_entry(index, entry, full_urls if transaction else None, searched_elsewhere,
                                       routed=routed_reads and not transaction))
        except FhirInputError as exc:
            error = _entry_error(index, exc)
            if transaction:
                if isinstance(exc, UnknownResourceType):
                    error.status = 400  # the transaction is what is invalid; a batch entry keeps REST's 404
                raise error from None
            planned.append(_failed_entry(index, entry, error))
    if transaction:
        planned.sort(key=lambda e: (PROCESSING_ORDER[e.method], e.index))
    return BundlePlan(kind, tuple(planned), full_urls)


def _entry_error(index: int, exc: FhirInputError) -> InvalidBundle:
    """The error of entry `index`, its expression rooted at `Bundle.entry[index]`."""
    if isinstance(exc, InvalidBundle) and exc.entry_index == index:
        return exc
    inner = exc.expression or ""
    if inner.startswith("Bundle.entry["):
        expression = inner
    elif inner.startswith("resource."):
        expression = f"Bundle.entry[{index}].{inner}"
    elif inner == "resourceType":
        expression = f"Bundle.entry[{index}].resource.resourceType"
    elif inner:
        expression = f"Bundle.entry[{index}].resource.{_strip_type(inner)}"
    else:
        expression = f"Bundle.entry[{index}]"
    error = InvalidBundle(f"Bundle entry {index}: {exc.message}", entry_index=index, expression=expression)
    error.status = exc.status if exc.status in (400, 404, 422) else 400
    if not isinstance(exc, InvalidBundle):
        error.cause = exc
    return error


def _strip_type(expression: str) -> str:
    """`Patient.name[0]` -> `name[0]` (the resource part of a path inside an entry)."""
    head, dot, rest = expression.partition(".")
    return rest if dot and _TYPE.match(head.split("[")[0]) else expression


def _failed_entry(index: int, entry: Any, error: InvalidBundle) -> PlannedEntry:
    request = entry.get("request") if isinstance(entry, Mapping) else None
    method = request.get("method") if isinstance(request, Mapping) else None
    url = request.get("url") if isinstance(request, Mapping) else None
    return PlannedEntry(
        index=index,
        method=_as_method(method) or "GET",
        url=url if isinstance(url, str) else "",
        resource_type=None,
        id=None,
        error=error,
    )


def _check_bundle_shell(data: Mapping[str, Any]) -> None:
    """Validate the Bundle's own elements; entries are checked one by one (`_plan_entry`)."""
    try:
        parse_resource({k: v for k, v in data.items() if k != "entry"}, expected_type="Bundle")
    except InvalidResource as exc:
        raise InvalidBundle(exc.message, expression=exc.expression) from None


def _check_full_urls(entries: list[Any]) -> dict[str, int]:
    """fullUrl -> index; bdl-7: unique unless versions differ; must be absolute (urn:uuid needs a UUID)."""
    seen: dict[tuple[str, object], int] = {}
    out: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        full_url = entry.get("fullUrl")
        if not isinstance(full_url, str):
            continue
        resource = entry.get("resource")
        meta = resource.get("meta") if isinstance(resource, Mapping) else None
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        key = (_full_url_key(full_url), version)
        if key in seen:
            raise InvalidBundle(
                f"Bundle entry {index} repeats the fullUrl of entry {seen[key]} (bdl-7: fullUrl must be unique)",
                entry_index=index,
                expression=f"Bundle.entry[{index}].fullUrl",
            )
        seen[key] = index
        out.setdefault(full_url, index)
    return out


def _full_url_key(full_url: str) -> str:
    return full_url.lower() if full_url[:9].lower() == "urn:uuid:" else full_url


def _check_full_url(full_url: str) -> None:
    if full_url[:9].lower() == "urn:uuid:":
        try:
            uuid.UUID(full_url[9:])
        except ValueError:
            raise InvalidBundle("fullUrl 'urn:uuid:' must be followed by a UUID (RFC 4122)") from None
        if len(full_url) != 45:
            raise InvalidBundle("fullUrl 'urn:uuid:' must be followed by a UUID in its 36-character form")
    elif full_url[:8].lower() == "urn:oid:":
        if not re.fullmatch(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+", full_url):
            raise InvalidBundle("fullUrl 'urn:oid:' must be followed by an OID")
    elif not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", full_url):
        raise InvalidBundle("fullUrl must be an absolute URL (or urn:uuid: / urn:oid:), not a relative one")


def _plan_entry(index: int, entry: Any, full_urls: Mapping[str, int] | None,
                searched_elsewhere: frozenset[str] = frozenset(), *, routed: bool = False) -> PlannedEntry:
    if not isinstance(entry, Mapping):
        raise InvalidBundle("entry must be a JSON object")
    validate_element(
        {k: v for k, v in entry.items() if k != "resource"}, "BundleEntry", f"Bundle.entry[{index}]"
    )
    request = entry.get("request")
    if not isinstance(request, Mapping):
        raise InvalidBundle("entry.request is missing (required in a batch or transaction)")
    method = _as_method(request.get("method"))
    if method is None:
        raise InvalidBundle("entry.request.method must be one of GET, HEAD, POST, PUT, DELETE, PATCH")
    url = request.get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidBundle("entry.request.url is missing")
    full_url = entry.get("fullUrl")
    if full_url is not None:
        if not isinstance(full_url, str):
            raise InvalidBundle("entry.fullUrl must be a string")
        _check_full_url(full_url)
    if routed and method in ("GET", "HEAD"):
        return _routed_entry(index, method, url, request, searched_elsewhere)
    resource_type, rid, version, conditional = _parse_request_url(url, method, searched_elsewhere)
    read_params = _read_params(url, method, rid)
    raw_resource = entry.get("resource")
    resource: dict[str, Any] | None = None
    if method in ("POST", "PUT", "PATCH"):
        if raw_resource is None:
            raise InvalidBundle(f"{method} entry has no resource")
        resource = parse_resource(raw_resource)
        if method != "PATCH" and resource["resourceType"] != resource_type:
            raise InvalidBundle(
                f"resource is a {resource['resourceType']} but the request URL names {resource_type}",
                expression=f"Bundle.entry[{index}].resource.resourceType",
            )
        if method == "PUT" and rid is not None and resource.get("id") != rid:
            # R4 3.1.0.4 update: the body's id SHALL equal the id in the URL (else 400).
            what = "has no id" if "id" not in resource else "has an id that differs from the request URL"
            raise InvalidBundle(f"PUT resource {what}", expression=f"Bundle.entry[{index}].resource.id")
        if full_urls is not None:
            _check_local_references(resource, full_urls)
    elif raw_resource is not None and method == "DELETE":
        raise InvalidBundle("DELETE entry must not carry a resource")
    if_none_exist = _optional_text(request, "ifNoneExist")
    if if_none_exist is not None:
        if method != "POST":
            raise InvalidBundle("ifNoneExist is only for POST (conditional create)")
        _check_query(resource_type or "", if_none_exist.lstrip("?"))
    return PlannedEntry(
        index=index,
        method=method,
        url=url,
        resource_type=resource_type,
        id=rid,
        version_id=version,
        resource=resource,
        full_url=full_url,
        if_none_exist=if_none_exist,
        if_match=_optional_text(request, "ifMatch"),
        if_none_match=_optional_text(request, "ifNoneMatch"),
        if_modified_since=_optional_text(request, "ifModifiedSince"),
        conditional=conditional,
        read_params=read_params,
    )


def _routed_entry(index: int, method: Method, url: str, request: Mapping[str, Any],
                  searched_elsewhere: frozenset[str]) -> PlannedEntry:
    """A batch GET/HEAD entry that the caller answers as its REST request (`plan_bundle(routed_reads=True)`)."""
    conditions = {name: _optional_text(request, name) for name in ("ifNoneMatch", "ifModifiedSince", "ifMatch")}
    if request.get("ifNoneExist") is not None:
        raise InvalidBundle("ifNoneExist is only for POST (conditional create)")
    resource_type = rid = version = None
    conditional: tuple[tuple[str, str], ...] | None = None
    error: InvalidBundle | None = None
    read_params: tuple[tuple[str, str], ...] = ()
    try:
        resource_type, rid, version, conditional = _parse_request_url(url, method, searched_elsewhere)
        read_params = _read_params(url, method, rid)
    except FhirInputError as exc:
        error = _entry_error(index, exc)
    return PlannedEntry(
        index=index, method=method, url=url, resource_type=resource_type, id=rid, version_id=version,
        if_match=conditions["ifMatch"], if_none_match=conditions["ifNoneMatch"],
        if_modified_since=conditions["ifModifiedSince"], conditional=conditional, read_params=read_params,
        error=error, routed=True,
    )


def _as_method(value: object) -> Method | None:
    return cast(Method, value) if isinstance(value, str) and value in METHODS else None


def _optional_text(request: Mapping[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidBundle(f"entry.request.{name} must be a string")
    return value


def _parse_request_url(
    url: str, method: str, searched_elsewhere: frozenset[str] = frozenset()
) -> tuple[str, str | None, str | None, tuple[tuple[str, str], ...] | None]:
    """(type, id, version, conditional params) of a request URL relative to the base (R4 3.1.0.11.1)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", url):
        raise InvalidBundle("entry.request.url must be relative to the server base (e.g. 'Patient/123')")
    path, question, query = url.partition("?")
    segments = path.strip("/").split("/") if path.strip("/") else []
    if not segments:
        raise InvalidBundle(
            "entry.request.url names no resource type (system-level requests are not supported)"
        )
    resource_type = segments[0]
    if not _TYPE.match(resource_type) or not is_resource_type(resource_type):
        # The REST API's answer to the same URL (404, in its words: api/fhir.py `_check_type`).
        shown = resource_type[:40] if resource_type.isprintable() else "?"
        raise UnknownResourceType(f"unknown resource type {shown!r}")
    if any(segment.startswith("$") for segment in segments):
        raise InvalidBundle("operations ($name) are not supported in a batch or transaction", status=400)
    rid = version = None
    if len(segments) >= 2:
        rid = segments[1]
        if not _ID.match(rid):
            raise InvalidBundle("entry.request.url has an invalid resource id")
    if len(segments) == 4 and segments[2] == "_history" and _ID.match(segments[3]):
        version = segments[3]
    elif len(segments) > 2 or (len(segments) == 2 and segments[1] == ""):
        raise InvalidBundle(
            "entry.request.url must be 'Type', 'Type/id', 'Type/id/_history/vid' or 'Type?query'"
        )
    conditional: tuple[tuple[str, str], ...] | None = None
    if question and not (rid is not None and method in ("GET", "HEAD")):  # a read's parameters: `_read_params`
        if rid is not None:
            raise InvalidBundle("entry.request.url cannot have both an id and search parameters")
        checked = method not in ("GET", "HEAD") or resource_type not in searched_elsewhere
        conditional = _check_query(resource_type, query, parse=checked)
    if method in ("PUT", "PATCH") and rid is None and conditional is None:
        raise InvalidBundle(f"{method} needs 'Type/id' or a conditional 'Type?query'")
    if method == "DELETE" and rid is None and conditional is None:
        raise InvalidBundle("DELETE needs 'Type/id' or a conditional 'Type?query'")
    if method == "POST" and (rid is not None or conditional is not None):
        raise InvalidBundle("POST creates at 'Type' (no id, no query)")
    if version is not None and method != "GET" and method != "HEAD":
        raise InvalidBundle("only GET can address a version (_history)")
    return resource_type, rid, version, conditional


def _read_params(url: str, method: str, rid: str | None) -> tuple[tuple[str, str], ...]:
    """The query of a read (GET/HEAD with an id), as REST reads it: any parameter is accepted, the caller applies
    `_summary` and `_elements` (R4 3.1.1.5.8-9) and leaves the rest."""
    _, question, query = url.partition("?")
    if rid is None or method not in ("GET", "HEAD") or not question:
        return ()
    try:
        return tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    except ValueError:
        raise InvalidBundle("search parameters in the request are not valid") from None


def _check_query(resource_type: str, query: str, *, parse: bool = True) -> tuple[tuple[str, str], ...]:
    try:
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise InvalidBundle("search parameters in the request are not valid") from None
    if parse:
        parse_search(resource_type, params)  # raises UnsupportedSearch, named by entry by the caller
    return tuple(params)


def _safe(name: str) -> str:
    return name[:64] if re.fullmatch(r"[A-Za-z0-9_\-.]*", name) else "(not a name)"


def _check_local_references(resource: Mapping[str, Any], full_urls: Mapping[str, int]) -> None:
    """In a transaction, `urn:uuid:` references must name an entry; conditional ones must parse (3.1.0.11.2)."""
    lowered = {_full_url_key(url) for url in full_urls}
    for path, reference in references_in(resource):
        if reference[:9].lower() == "urn:uuid:" and _full_url_key(reference) not in lowered:
            raise InvalidBundle(
                "a urn:uuid reference names no entry of this transaction", expression=f"resource.{path}"
            )
        if "?" in reference and not reference.startswith(("http:", "https:", "urn:")):
            resource_type, _, query = reference.partition("?")
            if not is_resource_type(resource_type):
                raise InvalidBundle(
                    f"conditional reference names an unknown resource type '{_safe(resource_type)}'",
                    expression=f"resource.{path}",
                )
            _check_query(resource_type, query)


def _check_overlaps(entries: list[Any]) -> None:
    """R4 3.1.0.11.2: one resource may be the target of only one entry of a transaction (by URL identity).

    Checked on the request URLs alone, before the entries themselves; conditional targets are resolved (and
    checked again) by the executor.
    """
    owner: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, Mapping) else None
        if not isinstance(request, Mapping) or request.get("method") not in ("PUT", "DELETE", "PATCH"):
            continue
        url = request.get("url")
        match = (
            re.match(r"^/?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/?$", url) if isinstance(url, str) else None
        )
        if match is None:
            continue
        key = (match[1], match[2])
        if key in owner:
            raise InvalidBundle(
                f"Bundle entry {index}: {key[0]}/{key[1]} is already changed by entry {owner[key]} "
                "(a transaction may change a resource only once)",
                entry_index=index,
            )
        owner[key] = index


# --- references ---------------------------------------------------------------------------------------------


def references_in(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every `Reference.reference` in the resource (contained resources included) as (path, reference)."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                child = f"{path}.{key}" if path else str(key)
                if key == "reference" and isinstance(value, str):
                    found.append((child, value))
                else:
                    walk(value, child)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(resource, "")
    return found


def rewrite_references(resource: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """A copy with each `reference` found in `mapping` replaced (e.g. urn:uuid:... -> Patient/123).

    A key that is an absolute URL (a `fullUrl`: `urn:uuid:`, `urn:oid:`, `http(s)://`) is replaced wherever the
    resource links to it (R4 http.html#trules: "resource references, elements of type uri, url, oid, uuid, and
    <a href="" & <img src="" in the narrative"): in an element of those types that is exactly that URL (by name,
    without the type model: `url`, as in Attachment.url, and the choices `value[x]` of those types; never an
    Identifier.value, a string, that often repeats it on purpose), and in the `href` and `src` attributes of the
    narrative (`div`). Other keys (conditional references `Type?query`) are references
    only. `urn:uuid:` keys match case-insensitively (RFC 4122 3: UUIDs compare as values). Others match exactly.
    """
    normalised = {_full_url_key(k): v for k, v in mapping.items()}
    links = {k: v for k, v in normalised.items() if _ABSOLUTE.match(k)}

    def replace(reference: str) -> str:
        return normalised.get(_full_url_key(reference), reference)

    def replace_link(value: str) -> str:
        return links.get(_full_url_key(value), value)

    def replace_in_narrative(div: str) -> str:
        def attribute(match: re.Match[str]) -> str:
            target = links.get(_full_url_key(match["url"]))
            return match[0] if target is None else f"{match['name']}={match['quote']}{target}{match['quote']}"

        return _LINK_ATTRIBUTE.sub(attribute, div) if links else div

    return _rewrite(resource, replace, replace_link, replace_in_narrative)  # type: ignore[no-any-return]


_LINK_ELEMENTS: Final = frozenset({"url", "valueUri", "valueUrl", "valueOid", "valueUuid"})
_ABSOLUTE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
# An XHTML attribute that links (R4 narrative.html: the div's `a href` and `img src`), its value quoted.
_LINK_ATTRIBUTE: Final = re.compile(r"""(?P<name>\b(?:href|src))\s*=\s*(?P<quote>["'])(?P<url>[^"'<>]*)(?P=quote)""")


def _rewrite(node: Any, replace: Callable[[str], str], replace_link: Callable[[str], str],
             replace_in_narrative: Callable[[str], str], key: str = "") -> Any:
    if isinstance(node, Mapping):
        return {k: _rewrite(v, replace, replace_link, replace_in_narrative, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(item, replace, replace_link, replace_in_narrative, key) for item in node]
    if isinstance(node, str):
        if key == "reference":
            return replace(node)
        if key == "div":
            return replace_in_narrative(node)
        if key in _LINK_ELEMENTS:
            return replace_link(node)
    return node


# --- NDJSON (FHIR Bulk Data: one resource per line) -----------------------------------------------------------


def read_ndjson(
    lines: Iterable[str | bytes], *, validate: bool = False
) -> Iterator[tuple[int, dict[str, Any] | FhirInputError]]:
    """Yield (1-based line number, resource or the error for that line); blank lines are skipped.

    Each line must be a JSON object with a known `resourceType`. With `validate=False` (default) the R4B
    model check is left to the caller's `parse_resource`, so it is not paid twice; `validate=True` does it here.
    """
    for line_no, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8") if isinstance(line, bytes | bytearray) else line
        except UnicodeDecodeError:
            yield line_no, MalformedJson("line is not valid UTF-8")
            continue
        if not text.strip():
            continue
        try:
            if validate:
                yield line_no, parse_resource(text)
                continue
            data = loads_json(text)
            if not isinstance(data, dict):
                raise InvalidResource("an NDJSON line must be one JSON object")
            resource_type = data.get("resourceType")
            if not isinstance(resource_type, str) or not is_resource_type(resource_type):
                raise InvalidResource("missing or unknown resourceType", expression="resourceType")
            yield line_no, data
        except FhirInputError as exc:
            yield line_no, exc
