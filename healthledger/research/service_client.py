"""An HTTP client of a running service, for the command line: the transport, signing in as a user (session
cookie and CSRF token, as the browser does) or a bearer token, and FHIR calls with the server's words on
failure. `patient_client.PatientClient` (`healthledger study join`) and `researcher_client.ResearcherClient`
(`healthledger research`) are built on it."""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from healthledger.errors import HealthLedgerError

FHIR_JSON = "application/fhir+json"
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
_CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')


class ServiceError(HealthLedgerError):
    """A call to the service failed; the message says which step and what the server answered."""


class Transport(Protocol):
    """One HTTP exchange against the service: (status, headers, body). Cookies are the transport's business."""

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class UrllibTransport:
    """The standard library's HTTP client with a cookie jar (the session cookie), redirects not followed. `path`
    is relative to the base URL, or an absolute URL on the same service (a Bulk Data status or file URL)."""

    def __init__(self, base_url: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect())

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        if _origin(url) != _origin(self.base_url):  # credentials go to this service only, whatever a server names
            raise ServiceError(f"refusing to send credentials to {_origin(url)}: not the service at {self.base_url}")
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceError(f"cannot reach {self.base_url}: {getattr(exc, 'reason', exc)}") from None


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def outcome_text(body: bytes) -> str:
    """The diagnostics of an OperationOutcome answer (or the start of whatever else came back)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics", "")) for i in data.get("issue") or [])
    return json.dumps(data)[:200]


def parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A FHIR Parameters resource as {name: value[x]}."""
    return {p["name"]: next((v for k, v in p.items() if k.startswith("value")), None)
            for p in params.get("parameter") or []}


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A response header, whatever the case of its name."""
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


class ServiceClient:
    """Calls to the service as one signed-in user (`sign_in`) or with a bearer token (`token`)."""

    error: type[ServiceError] = ServiceError  # what a failed call raises (subclasses name their own)

    def __init__(self, transport: Transport, *, token: str = "", sleep: Callable[[float], None] = time.sleep) -> None:
        self.transport = transport
        self.token = token
        self.csrf = ""
        self.sleep = sleep

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One exchange with the caller's credentials: the token, or the session cookie and its CSRF token."""
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        elif method not in ("GET", "HEAD") and self.csrf:
            sent["X-CSRFToken"] = self.csrf
        return self.transport.request(method, path, body, sent)

    def _fhir(self, method: str, path: str, body: dict[str, Any] | None = None, *, ok: tuple[int, ...] = (200,),
              what: str) -> dict[str, Any]:
        headers = {"Accept": FHIR_JSON}
        raw = None
        if body is not None:
            raw = json.dumps(body).encode()
            headers["Content-Type"] = FHIR_JSON
        status, _, answer = self.request(method, f"/fhir/{path}", raw, headers)
        if status not in ok:
            raise self.error(f"{what}: the server answered {status}: {outcome_text(answer)}")
        data: dict[str, Any] = json.loads(answer)
        return data

    def sign_in(self, username: str, password: str) -> None:
        status, _, page = self.transport.request("GET", "/app/login", None, {"Accept": "text/html"})
        token = _CSRF_INPUT.search(page.decode("utf-8", "replace"))
        if status != 200 or token is None:
            raise self.error(f"sign-in page: unexpected answer {status}")
        form = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": token.group(1)})
        status, _, _ = self.transport.request("POST", "/app/login", form.encode(),
                                              {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 303:
            raise self.error("sign-in refused: check the user name and password")
        status, _, page = self.transport.request("GET", "/app/account", None, {"Accept": "text/html"})
        meta = _CSRF_META.search(page.decode("utf-8", "replace")) or _CSRF_INPUT.search(page.decode("utf-8", "replace"))
        if status != 200 or meta is None:
            raise self.error(f"after sign-in: unexpected answer {status} from /app/account")
        self.csrf = meta.group(1)
