"""Research data releases over HTTP: `ResearchStudy/{id}/$feasibility` and the Bulk Data `Group/{id}/$export`.

Thin: parse the request, call `healthledger.research`, render. Errors become OperationOutcomes in
`api/outcomes.py`. docs/research.md describes both operations.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Request, Response, request

from fhir_adapters.datatypes import ID
from fhir_adapters.errors import FhirInputError
from fhir_adapters.outcome import operation_outcome
from fhir_adapters.validation import loads_json
from healthledger.api import negotiation as http
from healthledger.api.outcomes import outcome_response
from healthledger.errors import BadRequest, not_known
from healthledger.principal import Principal
from healthledger.research.export import BackgroundExports, Exports, Throttled
from healthledger.research.feasibility import CONFIDENCE, Feasibility
from healthledger.research.history import PastExport, PastRelease, export_jobs, feasibility_releases
from healthledger.store.repository import dump_resource


def research_data_blueprint(
    feasibility: Feasibility,
    exports: Exports,
    background: BackgroundExports,
    authenticate: Callable[[Request], Principal],
    *,
    max_request_bytes: int,
    base_url: str = "",
) -> Blueprint:
    """The blueprint (registered before the generic /fhir rules). `base_url`: the public base, for the
    status and file URLs; empty = from the request."""
    bp = Blueprint("research_data", __name__, url_prefix="/fhir")

    def fhir_base() -> str:
        return (base_url.rstrip("/") or request.host_url.rstrip("/")) + "/fhir"

    @bp.route("/ResearchStudy/<study_id>/$feasibility", methods=["POST"])
    def feasibility_operation(study_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        if not ID.fullmatch(study_id):
            raise not_known("ResearchStudy", study_id[:64])
        criteria = _criteria_parameter(request, max_request_bytes)
        answer = feasibility.answer(principal, study_id, criteria)
        return _fhir(answer.parameters())

    @bp.route("/ResearchStudy/<study_id>/$feasibility-releases", methods=["GET"])
    def feasibility_history(study_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        if not ID.fullmatch(study_id):
            raise not_known("ResearchStudy", study_id[:64])
        releases = feasibility_releases(feasibility.store, principal, study_id)
        return _fhir({"resourceType": "Parameters", "parameter": [_release_part(r) for r in releases]})

    @bp.route("/ResearchStudy/<study_id>/$export-jobs", methods=["GET"])
    def export_history(study_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        if not ID.fullmatch(study_id):
            raise not_known("ResearchStudy", study_id[:64])
        jobs = export_jobs(exports.store, principal, study_id)
        return _fhir({"resourceType": "Parameters", "parameter": [_job_part(j, fhir_base()) for j in jobs]})

    @bp.route("/Group/<group_id>/$export", methods=["GET"])
    def export_kickoff(group_id: str) -> Response:
        principal = authenticate(request)
        http.check_response_format(request)
        if "respond-async" not in [p.strip().lower() for p in request.headers.get("Prefer", "").split(",")]:
            raise BadRequest("Bulk Data export needs the header 'Prefer: respond-async'", expression="Prefer")
        if not ID.fullmatch(group_id):
            raise not_known("Group", group_id[:64])
        query = request.query_string.decode("utf-8", "replace")
        request_url = f"{fhir_base()}/Group/{group_id}/$export" + (f"?{query}" if query else "")
        job_id = exports.kick_off(principal, group_id, list(request.args.items(multi=True)), request_url)
        background.wake()
        outcome = operation_outcome("information", "informational", "export accepted: poll the Content-Location URL")
        return _fhir(outcome, 202, {"Content-Location": f"{fhir_base()}/$export-status/{job_id}"})

    @bp.route("/$export-status/<job_id>", methods=["GET", "DELETE"])
    def export_status(job_id: str) -> Response:
        principal = authenticate(request)
        if request.method == "DELETE":
            exports.cancel(principal, job_id)
            background.wake()  # removes what a running worker may still write
            outcome = operation_outcome("information", "informational", "export cancelled; its files are removed")
            return _fhir(outcome, 202)
        background.wake()
        try:
            status = exports.status(principal, job_id)
        except Throttled as slow:
            return outcome_response(operation_outcome("error", slow.code, slow.message), 429,
                                    {"Retry-After": str(slow.retry_after)})
        if status.state == "in-progress":
            response = Response(status=202)  # no body: no Content-Type (Bulk Data: progress in X-Progress)
            response.headers.remove("Content-Type")
            response.headers["X-Progress"] = status.progress[:90]
            response.headers["Retry-After"] = str(status.retry_after)
            return response
        if status.state == "complete":
            response = Response(status.manifest, status=200, content_type="application/json")
            if status.expires is not None:
                response.headers["Expires"] = http.http_date(status.expires)
            return response
        return outcome_response(operation_outcome("error", "exception", status.error), 500)

    @bp.route("/$export-file/<job_id>/<name>", methods=["GET"])
    def export_file(job_id: str, name: str) -> Response:
        principal = authenticate(request)
        body = exports.file(principal, job_id, name)
        return Response(body, status=200, content_type="application/fhir+ndjson")

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


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _release_part(r: PastRelease) -> dict[str, Any]:
    """One past $feasibility answer, in the operation's own parameter names (docs/research.md)."""
    low, high = (0, r.threshold - 1 + r.half_width) if r.count is None else (max(0, r.count - r.half_width),
                                                                          r.count + r.half_width)
    parts: list[dict[str, Any]] = [{"name": "releasedAt", "valueInstant": _instant(r.released_at)}]
    if r.count is None:
        parts += [{"name": "countBelow", "valueInteger": r.threshold},
                  {"name": "result", "valueString": f"fewer than {r.threshold}"}]
    else:
        parts += [{"name": "count", "valueInteger": r.count},
                  {"name": "result", "valueString": f"about {r.count} patients (noisy count)"}]
    parts += [
        {"name": "interval", "valueRange": {"low": {"value": low}, "high": {"value": high}}},
        {"name": "confidence", "valueDecimal": CONFIDENCE},
        {"name": "epsilon", "valueDecimal": round(r.epsilon, 6)},
        {"name": "referenceDate", "valueDate": r.reference_date},
        {"name": "criteriaHash", "valueString": r.question_hash},
        {"name": "askedByYou", "valueBoolean": r.yours},
    ]
    return {"name": "release", "part": parts}


def _job_part(j: PastExport, base: str) -> dict[str, Any]:
    """One export job of the caller's: state, times, resources delivered per type (no per-patient detail)."""
    parts: list[dict[str, Any]] = [
        {"name": "job", "valueString": j.job_id},
        {"name": "status", "valueCode": j.status},
        {"name": "statusUrl", "valueUrl": f"{base}/$export-status/{j.job_id}"},
        {"name": "requestedAt", "valueInstant": _instant(j.created_at)},
    ]
    if j.finished_at is not None:
        parts.append({"name": "finishedAt", "valueInstant": _instant(j.finished_at)})
    if j.expires_at is not None:
        parts.append({"name": "expiresAt", "valueInstant": _instant(j.expires_at)})
    if j.types:
        parts.append({"name": "types", "valueString": j.types})
    for resource_type, count in j.counts:
        parts.append({"name": "output", "part": [{"name": "type", "valueCode": resource_type},
                                                 {"name": "count", "valueInteger": count}]})
    if j.manifest_sha256:
        parts.append({"name": "manifestSha256", "valueString": j.manifest_sha256})
    if j.error:
        parts.append({"name": "error", "valueString": j.error[:500]})
    return {"name": "export", "part": parts}


def _fhir(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(dump_resource(payload), status=status, content_type=http.FHIR_JSON)
    if headers:
        response.headers.update(headers)
    return response
