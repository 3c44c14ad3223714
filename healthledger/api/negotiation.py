"""HTTP details of the FHIR REST API: media types, `_format`, bounded bodies, ETags and dates (FHIR R4 http.html)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from flask import Request

from fhir_adapters.errors import MalformedJson
from fhir_adapters.validation import loads_json
from healthledger.errors import BadRequest, HealthLedgerError, PayloadTooLarge, UnsupportedMediaType

FHIR_JSON = "application/fhir+json; charset=utf-8"

# Media types we read and write. XML is not supported (and the CapabilityStatement says so).
JSON_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
# `_format` values that mean JSON (FHIR R4 http.html#mime-type: json, application/json, application/fhir+json).
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"

_READ_CHUNK = 64 * 1024


class NotAcceptable(HealthLedgerError):
    """The client asked for a response format we do not produce (XML, ...)."""

    status = 406
    code = "not-supported"


def media_type(content_type: str | None) -> str:
    """`application/fhir+json; charset=utf-8` -> `application/fhir+json` (RFC 7231 §3.1.1.1)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_response_format(request: Request) -> None:
    """`_format` overrides Accept (FHIR R4 http.html#mime-type); JSON is the only format we produce."""
    fmt = request.args.get("_format")
    if fmt is not None:
        if media_type(fmt.replace(" ", "+")) not in JSON_FORMATS:
            raise NotAcceptable("only JSON is supported: use _format=json or application/fhir+json")
        return
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return
    for part in accept.split(","):
        kind = media_type(part)
        if kind in JSON_MEDIA_TYPES or kind in {"*/*", "application/*", ""}:
            return
    raise NotAcceptable("only application/fhir+json (or application/json) responses are available")


def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing anything over `max_bytes` without buffering more than that.

    Content-Length is checked first (cheap refusal); the stream is then read in chunks up to one byte
    over the limit, which catches chunked uploads and lying Content-Length headers.
    """
    declared = request.headers.get("Content-Length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
        if length < 0:
            raise BadRequest("invalid Content-Length header")
        if length > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    return b"".join(chunks)


def require_json_body(request: Request) -> None:
    """415 unless the body is declared as FHIR JSON or plain JSON."""
    kind = media_type(request.headers.get("Content-Type"))
    if kind not in JSON_MEDIA_TYPES:
        shown = kind if kind and len(kind) <= 64 and kind.isprintable() else "none"
        raise UnsupportedMediaType(
            f"unsupported Content-Type '{shown}': send application/fhir+json or application/json"
        )


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from the body, or MalformedJson (400). The message never echoes the body.

    Parsed with fhir_adapters' loader, which keeps decimal text exactly (`1.50` stays `1.50`, FHIR R4
    datatypes.html#decimal); orjson would turn it into a float. The loader refuses bodies nested deeper
    than `MAX_JSON_DEPTH` from the text, before its recursive parser runs.
    """
    if not raw.strip():
        raise MalformedJson("request body is empty: a JSON resource is required")
    value = loads_json(raw)
    if not isinstance(value, dict):
        raise MalformedJson("request body must be a JSON object (a FHIR resource)")
    return value


def parse_etag(value: str) -> int:
    """`W/"3"` (or `"3"`) -> 3 (FHIR R4 http.html#concurrency; RFC 7232 §2.3). 400 when malformed."""
    text = value.strip()
    text = text.removeprefix("W/")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    if not text.isdigit() or len(text) > 18:
        raise BadRequest("If-Match must be a version ETag like W/\"3\"")
    return int(text)


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'


def http_date(moment: datetime) -> str:
    """RFC 7231 §7.1.1.1 IMF-fixdate."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC), usegmt=True)


