"""PATCH with JSON Patch honouring If-Match, and conditional update and delete over REST (R4 http.html)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fhir_api_support import AUTH, JSON_HEADERS
from flask.testing import FlaskClient

PATCH_HEADERS = {**AUTH, "Content-Type": "application/json-patch+json"}
MRN = "urn:oid:1.2.36.146.595.217.0.1"


def _body(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.data[:400])
    return orjson.loads(resp.data) if resp.data else {}  # type: ignore[no-any-return]


def _patient(client: FlaskClient, mrn: str | None = None) -> dict[str, Any]:
    resource = {"resourceType": "Patient", "name": [{"family": "Patchable", "given": ["Ann"]}], "gender": "female",
                "identifier": [{"system": MRN, "value": mrn or uuid.uuid4().hex}]}
    return _body(client.post("/fhir/Patient", data=orjson.dumps(resource), headers=JSON_HEADERS), 201)


def _patch(client: FlaskClient, pid: str, ops: Any, **headers: str) -> Any:
    return client.patch(f"/fhir/Patient/{pid}", data=orjson.dumps(ops), headers={**PATCH_HEADERS, **headers})


def test_json_patch(client: FlaskClient) -> None:
    p = _patient(client)
    patched = _body(_patch(client, p["id"], [{"op": "replace", "path": "/gender", "value": "other"},
                                             {"op": "add", "path": "/birthDate", "value": "1970-01-01"}]), 200)
    assert patched["gender"] == "other" and patched["birthDate"] == "1970-01-01" and patched["meta"]["versionId"] == "2"
    # If-Match: the current version only.
    _body(_patch(client, p["id"], [{"op": "remove", "path": "/birthDate"}], **{"If-Match": 'W/"1"'}), 412)
    ok = _body(_patch(client, p["id"], [{"op": "remove", "path": "/birthDate"}], **{"If-Match": 'W/"2"'}), 200)
    assert "birthDate" not in ok and ok["meta"]["versionId"] == "3"
    # A failing test, a missing path, an id change, an invalid result; none writes anything.
    _body(_patch(client, p["id"], [{"op": "test", "path": "/gender", "value": "male"}]), 422)
    _body(_patch(client, p["id"], [{"op": "remove", "path": "/telecom/0"}]), 422)
    _body(_patch(client, p["id"], [{"op": "replace", "path": "/id", "value": "other"}]), 422)
    invalid = _body(_patch(client, p["id"], [{"op": "replace", "path": "/gender", "value": 7}]), 400)
    assert invalid["resourceType"] == "OperationOutcome"
    _body(_patch(client, p["id"], {"op": "replace"}), 422)
    assert _body(client.get(f"/fhir/Patient/{p['id']}", headers=AUTH), 200)["meta"]["versionId"] == "3"
    # Only JSON Patch; missing ids answer 404.
    wrong = client.patch(f"/fhir/Patient/{p['id']}", data=b"{}", headers=JSON_HEADERS)
    _body(wrong, 415)
    _body(_patch(client, "no-such-patient", [{"op": "remove", "path": "/gender"}]), 404)


def test_conditional_update_and_delete(client: FlaskClient) -> None:
    mrn = uuid.uuid4().hex
    body = {"resourceType": "Patient", "name": [{"family": "Conditional"}], "identifier": [{"system": MRN, "value": mrn}]}
    url = f"/fhir/Patient?identifier={MRN}|{mrn}"
    created = _body(client.put(url, data=orjson.dumps(body), headers=JSON_HEADERS), 201)
    updated = _body(client.put(url, data=orjson.dumps({**body, "gender": "male"}), headers=JSON_HEADERS), 200)
    assert updated["id"] == created["id"] and updated["meta"]["versionId"] == "2"
    stale = client.put(url, data=orjson.dumps(body), headers={**JSON_HEADERS, "If-Match": 'W/"1"'})
    _body(stale, 412)
    _patient(client, mrn)  # a second match
    _body(client.put(url, data=orjson.dumps(body), headers=JSON_HEADERS), 412)
    _body(client.delete(url, headers=AUTH), 412)
    _body(client.delete(f"/fhir/Patient?_id={created['id']}", headers=AUTH), 204)
    _body(client.get(f"/fhir/Patient/{created['id']}", headers=AUTH), 410)
    _body(client.delete(f"/fhir/Patient?identifier={MRN}|nothing-{mrn}", headers=AUTH), 204)  # no match
    _body(client.delete("/fhir/Patient", headers=AUTH), 400)  # no search: not a delete of everything
    # Always strict: an ignored parameter would widen what a conditional interaction changes.
    _body(client.delete(f"/fhir/Patient?_id={created['id']}&nickname=x", headers=AUTH), 400)
    _body(client.put(f"{url}&nickname=x", data=orjson.dumps(body), headers=JSON_HEADERS), 400)
    capability = _body(client.get("/fhir/metadata"), 200)
    patient = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Patient")
    assert patient["conditionalUpdate"] is True and patient["conditionalDelete"] == "single"
    assert {"code": "patch"} in patient["interaction"] and capability["patchFormat"] == ["application/json-patch+json"]
    assert "Observation:patient" in patient["searchRevInclude"]


def test_a_patch_that_removes_the_last_of_an_element_removes_the_element(client: FlaskClient) -> None:
    """R4 JSON allows no empty array or object: removing a Patient's last `name` (or the last part of it) leaves
    the element out, as the patch meant, instead of an invalid `"name": []` (a 400 that would refuse it)."""
    p = _patient(client)
    emptied = _body(_patch(client, p["id"], [{"op": "remove", "path": "/name/0/given/0"},
                                             {"op": "remove", "path": "/name/0/family"}]), 200)
    assert "name" not in emptied and emptied["gender"] == "female"
    assert "name" not in _body(client.get(f"/fhir/Patient/{p['id']}", headers=AUTH), 200)
    # A null a patch puts in is still refused, as in any write.
    _body(_patch(client, p["id"], [{"op": "add", "path": "/active", "value": None}]), 400)
