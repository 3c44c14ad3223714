"""Research data releases over HTTP: `ResearchStudy/{id}/$feasibility` and the Bulk Data `Group/{id}/$export`.

Thin: parse the request, call `healthledger.research`, render. Errors become OperationOutcomes in
`api/outcomes.py`. docs/research.md describes both operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Request, Response, request

from fhir_adapters.datatypes import ID
from fhir_adapters.errors import FhirInputError
from fhir_adapters.validation import loads_json
from healthledger.api import negotiation as http
from healthledger.errors import BadRequest, not_known
from healthledger.principal import Principal
from healthledger.research.feasibility import Feasibility
from healthledger.store.repository import dump_resource


def research_data_blueprint(
    feasibility: Feasibility,
    authenticate: Callable[[Request], Principal],
    *,
    max_request_bytes: int,
) -> Blueprint:
    """The blueprint (registered before the generic /fhir rules)."""
    bp = Blueprint("research_data", __name__, url_prefix="/fhir")

    @bp.route("/ResearchStudy/<study_id>/$feasibility", methods=["POST"])
    def feasibility_operation(study_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        if not ID.fullmatch(study_id):
            raise not_known("ResearchStudy", study_id[:64])
        criteria = _criteria_parameter(request, max_request_bytes)
        answer = feasibility.answer(principal, study_id, criteria)
        return _fhir(answer.parameters())

    return bp


def _criteria_parameter(req: Request, max_bytes: int) -> dict[str, Any] | None:
    """The optional `criteria` parameter (valueString, a zk criteria JSON document) of a Parameters body."""
    raw = http.read_body(req, max_bytes)
    if not raw.strip():
        return None
    http.require_json_body(req)
    params = http.parse_json_object(raw)
    if params.get("resourceType") != "Parameters":
        raise BadRequest("$feasibility takes a Parameters resource (or no body)", expression="resourceType")
    for p in params.get("parameter") or []:
        if not isinstance(p, dict) or p.get("name") != "criteria":
            name = p.get("name") if isinstance(p, dict) else None
            raise BadRequest(f"unknown parameter {str(name)[:40]!r}; $feasibility takes only 'criteria'",
                             expression="Parameters.parameter")
        value = p.get("valueString")
        if not isinstance(value, str):
            raise BadRequest("parameter 'criteria' needs a valueString holding a JSON criteria document",
                             expression="Parameters.parameter[criteria]")
        try:
            document = loads_json(value)
        except FhirInputError:
            raise BadRequest("parameter 'criteria' is not JSON", expression="Parameters.parameter[criteria]") from None
        if not isinstance(document, dict):
            raise BadRequest("parameter 'criteria' must be a JSON object", expression="Parameters.parameter[criteria]")
        return document
    return None


def _fhir(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(dump_resource(payload), status=status, content_type=http.FHIR_JSON)
    if headers:
        response.headers.update(headers)
    return response
