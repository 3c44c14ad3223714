"""Studies, participants and study consents for the research data tests, written with the conventions of
fhir_adapters/research_study.py (the seam): a stored ResearchStudy with our extensions, its cohort Group,
and study consents (purpose HRESCH, provision.actor ResearchStudy/{id}, the study pseudonym extension)."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    OWNER_URL,
    STUDY_PSEUDONYM_URL,
)
from healthledger.auth.tokens import register_client
from healthledger.db import session_factory
from healthledger.principal import SYSTEM

UNIVERSITY = "Organization/university"
DIABETES = "http://snomed.info/sct|44054006"
DIABETES_STUDY = {"age": {"$between": [40, 80]}, "sex": {"$eq": "female"}, "conditions": {"$in": [DIABETES]}}
HRESCH_CODING = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}


def study_resource(
    study_id: str,
    *,
    owner: str = "client:research",
    organization: str = UNIVERSITY,
    criteria: dict[str, Any] | None = None,
    categories: tuple[str, ...] = ("Condition", "Observation"),
    data_period: tuple[str, str] | None = ("2000-01-01", "2030-12-31"),
    status: str = "active",
) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = [
        {"url": CRITERIA_URL, "valueString": json.dumps(DIABETES_STUDY if criteria is None else criteria)},
        *({"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": c}]} for c in categories),
        {"url": OWNER_URL, "extension": [{"url": "principal", "valueString": owner},
                                         {"url": "organization", "valueReference": {"reference": organization}}]},
    ]
    if data_period is not None:
        extensions.append({"url": DATA_PERIOD_URL, "valuePeriod": {"start": data_period[0], "end": data_period[1]}})
    return {
        "resourceType": "ResearchStudy", "id": study_id, "status": status, "title": f"Study {study_id}",
        "enrollment": [{"reference": f"Group/{study_id}-cohort"}],
        "period": {"start": "2026-01-01", "end": "2027-12-31"},
        "extension": extensions,
    }


def put_study(app: Flask, study: dict[str, Any]) -> None:
    """The study and its cohort Group, written by the service (as the studies module would)."""
    store = app.extensions["healthledger.store"]
    group = {"resourceType": "Group", "id": study["enrollment"][0]["reference"].removeprefix("Group/"),
             "type": "person", "actual": False,
             "characteristic": [{"code": {"text": "meets the study criteria"}, "valueBoolean": True, "exclude": False}]}
    store.update("Group", group["id"], group, principal=SYSTEM)
    store.update("ResearchStudy", study["id"], study, principal=SYSTEM)


def study_consent(patient_id: str, study_id: str, *, classes: tuple[str, ...] = ("Condition", "Observation"),
                  data_period: tuple[str, str] | None = ("2000-01-01", "2030-12-31")) -> dict[str, Any]:
    provision: dict[str, Any] = {
        "type": "permit",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "IRCP"}]}, "reference": {"reference": f"ResearchStudy/{study_id}"}}],
        "purpose": [HRESCH_CODING],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": c} for c in classes],
    }
    if data_period is not None:
        provision["dataPeriod"] = {"start": data_period[0], "end": data_period[1]}
    return {
        "resourceType": "Consent", "status": "proposed",
        "extension": [{"url": STUDY_PSEUDONYM_URL, "valueString": "0x" + secrets.token_hex(20)}],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-11-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    }


def add_patient(app: Flask, *, birth: str = "1960-05-17", gender: str = "female", diabetic: bool = True,
                name: str | None = None) -> str:
    """A patient (with name, MRN, address, phone) and, if diabetic, an active diabetes Condition."""
    store = app.extensions["healthledger.store"]
    name = name or "Zed" + secrets.token_hex(4)
    patient, _ = store.create({
        "resourceType": "Patient", "gender": gender, "birthDate": birth,
        "name": [{"family": f"Family{name}", "given": [f"Given{name}"]}],
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": f"MRN{name}"}],
        "address": [{"line": [f"{name} Street 12"], "city": f"City{name}", "postalCode": "90210", "country": "US"}],
        "telecom": [{"system": "phone", "value": f"555-{name}"}],
    }, principal=SYSTEM)
    if diabetic:
        store.create({
            "resourceType": "Condition", "subject": {"reference": f"Patient/{patient.id}"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}], "text": f"Diabetes of {name}"},
            "onsetDateTime": "2015-03-02",
        }, principal=SYSTEM)
    return str(patient.id)


def register_researcher(app: Flask, client_id: str = "research", organization: str = UNIVERSITY) -> str:
    """A researcher API client; returns a bearer token from the token endpoint."""
    sessions = session_factory(app.extensions["healthledger.engine"])
    with sessions.begin() as s:
        _, secret = register_client(s, client_id=client_id, name=client_id, scopes="system/*.rs", role="researcher",
                                    organization=organization, with_secret=True, default_purpose="HRESCH",
                                    now=datetime.now(UTC))
    client: FlaskClient = app.test_client()
    resp = client.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                            "client_id": client_id, "client_secret": secret})
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["access_token"])


def parameter(params: dict[str, Any], name: str) -> Any:
    for p in params.get("parameter", []):
        if p["name"] == name:
            return next(v for k, v in p.items() if k.startswith("value"))
    return None


def sources_phi(patients: list[dict[str, Any]]) -> set[str]:
    """Every name, identifier, address part, phone number and exact birth date of the source patients (and
    their ids), of 5 characters or more."""
    phi: set[str] = set()
    for p in patients:
        for name in p.get("name", []):
            phi.update([name.get("family", ""), *name.get("given", [])])
        phi.update(str(i.get("value", "")) for i in p.get("identifier", []))
        for address in p.get("address", []):
            phi.update([*address.get("line", []), address.get("city", ""), address.get("postalCode", "")])
        phi.update(str(t.get("value", "")) for t in p.get("telecom", []))
        phi.add(p.get("birthDate", ""))
        phi.add(p["id"])
    return {v for v in phi if len(v) >= 5}
