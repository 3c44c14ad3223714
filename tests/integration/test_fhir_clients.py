"""A third-party FHIR client (fhirpy, pinned as a dev dependency) against the API over real HTTP, as an integrator
would use it: create, conditional update and delete, search with count(), paging, sort, elements, include,
revinclude, has; and raw HTTP for what fhirpy sends its own way (its patch() is a JSON merge patch, not FHIR)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir_api_support import TOKEN, api_settings, build_app, dispose
from fhirpy import SyncFHIRClient
from serving import free_port
from werkzeug.serving import make_server

MRN = "urn:oid:1.2.36.146.595.217.0.1"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = build_app(api_settings(Path(tmp_path_factory.mktemp("fhirpy")), default_page_size=2))
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        dispose(app)


@pytest.fixture(scope="module")
def fhir(base: str) -> SyncFHIRClient:
    return SyncFHIRClient(base, authorization=f"Bearer {TOKEN}")


def _patients(fhir: SyncFHIRClient, family: str) -> list[Any]:
    made = []
    for given, born in (("Cleo", "1971-02-03"), ("Abe", "1990-01-01"), ("Bo", "1985-05-05")):
        patient = fhir.resource("Patient", name=[{"family": family, "given": [given]}], birthDate=born,
                                identifier=[{"system": MRN, "value": uuid.uuid4().hex}])
        patient.save()
        made.append(patient)
    return made


def test_fhirpy_searches(fhir: SyncFHIRClient) -> None:
    family = f"Client{uuid.uuid4().hex[:8]}"
    cleo, abe, _ = _patients(fhir, family)
    patients = fhir.resources("Patient").search(family=family)
    assert patients.count() == 3  # sends _totalMethod=count: ignored (lenient), as FHIR's default says
    assert len(patients.fetch_all()) == 3  # follows `next` links (page size 2)
    assert [p["name"][0]["given"][0] for p in patients.sort("birthdate").fetch_all()] == ["Cleo", "Bo", "Abe"]
    assert [p["name"][0]["given"][0] for p in patients.sort("-given").fetch_all()] == ["Cleo", "Bo", "Abe"]
    slim = patients.elements("name").fetch()
    assert slim and all("birthDate" not in p for p in slim)
    code = f"c-{uuid.uuid4().hex[:8]}"
    obs = fhir.resource("Observation", status="final", subject=cleo.to_reference(),
                        code={"coding": [{"system": "http://loinc.org", "code": code}]})
    obs.save()
    with_patient = fhir.resources("Observation").search(code=code).include("Observation", "patient").fetch_raw()
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in with_patient["entry"])
    assert modes == [("include", "Patient"), ("match", "Observation")]
    rev = fhir.resources("Patient").search(_id=cleo.id).revinclude("Observation", "patient").fetch_raw()
    assert {e["resource"]["id"] for e in rev["entry"]} == {cleo.id, obs.id}
    has = fhir.resources("Patient").search(family=family).has("Observation", "patient", code=code).fetch_all()
    assert [p.id for p in has] == [cleo.id]
    assert fhir.resources("Patient").search(family=family, given="Abe").get().id == abe.id


def test_fhirpy_conditional_update_and_delete(fhir: SyncFHIRClient) -> None:
    mrn = uuid.uuid4().hex
    search = fhir.resources("Patient").search(identifier=f"{MRN}|{mrn}")
    body = fhir.resource("Patient", name=[{"family": "Conditional"}], identifier=[{"system": MRN, "value": mrn}])
    created, was_created = search.update(body)
    assert was_created
    updated, was_created = search.update(fhir.resource("Patient", **{**body.serialize(), "gender": "other"}))
    assert not was_created and updated["id"] == created["id"] and updated["gender"] == "other"
    search.delete()
    assert search.count() == 0


def test_patch_over_raw_http(base: str, fhir: SyncFHIRClient) -> None:
    patient = fhir.resource("Patient", name=[{"family": "Patchy"}])
    patient.save()
    url, auth = f"{base}/Patient/{patient.id}", {"Authorization": f"Bearer {TOKEN}"}
    ops = [{"op": "add", "path": "/gender", "value": "female"}]
    stale = requests.patch(url, json=ops, headers={**auth, "Content-Type": "application/json-patch+json",
                                                   "If-Match": 'W/"7"'}, timeout=10)
    assert stale.status_code == 412
    done = requests.patch(url, json=ops, headers={**auth, "Content-Type": "application/json-patch+json",
                                                  "If-Match": 'W/"1"'}, timeout=10)
    assert done.status_code == 200 and done.json()["gender"] == "female" and done.headers["ETag"] == 'W/"2"'
    # fhirpy's patch() sends a JSON merge patch as application/json, which FHIR R4 does not define: refused, saying so.
    merge = requests.patch(url, json={"gender": "male"}, headers=auth, timeout=10)
    assert merge.status_code == 415 and "json-patch+json" in merge.json()["issue"][0]["diagnostics"]
