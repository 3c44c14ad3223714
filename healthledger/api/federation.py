"""HTTP face of the federation (healthledger.federation.service), as FHIR operations under /fhir.

- `POST /fhir/Consent/{id}/$record-locator` (the patient, at A): a one-time record locator for the member the
  Consent grants (`member` parameter when it grants several). Returns Parameters {locator, member}.
- `POST /fhir/$redeem-record-locator` (a member hospital's token, at A): Parameters {locator} -> {patient}.
- `POST /fhir/Patient/{id}/$link-record` (staff, at B): Parameters {locator}: redeem it at the member that made
  it (for the caller's purpose of use) and link our patient to the record there. Returns Parameters {source,
  consent, patient-at-source}; 409 when that Consent is linked here already (the locator is not spent).
- `POST /fhir/Patient/{id}/$unlink-record` (staff, at B): Parameters {source, consent?}: remove the patient's
  links to that member (only the one under `consent`, "Consent/{id}", when given). Returns {unlinked}.
- `POST /fhir/Patient/{id}/$federation-fetch` (staff, at B): fetch what changed at every linked member into our
  store, and remove the copies the member no longer shows us. Returns Parameters with one `source` part per
  member: fetched count, per-type counts, removed count (when any), the Provenance, or why the member refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Request, Response, request

from healthledger.api import negotiation as http
from healthledger.errors import BadRequest
from healthledger.federation.service import Federation, FetchReport
from healthledger.principal import Principal
from healthledger.store.repository import dump_resource


def federation_blueprint(
    federation: Federation, authenticate: Callable[[Request], Principal], *, max_request_bytes: int
) -> Blueprint:
    bp = Blueprint("federation", __name__, url_prefix="/fhir")

    def parameters() -> dict[str, Any]:
        http.require_json_body(request)
        body = http.parse_json_object(http.read_body(request, max_request_bytes))
        if body.get("resourceType") != "Parameters":
            raise BadRequest("the operation takes a Parameters resource", expression="resourceType")
        return body

    def respond(payload: dict[str, Any], status: int = 200) -> Response:
        return Response(dump_resource(payload), status=status, content_type=http.FHIR_JSON)

    @bp.post("/Consent/<resource_id>/$record-locator")
    def record_locator(resource_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        member = _optional(parameters(), "member") if request.content_length else ""
        locator, member = federation.record_locator(principal, resource_id, member)
        return respond(_parameters(locator=locator, member=member))

    @bp.post("/$redeem-record-locator")
    def redeem_record_locator() -> Response:
        principal = authenticate(request)
        patient = federation.redeem_locator(principal, _required(parameters(), "locator"))
        return respond({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": patient}}]})

    @bp.post("/Patient/<resource_id>/$link-record")
    def link_record(resource_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        link = federation.link_record(principal, resource_id, _required(parameters(), "locator"), principal.purpose)
        return respond(_parameters(source=link.source_org, consent=link.consent_ref,
                                   **{"patient-at-source": link.source_patient}))

    @bp.post("/Patient/<resource_id>/$unlink-record")
    def unlink_record(resource_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        params = parameters()
        removed = federation.unlink_record(principal, resource_id, _required(params, "source"),
                                           _optional(params, "consent"))
        return respond({"resourceType": "Parameters", "parameter": [{"name": "unlinked", "valueInteger": removed}]})

    @bp.post("/Patient/<resource_id>/$federation-fetch")
    def fetch(resource_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        reports = federation.fetch(principal, resource_id, principal.purpose)
        return respond({"resourceType": "Parameters", "parameter": [_report(r) for r in reports]})

    return bp


def _parameters(**values: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in values.items()]}


def _required(params: dict[str, Any], name: str) -> str:
    value = _optional(params, name)
    if not value:
        raise BadRequest(f"parameter {name!r} (valueString) is required", expression="Parameters.parameter")
    return value


def _optional(params: dict[str, Any], name: str) -> str:
    for p in params.get("parameter") or []:
        if isinstance(p, dict) and p.get("name") == name and isinstance(p.get("valueString"), str):
            return str(p["valueString"])
    return ""


def _report(report: FetchReport) -> dict[str, Any]:
    part: list[dict[str, Any]] = [
        {"name": "member", "valueString": report.source},
        {"name": "consent", "valueString": report.consent},
        {"name": "fetched", "valueInteger": report.fetched},
    ]
    part += [{"name": "type", "part": [{"name": "type", "valueCode": t}, {"name": "count", "valueInteger": n}]}
             for t, n in sorted(report.by_type.items())]
    if report.removed:
        part.append({"name": "removed", "valueInteger": report.removed})
    if report.provenance:
        part.append({"name": "provenance", "valueReference": {"reference": report.provenance}})
    if report.refused:
        part.append({"name": "refused", "valueString": report.refused})
    return {"name": "source", "part": part}
