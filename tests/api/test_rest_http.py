"""HTTP semantics of the REST API a standard client relies on (R4 http.html; RFC 7231, 7232, 6750): bodiless
answers, version preconditions, conditional read, the read-only published definitions, history of update-as-create,
POST _search without a body, content codings, fhirVersion, 405 on /metadata, bearer-token challenges."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from fhir_api_support import AUTH, JSON_HEADERS
from flask import Flask
from flask.testing import FlaskClient
from joserfc.jwk import ECKey, KeySet

from fhir_adapters import definition_search
from healthledger.auth.tokens import register_client
from healthledger.db import session_factory


def _patient(client: FlaskClient, **extra: Any) -> dict[str, Any]:
    body = {"resourceType": "Patient", "name": [{"family": "Httptest"}], **extra}
    resp = client.post("/fhir/Patient", data=orjson.dumps(body), headers=JSON_HEADERS)
    assert resp.status_code == 201, resp.data
    return orjson.loads(resp.data)  # type: ignore[no-any-return]


def _no_body(resp: Any, status: int) -> None:
    assert resp.status_code == status, (resp.status_code, resp.data[:300])
    assert resp.data == b"" and "Content-Type" not in resp.headers, dict(resp.headers)


def _outcome(resp: Any, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.data[:300])
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    body = orjson.loads(resp.data)
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["diagnostics"])


def test_answers_without_a_body_have_no_content_type(client: FlaskClient) -> None:
    minimal = {**JSON_HEADERS, "Prefer": "return=minimal"}
    mrn = uuid.uuid4().hex
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": mrn}]}
    created = client.post("/fhir/Patient", data=orjson.dumps(body), headers=minimal)
    _no_body(created, 201)
    assert created.headers["ETag"] == 'W/"1"' and "/_history/1" in created.headers["Location"]
    pid = created.headers["Location"].split("/Patient/", 1)[1].split("/", 1)[0]
    # Conditional create that finds it: 200, as Prefer asks (no body), nothing written.
    found = client.post("/fhir/Patient", data=orjson.dumps(body),
                        headers={**minimal, "If-None-Exist": f"identifier=urn:test|{mrn}"})
    _no_body(found, 200)
    assert pid in found.headers["Location"]
    told = client.post("/fhir/Patient", data=orjson.dumps(body),
                       headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome",
                                "If-None-Exist": f"identifier=urn:test|{mrn}"})
    assert "exists already" in _outcome(told, 200)
    _no_body(client.put(f"/fhir/Patient/{pid}", data=orjson.dumps({**body, "id": pid}), headers=minimal), 200)
    _no_body(client.delete(f"/fhir/Patient/{pid}", headers=AUTH), 204)
    _no_body(client.delete(f"/fhir/Patient?identifier=urn:test|{mrn}", headers=AUTH), 204)


def test_version_preconditions_of_delete_and_update(client: FlaskClient) -> None:
    pid = _patient(client)["id"]
    assert "If-Match" in _outcome(client.delete(f"/fhir/Patient/{pid}", headers={**AUTH, "If-Match": 'W/"7"'}), 412)
    _outcome(client.delete(f"/fhir/Patient?_id={pid}", headers={**AUTH, "If-Match": 'W/"7"'}), 412)
    body = orjson.dumps({"resourceType": "Patient", "id": pid, "gender": "other"})
    refused = client.put(f"/fhir/Patient/{pid}", data=body, headers={**JSON_HEADERS, "If-None-Match": "*"})
    assert "exists" in _outcome(refused, 412)
    _outcome(client.put(f"/fhir/Patient/{pid}", data=body, headers={**JSON_HEADERS, "If-None-Match": 'W/"1"'}), 412)
    _outcome(client.put(f"/fhir/Patient?_id={pid}", data=body, headers={**JSON_HEADERS, "If-None-Match": "*"}), 412)
    assert client.get(f"/fhir/Patient/{pid}", headers=AUTH).get_json()["meta"]["versionId"] == "1"  # nothing written
    _outcome(client.put(f"/fhir/Patient/{pid}", data=body, headers={**JSON_HEADERS, "If-None-Match": "junk"}), 400)
    assert client.put(f"/fhir/Patient/{pid}", data=body,
                      headers={**JSON_HEADERS, "If-None-Match": 'W/"5"'}).status_code == 200
    _no_body(client.delete(f"/fhir/Patient?_id={pid}", headers={**AUTH, "If-Match": 'W/"2"'}), 204)
    # Deleted: no version matches If-Match; If-None-Match: * lets a PUT create it again.
    _outcome(client.delete(f"/fhir/Patient/{pid}", headers={**AUTH, "If-Match": 'W/"3"'}), 412)
    _no_body(client.delete(f"/fhir/Patient/{pid}", headers=AUTH), 204)  # R4: deleting a deleted resource is fine
    assert client.put(f"/fhir/Patient/{pid}", data=body,
                      headers={**JSON_HEADERS, "If-None-Match": "*"}).status_code == 201
    fresh = uuid.uuid4().hex
    made = client.put(f"/fhir/Patient/{fresh}", data=orjson.dumps({"resourceType": "Patient", "id": fresh}),
                      headers={**JSON_HEADERS, "If-None-Match": "*"})
    assert made.status_code == 201


def test_deleted_reads_as_gone(client: FlaskClient) -> None:
    pid = _patient(client)["id"]
    _no_body(client.delete(f"/fhir/Patient/{pid}", headers=AUTH), 204)
    assert "deleted" in _outcome(client.get(f"/fhir/Patient/{pid}", headers=AUTH), 410)
    assert "deletion" in _outcome(client.get(f"/fhir/Patient/{pid}/_history/2", headers=AUTH), 410)
    assert client.get(f"/fhir/Patient/{pid}/_history/1", headers=AUTH).status_code == 200
    _outcome(client.get(f"/fhir/Patient/{pid}/_history/3", headers=AUTH), 404)


def test_conditional_read(client: FlaskClient) -> None:
    made = _patient(client)
    url = f"/fhir/Patient/{made['id']}"
    current = client.get(url, headers=AUTH)
    not_modified = client.get(url, headers={**AUTH, "If-None-Match": 'W/"1"'})
    _no_body(not_modified, 304)
    assert not_modified.headers["ETag"] == 'W/"1"'  # (RFC 7232 §4.1)
    _no_body(client.get(url, headers={**AUTH, "If-None-Match": '"0", W/"1"'}), 304)
    _no_body(client.get(url, headers={**AUTH, "If-None-Match": "*"}), 304)
    assert client.get(url, headers={**AUTH, "If-None-Match": 'W/"2"'}).get_json() == current.get_json()
    _no_body(client.get(url, headers={**AUTH, "If-Modified-Since": current.headers["Last-Modified"]}), 304)
    _no_body(client.get(url, headers={**AUTH, "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}), 304)
    assert client.get(url, headers={**AUTH, "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert client.get(url, headers={**AUTH, "If-Modified-Since": "yesterday"}).status_code == 200  # not a date: ignored
    # If-None-Match wins over If-Modified-Since (RFC 7232 §6).
    assert client.get(url, headers={**AUTH, "If-None-Match": 'W/"2"',
                                    "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}).status_code == 200
    _no_body(client.get(f"{url}/_history/1", headers={**AUTH, "If-None-Match": 'W/"1"'}), 304)
    # Nothing there: the 404 of any missing resource.
    missing = client.get(f"/fhir/Patient/{uuid.uuid4().hex}", headers={**AUTH, "If-None-Match": "*"})
    assert "is not known" in _outcome(missing, 404)
    capability = client.get("/fhir/metadata").get_json()
    declared = {r["type"]: r.get("conditionalRead") for r in capability["rest"][0]["resource"]}
    assert declared["Patient"] == declared["Observation"] == "full-support"
    assert declared["AuditEvent"] is None  # served by its own module, without conditional read


def test_the_published_definitions_are_read_only(client: FlaskClient) -> None:
    capability = client.get("/fhir/metadata").get_json()
    for resource_type in sorted(definition_search.PUBLISHED_TYPES):
        ours = min(definition_search.published_ids(resource_type))
        url = f"/fhir/{resource_type}/{ours}"
        published = client.get(url)
        assert published.status_code == 200
        body = orjson.dumps({**published.get_json(), "name": "Changed"})
        for resp in (client.put(url, data=body, headers=JSON_HEADERS), client.delete(url, headers=AUTH),
                     client.patch(url, data=b'[{"op": "remove", "path": "/name"}]',
                                  headers={**AUTH, "Content-Type": "application/json-patch+json"})):
            assert "read only" in _outcome(resp, 405)
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": published.get_json(), "request": {"method": "PUT", "url": f"{resource_type}/{ours}"}},
            {"request": {"method": "DELETE", "url": f"{resource_type}/{ours}"}}]}
        answered = client.post("/fhir", data=orjson.dumps(batch), headers=JSON_HEADERS).get_json()
        assert [e["response"]["status"] for e in answered["entry"]] == ["405 Method Not Allowed"] * 2, answered
        conditional = client.put(f"/fhir/{resource_type}?_id={ours}", data=body, headers=JSON_HEADERS)
        _outcome(conditional, 405)
        assert client.get(url).get_json() == published.get_json()
        assert client.get(f"{url}/_history", headers=AUTH).status_code == 404  # nothing was ever stored there
        entry = next(r for r in capability["rest"][0]["resource"] if r["type"] == resource_type)
        notes = {i["code"]: i.get("documentation", "") for i in entry["interaction"]}
        assert all("refused (405)" in notes[code] for code in ("update", "patch", "delete"))


def test_history_names_how_each_version_was_written(client: FlaskClient) -> None:
    pid = f"walk-{uuid.uuid4().hex[:12]}"
    body = {"resourceType": "Patient", "id": pid, "gender": "female"}
    assert client.put(f"/fhir/Patient/{pid}", data=orjson.dumps(body), headers=JSON_HEADERS).status_code == 201
    assert client.put(f"/fhir/Patient/{pid}", data=orjson.dumps(body), headers=JSON_HEADERS).status_code == 200
    posted = _patient(client)["id"]
    history = client.get(f"/fhir/Patient/{pid}/_history", headers=AUTH).get_json()
    requests = [(e["request"]["method"], e["request"]["url"], e["response"]["status"]) for e in history["entry"]]
    assert requests == [("PUT", f"Patient/{pid}", "200 OK"), ("PUT", f"Patient/{pid}", "201 Created")]
    first = client.get(f"/fhir/Patient/{posted}/_history", headers=AUTH).get_json()["entry"][0]
    assert (first["request"]["method"], first["request"]["url"]) == ("POST", "Patient")


def test_post_search_without_a_body(client: FlaskClient) -> None:
    family = f"Bodiless{uuid.uuid4().hex[:8]}"
    _patient(client, name=[{"family": family}])
    found = client.post(f"/fhir/Patient/_search?family={family}", headers=AUTH)
    assert found.status_code == 200 and found.get_json()["total"] == 1
    form = client.post(f"/fhir/Patient/_search?family={family}", data=b"",
                       headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert form.get_json()["total"] == 1
    for declared in ("application/fhir+json", "application/json", "text/plain"):  # empty: no parameters, any type
        typed = client.post(f"/fhir/Patient/_search?family={family}", data=b"", headers={**AUTH, "Content-Type": declared})
        assert typed.status_code == 200 and typed.get_json()["total"] == 1, (declared, typed.data[:300])
    definitions = client.post("/fhir/StructureDefinition/_search", data=b"",
                              headers={**AUTH, "Content-Type": "application/fhir+json"})
    assert definitions.status_code == 200 and definitions.get_json()["total"] >= 1
    _outcome(client.post("/fhir/Patient/_search", data=b"family=x", headers={**AUTH, "Content-Type": "text/plain"}), 415)


def test_a_body_with_a_content_coding_is_415(client: FlaskClient) -> None:
    raw = gzip.compress(orjson.dumps({"resourceType": "Patient"}))
    resp = client.post("/fhir/Patient", data=raw, headers={**JSON_HEADERS, "Content-Encoding": "gzip"})
    assert "Content-Encoding 'gzip'" in _outcome(resp, 415)
    searched = client.post("/fhir/Patient/_search", data=gzip.compress(b"family=x"), headers={
        **AUTH, "Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"})
    assert "gzip" in _outcome(searched, 415)
    plain = client.post("/fhir/Patient", data=orjson.dumps({"resourceType": "Patient"}),
                        headers={**JSON_HEADERS, "Content-Encoding": "identity"})
    assert plain.status_code == 201


def test_metadata_is_read_only(client: FlaskClient) -> None:
    for method in ("DELETE", "PUT", "POST", "PATCH"):
        resp = client.open("/fhir/metadata", method=method, headers=AUTH)
        _outcome(resp, 405)
        assert set(resp.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert client.get("/fhir/metadata").status_code == 200


def test_fhir_version_of_accept(client: FlaskClient) -> None:
    for accepted in ("application/fhir+json; fhirVersion=3.0", "application/fhir+json;fhirVersion=5.0, application/json;fhirVersion=1.0"):
        resp = client.get("/fhir/metadata", headers={"Accept": accepted})
        assert "fhirVersion=4.0" in _outcome(resp, 406)
    for accepted in ("application/fhir+json; fhirVersion=4.0", "application/fhir+json; fhirVersion=4.0.1",
                     "application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0",
                     "application/fhir+json; fhirVersion=3.0, */*"):
        assert client.get("/fhir/metadata", headers={"Accept": accepted}).status_code == 200, accepted


def test_a_refused_token_is_named_in_the_challenge(client: FlaskClient) -> None:
    bad = client.get("/fhir/Patient", headers={"Authorization": "Bearer not-a-token"})
    _outcome(bad, 401)
    challenge = bad.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert 'error_description="' in challenge
    none = client.get("/fhir/Patient")
    _outcome(none, 401)
    assert none.headers["WWW-Authenticate"] == 'Bearer realm="healthledger"'  # no token, no error code (§3.1)
    empty = client.get("/fhir/Patient", headers={"Authorization": "Bearer "})
    assert "empty bearer token" in _outcome(empty, 401)
    assert "empty bearer token" in _outcome(client.get("/fhir/Patient", headers={"Authorization": "bearer"}), 401)
    assert "unsupported authorization scheme" in _outcome(client.get("/fhir/Patient", headers={"Authorization": "Basic x"}), 401)


def test_a_token_refused_for_its_scopes_is_told_insufficient_scope(app: Flask, client: FlaskClient) -> None:
    """RFC 6750 §3.1: a 403 for the token's scopes names `insufficient_scope`; a 403 of another kind does not."""
    client_id = f"scoped-{uuid.uuid4().hex[:8]}"
    with session_factory(app.extensions["healthledger.engine"]).begin() as session:
        register_client(session, client_id=client_id, name="Scoped", scopes="system/Patient.rs", role="system",
                        jwks=KeySet([ECKey.generate_key("P-256", auto_kid=True)]).as_dict(private=False),
                        now=datetime.now(UTC))
    tokens = app.extensions["healthledger.tokens"]
    bearer = {"Authorization": f"Bearer {tokens.access_token(client_id, 'system/Patient.rs', tokens.now())}"}
    assert client.get("/fhir/Patient", headers=bearer).status_code == 200
    refused = client.get("/fhir/Observation", headers=bearer)
    said = _outcome(refused, 403)
    assert refused.headers["WWW-Authenticate"] == (
        f'Bearer realm="healthledger", error="insufficient_scope", error_description="{said}"')
    # A write the policy refuses (a study changes through its operations) is a 403 for another reason.
    study = {"resourceType": "ResearchStudy", "status": "active", "title": "Not by PUT"}
    policy = client.put(f"/fhir/ResearchStudy?_id={uuid.uuid4().hex}", data=orjson.dumps(study), headers=JSON_HEADERS)
    _outcome(policy, 403)
    assert "WWW-Authenticate" not in policy.headers


def test_version_preconditions_of_bundle_entries(client: FlaskClient) -> None:
    """`request.ifMatch` of a DELETE and `request.ifNoneMatch` of a PUT are honoured in Bundles as over REST."""
    pid = _patient(client)["id"]
    body = {"resourceType": "Patient", "id": pid, "gender": "other"}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient/{pid}", "ifMatch": 'W/"7"'}},
        {"request": {"method": "DELETE", "url": f"Patient?_id={pid}", "ifMatch": 'W/"7"'}},
        {"resource": body, "request": {"method": "PUT", "url": f"Patient/{pid}", "ifNoneMatch": "*"}},
        {"resource": body, "request": {"method": "PUT", "url": f"Patient?_id={pid}", "ifNoneMatch": 'W/"1"'}},
    ]}
    answered = client.post("/fhir", data=orjson.dumps(batch), headers=JSON_HEADERS).get_json()
    assert [e["response"]["status"] for e in answered["entry"]] == ["412 Precondition Failed"] * 4, answered
    assert client.get(f"/fhir/Patient/{pid}", headers=AUTH).get_json()["meta"]["versionId"] == "1"
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient?_id={pid}", "ifMatch": 'W/"7"'}}]}
    assert client.post("/fhir", data=orjson.dumps(transaction), headers=JSON_HEADERS).status_code == 412
    batch["entry"] = [{"request": {"method": "DELETE", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'}}]
    answered = client.post("/fhir", data=orjson.dumps(batch), headers=JSON_HEADERS).get_json()
    assert answered["entry"][0]["response"]["status"].startswith("204")


def _definition(resource_type: str, url: str) -> dict[str, Any]:
    if resource_type == "StructureDefinition":
        return {"resourceType": "StructureDefinition", "url": url, "name": "Impostor", "status": "draft",
                "kind": "complex-type", "abstract": False, "type": "Extension"}
    return {"resourceType": "OperationDefinition", "url": url, "name": "Impostor", "status": "draft",
            "kind": "operation", "code": "impostor", "system": True, "type": False, "instance": False}


def _refused_as_ours(resp: Any) -> None:
    assert resp.status_code == 422, (resp.status_code, resp.data[:300])
    issue = orjson.loads(resp.data)["issue"][0]
    assert issue["code"] == "business-rule" and "this server's own definition" in issue["diagnostics"]


def test_no_definition_is_stored_under_one_of_our_canonical_urls(client: FlaskClient) -> None:
    for resource_type in sorted(definition_search.PUBLISHED_TYPES):
        ours = definition_search.published(resource_type)[0]["url"]
        under_base = definition_search.OWN_BASES[resource_type] + "not-one-of-ours"
        for url in (ours, f"{ours}|9", under_base):
            body = orjson.dumps(_definition(resource_type, url))
            _refused_as_ours(client.post(f"/fhir/{resource_type}", data=body, headers=JSON_HEADERS))
            sid = f"impostor-{uuid.uuid4().hex[:12]}"
            body_with_id = orjson.dumps({**_definition(resource_type, url), "id": sid})
            _refused_as_ours(client.put(f"/fhir/{resource_type}/{sid}", data=body_with_id, headers=JSON_HEADERS))
            _refused_as_ours(client.put(f"/fhir/{resource_type}?_id={sid}", data=body_with_id, headers=JSON_HEADERS))
            for kind in ("batch", "transaction"):
                bundle = {"resourceType": "Bundle", "type": kind, "entry": [
                    {"resource": _definition(resource_type, url), "request": {"method": "POST", "url": resource_type}},
                ]}
                answer = client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS)
                if kind == "batch":
                    assert answer.get_json()["entry"][0]["response"]["status"].startswith("422"), answer.get_json()
                else:
                    _refused_as_ours(answer)
        found = client.get(f"/fhir/{resource_type}", query_string={"url": ours}).get_json()
        assert found["total"] == 1, found  # ours alone
        # A definition of its own URL is stored; PATCHing our URL into it is refused, and it keeps its own.
        theirs = client.post(f"/fhir/{resource_type}", data=orjson.dumps(
            _definition(resource_type, f"https://example.org/fhir/{resource_type}/{uuid.uuid4().hex}")),
            headers=JSON_HEADERS)
        assert theirs.status_code == 201, theirs.data
        patched = client.patch(f"/fhir/{resource_type}/{theirs.get_json()['id']}",
                               data=orjson.dumps([{"op": "replace", "path": "/url", "value": ours}]),
                               headers={**AUTH, "Content-Type": "application/json-patch+json"})
        _refused_as_ours(patched)


def test_conditional_interactions_on_definitions_name_the_parameters_they_take(client: FlaskClient) -> None:
    for resource_type in sorted(definition_search.PUBLISHED_TYPES):
        url = f"https://example.org/fhir/{resource_type}/{uuid.uuid4().hex}"
        body = orjson.dumps(_definition(resource_type, url))
        query = {"url": url}
        for resp in (client.put(f"/fhir/{resource_type}", query_string=query, data=body, headers=JSON_HEADERS),
                     client.delete(f"/fhir/{resource_type}", query_string=query, headers=AUTH),
                     client.post(f"/fhir/{resource_type}", data=body,
                                 headers={**JSON_HEADERS, "If-None-Exist": f"url={url}"})):
            said = _outcome(resp, 400)
            assert "selects by _id and _lastUpdated only; 'url' is answered by a search" in said, said
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": _definition(resource_type, url), "request": {"method": "PUT", "url": f"{resource_type}?url={url}"}},
            {"resource": _definition(resource_type, url),
             "request": {"method": "POST", "url": resource_type, "ifNoneExist": f"url={url}"}},
            {"request": {"method": "DELETE", "url": f"{resource_type}?name=Impostor"}}]}
        answered = client.post("/fhir", data=orjson.dumps(batch), headers=JSON_HEADERS).get_json()
        assert [e["response"]["status"][:3] for e in answered["entry"]] == ["400"] * 3, answered
        assert client.get(f"/fhir/{resource_type}", query_string=query, headers=AUTH).get_json()["total"] == 0
