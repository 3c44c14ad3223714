"""Batch and transaction entries answer as the same REST requests (R4 3.1.0.11): a batch GET/HEAD entry is the REST
request itself (result parameters, lenient handling, history, metadata, HEAD, conditional reads, the access log);
fullUrl and location are absolute; Prefer: return= applies to entries' writes; an unknown type is REST's 404."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fhir_api_support import AUTH, JSON_HEADERS
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from healthledger.audit import spool
from healthledger.audit.entries import decode_entry
from healthledger.audit.models import AccessLogEntry

BASE = "http://localhost/fhir"


def _json(resp: TestResponse) -> Any:
    return orjson.loads(resp.data)


def _batch(client: FlaskClient, urls: list[str], *, method: str = "GET", kind: str = "batch",
           **headers: str) -> list[dict[str, Any]]:
    bundle = {"resourceType": "Bundle", "type": kind,
              "entry": [{"request": {"method": method, "url": url}} for url in urls]}
    resp = client.post("/fhir", data=orjson.dumps(bundle), headers={**JSON_HEADERS, **headers})
    assert resp.status_code == 200, resp.data[:500]
    entries: list[dict[str, Any]] = _json(resp)["entry"]
    return entries


def _stable(value: Any) -> Any:
    """A body without what differs between two answers of the same request (an outcome entry's random fullUrl)."""
    if isinstance(value, dict):
        return {k: ("urn:uuid:?" if k == "fullUrl" and str(v).startswith("urn:uuid:") else _stable(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


@pytest.fixture(scope="module")
def world(client: FlaskClient) -> dict[str, Any]:
    family = "b" + secrets.token_hex(5)
    made = client.post("/fhir/Patient", data=orjson.dumps(
        {"resourceType": "Patient", "name": [{"family": family}], "gender": "female", "birthDate": "1970-01-02"}),
        headers=JSON_HEADERS)
    assert made.status_code == 201
    pid = _json(made)["id"]
    code = "c" + secrets.token_hex(4)
    for day in ("01", "02", "03"):
        resp = client.post("/fhir/Observation", data=orjson.dumps({
            "resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "urn:x", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"2024-01-{day}"}), headers=JSON_HEADERS)
        assert resp.status_code == 201
    return {"pid": pid, "family": family, "code": code}


def _urls(world: dict[str, Any]) -> list[str]:
    pid, code, family = world["pid"], world["code"], world["family"]
    return [
        f"Observation?code={code}&_count=2",  # a page and its next link
        f"Observation?code={code}&_summary=count",  # the total only
        f"Patient?family={family}&_elements=gender&_count=1",  # subsetted
        f"Observation?code={code}&_total=none&_sort=-date",
        f"Patient?family={family}&foo=bar",  # lenient: 200 and an outcome entry
        "Patient/_history?_count=1",
        f"Patient/{pid}/_history",
        f"Patient/{pid}/_history/1",
        f"Patient/{pid}?_summary=true",
        "metadata",
        f"Patient/{pid}",
        "Patient/no-such-patient",
        "Foo/1",
        "Foo?x=1",
        f"Patient?family={family}&_summary=maybe",
    ]


def test_a_batch_get_entry_answers_what_the_same_get_answers(client: FlaskClient, world: dict[str, Any]) -> None:
    """Status, resource (with the same result parameters applied), etag and lastModified, outcome: as REST."""
    urls = _urls(world)
    entries = _batch(client, urls)
    for url, entry in zip(urls, entries, strict=True):
        alone = client.get(f"/fhir/{url}", headers=AUTH)
        response = entry["response"]
        assert response["status"].split()[0] == str(alone.status_code), (url, entry)
        if alone.status_code >= 400:
            assert response["outcome"] == _json(alone), url
            assert "resource" not in entry
            continue
        assert _stable(entry["resource"]) == _stable(_json(alone)), url
        assert response.get("etag") == alone.headers.get("ETag"), url
        if "ETag" in alone.headers:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"
            assert response["lastModified"] == resource["meta"]["lastUpdated"]
    paged, count, subsetted, untotalled, lenient = (entries[i]["resource"] for i in range(5))
    assert len(paged["entry"]) == 2 and paged["total"] == 3
    assert any(link["relation"] == "next" and link["url"].startswith(BASE) for link in paged["link"])
    assert count["total"] == 3 and "entry" not in count
    assert subsetted["entry"][0]["resource"]["meta"]["tag"][0]["code"] == "SUBSETTED"
    assert "name" not in subsetted["entry"][0]["resource"]
    assert "total" not in untotalled
    assert lenient["entry"][-1]["search"]["mode"] == "outcome"
    assert entries[5]["resource"]["type"] == "history" and len(entries[5]["resource"]["entry"]) == 1
    assert entries[9]["resource"]["resourceType"] == "CapabilityStatement"
    assert entries[12]["response"]["status"] == "404 Not Found"
    assert entries[12]["response"]["outcome"]["issue"][0]["diagnostics"] == "unknown resource type 'Foo'"


def test_a_batch_says_strict_handling_for_its_entries(client: FlaskClient, world: dict[str, Any]) -> None:
    url = f"Patient?family={world['family']}&foo=bar"
    [entry] = _batch(client, [url], Prefer="handling=strict")
    alone = client.get(f"/fhir/{url}", headers={**AUTH, "Prefer": "handling=strict"})
    assert alone.status_code == 400
    assert entry["response"]["status"] == "400 Bad Request" and entry["response"]["outcome"] == _json(alone)


def test_a_head_entry_has_no_body(client: FlaskClient, world: dict[str, Any]) -> None:
    pid = world["pid"]
    read, search, missing = _batch(client, [f"Patient/{pid}", f"Patient?family={world['family']}", "Patient/nope"],
                                   method="HEAD")
    assert read["response"]["status"] == "200 OK" and read["response"]["etag"] == 'W/"1"'
    assert "resource" not in read and "fullUrl" not in read
    assert search["response"]["status"] == "200 OK" and "resource" not in search
    assert missing["response"]["status"] == "404 Not Found"


def test_a_conditional_read_entry_is_304_when_the_copy_is_current(client: FlaskClient, world: dict[str, Any]) -> None:
    """R4 http.html#cread: ifNoneMatch (weak or strong tag, or *) and ifModifiedSince; If-None-Match wins."""
    pid = world["pid"]
    current = _json(client.get(f"/fhir/Patient/{pid}", headers=AUTH))
    updated = current["meta"]["lastUpdated"]
    cases = [({"ifNoneMatch": 'W/"1"'}, "304"), ({"ifNoneMatch": '"1"'}, "304"), ({"ifNoneMatch": "*"}, "304"),
             ({"ifNoneMatch": 'W/"7", W/"1"'}, "304"), ({"ifNoneMatch": 'W/"2"'}, "200"),
             ({"ifModifiedSince": updated}, "304"), ({"ifModifiedSince": "2000-01-01T00:00:00Z"}, "200"),
             ({"ifModifiedSince": "2999-01-01T00:00:00Z", "ifNoneMatch": 'W/"2"'}, "200")]
    for kind in ("batch", "transaction"):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "GET", "url": f"Patient/{pid}", **conditions}} for conditions, _ in cases]}
        resp = client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS)
        assert resp.status_code == 200, resp.data[:300]
        for (conditions, status), entry in zip(cases, _json(resp)["entry"], strict=True):
            assert entry["response"]["status"].split()[0] == status, (kind, conditions)
            assert entry["response"]["etag"] == 'W/"1"'
            assert ("resource" in entry) == (status == "200"), (kind, conditions)


def _log(app: Flask, after: int) -> list[tuple[str, str, str, str, str, str]]:
    engine = app.extensions["healthledger.engine"]
    spool.ingest(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(AccessLogEntry.body).where(AccessLogEntry.id > after)
                            .order_by(AccessLogEntry.id)).scalars().all()
    entries = [decode_entry(row) for row in rows]
    return [(e.action, e.resource_type, e.resource_id, e.patient_pseudonym, e.decision, e.reason) for e in entries]


def _last_log_id(app: Flask) -> int:
    engine = app.extensions["healthledger.engine"]
    spool.ingest(engine)
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(AccessLogEntry.id), 0))).scalar_one())


def test_each_batch_get_entry_is_decided_and_logged_as_the_same_get(
        app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    """The access log gains, for a batch's GET entries, what the same GETs one by one add (refusals included)."""
    urls = _urls(world)
    before = _last_log_id(app)
    for url in urls:
        client.get(f"/fhir/{url}", headers=AUTH)
    alone = _log(app, before)
    middle = _last_log_id(app)
    _batch(client, urls)
    batched = _log(app, middle)
    assert batched == alone, "\n".join(map(str, [*alone, "--", *batched]))
    assert alone  # (the dev client's reads are logged)


def test_transaction_entries_have_absolute_urls_and_search_result_parameters(
        client: FlaskClient, world: dict[str, Any]) -> None:
    """R4 bundle.html: fullUrl is absolute (the server's base, as REST gives it), also in a nested searchset;
    response.location as REST's Location header; a transaction's GET entries take _count, _summary, _elements."""
    code = world["code"]
    new = f"urn:uuid:{uuid.uuid4()}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": new, "resource": {"resourceType": "Patient", "gender": "male"},
         "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"Observation?code={code}&_count=2"}},
        {"request": {"method": "GET", "url": f"Observation?code={code}&_summary=count"}},
        {"request": {"method": "GET", "url": f"Patient?family={world['family']}&_elements=gender"}},
        {"request": {"method": "GET", "url": f"Observation?code={code}&_total=none"}},
        {"request": {"method": "GET", "url": f"Patient/{world['pid']}"}},
    ]}
    resp = client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS)
    assert resp.status_code == 200, resp.data[:500]
    created, paged, count, subsetted, untotalled, read = _json(resp)["entry"]
    made = created["resource"]
    assert created["fullUrl"] == f"{BASE}/Patient/{made['id']}"
    assert created["response"]["location"] == f"{BASE}/Patient/{made['id']}/_history/1"
    assert client.get(f"/fhir/Patient/{made['id']}", headers=AUTH).status_code == 200
    assert len(paged["resource"]["entry"]) == 2 and paged["resource"]["total"] == 3
    assert all(e["fullUrl"].startswith(f"{BASE}/Observation/") for e in paged["resource"]["entry"])
    assert count["resource"]["total"] == 3 and "entry" not in count["resource"]
    [only] = subsetted["resource"]["entry"]
    assert "name" not in only["resource"] and only["resource"]["meta"]["tag"][0]["code"] == "SUBSETTED"
    assert "total" not in untotalled["resource"] and len(untotalled["resource"]["entry"]) == 3
    assert read["fullUrl"] == f"{BASE}/Patient/{world['pid']}" and "location" not in read["response"]


def test_batch_entries_have_absolute_urls(client: FlaskClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}}]}
    [created] = _json(client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS))["entry"]
    pid = created["resource"]["id"]
    assert created["fullUrl"] == f"{BASE}/Patient/{pid}"
    alone = client.get(f"/fhir/Patient/{pid}", headers=AUTH)
    assert created["response"]["location"] == f"{BASE}/Patient/{pid}/_history/1"
    assert created["response"]["etag"] == alone.headers["ETag"]


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_prefer_return_applies_to_each_written_resource(client: FlaskClient, kind: str) -> None:
    """Prefer: return=minimal | representation | OperationOutcome (R4 http.html#ops), as for the same REST write."""
    pid = "p" + secrets.token_hex(6)
    writes = [{"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
              {"resource": {"resourceType": "Patient", "id": pid, "gender": "female"},
               "request": {"method": "PUT", "url": f"Patient/{pid}"}}]
    bundle = {"resourceType": "Bundle", "type": kind, "entry": writes}
    minimal = _json(client.post("/fhir", data=orjson.dumps(bundle), headers={**JSON_HEADERS, "Prefer": "return=minimal"}))
    for entry, status in zip(minimal["entry"], ("201", "201"), strict=True):
        assert "resource" not in entry and "outcome" not in entry["response"]
        assert entry["response"]["status"].startswith(status) and entry["response"]["location"].startswith(BASE)
        assert entry["response"]["etag"] == 'W/"1"'
    writes[1]["resource"]["gender"] = "other"
    bundle = {"resourceType": "Bundle", "type": kind, "entry": writes}
    told = _json(client.post("/fhir", data=orjson.dumps(bundle),
                             headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"}))
    created, updated = told["entry"]
    assert "resource" not in created and "resource" not in updated
    rest = client.put(f"/fhir/Patient/{pid}", data=orjson.dumps({**writes[1]["resource"], "gender": "unknown"}),
                      headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"})
    assert _json(rest)["issue"][0]["diagnostics"] == f"Patient/{pid} updated (version 3)"
    assert updated["response"]["outcome"]["issue"][0]["diagnostics"] == f"Patient/{pid} updated (version 2)"
    assert created["response"]["outcome"]["issue"][0]["diagnostics"].endswith("created (version 1)")
    shown = _json(client.post("/fhir", data=orjson.dumps(bundle),
                              headers={**JSON_HEADERS, "Prefer": "return=representation"}))
    assert all(e["resource"]["resourceType"] == "Patient" for e in shown["entry"])


def test_an_unknown_type_in_any_entry_is_the_404_of_the_same_request(client: FlaskClient) -> None:
    alone = client.post("/fhir/Foo", data=orjson.dumps({"resourceType": "Foo"}), headers=JSON_HEADERS)
    assert alone.status_code == 404
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Foo"}},
        {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Foo/x"}},
        {"request": {"method": "DELETE", "url": "Foo/x"}},
        {"request": {"method": "GET", "url": "Foo/x"}},
    ]}
    entries = _json(client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS))["entry"]
    for entry in entries:
        assert entry["response"]["status"] == "404 Not Found"
        assert entry["response"]["outcome"]["issue"] == _json(alone)["issue"]
    transaction = {**bundle, "type": "transaction", "entry": bundle["entry"][2:3]}
    refused = client.post("/fhir", data=orjson.dumps(transaction), headers=JSON_HEADERS)
    assert refused.status_code == 400  # the transaction as a whole is invalid, named by its entry in REST's words
    assert _json(refused)["issue"][0]["diagnostics"] == "Bundle entry 0: unknown resource type 'Foo'"


def test_batch_entries_of_the_access_log_and_research_answer_as_their_modules_rest(
        client: FlaskClient, world: dict[str, Any]) -> None:
    """The reads and searches other modules serve under /fhir (the access log, research) are the same requests in a
    batch: the access log's entries about the patient (the store holds no AuditEvent), a lenient research search."""
    pid = world["pid"]
    assert client.get(f"/fhir/Patient/{pid}", headers=AUTH).status_code == 200  # at least one entry about it
    log, studies = _batch(client, [f"AuditEvent?patient={pid}&_count=50", "ResearchStudy?foo=1"])
    alone = _json(client.get(f"/fhir/AuditEvent?patient={pid}&_count=50", headers=AUTH))
    assert log["response"]["status"] == "200 OK" and log["resource"]["total"] >= 1
    assert {e["fullUrl"] for e in log["resource"]["entry"]} <= {e["fullUrl"] for e in alone["entry"]}
    assert studies["response"]["status"] == "200 OK"
    assert studies["resource"]["entry"][-1]["search"]["mode"] == "outcome"
    [strict] = _batch(client, ["ResearchStudy?foo=1"], Prefer="handling=strict")
    assert strict["response"]["status"] == "400 Bad Request"


def test_a_transaction_read_takes_summary_and_elements_as_the_rest_read(
        client: FlaskClient, world: dict[str, Any]) -> None:
    pid = world["pid"]
    urls = [f"Patient/{pid}?_elements=gender", f"Patient/{pid}/_history/1?_summary=true", f"Patient/{pid}?foo=bar"]
    entries = _batch(client, urls, kind="transaction")
    for url, entry in zip(urls, entries, strict=True):
        alone = client.get(f"/fhir/{url}", headers=AUTH)
        assert alone.status_code == 200 and entry["resource"] == _json(alone), url
    assert "name" not in entries[0]["resource"] and entries[0]["resource"]["gender"] == "female"
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"request": {"method": "GET", "url": f"Patient/{pid}?_summary=count"}}]}
    refused = client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS)
    alone = client.get(f"/fhir/Patient/{pid}?_summary=count", headers=AUTH)
    assert refused.status_code == alone.status_code == 400
    assert _json(alone)["issue"][0]["diagnostics"] in _json(refused)["issue"][0]["diagnostics"]


def test_a_delete_entry_says_the_version_it_made_as_rest_does(client: FlaskClient) -> None:
    made = [_json(client.post("/fhir/Patient", data=orjson.dumps({"resourceType": "Patient"}), headers=JSON_HEADERS))
            ["id"] for _ in range(2)]
    alone = client.delete(f"/fhir/Patient/{made[0]}", headers=AUTH)
    [entry] = _batch(client, [f"Patient/{made[1]}"], method="DELETE")
    assert alone.status_code == 204 and entry["response"]["status"] == "204 No Content"
    assert entry["response"]["etag"] == alone.headers["ETag"] == 'W/"2"'
