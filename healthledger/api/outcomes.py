"""The one place where errors become FHIR OperationOutcome responses (FHIR R4 §3.1.0.4, http.html#summary).

Every error a caller can cause is a `HealthLedgerError` or a `fhir_adapters.errors.FhirInputError`; both
carry a message that is safe to show (no PHI), an HTTP status and, where known, the failing path.
Anything else is a bug: it is logged server-side with its traceback and the caller sees a generic 500.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from flask import Response, request
from flask_wtf.csrf import CSRFError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from fhir_adapters.errors import FhirInputError
from fhir_adapters.outcome import operation_outcome
from healthledger.api.negotiation import FHIR_JSON
from healthledger.errors import DecryptionError, HealthLedgerError, InsufficientScope, Unauthorized
from healthledger.keys import KeyUnwrapError

log = structlog.get_logger("healthledger.api")

# FHIR IssueType codes (http://hl7.org/fhir/R4/valueset-issue-type.html) for the statuses werkzeug raises.
_HTTP_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    411: "required",
    412: "conflict",
    413: "too-costly",
    414: "too-costly",
    415: "not-supported",
    416: "invalid",
    422: "processing",
    429: "throttled",
    431: "too-costly",
}


def outcome_response(outcome: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    response = Response(orjson.dumps(outcome), status=status, content_type=FHIR_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(error: BaseException) -> Response:
    """Map any exception to an OperationOutcome response; the only translation point for the API."""
    if isinstance(error, DecryptionError):
        return _undecryptable(error)
    if isinstance(error, HealthLedgerError):
        status = error.status
        if status >= 500:
            # Our own 5xx (decryption of a shredded key is reported as Gone by the store; a ChainError is
            # transient) keeps its safe message; only unexpected exceptions get the generic one.
            log.error("api.error", status=status, error=type(error).__name__, route=_route())
        headers = {}
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = bearer_challenge(error.message)
        elif isinstance(error, InsufficientScope) and _presented_bearer():
            headers["WWW-Authenticate"] = bearer_challenge(error.message, "insufficient_scope")
        outcome = operation_outcome("error", error.code, error.message, error.expression)
        return outcome_response(outcome, status, headers)
    if isinstance(error, FhirInputError):
        outcome = operation_outcome("error", error.code, error.message, error.expression)
        return outcome_response(outcome, error.status)
    if isinstance(error, CSRFError):
        # A request authenticated by the session cookie must carry the session's CSRF token (web/sessions.py):
        # say so, and how, instead of a bare "bad request". Flask-WTF's reasons name no secret.
        reason = str(error.description or "").strip().rstrip(".")
        outcome = operation_outcome(
            "error", "security",
            f"{reason or 'CSRF check failed'}: a request authenticated by the session cookie must send the "
            "session's CSRF token in the X-CSRFToken header (or use a bearer token instead of the cookie)",
        )
        return outcome_response(outcome, 400)
    if isinstance(error, HTTPException):
        status = error.code or 500
        headers = {}
        if status == 405:
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        message = _HTTP_MESSAGES.get(status, error.name.lower() if error.name else "request failed")
        outcome = operation_outcome("error", _HTTP_ISSUE_CODES.get(status, "exception"), message)
        return outcome_response(outcome, status, headers)
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError) or (
        isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated
    ):
        # The database is unreachable, locked past the busy timeout, or restarting: worth a retry.
        log.exception("api.database_unavailable", route=_route())
        outcome = operation_outcome("error", "transient", "the database is temporarily unavailable; retry later")
        return outcome_response(outcome, 503, {"Retry-After": "1"})
    log.exception("api.unhandled", error=type(error).__name__, route=_route())
    return outcome_response(operation_outcome("error", "exception", "internal server error"), 500)


def bearer_challenge(message: str, error: str = "invalid_token") -> str:
    """The WWW-Authenticate of a 401 (`invalid_token`) or of a 403 for scopes (`insufficient_scope`) (RFC 6750
    §3): the scheme, and, when the request presented a bearer token, the error code with `message` as its
    description (a request without one gets no error code, §3.1)."""
    challenge = 'Bearer realm="healthledger"'
    if _presented_bearer():
        # error_description: %x20-21 / %x23-5B / %x5D-7E (RFC 6750 §3): no quote, no backslash.
        description = "".join(c for c in message if " " <= c <= "~" and c not in '"\\')
        challenge += f', error="{error}", error_description="{description}"'
    return challenge


def _presented_bearer() -> bool:
    try:
        presented = request.headers.get("Authorization", "")
    except RuntimeError:
        presented = ""
    return presented.strip().lower().startswith("bearer ")


KEYS_OUT_OF_DATE = (
    "this server replica cannot unwrap the data keys: its key files are out of date (the key-encryption key "
    "that wraps them is not among its keys); retry later"
)
UNDECRYPTABLE = (
    "this server replica could not decrypt stored data: its key files may be out of date, or the stored data "
    "is damaged; the error is logged"
)


def _undecryptable(error: DecryptionError) -> Response:
    """A key or ciphertext that did not open. A replica whose key files predate a rotation (the KEK the data
    keys are wrapped with is not among its keys) answers 503 `transient`: another replica, or this one once
    its keys are updated, can serve the request. Anything else that does not open is a 503 `exception`. Never a
    500: the replica cannot serve PHI, nothing is wrong with the request."""
    if isinstance(error, KeyUnwrapError):
        log.error("api.keys_out_of_date", error=type(error).__name__, kek_id=error.kek_id, route=_route())
        return outcome_response(operation_outcome("error", "transient", KEYS_OUT_OF_DATE), 503, {"Retry-After": "5"})
    log.error("api.undecryptable", error=type(error).__name__, route=_route())
    return outcome_response(operation_outcome("error", "exception", UNDECRYPTABLE), 503)


METHOD_NOT_ALLOWED = "method not allowed on this endpoint"
_HTTP_MESSAGES = {
    400: "bad request",
    404: "no such endpoint",
    405: METHOD_NOT_ALLOWED,
    413: "request body too large",
    414: "request URI too long",
    431: "request headers too large",
}


def _route() -> str:
    # The URL rule, not the URL: ids and search values in the URL may be identifying.
    try:
        rule = request.url_rule
        return f"{request.method} {rule.rule if rule else '?'}"
    except RuntimeError:
        return "?"
