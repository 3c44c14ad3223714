"""What `GET /fhir/metadata` declares is what the server does: every `$` route of the app is a declared operation
whose OperationDefinition the server publishes, and the types with interactions of their own accept exactly what
is declared for them and refuse the rest (on every path: REST, conditional forms, Bundle entries)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir_api_support import AUTH, JSON_HEADERS
from flask import Flask
from flask.testing import FlaskClient
from research_support import UNIVERSITY, register_researcher

from fhir_adapters.capability import TYPE_INTERACTIONS
from fhir_adapters.extensions import EXTENSIONS
from fhir_adapters.operation_definitions import (
    BULK_GROUP_EXPORT,
    FEDERATION_OPERATIONS,
    OPERATION_BASE,
    OURS,
    operation_definition,
    system_operations,
    type_operations,
)
from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    MAX_PARTICIPANTS_URL,
)
from fhir_adapters.validation import parse_resource
from healthledger.api.fhir import TYPE_CAPABILITIES
from healthledger.research.studies import ETHICS_APPROVAL_URL

# Bulk Data's status and file URLs (Bulk Data IG 2.0 §Status Request, §File Request) are not operations.
NOT_OPERATIONS = frozenset({"export-status", "export-file"})
_OPERATION_ROUTE = re.compile(r"/fhir(?:/(?P<type>[A-Z][A-Za-z]+)(?P<instance>/<[^>]+>)?)?/\$(?P<code>[a-z-]+)$")
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
# A refused write is 403 (a study changes through its operations) or 405 (the access log); a read the type does not
# have (AuditEvent history) is a path that does not exist.
_REFUSED_WRITE = (403, 405)
_REFUSED_READ = (403, 404, 405)
_READS = frozenset({"read", "vread", "history-instance", "history-type", "search-type"})
# The definitions the server publishes, by type: their type-level search lists them.
DEFINITIONS = {"OperationDefinition": frozenset(OURS), "StructureDefinition": frozenset(EXTENSIONS)}


@pytest.fixture(scope="module")
def app(sqlite_app: Flask) -> Flask:
    """What the API declares is the same on both databases: the SQLite app of tests/api/conftest.py (its
    `client` fixture then talks to it)."""
    return sqlite_app


@pytest.fixture(scope="module")
def metadata(client: FlaskClient) -> dict[str, Any]:
    resp = client.get("/fhir/metadata")
    assert resp.status_code == 200
    body: dict[str, Any] = orjson.loads(resp.data)
    return body


def _declared_operations(metadata: dict[str, Any]) -> dict[tuple[str | None, str], dict[str, Any]]:
    """(type or None for system-level, code) -> the declared operation."""
    rest = metadata["rest"][0]
    declared = {(None, op["name"]): op for op in rest.get("operation", [])}
    for resource in rest["resource"]:
        declared.update({(resource["type"], op["name"]): op for op in resource.get("operation", [])})
    return declared


def _operation_routes(app: Flask) -> dict[tuple[str | None, str], bool]:
    """(type or None, code) -> whether it is invoked on an instance, for every `$` route of the app."""
    routes: dict[tuple[str | None, str], bool] = {}
    for rule in app.url_map.iter_rules():
        code = re.search(r"/\$([a-z-]+)", rule.rule)
        if code is None or code[1] in NOT_OPERATIONS:
            continue
        found = _OPERATION_ROUTE.fullmatch(rule.rule)
        assert found is not None, f"an operation route of an unexpected shape: {rule.rule}"
        routes[(found["type"], found["code"])] = found["instance"] is not None
    return routes


def test_every_operation_route_is_declared_and_nothing_else(app: Flask, metadata: dict[str, Any]) -> None:
    # This server is no consortium member: the operations between hospitals answer 501 and are not declared.
    routes = {key: instance for key, instance in _operation_routes(app).items() if key[1] not in FEDERATION_OPERATIONS}
    declared = _declared_operations(metadata)
    assert not {code for _, code in declared} & FEDERATION_OPERATIONS
    assert len(routes) >= 10
    assert set(routes) == set(declared), {"undeclared": set(routes) - set(declared),
                                          "declared without a route": set(declared) - set(routes)}
    for (resource_type, code), op in declared.items():
        definition = op["definition"]
        assert definition == BULK_GROUP_EXPORT or definition == OPERATION_BASE + (
            f"{resource_type}-{code}" if resource_type else code), definition
        assert op.get("documentation"), f"${code} is declared without words"
        if definition.startswith(OPERATION_BASE):  # on an instance exactly when its route takes an id
            assert operation_definition(definition.removeprefix(OPERATION_BASE))["instance"] is routes[
                (resource_type, code)]
    assert declared[("Group", "export")]["definition"] == BULK_GROUP_EXPORT  # what Bulk Data clients look for
    # A member declares them too; redeem-record-locator at the system level (rest.operation).
    assert ("redeem-record-locator", OPERATION_BASE + "redeem-record-locator") in {
        op[:2] for op in system_operations(federation=True)}
    member = {(t, op[0]) for t, ops in type_operations(federation=True).items() for op in ops}
    assert {("Consent", "record-locator"), ("Patient", "link-record"), ("Patient", "federation-fetch")} <= member


def test_every_definition_of_ours_is_served_publicly_as_a_valid_operation_definition(
        client: FlaskClient, metadata: dict[str, Any]) -> None:
    ours = {key: op for key, op in _declared_operations(metadata).items()
            if op["definition"].startswith(OPERATION_BASE)}
    assert len(ours) == len(OURS) - len(FEDERATION_OPERATIONS)  # (a member's own are served all the same)
    for (resource_type, code), op in ours.items():
        url = op["definition"]
        resp = client.get(f"/fhir/OperationDefinition/{url.rsplit('/', 1)[1]}")  # no token: public
        assert resp.status_code == 200, url
        assert resp.content_type.startswith("application/fhir+json")
        definition = orjson.loads(resp.data)
        assert parse_resource(definition) == definition  # valid against the R4B models
        assert definition["url"] == url and definition["kind"] == "operation" and definition["status"] == "active"
        assert definition["code"] == code
        assert definition.get("resource") == ([resource_type] if resource_type else None)
        assert definition["system"] is (resource_type is None)
        assert definition["description"] and isinstance(definition["affectsState"], bool)
        for parameter in definition.get("parameter", []):
            assert parameter["use"] in ("in", "out") and ("type" in parameter) != ("part" in parameter), parameter
    assert client.get("/fhir/OperationDefinition/not-ours").status_code == 401  # an ordinary read: needs a token
    assert client.get("/fhir/OperationDefinition/_history", headers=AUTH).status_code == 200  # type history
    assert client.get("/fhir/StructureDefinition/_history", headers=AUTH).status_code == 200


def test_the_definitions_name_the_parameters_the_handlers_take(metadata: dict[str, Any]) -> None:
    """Spot checks against the handlers: $enrol takes proof, publicSignals and password and returns a
    ResearchSubject; $feasibility's only input is an optional criteria; $redeem-record-locator is system-level."""
    enrol = operation_definition("ResearchStudy-enrol")
    assert [(p["name"], p["use"], p["min"]) for p in enrol["parameter"]] == [
        ("proof", "in", 1), ("publicSignals", "in", 1), ("password", "in", 1), ("return", "out", 1)]
    assert enrol["parameter"][-1]["type"] == "ResearchSubject" and enrol["affectsState"] is True
    feasibility = operation_definition("ResearchStudy-feasibility")
    assert [(p["name"], p["min"]) for p in feasibility["parameter"] if p["use"] == "in"] == [("criteria", 0)]
    redeem = operation_definition("redeem-record-locator")
    assert (redeem["system"], redeem["type"], redeem["instance"]) == (True, False, False) and "resource" not in redeem
    proof = operation_definition("AuditEvent-inclusion-proof")
    assert proof["affectsState"] is False and {p["name"] for p in proof["parameter"]} >= {"auditPath", "anchor"}


# -- per-type interactions ---------------------------------------------------------------------------------------
def _study(now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "ResearchStudy", "title": "Capability probe", "sponsor": {"reference": UNIVERSITY},
        "principalInvestigator": {"reference": "Practitioner/pi-1"},
        "period": {"start": now.date().isoformat(), "end": (now + timedelta(days=90)).date().isoformat()},
        "extension": [
            {"url": CRITERIA_URL, "valueString": json.dumps({"age": {"$between": [40, 75]}})},
            {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": "Observation"}]},
            {"url": DATA_PERIOD_URL, "valuePeriod": {"start": "2015-01-01"}},
            {"url": MAX_PARTICIPANTS_URL, "valuePositiveInt": 50},
            {"url": ETHICS_APPROVAL_URL, "valueIdentifier": {"system": "urn:irb:u", "value": "IRB-1"}},
        ],
    }


def _attempt(client: FlaskClient, interaction: str, resource_type: str, resource: dict[str, Any],
             headers: dict[str, str], search: str) -> int:
    """One interaction on `resource` (an existing one, for those on an instance); the response's status."""
    url = f"/fhir/{resource_type}/{resource['id']}"
    body = orjson.dumps(resource)
    json_headers = {**headers, "Content-Type": "application/fhir+json"}
    match interaction:
        case "read":
            return client.get(url, headers=headers).status_code
        case "vread":
            return client.get(f"{url}/_history/1", headers=headers).status_code
        case "history-instance":
            return client.get(f"{url}/_history", headers=headers).status_code
        case "history-type":
            return client.get(f"/fhir/{resource_type}/_history", headers=headers).status_code
        case "search-type":
            return client.get(f"/fhir/{resource_type}?{search}", headers=headers).status_code
        case "create":
            fresh = {k: v for k, v in resource.items() if k not in ("id", "meta")}
            return client.post(f"/fhir/{resource_type}", data=orjson.dumps(fresh), headers=json_headers).status_code
        case "update":
            return client.put(url, data=body, headers=json_headers).status_code
        case "patch":
            patch = [{"op": "add", "path": "/language", "value": "en"}]
            return client.patch(url, data=orjson.dumps(patch), headers={**headers, **JSON_PATCH}).status_code
        case "delete":
            return client.delete(url, headers=headers).status_code
    raise AssertionError(interaction)


def _declared_interactions(metadata: dict[str, Any], resource_type: str) -> set[str]:
    resource = next(r for r in metadata["rest"][0]["resource"] if r["type"] == resource_type)
    return {i["code"] for i in resource["interaction"]}


def _subject(client: FlaskClient, study_id: str) -> dict[str, Any]:
    subject = {"resourceType": "ResearchSubject", "status": "on-study", "study": {"reference": f"ResearchStudy/{study_id}"},
               "individual": {"reference": f"Patient/{uuid.uuid4().hex}"}}
    resp = client.post("/fhir/ResearchSubject", data=orjson.dumps(subject), headers=JSON_HEADERS)
    assert resp.status_code == 201, resp.data
    created: dict[str, Any] = orjson.loads(resp.data)
    return created


def test_types_with_interactions_of_their_own_accept_what_is_declared_and_refuse_the_rest(
        app: Flask, client: FlaskClient, metadata: dict[str, Any]) -> None:
    researcher = {"Authorization": f"Bearer {register_researcher(app, 'capability-research')}"}
    made = client.post("/fhir/ResearchStudy", data=orjson.dumps(_study(datetime.now(UTC))),
                       headers={**researcher, "Content-Type": "application/fhir+json"})
    assert made.status_code == 201, made.data
    study = orjson.loads(made.data)
    entry = orjson.loads(client.get("/fhir/AuditEvent?_count=1", headers=AUTH).data)["entry"][0]["resource"]
    # Each type: an existing resource, who is allowed the declared interactions, a search the type answers.
    cases = {
        "ResearchStudy": (study, researcher, "status=draft"),
        "AuditEvent": (entry, AUTH, "date=ge2000-01-01"),
    }
    assert set(TYPE_CAPABILITIES) == {*cases, "ResearchSubject", *DEFINITIONS}
    for resource_type, (resource, allowed, search) in cases.items():
        declared = _declared_interactions(metadata, resource_type)
        assert declared == set(TYPE_CAPABILITIES[resource_type].interactions)
        for interaction in sorted(TYPE_INTERACTIONS):
            who = AUTH if interaction == "history-type" else allowed  # a type's history: unrestricted callers
            status = _attempt(client, interaction, resource_type, resource, who, search)
            if interaction in declared:
                assert status in (200, 201), (resource_type, interaction, status)
            else:  # refused whoever asks, even the development token, whether or not the resource exists
                refused = _REFUSED_READ if interaction in _READS else _REFUSED_WRITE
                assert status in refused, (resource_type, interaction, status)
                for target in (resource, {**resource, "id": "missing"}):
                    status = _attempt(client, interaction, resource_type, target, AUTH, search)
                    assert status in refused, (resource_type, interaction, target["id"], status)
    assert client.get(f"/fhir/ResearchStudy/{study['id']}", headers=researcher).get_json()["title"] == study["title"]
    # ResearchSubject: every interaction on a stored one; its GET search is the enrolments' view, by study.
    subject = _subject(client, study["id"])
    assert _declared_interactions(metadata, "ResearchSubject") == set(TYPE_INTERACTIONS)
    for interaction in sorted(TYPE_INTERACTIONS - {"delete"}) + ["delete"]:
        status = _attempt(client, interaction, "ResearchSubject", subject, AUTH, f"study=ResearchStudy/{study['id']}")
        assert status in (200, 201, 204), (interaction, status)
    # The definitions: every interaction on a stored one; their search lists the published ones and the stored.
    for resource_type in DEFINITIONS:
        assert _declared_interactions(metadata, resource_type) == set(TYPE_INTERACTIONS)
        body = _stored_definition(resource_type, f"Probe{uuid.uuid4().hex[:8]}")
        made = client.post(f"/fhir/{resource_type}", data=orjson.dumps(body), headers=JSON_HEADERS)
        assert made.status_code == 201, made.data
        definition = orjson.loads(made.data)
        for interaction in sorted(TYPE_INTERACTIONS - {"delete"}) + ["delete"]:
            status = _attempt(client, interaction, resource_type, definition, AUTH, f"url={body['url']}")
            assert status in (200, 201, 204), (resource_type, interaction, status)


def _stored_definition(resource_type: str, name: str) -> dict[str, Any]:
    """A valid definition as a client would store one (not one the server publishes)."""
    stored = {"resourceType": resource_type, "url": f"http://example.org/{name}", "name": name, "status": "draft"}
    stored.update({"kind": "operation", "code": name.lower(), "system": True, "type": False, "instance": False}
                  if resource_type == "OperationDefinition" else
                  {"kind": "complex-type", "abstract": False, "type": "Extension"})
    return stored


def _searched(client: FlaskClient, query: str, **headers: str) -> dict[str, Any]:
    resp = client.get(f"/fhir/{query}", headers=headers)
    assert resp.status_code == 200, (query, resp.data[:300])
    found: dict[str, Any] = orjson.loads(resp.data)
    return found


def _matches(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.mark.parametrize("resource_type", sorted(DEFINITIONS))
def test_the_published_definitions_are_searched_by_what_is_declared(
        client: FlaskClient, metadata: dict[str, Any], resource_type: str) -> None:
    """`GET /fhir/OperationDefinition|StructureDefinition` lists what the server publishes at `/{Type}/{id}` (public,
    no token), by each declared parameter (url, _id, name) and paged by `_count`; anything else follows the lenient
    and strict handling of every search; stored ones are listed to a caller that may read them; a Bundle entry
    answers alike."""
    ours = DEFINITIONS[resource_type]
    entry = next(r for r in metadata["rest"][0]["resource"] if r["type"] == resource_type)
    assert [p["name"] for p in entry["searchParam"]] == ["url", "_id", "name"]
    everything = _searched(client, resource_type)
    assert set(_matches(everything)) == ours and everything["total"] == len(ours)
    some = sorted(ours)[:2]
    one = _searched(client, f"{resource_type}/{some[0]}")
    assert [e["resource"] for e in everything["entry"] if e["resource"]["id"] == some[0]] == [one]
    assert _matches(_searched(client, f"{resource_type}?url={one['url']}")) == [some[0]]
    assert _matches(_searched(client, f"{resource_type}?url={one['url']}|{one['version']}")) == [some[0]]
    assert _matches(_searched(client, f"{resource_type}?url={one['url']}|0.0.1")) == []
    assert sorted(_matches(_searched(client, f"{resource_type}?_id={','.join(some)}"))) == some
    assert some[0] in _matches(_searched(client, f"{resource_type}?name={one['name'][:5].lower()}"))
    assert _matches(_searched(client, f"{resource_type}?name={one['name']}&_id={some[1]}")) == []  # AND
    first = _searched(client, f"{resource_type}?_count=1")
    assert len(_matches(first)) == 1 and first["total"] == len(ours)
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = _searched(client, following.split("/fhir/", 1)[1])
    assert len(_matches(second)) == 1 and _matches(second) != _matches(first)
    lenient = _searched(client, f"{resource_type}?_id={some[0]}&publisher=x")
    assert _matches(lenient) == [some[0]]
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "ignored (not supported by this server): publisher" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.get(f"/fhir/{resource_type}?publisher=x", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "'publisher'" in strict.get_json()["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/{resource_type}", headers={"Authorization": "Bearer nope"}).status_code == 401
    # One stored by a client: found by the caller that may read it, not by an anonymous one.
    name = f"Stored{uuid.uuid4().hex[:8]}"
    stored = _stored_definition(resource_type, name)
    made = client.post(f"/fhir/{resource_type}", data=orjson.dumps(stored), headers=JSON_HEADERS)
    assert made.status_code == 201, made.data
    made_id = orjson.loads(made.data)["id"]
    assert _matches(_searched(client, f"{resource_type}?name={name}", **AUTH)) == [made_id]
    assert _matches(_searched(client, f"{resource_type}?url={stored['url']}")) == []
    # Paged as one list, the published first, then the stored ones (paged by the store itself).
    page = _searched(client, f"{resource_type}?_count={len(ours)}", **AUTH)
    assert set(_matches(page)) == ours
    seen = list(_matches(page))
    while any(link["relation"] == "next" for link in page["link"]):
        following = next(link["url"] for link in page["link"] if link["relation"] == "next")
        page = _searched(client, following.split("/fhir/", 1)[1], **AUTH)
        seen += _matches(page)
    assert made_id in seen and len(seen) == len(set(seen)) == page["total"] > len(ours)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"{resource_type}?url={stored['url']}"}},
        {"request": {"method": "GET", "url": f"{resource_type}?_id={','.join(some)}"}},
        {"request": {"method": "GET", "url": f"{resource_type}/{some[0]}"}},
        {"request": {"method": "GET", "url": f"{resource_type}?publisher=x"}},
    ]}
    resp = client.post("/fhir", data=orjson.dumps(batch), headers={**JSON_HEADERS, "Prefer": "handling=strict"})
    assert resp.status_code == 200, resp.data[:300]
    by_url, by_id, read, refused = orjson.loads(resp.data)["entry"]
    assert _matches(by_url["resource"]) == [made_id] and sorted(_matches(by_id["resource"])) == some
    assert read["resource"] == one
    assert refused["response"]["status"] == "400 Bad Request"  # the batch's Prefer: handling=strict holds for its entries


def test_refused_interactions_stay_refused_in_their_conditional_and_bundle_forms(
        client: FlaskClient, metadata: dict[str, Any]) -> None:
    """No other path reaches a refused interaction: conditional update and delete, transaction and batch entries."""
    study = {"resourceType": "ResearchStudy", "status": "active", "title": "Written around the operations"}
    search = "_id=" + uuid.uuid4().hex
    put = client.put(f"/fhir/ResearchStudy?{search}", data=orjson.dumps(study), headers=JSON_HEADERS)
    assert put.status_code == 403 and "$publish" in put.get_json()["issue"][0]["diagnostics"]
    put_outcome = put.get_json()["issue"][0]["diagnostics"]
    assert client.delete(f"/fhir/ResearchStudy?{search}", headers=AUTH).status_code == 403
    entries = [
        {"request": {"method": "GET", "url": "ResearchStudy?status=active"}},
        {"resource": {**study, "id": "around"}, "request": {"method": "PUT", "url": "ResearchStudy/around"}},
        {"request": {"method": "DELETE", "url": "AuditEvent/1"}},
        {"resource": study, "request": {"method": "POST", "url": "ResearchStudy"}},  # would skip the study's checks
    ]
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    resp = client.post("/fhir", data=orjson.dumps(transaction), headers=JSON_HEADERS)
    assert resp.status_code == 403, resp.data  # all or nothing: refused whole, naming the entry
    assert "entry 1 (PUT ResearchStudy)" in resp.get_json()["issue"][0]["diagnostics"]
    # A batch: each refused entry answers as its request outside a Bundle would (a study edit 403, a write to the
    # read-only access log 405), the others run.
    resp = client.post("/fhir", data=orjson.dumps({**transaction, "type": "batch"}), headers=JSON_HEADERS)
    assert resp.status_code == 200, resp.data
    searched, put, delete, create = (e["response"] for e in resp.get_json()["entry"])
    assert searched["status"].startswith("200")
    assert put["status"] == create["status"] == "403 Forbidden"
    alone = client.delete("/fhir/AuditEvent/1", headers=AUTH)
    assert delete["status"] == f"{alone.status_code} Method Not Allowed" == "405 Method Not Allowed"
    assert delete["outcome"]["issue"] == alone.get_json()["issue"]
    assert "POST /fhir/ResearchStudy" in create["outcome"]["issue"][0]["diagnostics"]
    assert put["outcome"]["issue"][0]["diagnostics"] == put_outcome
    assert client.get("/fhir/ResearchStudy/around", headers=AUTH).status_code == 404
    # An entry whose body is invalid gets the same answer as its request alone: the type's refusal (405 for a
    # write to the access log, 403 for a study edit) before any validation of the body.
    invalid = [{"resource": {"resourceType": "AuditEvent", "bogus": 1}, "request": {"method": "POST", "url": "AuditEvent"}},
               {"resource": {"resourceType": "ResearchStudy", "id": "x", "bogus": 1},
                "request": {"method": "PUT", "url": "ResearchStudy/x"}}]
    resp = client.post("/fhir", data=orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": invalid}),
                       headers=JSON_HEADERS)
    audit_write, study_edit = (e["response"] for e in resp.get_json()["entry"])
    alone = client.post("/fhir/AuditEvent", data=orjson.dumps(invalid[0]["resource"]), headers=JSON_HEADERS)
    assert audit_write["status"] == f"{alone.status_code} Method Not Allowed" == "405 Method Not Allowed"
    assert audit_write["outcome"]["issue"] == alone.get_json()["issue"]
    assert study_edit["status"] == "403 Forbidden" and study_edit["outcome"]["issue"][0]["diagnostics"] == put_outcome
    study_entry = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "ResearchStudy")
    assert study_entry["conditionalUpdate"] is False and study_entry["conditionalDelete"] == "not-supported"
    assert [p["name"] for p in study_entry["searchParam"]] == ["status"]


def test_the_docs_say_where_clients_find_the_operations() -> None:
    text = (Path(__file__).parents[2] / "docs" / "fhir-r4b.md").read_text(encoding="utf-8")
    assert "/fhir/OperationDefinition/" in text and "GET /fhir/metadata" in text
    for op in OURS.values():
        assert f"${op.code}" in text, op.code


# Types of R4B (4.3.0) that R4 (4.0.1) does not have, and the R4 types R4B reshaped (R4B history.html).
R4B_ONLY = ("Citation", "ClinicalUseDefinition", "Evidence", "EvidenceReport", "EvidenceVariable", "Ingredient",
            "ManufacturedItemDefinition", "AdministrableProductDefinition", "PackagedProductDefinition",
            "RegulatedAuthorization", "SubscriptionStatus", "SubscriptionTopic", "NutritionProduct",
            "MedicinalProductDefinition", "SubstanceDefinition")


def test_metadata_declares_r4_and_only_r4_types(metadata: dict[str, Any]) -> None:
    from fhir_adapters.validation import R4_RESOURCE_TYPES

    assert metadata["fhirVersion"] == "4.0.1"
    declared = {resource["type"] for resource in metadata["rest"][0]["resource"]}
    assert declared <= R4_RESOURCE_TYPES
    assert not declared & set(R4B_ONLY)
    assert {"Patient", "Observation", "Consent", "AuditEvent", "Bundle", "ResearchStudy"} <= declared


def _outcome_without_name(resp: Any, name: str) -> tuple[int, str, list[Any]]:
    body = orjson.loads(resp.data)
    issues = [{k: (v.replace(name, "T") if isinstance(v, str) else v) for k, v in issue.items()}
              for issue in body["issue"]]
    return resp.status_code, body["resourceType"], issues


@pytest.mark.parametrize("resource_type", R4B_ONLY)
def test_an_r4b_only_type_is_answered_as_any_unknown_type(client: FlaskClient, resource_type: str) -> None:
    body = orjson.dumps({"resourceType": resource_type, "status": "active"})
    requests = [("GET", "", None), ("GET", "/x1", None), ("POST", "", body), ("PUT", "/x1", body),
                ("DELETE", "/x1", None), ("GET", "/x1/_history", None)]
    for method, tail, data in requests:
        got = client.open(f"/fhir/{resource_type}{tail}", method=method, data=data, headers=JSON_HEADERS)
        unknown = client.open(f"/fhir/Nonexistent{tail}", method=method,
                              data=data and data.replace(resource_type.encode(), b"Nonexistent"), headers=JSON_HEADERS)
        assert got.status_code == 404, (method, tail, got.data)
        assert "unknown resource type" in got.get_data(as_text=True)
        assert _outcome_without_name(got, resource_type) == _outcome_without_name(unknown, "Nonexistent")
        assert got.content_type == unknown.content_type
    # In a batch, as an entry naming any unknown type.
    def batch(name: str) -> Any:
        entries = [{"request": {"method": "GET", "url": f"{name}/x1"}},
                   {"request": {"method": "POST", "url": name}, "resource": {"resourceType": name}}]
        resp = client.post("/fhir", data=orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}),
                           headers=JSON_HEADERS)
        assert resp.status_code == 200
        return orjson.loads(resp.get_data(as_text=True).replace(name, "T"))

    answered = batch(resource_type)
    assert answered == batch("Nonexistent")
    assert [entry["response"]["status"] for entry in answered["entry"]] == ["404 Not Found"] * 2  # as over REST


def test_the_smart_endpoints_are_named_where_clients_read_them(metadata: dict[str, Any]) -> None:
    """The oauth-uris extension (SMART App Launch 2.x) names authorize and manage beside token, for clients that
    read the CapabilityStatement rather than .well-known."""
    [security] = [ext for ext in metadata["rest"][0]["security"]["extension"] if ext["url"].endswith("/oauth-uris")]
    uris = {ext["url"]: ext["valueUri"] for ext in security["extension"]}
    assert set(uris) == {"token", "authorize", "manage"}
    assert uris["token"].endswith("/auth/token") and uris["authorize"].endswith("/auth/authorize")
    assert uris["manage"].endswith("/app/apps")
