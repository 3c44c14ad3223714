"""Valid R4 everywhere: every resource the server emits (responses, Bundles with their entries, AuditEvents,
OperationOutcomes of errors, the CapabilityStatement, our StructureDefinitions and OperationDefinitions)
validates against the R4B models, over a session that exercises every interaction and result control."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fhir_api_support import AUTH, JSON_HEADERS
from flask import Flask, Response
from flask.testing import FlaskClient

from fhir_adapters.extensions import EXTENSIONS, structure_definition
from fhir_adapters.operation_definitions import OURS as OPERATIONS
from fhir_adapters.subsetting import SUBSETTED
from fhir_adapters.validation import parse_resource
from healthledger.consent.lifecycle import present_consent


@pytest.fixture()
def emitted(app: Flask) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every FHIR JSON body the app sends while the test runs: (request, body)."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def capture(response: Response) -> Response:
        from flask import request

        if (response.content_type or "").startswith("application/fhir+json") and response.data:  # (none: no body)
            seen.append((f"{request.method} {request.full_path}", orjson.loads(response.data)))
        return response

    app.after_request_funcs.setdefault(None, []).append(capture)
    try:
        yield seen
    finally:
        app.after_request_funcs[None].remove(capture)


def _without_subsets(resource: dict[str, Any]) -> dict[str, Any]:
    """A Bundle minus entries holding SUBSETTED resources (R4 3.1.1.5.8: a subset need not be valid)."""
    if resource.get("resourceType") != "Bundle":
        return resource
    entries = [e for e in resource.get("entry", [])
               if SUBSETTED not in (((e.get("resource") or {}).get("meta") or {}).get("tag") or [])]
    return {**resource, "entry": entries} if entries else {k: v for k, v in resource.items() if k != "entry"}


def _session(client: FlaskClient) -> None:
    mrn = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
               "name": [{"family": "Valid", "given": ["Rita"]}], "birthDate": "1980-01-01"}
    pid = orjson.loads(client.post("/fhir/Patient", data=orjson.dumps(patient), headers=JSON_HEADERS).data)["id"]
    obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}, "effectiveDateTime": "2025-01-01",
           "valueQuantity": {"value": 6.1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}
    oid = orjson.loads(client.post("/fhir/Observation", data=orjson.dumps(obs), headers=JSON_HEADERS).data)["id"]
    consent = {"resourceType": "Consent", "status": "active", "scope": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"}, "policyRule": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "deny", "actor": [{"role": {"coding": [{"system":
            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"reference": "Organization/elsewhere"}}]}}
    cid = orjson.loads(client.post("/fhir/Consent", data=orjson.dumps(consent), headers=JSON_HEADERS).data).get("id")
    gets = [
        "/fhir/metadata", f"/fhir/Patient/{pid}", f"/fhir/Patient/{pid}/_history", "/fhir/Patient/_history?_count=2",
        f"/fhir/Patient/{pid}/_history/1", f"/fhir/Observation?patient=Patient/{pid}&_include=Observation:patient",
        f"/fhir/Patient?_id={pid}&_revinclude=Observation:patient", f"/fhir/Patient?_id={pid}&nickname=x",
        f"/fhir/Patient?_has:Observation:patient:code=4548-4&_id={pid}", "/fhir/Observation?_sort=-date&_count=3",
        "/fhir/Observation?_summary=count", "/fhir/Observation?_summary=true&_count=2",
        "/fhir/Observation?_elements=status&_count=2", "/fhir/Observation?_total=none&_count=2",
        f"/fhir/Consent/{cid}", f"/fhir/Consent?patient=Patient/{pid}", "/fhir/AuditEvent?_count=5",
        "/fhir/AuditEvent?_summary=count", "/fhir/AuditEvent?_count=2&nickname=x", "/fhir/AuditEvent/1",
        "/fhir/Patient/does-not-exist", "/fhir/Nope", "/fhir/Observation?date=banana",
        *(f"/fhir/StructureDefinition/{i}" for i in EXTENSIONS),
        *(f"/fhir/OperationDefinition/{i}" for i in OPERATIONS),
    ]
    for path in gets:
        client.get(path, headers=AUTH)
    client.get("/fhir/Patient", headers={})  # 401
    client.patch(f"/fhir/Observation/{oid}", data=orjson.dumps([{"op": "replace", "path": "/status",
                                                                  "value": "amended"}]),
                 headers={**AUTH, "Content-Type": "application/json-patch+json"})
    client.patch(f"/fhir/Observation/{oid}", data=b"[]", headers={**AUTH, "Content-Type": "application/json-patch+json"})
    client.put(f"/fhir/Patient?identifier=urn:mrn|{mrn}", data=orjson.dumps(patient), headers=JSON_HEADERS)
    client.put(f"/fhir/Observation/{oid}", data=orjson.dumps({**obs, "id": oid}),
               headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"})
    client.post("/fhir/Patient", data=b"{", headers=JSON_HEADERS)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:" + str(uuid.uuid4()), "resource": obs, "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}}]}
    client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS)
    client.post("/fhir", data=orjson.dumps({**bundle, "type": "batch"}), headers=JSON_HEADERS)
    client.delete(f"/fhir/Observation?_id={oid}", headers=AUTH)


def test_every_resource_the_server_emits_is_valid_r4(client: FlaskClient, emitted: list[tuple[str, dict[str, Any]]]
                                                      ) -> None:
    _session(client)
    kinds = {body["resourceType"] for _, body in emitted}
    assert {"Bundle", "OperationOutcome", "CapabilityStatement", "StructureDefinition", "OperationDefinition",
            "Patient", "Observation", "Consent"} <= kinds, kinds
    assert any(e.get("resource", {}).get("resourceType") == "AuditEvent" for _, b in emitted for e in b.get("entry", []))
    failures = []
    for request, body in emitted:
        try:
            parse_resource(_without_subsets(body))
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its request
            failures.append(f"{request}: {body.get('resourceType')}: {exc}")
    assert not failures, "\n".join(failures[:10])
    assert len(emitted) >= 40


def test_consent_chain_state_uses_r4_types() -> None:
    """The block of a mined grant is an R4 integer (R5's integer64 is not R4); past 2^31-1, its digits as a string."""
    consent = {"resourceType": "Consent", "id": "c", "status": "active", "scope": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p"}, "provision": {"type": "permit"}}
    grants = [{"grantee": "Organization/a", "state": "active", "block": 12, "transaction": "0xab"},
              {"grantee": "Organization/b", "state": "active", "block": 2**33, "transaction": "0xcd"}]
    shown = present_consent(consent, {"state": "active", "grants": grants})
    parse_resource(shown)
    [ext] = shown["extension"]
    blocks = [p for g in ext["extension"] if g["url"] == "grant" for p in g["extension"] if p["url"] == "block"]
    assert blocks == [{"url": "block", "valueInteger": 12}, {"url": "block", "valueString": str(2**33)}]


def test_the_api_publishes_our_structure_definitions(client: FlaskClient) -> None:
    for extension_id in EXTENSIONS:
        resp = client.get(f"/fhir/StructureDefinition/{extension_id}")
        assert resp.status_code == 200
        assert orjson.loads(resp.data) == structure_definition(extension_id)
    assert client.get("/fhir/StructureDefinition/not-ours").status_code == 401  # an ordinary read: needs a token


# Primitives of the wrong JSON type (R4 json.html), each with the path and JSON type the refusal must name. The
# R4B models coerce every one of them; stored as sent, they were served back as invalid FHIR.
WRONG_JSON_TYPES = [
    ({"active": "true"}, "Patient.active", "JSON boolean"),
    ({"active": 1}, "Patient.active", "JSON boolean"),
    ({"multipleBirthInteger": "2"}, "Patient.multipleBirthInteger", "JSON number without a fraction"),
    ({"deceasedBoolean": "false"}, "Patient.deceasedBoolean", "JSON boolean"),
    ({"birthDate": 1980}, "Patient.birthDate", "JSON string"),
    ({"name": [{"given": ["Ann", 7]}]}, "Patient.name[0].given[1]", "JSON string"),
    ({"extension": [{"url": "http://example.org/x", "valueBoolean": "true"}]}, "Patient.extension[0].valueBoolean",
     "JSON boolean"),
    ({"birthDate": "1980-01-01", "_birthDate": {"extension": [{"url": "http://example.org/t", "valueInteger": "3"}]}},
     "Patient._birthDate.extension[0].valueInteger", "JSON number without a fraction"),
]


def _refused_as(resp: Response, expression: str, expected: str, codes: tuple[str, ...] = ("structure", "value")) -> None:
    assert resp.status_code == 400, resp.data
    outcome = orjson.loads(resp.data)
    issue = outcome["issue"][0]
    assert outcome["resourceType"] == "OperationOutcome" and issue["code"] in codes, issue
    assert issue["expression"] == [expression] and expected in issue["diagnostics"], issue


@pytest.mark.parametrize(("wrong", "expression", "expected"), WRONG_JSON_TYPES, ids=lambda v: str(v)[:40])
def test_a_primitive_of_the_wrong_json_type_is_refused_on_every_write_path(
    client: FlaskClient, wrong: dict[str, Any], expression: str, expected: str
) -> None:
    _refused_on_every_write_path(client, wrong, expression, expected)


# What R4 json.html forbids though the R4B models take it as absent: a null, an empty array, an empty object, a
# null in a primitive's array with no `_name` entry beside it. Each was accepted (201), dropped or stored as sent.
NULLS_AND_EMPTIES = [
    ({"active": None}, "Patient.active", "null is not allowed"),
    ({"name": []}, "Patient.name", "an empty array is not allowed"),
    ({"name": [{}]}, "Patient.name[0]", "an empty object is not allowed"),
    ({"name": [{"given": ["a", None]}]}, "Patient.name[0].given[1]",
     "null is allowed in given only where _given has an entry"),
    ({"name": [{"given": ["a", "b"], "_given": [None]}]}, "Patient.name[0].given",
     "given and _given must have the same number of entries"),
    ({"contact": [{"telecom": [{"system": "phone", "period": {}}]}]}, "Patient.contact[0].telecom[0].period",
     "an empty object is not allowed"),
    ({"extension": [{"url": "http://example.org/x", "valueString": None}]}, "Patient.extension[0].valueString",
     "null is not allowed"),
    ({"contained": [{"resourceType": "Practitioner", "id": "pr", "name": [{"family": "F", "given": []}]}]},
     "Patient.contained[0].name[0].given", "an empty array is not allowed"),
]


@pytest.mark.parametrize(("wrong", "expression", "expected"), NULLS_AND_EMPTIES, ids=lambda v: str(v)[:40])
def test_a_null_or_empty_element_is_refused_on_every_write_path(
    client: FlaskClient, wrong: dict[str, Any], expression: str, expected: str
) -> None:
    _refused_on_every_write_path(client, wrong, expression, expected)


def test_a_primitive_given_only_by_its_extension_is_stored_with_its_aligning_nulls(client: FlaskClient) -> None:
    name = {"family": "Aligned", "given": ["Ann", None],
            "_given": [None, {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                             "valueCode": "masked"}]}]}
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": uuid.uuid4().hex}],
               "name": [name]}
    resp = client.post("/fhir/Patient", data=orjson.dumps(patient), headers=JSON_HEADERS)
    assert resp.status_code == 201, resp.data
    stored = orjson.loads(client.get(f"/fhir/Patient/{orjson.loads(resp.data)['id']}", headers=AUTH).data)
    assert stored["name"] == [name]


def _refused_on_every_write_path(client: FlaskClient, wrong: dict[str, Any], expression: str, expected: str) -> None:
    """`wrong` merged into a valid Patient is refused (400, `expression`, `expected` in the diagnostics) by create,
    conditional create, update, conditional update, JSON Patch, a transaction entry and a batch entry."""
    mrn = uuid.uuid4().hex
    base = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}
    bad = {**base, **wrong}
    pid = orjson.loads(client.post("/fhir/Patient", data=orjson.dumps(base), headers=JSON_HEADERS).data)["id"]
    _refused_as(client.post("/fhir/Patient", data=orjson.dumps(bad), headers=JSON_HEADERS), expression, expected)
    _refused_as(client.post("/fhir/Patient", data=orjson.dumps(bad),
                            headers={**JSON_HEADERS, "If-None-Exist": f"identifier=urn:mrn|{mrn}-new"}),
                expression, expected)
    _refused_as(client.put(f"/fhir/Patient/{pid}", data=orjson.dumps({**bad, "id": pid}), headers=JSON_HEADERS),
                expression, expected)
    _refused_as(client.put(f"/fhir/Patient?identifier=urn:mrn|{mrn}", data=orjson.dumps(bad), headers=JSON_HEADERS),
                expression, expected)
    patch = [{"op": "add", "path": f"/{name}", "value": value} for name, value in wrong.items()]
    _refused_as(client.patch(f"/fhir/Patient/{pid}", data=orjson.dumps(patch),
                             headers={**AUTH, "Content-Type": "application/json-patch+json"}), expression, expected)
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": bad, "request": {"method": "POST", "url": "Patient"}}]}
    # A transaction names the entry (code `invalid`, as for any entry that does not validate).
    _refused_as(client.post("/fhir", data=orjson.dumps(transaction), headers=JSON_HEADERS),
                expression.replace("Patient", "Bundle.entry[0].resource", 1), expected, ("invalid",))
    batch = orjson.loads(client.post("/fhir", data=orjson.dumps({**transaction, "type": "batch"}),
                                     headers=JSON_HEADERS).data)
    entry = batch["entry"][0]["response"]
    assert entry["status"].startswith("400") and expected in entry["outcome"]["issue"][0]["diagnostics"]
    # Nothing was written: the patient is still as created.
    stored = orjson.loads(client.get(f"/fhir/Patient/{pid}", headers=AUTH).data)
    assert stored["meta"]["versionId"] == "1" and not set(wrong) & set(stored)


def test_an_observation_value_sent_as_a_string_is_refused_and_a_number_is_found_by_value(client: FlaskClient) -> None:
    code = uuid.uuid4().hex[:12]
    obs = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "urn:t", "code": code}]},
           "valueQuantity": {"value": "70.5", "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}
    _refused_as(client.post("/fhir/Observation", data=orjson.dumps(obs), headers=JSON_HEADERS),
                "Observation.valueQuantity.value", "JSON number")
    obs["valueQuantity"]["value"] = 70.5
    assert client.post("/fhir/Observation", data=orjson.dumps(obs), headers=JSON_HEADERS).status_code == 201
    found = orjson.loads(client.get(f"/fhir/Observation?code=urn:t|{code}&value-quantity=70.5", headers=AUTH).data)
    assert found["total"] == 1 and found["entry"][0]["resource"]["valueQuantity"]["value"] == 70.5
