"""A batch's GET and HEAD entries answered by the REST handlers themselves (R4 3.1.0.11.1: each entry is processed
as the same request outside the Bundle would be), so an entry honours what REST honours (`_count` and paging
links, `_summary`, `_elements`, `_total`, lenient handling unless `Prefer: handling=strict`, history, metadata,
HEAD) and is decided, logged and refused exactly as that request (its own attempt in the access log).

The entry's request runs in a request context of its own, built from the batch request (its base URL, its
headers less the body's, the entry's `ifNoneMatch` / `ifModifiedSince`), through the view that REST routes its URL
to, with the batch request's principal (not authenticated again); errors are answered by the same error handlers.
Only the app's per-request hooks (request id, timing, metrics) are not run again: they belong to the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, Final

import orjson
import structlog
from flask import Response, current_app, request

from fhir_adapters.bundles import response_status
from fhir_adapters.datatypes import instant
from healthledger.api import negotiation as http
from healthledger.api.auth_seam import CALLER_KEY, Authenticator
from healthledger.principal import Principal
from healthledger.store.bundles import not_modified

# Headers of the batch request that are not the entry's: its body's, and what the entry states for itself.
_NOT_CARRIED: Final = frozenset({"content-type", "content-length", "content-encoding", "transfer-encoding",
                                 "accept", "if-none-match", "if-modified-since", "if-match", "if-none-exist"})

# The reads and searches of the other modules under /fhir (the access log, research studies and subjects), which a
# batch's GET entry is answered by too: they authenticate the entry's request, which carries the batch's headers.
# Their operations ($export, $feasibility...) are not among them: a GET entry does not start work.
READ_ENDPOINTS: Final = frozenset({
    "audit_events.search", "audit_events.read",
    "research.studies", "research.studies_history", "research.study", "research.study_history", "research.study_vread",
    "research.subjects", "research.subject",
})

# The view REST routes an endpoint to, as this batch's handler (the batch request's principal), or None for an
# endpoint another module serves (the entry is then the store's, through `EntryRead`).
ViewOf = Callable[[str], Callable[..., Any] | None]


class BatchCaller(Authenticator):
    """The batch request's principal for each of its entries: authenticated once, for the Bundle."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    def __call__(self, req: Any) -> Principal:
        req.environ[CALLER_KEY] = self.principal
        return self.principal


def answer_as_rest(entry: Any, *, view_of: ViewOf, base: str) -> dict[str, Any] | None:
    """The batch-response entry of a GET/HEAD entry: what `GET {base}/{entry.url}` answers (status, resource,
    etag, lastModified, location, outcome), 304 when the entry's conditions say its copy is current; None when the
    URL is not one REST's own handlers serve (another module's, or not relative)."""
    url = entry.url.strip()
    if not url or ":" in url.split("?", 1)[0].split("/", 1)[0]:
        return None  # absolute (or not a path): the plan's error says so
    path, _, query = url.lstrip("/").partition("?")
    headers = [(name, value) for name, value in request.headers.items() if name.lower() not in _NOT_CARRIED]
    headers.append(("Accept", http.FHIR_JSON))
    if entry.if_none_match:
        headers.append(("If-None-Match", entry.if_none_match))
    if entry.if_modified_since:
        headers.append(("If-Modified-Since", entry.if_modified_since))
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    bound = structlog.contextvars.get_contextvars()  # the batch's request id: the entry's teardown clears it
    # (The caller is known to the entry's request once its handler asks for it (BatchCaller), as in REST: a request
    # refused before that, an unknown type, leaves no attempt in the access log, alone or in a batch.)
    try:
        with app.test_request_context(
            f"/fhir/{path}", base_url=request.url_root, query_string=query, method=entry.method,
            headers=headers, environ_overrides={"REMOTE_ADDR": request.remote_addr or ""},
        ):
            view = None
            if request.routing_exception is None and request.url_rule is not None:
                view = view_of(request.url_rule.endpoint)
                if view is None:
                    return None
            response = _dispatch(app, view)
    finally:
        structlog.contextvars.bind_contextvars(**bound)
    return _as_entry(response, entry, base)


def _dispatch(app: Any, view: Callable[..., Any] | None) -> Response:
    """The view's response, or its error's as the blueprint's error handler gives it (which also records a refused
    attempt); the blueprint's own before-request hooks run first (a new attempt begins)."""
    for name in request.blueprints:
        for hook in app.before_request_funcs.get(name, ()):
            hook()
    try:
        if view is None:
            raise request.routing_exception  # type: ignore[misc]
        result = view(**(request.view_args or {}))
    except Exception as error:  # noqa: BLE001 - answered as REST answers it
        result = app.handle_user_exception(error)
    response: Response = app.make_response(result)
    return response


def _as_entry(response: Response, entry: Any, base: str) -> dict[str, Any]:
    status = response.status_code
    body = _json(response)
    etag = response.headers.get("ETag")
    last_modified = response.last_modified
    meta = body.get("meta") if isinstance(body, dict) else None
    if status == 200 and not_modified(etag, last_modified, entry.if_none_match, entry.if_modified_since):
        status, body = 304, None
    answer: dict[str, Any] = {"status": response_status(status)}  # as the store's entries say it
    if "Location" in response.headers:
        answer["location"] = response.headers["Location"]
    if etag:
        answer["etag"] = etag
    if isinstance(meta, dict) and isinstance(meta.get("lastUpdated"), str) and etag:
        answer["lastModified"] = meta["lastUpdated"]  # the stored instant, not the header's whole seconds
    elif "Last-Modified" in response.headers:
        try:
            answer["lastModified"] = instant(parsedate_to_datetime(response.headers["Last-Modified"]))
        except (TypeError, ValueError):
            pass
    result: dict[str, Any] = {}
    if status >= 400:
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            answer["outcome"] = body
    elif isinstance(body, dict) and entry.method == "GET":
        if etag and isinstance(body.get("id"), str) and isinstance(body.get("resourceType"), str):
            result["fullUrl"] = f"{base}/{body['resourceType']}/{body['id']}"  # a read: the resource's own URL
        result["resource"] = body
    result["response"] = answer
    return result


def _json(response: Response) -> dict[str, Any] | None:
    raw = response.get_data()
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
