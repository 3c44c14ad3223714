"""The web app's client of the /fhir API: every page reads and writes through the same HTTP API as any other
client, with the signed-in browser's own session.

A page handler does not touch the store. It sends a request to `/fhir/...` through the app's own WSGI stack
(in process, no socket): the request carries the browser's session cookie (re-signed from the current
session, so it is exactly what the browser would send) and, for unsafe methods, the CSRF token and a
same-origin Referer, as the app's own JavaScript would. So the same authentication seam
(`healthledger.api.auth_seam`), the same SMART scopes, the same consent decisions and the same access-log
entries apply to a page as to any API client: there is no second code path to the data.

The sub-request runs in a fresh `contextvars.Context`: Flask keeps its application and request contexts in
context variables, and a request pushed inside another request of the same app would share the outer `g`
(the cached principal, the outer request's access-log attempt). A fresh context gives it its own.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from flask import current_app, request, session
from flask_wtf.csrf import generate_csrf
from werkzeug.test import EnvironBuilder, run_wsgi_app

from healthledger.errors import HealthLedgerError

FHIR_JSON = "application/fhir+json"
_UNSAFE = frozenset({"POST", "PUT", "DELETE", "PATCH"})
MAX_PAGES = 20  # `search_all` stops after this many pages (the caller says whether that is the whole story)


class FhirCallError(HealthLedgerError):
    """The API refused a page's request: its status and the OperationOutcome's first issue (safe to show)."""

    def __init__(self, status: int, message: str, expression: str | None, outcome: dict[str, Any] | None) -> None:
        super().__init__(message, expression=expression, status=status)
        self.outcome = outcome


@dataclass(frozen=True)
class FhirResponse:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any] | None
    content: bytes = b""  # the raw body (a Bulk Data manifest or NDJSON file is not a FHIR resource)


@dataclass(frozen=True)
class SearchResult:
    """The resources of every page followed, the server's total, and whether pages were left unread."""

    resources: list[dict[str, Any]]
    total: int | None
    truncated: bool


class FhirClient:
    """The API as the signed-in browser of the current request (call only inside a request of the app)."""

    def __init__(self, prefix: str = "/fhir") -> None:
        self.prefix = prefix

    # -- interactions ---------------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        return self._ok(self.call("GET", f"{resource_type}/{resource_id}"))

    def search(self, resource_type: str, params: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """One searchset page (a Bundle)."""
        return self._ok(self.call("GET", resource_type, params=params))

    def search_all(
        self, resource_type: str, params: Sequence[tuple[str, str]] = (), *, max_pages: int = MAX_PAGES
    ) -> SearchResult:
        """Every match, following `next` links up to `max_pages` pages."""
        found: list[dict[str, Any]] = []
        bundle = self.search(resource_type, params)
        total = bundle.get("total")
        pages = 1
        while True:
            found.extend(e["resource"] for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict))
            nxt = next((link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
            if not nxt:
                return SearchResult(found, total if isinstance(total, int) else None, False)
            if pages >= max_pages:
                return SearchResult(found, total if isinstance(total, int) else None, True)
            path, query = self._relative(nxt)
            bundle = self._ok(self.call("GET", path, params=query))
            pages += 1

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self._ok(self.call("POST", str(resource["resourceType"]), body=resource))

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self._ok(self.call("PUT", f"{resource['resourceType']}/{resource['id']}", body=resource))

    def delete(self, resource_type: str, resource_id: str) -> None:
        self._ok(self.call("DELETE", f"{resource_type}/{resource_id}"))

    def operation(self, path: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """POST an operation (`Consent/{id}/$sign`) with a Parameters body."""
        return self._ok(self.call("POST", path, body=parameters))

    # -- the transport --------------------------------------------------------------------------------
    def call(
        self, method: str, path: str, *, params: Sequence[tuple[str, str]] = (), body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FhirResponse:
        """One request to `{prefix}/{path}` through the app, authenticated as the current browser session
        (`headers`: more request headers, e.g. Bulk Data's `Prefer: respond-async`)."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        sent = {"Accept": FHIR_JSON, "Host": request.host, **(headers or {})}
        cookie = self._session_cookie()
        if cookie:
            sent["Cookie"] = cookie
        if method in _UNSAFE:
            sent["X-CSRFToken"] = generate_csrf()
            sent["Referer"] = request.host_url  # WTF_CSRF_SSL_STRICT over HTTPS: same origin
        data = None
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
            data = orjson.dumps(body)
        builder = EnvironBuilder(
            path=f"{self.prefix}/{path}".rstrip("/"),
            method=method,
            query_string=urlencode(list(params)),
            headers=list(sent.items()),
            data=data,
            base_url=f"{request.scheme}://{request.host}",
            environ_overrides={"REMOTE_ADDR": request.remote_addr or "127.0.0.1"},
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        app_iter, status, response_headers = contextvars.Context().run(
            run_wsgi_app, app.wsgi_app, environ, buffered=True
        )
        try:
            raw = b"".join(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        try:
            payload = orjson.loads(raw) if raw and raw.lstrip()[:1] == b"{" else None
        except orjson.JSONDecodeError:  # not the FHIR API answering (a proxy's or a bare app's error page)
            payload = None
        return FhirResponse(int(status.split()[0]), dict(response_headers),
                            payload if isinstance(payload, dict) else None, raw)

    def _session_cookie(self) -> str:
        """The browser's session as a cookie header, signed from the session as it is now in this request."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
        if serializer is None or not session:
            return ""
        return f"{app.config['SESSION_COOKIE_NAME']}={serializer.dumps(dict(session))}"

    def _relative(self, url: str) -> tuple[str, list[tuple[str, str]]]:
        """A `next` link of ours as (path under the prefix, params)."""
        parts = urlsplit(url)
        marker = self.prefix + "/"
        path = parts.path[parts.path.index(marker) + len(marker):] if marker in parts.path else parts.path
        return path, parse_qsl(parts.query, keep_blank_values=True)

    @staticmethod
    def _ok(response: FhirResponse) -> dict[str, Any]:
        if 200 <= response.status < 300:
            return response.body or {}
        issue = _first_issue(response.body)
        raise FhirCallError(
            response.status, issue.get("diagnostics") or f"the request failed ({response.status})",
            _expression(issue), response.body,
        )


def _first_issue(outcome: dict[str, Any] | None) -> dict[str, Any]:
    issues = (outcome or {}).get("issue") or [{}]
    first = issues[0]
    return first if isinstance(first, dict) else {}


def _expression(issue: dict[str, Any]) -> str | None:
    expressions = issue.get("expression") or []
    return str(expressions[0]) if expressions else None


def entries(bundle: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The resources of a Bundle's entries."""
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            yield resource


def refusal_text(response: FhirResponse) -> str:
    """The first issue's diagnostics of an API refusal ("" when the answer was not an OperationOutcome)."""
    return str(_first_issue(response.body).get("diagnostics") or "")
