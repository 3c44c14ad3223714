"""Search and history result Bundles with paging links (FHIR R4 bundle.html, search.html#paging, http.html#history).

Paging links carry the client's parameters plus an opaque `_cursor`: the position of the page (an offset into the
stable order) and, where the order allows it, the sort position of the last entry shown (a keyset: the next page
starts after it, so what is added or removed meanwhile does not shift a result onto two pages or off both). A
keyset holds only what the caller is shown of that entry: its id and sort values as shown to it (values of elements
`_elements` or `_summary` left out of the page are ones the same search without them shows), never a real id behind
a pseudonym. A cursor is validated like any other input; a forged one bounds only what the caller sees anyway.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_adapters.outcome import operation_outcome
from fhir_adapters.search.sorting import Position
from healthledger.api.negotiation import etag
from healthledger.errors import BadRequest

CURSOR_PARAM = "_cursor"
_CURSOR_VERSION = 1
_MAX_OFFSET = 10**9
_KEY = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # the end of a keyset position: an id as FHIR spells one
_MAX_POSITION = 6  # sort values (fhir_adapters.search.controls.MAX_SORT_KEYS) and the id
_MAX_CURSOR = 8192


@dataclass(frozen=True)
class Cursor:
    """Where the page a `next` link points at starts: `offset` into the order, or, when `after` is given, just
    past that position (the offset then only places the page, for its `previous` link)."""

    offset: int
    after: Position | None = None


def encode_cursor(offset: int, after: Position | None = None) -> str:
    fields: dict[str, Any] = {"v": _CURSOR_VERSION, "o": offset}
    if after is not None:
        fields["a"] = list(after)
    return base64.urlsafe_b64encode(orjson.dumps(fields)).rstrip(b"=").decode()


def decode_cursor(token: str) -> int:
    """The offset inside a cursor from one of our links; 400 for anything else."""
    return read_cursor(token).offset


def read_cursor(token: str) -> Cursor:
    """The cursor of one of our links; 400 for anything else."""
    if len(token) > _MAX_CURSOR:
        raise BadRequest("invalid paging cursor")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid paging cursor") from None
    if not isinstance(value, dict) or value.get("v") != _CURSOR_VERSION:
        raise BadRequest("invalid paging cursor")
    offset = value.get("o")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= _MAX_OFFSET:
        raise BadRequest("invalid paging cursor")
    after = value.get("a")
    if after is None:
        return Cursor(offset)
    if (not isinstance(after, list) or not 1 <= len(after) <= _MAX_POSITION or not isinstance(after[-1], str)
            or not _KEY.fullmatch(after[-1]) or not all(_is_sort_value(v) for v in after[:-1])):
        raise BadRequest("invalid paging cursor")
    return Cursor(offset, tuple(after))


def _is_sort_value(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= 1024) or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63)


def parse_count(values: Sequence[str], *, default: int, maximum: int, name: str = "_count") -> int:
    """`_count` (FHIR R4 search.html#count): a non-negative integer, capped at the server's maximum."""
    if not values:
        return default
    if len(values) > 1:
        raise BadRequest(f"{name} may be given only once")
    text = values[-1].strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise BadRequest(f"{name} must be a non-negative integer")
    return min(int(text), maximum)


@dataclass(frozen=True)
class PageLinks:
    """Where a page sits: the endpoint, the client's parameters (without the cursor), count and offset."""

    endpoint: str
    params: tuple[tuple[str, str], ...]
    count: int
    offset: int

    after: Position | None = None  # this page's keyset position (Cursor.after), for its `self` link

    def url(self, offset: int, after: Position | None = None) -> str:
        params = [*self.params, ("_count", str(self.count))]
        if offset > 0 or after is not None:
            params.append((CURSOR_PARAM, encode_cursor(offset, after)))
        return f"{self.endpoint}?{urlencode(params)}"

    def links(self, next_offset: int | None, next_after: Position | None = None) -> list[dict[str, str]]:
        """`self`, `next` (after `next_after` when given: a keyset) and, past the first page, `previous` (by
        offset: a keyset runs one way)."""
        links = [{"relation": "self", "url": self.url(self.offset, self.after)}]
        if next_offset is not None:
            links.append({"relation": "next", "url": self.url(next_offset, next_after)})
        if self.offset > 0:
            links.append({"relation": "previous", "url": self.url(max(0, self.offset - self.count))})
        return links


def searchset_bundle(
    entries: Iterable[tuple[str, dict[str, Any]]],
    *,
    total: int | None,
    links: list[dict[str, str]],
    included: Iterable[tuple[str, dict[str, Any]]] = (),
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `searchset` Bundle; entries are (fullUrl, resource) with search.mode = match, then `included` ones
    (`_include`/`_revinclude`, mode include), then `outcome` (an OperationOutcome about the search, e.g. the
    parameters it ignored, mode outcome; R4 3.1.1.4 and bundle.html#searchset)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    bundle["entry"] = [
        {"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}} for full_url, resource in entries
    ] + [{"fullUrl": full_url, "resource": resource, "search": {"mode": "include"}} for full_url, resource in included]
    if outcome is not None:
        bundle["entry"].append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": outcome, "search": {"mode": "outcome"}})
    if not bundle["entry"]:
        del bundle["entry"]
    return bundle


@dataclass(frozen=True)
class HistoryEntry:
    full_url: str
    request_url: str
    method: str
    status: str
    version_id: int
    last_modified: str
    resource: dict[str, Any] | None


def history_bundle(
    entries: Iterable[HistoryEntry], *, total: int | None, links: list[dict[str, str]],
    outcome: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A `history` Bundle (FHIR R4 http.html#history): newest first, deletes carry no resource. `outcome`: (the
    request as the history's `self` link gives it, an OperationOutcome about it, e.g. the parameters lenient
    handling left out), as a last entry answering that request in `response.outcome`: a history entry must have
    a request and a response (R4 bdl-3, bdl-4) and has no `search.mode`, so this is where a history says it."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    out = []
    for item in entries:
        entry: dict[str, Any] = {"fullUrl": item.full_url}
        if item.resource is not None:
            entry["resource"] = item.resource
        entry["request"] = {"method": item.method, "url": item.request_url}
        entry["response"] = {"status": item.status, "etag": etag(item.version_id), "lastModified": item.last_modified}
        out.append(entry)
    if outcome is not None:
        url, issue = outcome
        out.append({"request": {"method": "GET", "url": url}, "response": {"status": "200 OK", "outcome": issue}})
    if out:
        bundle["entry"] = out
    return bundle




def ignored_outcome(ignored: list[str], what: str = "search") -> dict[str, Any] | None:
    """The OperationOutcome naming what lenient handling left out of a search (or a `what` else: a history) (names
    only, never values); every search and history of the API words it so (api/fhir.py, api/research.py)."""
    names = list(dict.fromkeys(ignored))
    if not names:
        return None
    return operation_outcome(
        "warning", "not-supported",
        "ignored (not supported by this server): " + ", ".join(names[:20])
        + f"; send 'Prefer: handling=strict' to have such a {what} refused instead",
    )


__all__ = [
    "CURSOR_PARAM",
    "Cursor",
    "HistoryEntry",
    "PageLinks",
    "Position",
    "decode_cursor",
    "encode_cursor",
    "history_bundle",
    "ignored_outcome",
    "parse_count",
    "read_cursor",
    "searchset_bundle",
]
