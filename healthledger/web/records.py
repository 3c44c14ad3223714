"""My records: the patient's own FHIR data in plain words, and all of it as a FHIR Bundle to download.

Read through the /fhir API as the patient (so every read is decided and logged like any other). Each
resource type of the R4 Patient compartment that the API can search by patient is searched; the page says
when a type has more than the page shows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
from flask import Blueprint, Response, render_template, request
from sqlalchemy.orm import Session, sessionmaker

from fhir_adapters.compartment import COMPARTMENT_PARAMS
from fhir_adapters.readable.records import SUMMARY_TYPES, summarise
from fhir_adapters.readable.text import human_date, human_name
from fhir_adapters.search.parameters import search_parameters
from healthledger.web.context import require_person
from healthledger.web.fhir_client import FhirClient

PAGE_SIZE = "100"
SUMMARY_PAGES = 5  # per type on the page; the download reads every page


@cache
def patient_search_parameter(resource_type: str) -> str | None:
    """The search parameter that finds a patient's resources of this type, if the API supports one."""
    supported = search_parameters(resource_type)
    for name in ("patient", "subject"):
        if name in supported:
            return name
    for param in COMPARTMENT_PARAMS.get(resource_type, ()):
        if param.subject and param.name in supported:
            return param.name
    return None


# Not part of the health record: the access log has its own page (and grows with every page view).
NOT_RECORDS = frozenset({"Patient", "AuditEvent"})


def compartment_types() -> list[str]:
    """The resource types of the Patient compartment the API can search by patient (the log aside)."""
    return sorted(t for t in COMPARTMENT_PARAMS if t not in NOT_RECORDS and patient_search_parameter(t) is not None)


def records_blueprint(*, sessions: sessionmaker[Session]) -> Blueprint:
    bp = Blueprint("records", __name__)
    api = FhirClient()

    @bp.get("/records")
    def records() -> str:
        principal = require_person(sessions, "patient")
        pid = principal.patient_id
        patient = api.read("Patient", pid)
        found: list[dict[str, Any]] = []
        more: list[str] = []
        for rtype in SUMMARY_TYPES:
            param = patient_search_parameter(rtype)
            if param is None:
                continue
            result = api.search_all(rtype, [(param, f"Patient/{pid}"), ("_count", PAGE_SIZE)], max_pages=SUMMARY_PAGES)
            found.extend(result.resources)
            if result.truncated:
                more.append(rtype)
        return render_template(
            "records.html", name=human_name(patient), birth_date=human_date(patient.get("birthDate")),
            gender=str(patient.get("gender") or ""), sections=summarise(found), more=more,
        )

    @bp.get("/records/download")
    def download() -> Response:
        principal = require_person(sessions, "patient")
        pid = principal.patient_id
        resources = [api.read("Patient", pid)]
        for rtype in compartment_types():
            param = patient_search_parameter(rtype)
            assert param is not None
            resources.extend(api.search_all(rtype, [(param, f"Patient/{pid}"), ("_count", PAGE_SIZE)],
                                            max_pages=10_000).resources)
        now = datetime.now(UTC)
        base = request.host_url.rstrip("/") + "/fhir"
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
            "type": "collection",
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
        }
        response = Response(orjson.dumps(bundle, option=orjson.OPT_INDENT_2), content_type="application/fhir+json")
        response.headers["Content-Disposition"] = f'attachment; filename="my-health-record-{now:%Y-%m-%d}.json"'
        return response

    return bp
