"""HTTP details of the FHIR REST API: media types, `_format`, bounded bodies, ETags and dates (FHIR R4 http.html)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
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
# The FHIR version this server speaks, as the `fhirVersion` media-type parameter names it (R4 http.html#version-parameter:
# 4.0 is R4; a patch release such as 4.0.1 is the same version).
FHIR_VERSION = "4.0"

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
    other_version = ""
    for part in accept.split(","):
        kind = media_type(part)
        if kind in JSON_MEDIA_TYPES or kind in {"*/*", "application/*", ""}:
            version = _fhir_version(part)
            if version is None or _is_ours(version):
                return
            other_version = other_version or version
    if other_version:
        shown = other_version if len(other_version) <= 16 and other_version.isprintable() else "?"
        raise NotAcceptable(f"fhirVersion={shown} is not available: this server speaks FHIR R4 "
                            f"(fhirVersion={FHIR_VERSION})")
    raise NotAcceptable("only application/fhir+json (or application/json) responses are available")


def _fhir_version(media_range: str) -> str | None:
    """The `fhirVersion` parameter of a media range (R4 http.html#version-parameter), if it has one."""
    for parameter in media_range.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "fhirversion":
            return value.strip().strip('"')
    return None


def _is_ours(version: str) -> bool:
    """`4.0` or one of its patch releases (`4.0.1`)."""
    return version == FHIR_VERSION or version.startswith(FHIR_VERSION + ".")


def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing anything over `max_bytes` without buffering more than that.

    Content-Length is checked first (cheap refusal); the stream is then read in chunks up to one byte
    over the limit, which catches chunked uploads and lying Content-Length headers. A body sent with a
    content coding (RFC 7231 §3.1.2.2: gzip, deflate, br) is refused with 415 naming the coding (RFC 7231
    §6.5.13): we read identity bodies only (decompressing would let a small body expand past the limit).
    """
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding and coding != "identity":
        shown = coding if len(coding) <= 32 and coding.isprintable() else "?"
        raise UnsupportedMediaType(f"Content-Encoding '{shown}' is not supported: send the body uncompressed "
                                   "(identity)")
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


def parse_if_none_match(value: str) -> frozenset[int] | None:
    """`If-None-Match` (RFC 7232 §3.2): None for `*` (any current version), else the versions it lists
    (`W/"3", W/"4"`). 400 when an entry is not a version ETag."""
    if value.strip() == "*":
        return None
    tags = [tag for tag in value.split(",") if tag.strip()]
    if not tags:
        raise BadRequest('If-None-Match must be * or version ETags like W/"3"')
    try:
        return frozenset(parse_etag(tag) for tag in tags)
    except BadRequest:
        raise BadRequest('If-None-Match must be * or version ETags like W/"3"') from None


def parse_http_date(value: str) -> datetime | None:
    """An HTTP-date (RFC 7231 §7.1.1.1), or None when it is not one (RFC 7232 §3.3: then ignored)."""
    try:
        moment = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'


def http_date(moment: datetime) -> str:
    """RFC 7231 §7.1.1.1 IMF-fixdate."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC), usegmt=True)


