"""CDS Hooks `patient-consent-consult` service over HTTP, wire-compatible with HL7 LEAP's Consent Decision Service.

The thin Flask shell (CDS Hooks 1.0/2.0 discovery at `GET /cds-services`, the service at
`POST /cds-services/patient-consent-consult`) around the pure wire format in
`healthledger/consent/consult_hook.py` (parsing, cards; what was checked against LEAP is noted there).

HTTP choices, checked against LEAP (github.com/sdhealthconnect/leap-cds: schemas/service-definitions.json,
lib/consent-discovery.js) or ours:
- discovery: {"services": [{"id", "hook", "title", "description", ...}]}.
- LEAP's service definition declares a `prefetch` of Patient/{{context.patientId}}, which cannot be
  filled from an identifier array; ours declares no prefetch.
- errors are {"error", "error_description"} (OAuth 2.0 style); LEAP sends {"error", "errorMessage"}.
- the body size limit is ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog
from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from fhir_adapters.errors import FhirInputError
from healthledger.api.negotiation import media_type, read_body
from healthledger.api.outcomes import bearer_challenge
from healthledger.consent.consult_hook import (
    HOOK,
    CardSource,
    ConsultDecision,
    ConsultRequest,
    consult_response,
    parse_consult_request,
)
from healthledger.consent.engine import Decision
from healthledger.errors import (
    BadRequest,
    HealthLedgerError,
    InsufficientScope,
    NotFound,
    UnsupportedMediaType,
)

__all__ = ["MAX_BODY_BYTES", "SERVICE_ID", "cds_hooks_blueprint", "discovery_document"]

log = structlog.get_logger("healthledger.api.cds_hooks")

SERVICE_ID = HOOK
MAX_BODY_BYTES = 64 * 1024  # a consult is a few identifiers and codes


def discovery_document() -> dict[str, Any]:
    """CDS Hooks discovery response listing this one service."""
    return {
        "services": [
            {
                "hook": HOOK,
                "id": SERVICE_ID,
                "title": "Patient Consent Consult",
                "description": "Consent decision for a workflow context (patient, actor, purpose of use, "
                "consent category, resource classes), compatible with HL7 LEAP's Consent Decision Service.",
            }
        ]
    }


# --- HTTP shell -------------------------------------------------------------------------------------------------

_JSON = "application/json"
# `error` values (OAuth 2.0 style, RFC 6749 §5.2 spelling) by HTTP status.
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "service_unavailable",
}
_OTHER_METHODS = ["PUT", "PATCH", "DELETE"]


def cds_hooks_blueprint(
    consult: Callable[[ConsultRequest], ConsultDecision],
    authenticate: Callable[[], Any],
    *,
    source: CardSource | None = None,
    consent_url: Callable[[str], str] | None = None,
) -> Blueprint:
    """Discovery (public) and the `patient-consent-consult` service (authenticated); every error is JSON.

    `authenticate()` raises Unauthorized/Forbidden to refuse the caller; its return value is not used.
    `consult` may raise NotFound for an unknown patient: that is answered NO_CONSENT, like no consent.
    """
    bp = Blueprint("cds_hooks", __name__)
    no_consent = ConsultDecision(Decision.NOT_APPLICABLE)

    def discovery() -> Response:
        return _json_response(discovery_document(), 200)

    def patient_consent_consult() -> Response:
        try:
            authenticate()
            consult_request = parse_consult_request(_read_json())
            try:
                decision = consult(consult_request)
            except NotFound:
                decision = no_consent
            body = consult_response(decision, source=source, consent_url=consent_url)
        except Exception as error:  # noqa: BLE001 - every failure becomes a JSON error, never an HTML page
            return _error_response(error)
        response = _json_response(body, 200)
        response.headers["Cache-Control"] = "no-store"
        return response

    def unknown_service(service_id: str) -> Response:
        return _plain_error(404, "no such CDS service: the only service is " + SERVICE_ID)

    def method_not_allowed(allowed: str) -> Callable[..., Response]:
        def view(**_: str) -> Response:
            response = _plain_error(405, f"use {allowed} on this endpoint")
            response.headers["Allow"] = allowed
            return response
        return view

    bp.add_url_rule("/cds-services", "discovery", discovery, methods=["GET"])
    bp.add_url_rule("/cds-services", "discovery_methods", method_not_allowed("GET"),
                    methods=["POST", *_OTHER_METHODS], provide_automatic_options=False)
    bp.add_url_rule(f"/cds-services/{SERVICE_ID}", "patient_consent_consult", patient_consent_consult,
                    methods=["POST"])
    bp.add_url_rule(f"/cds-services/{SERVICE_ID}", "patient_consent_consult_methods", method_not_allowed("POST"),
                    methods=["GET", *_OTHER_METHODS], provide_automatic_options=False)
    bp.add_url_rule("/cds-services/<path:service_id>", "unknown_service", unknown_service,
                    methods=["GET", "POST", *_OTHER_METHODS])
    return bp


def _read_json() -> object:
    if media_type(request.content_type) != _JSON:
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = read_body(request, MAX_BODY_BYTES)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None


def _json_response(body: Mapping[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status=status, content_type=_JSON)


def _plain_error(status: int, description: str) -> Response:
    body = {"error": _ERROR_CODES.get(status, "server_error"), "error_description": description}
    response = _json_response(body, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _error_response(error: BaseException) -> Response:
    if isinstance(error, HealthLedgerError | FhirInputError):
        status, description = error.status, error.message
        if status >= 500:
            log.error("cds_hooks.error", status=status, error=type(error).__name__)
    elif isinstance(error, HTTPException):  # e.g. a WSGI-level body limit
        status = error.code or 500
        description = (error.name or "request failed").lower()
    else:
        log.exception("cds_hooks.unhandled", error=type(error).__name__)
        status, description = 500, "internal server error"
    response = _plain_error(status, description)
    if status == 401:
        # RFC 6750 §3: a 401 names the scheme the client must use, and why a presented token was refused.
        response.headers["WWW-Authenticate"] = bearer_challenge(description)
    elif isinstance(error, InsufficientScope):
        response.headers["WWW-Authenticate"] = bearer_challenge(description, "insufficient_scope")  # §3.1
    return response
