"""FHIR R4 primitive datatypes the service checks and writes itself (http://hl7.org/fhir/R4/datatypes.html)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

# `id`: [A-Za-z0-9\-\.]{1,64} (datatypes.html#id). Use with fullmatch: `$` would also accept a final newline.
ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_id(value: object) -> bool:
    """Whether `value` is a FHIR `id`."""
    return isinstance(value, str) and ID.fullmatch(value) is not None


def instant(moment: datetime) -> str:
    """A FHIR `instant` (xs:dateTime with a zone), in UTC to the millisecond; a naive moment is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_version_meta(resource: Mapping[str, Any], version_id: int, last_updated: datetime) -> dict[str, Any]:
    """A copy of `resource` whose `meta.versionId` and `meta.lastUpdated` say which version it is (resource.html#Meta);
    the rest of its meta (profiles, security labels, tags) is kept."""
    stamped = dict(resource)
    meta = dict(stamped.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant(last_updated)
    stamped["meta"] = meta
    return stamped


# The JSON type of each primitive's value (R4 json.html "primitive types"): boolean is JSON true/false;
# integer, positiveInt and unsignedInt are JSON numbers without a fraction or exponent; decimal is a JSON
# number; every other primitive (dates, codes, uris, base64Binary, xhtml, ...) is a JSON string.
JSON_KINDS: Final[Mapping[str, str]] = {
    "boolean": "boolean",
    "integer": "integer",
    "positiveInt": "integer",
    "unsignedInt": "integer",
    "decimal": "number",
    **dict.fromkeys(
        ("string", "uri", "url", "canonical", "base64Binary", "instant", "date", "dateTime", "time", "code",
         "oid", "id", "markdown", "uuid", "xhtml"),
        "string",
    ),
}
# What each JSON kind accepts, in words a client can act on.
JSON_KIND_WORDS: Final[Mapping[str, str]] = {
    "boolean": "JSON boolean (true or false)",
    "integer": "JSON number without a fraction",
    "number": "JSON number",
    "string": "JSON string",
}


def has_json_kind(value: object, kind: str) -> bool:
    """Whether a parsed JSON value is of `kind` (a value of JSON_KINDS). A JSON integer parses to int and
    any number with a fraction or exponent to float, so `2.0` is not an integer; bool is not a number."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return value is True or value is False
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise ValueError(f"unknown JSON kind {kind!r}")


def json_kind_name(value: object) -> str:
    """What a parsed JSON value is, for messages (never the value itself: it may be PHI)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else "not JSON"
