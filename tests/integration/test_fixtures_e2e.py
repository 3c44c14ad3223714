"""The API driven as an EHR would, on FHIR data written by others (../shared/fixtures, see its README).

Synthea transaction Bundles are POSTed (hospital and practitioner Bundles first), the Bulk Data NDJSON is
imported through the store's importer, then everything is read, searched, updated, paged and deleted
over HTTP. The transaction-bundle edge cases and the official R4 examples check spec behaviour.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app, dispose
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from fhir_adapters.consent import consent_rules
from fhir_adapters.validation import loads_json, parse_resource
from healthledger.consent.lifecycle import CHAIN_STATE_URL
from healthledger.store.importer import Importer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ehr_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    app = build_app(api_settings(tmp_path_factory.mktemp("e2e"), max_request_bytes=8 * 1024 * 1024))
    yield app
    dispose(app)


@pytest.fixture(scope="module")
def ehr(ehr_app: Flask) -> FlaskClient:
    return ehr_app.test_client()


def body(resp: TestResponse) -> Any:
    return orjson.loads(resp.data)


def outcome_of(resp: TestResponse) -> dict[str, Any]:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.data[:300])
    outcome = body(resp)
    assert outcome["resourceType"] == "OperationOutcome", outcome
    assert "Traceback" not in resp.get_data(as_text=True)
    return outcome  # type: ignore[no-any-return]


def expressions(outcome: dict[str, Any]) -> str:
    return " ".join(e for issue in outcome["issue"] for e in issue.get("expression", [])) + " " + " ".join(
        issue.get("diagnostics", "") for issue in outcome["issue"]
    )


def get(client: FlaskClient, url: str) -> TestResponse:
    if url.startswith("http"):
        parts = urlsplit(url)
        url = f"{parts.path}?{parts.query}" if parts.query else parts.path
    return client.get(url, headers=AUTH)


def all_pages(client: FlaskClient, url: str, *, limit: int = 500) -> list[dict[str, Any]]:
    """Every resource of a search, following `next` links until there are none (bounded)."""
    out: list[dict[str, Any]] = []
    for _ in range(limit):
        resp = get(client, url)
        assert resp.status_code == 200, resp.data[:300]
        bundle = body(resp)
        out += [entry["resource"] for entry in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return out
        url = nxt[0]
    raise AssertionError("paging did not end")


def ids(resources: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in resources]


def count(client: FlaskClient, resource_type: str, query: str = "") -> int:
    resp = get(client, f"/fhir/{resource_type}?_summary=count{'&' + query if query else ''}")
    assert resp.status_code == 200, resp.data[:300]
    return int(body(resp)["total"])


def ndjson(fixtures: Path, resource_type: str) -> list[dict[str, Any]]:
    path = fixtures / "bulk-10-patients" / f"{resource_type}.000.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- loading ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthea(ehr: FlaskClient, fixtures_dir: Path) -> dict[str, str]:
    """POST every Synthea Bundle as a transaction; returns {bundle file: the new Patient id}."""
    folder = fixtures_dir / "synthea"
    first = sorted(folder.glob("*Information*.json"))
    patients = sorted(p for p in folder.glob("*.json") if p not in first)
    assert len(first) == 2 and len(patients) == 5
    created: dict[str, str] = {}
    for path in first + patients:
        raw = path.read_bytes()
        sent = json.loads(raw)
        resp = ehr.post("/fhir", data=raw, headers=JSON_HEADERS)
        assert resp.status_code == 200, (path.name, resp.data[:500])
        result = body(resp)
        assert result["type"] == "transaction-response"
        assert len(result["entry"]) == len(sent["entry"])
        assert all(e["response"]["status"].startswith("201") for e in result["entry"])
        for sent_entry, got in zip(sent["entry"], result["entry"]):
            if sent_entry["resource"]["resourceType"] == "Patient":
                created[path.name] = got["response"]["location"].split("Patient/")[1].split("/")[0]
    return created


@pytest.fixture(scope="module")
def bulk(ehr_app: Flask, ehr: FlaskClient, fixtures_dir: Path) -> dict[str, list[dict[str, Any]]]:
    store = ehr_app.extensions["healthledger.store"]
    report = Importer(store).import_paths([fixtures_dir / "bulk-10-patients"])
    expected = {p.stem.split(".")[0]: ndjson(fixtures_dir, p.stem.split(".")[0])
                for p in (fixtures_dir / "bulk-10-patients").glob("*.ndjson")}
    assert report.rejected == 0, report
    assert report.imported == sum(len(v) for v in expected.values())
    return expected


# -- Synthea over HTTP --------------------------------------------------------------------------------
def test_synthea_transactions_resolve_references(ehr: FlaskClient, synthea: dict[str, str], fixtures_dir: Path) -> None:
    for name, patient_id in synthea.items():
        patient = body(get(ehr, f"/fhir/Patient/{patient_id}"))
        sent = json.loads((fixtures_dir / "synthea" / name).read_text())
        sent_obs = sum(1 for e in sent["entry"] if e["resource"]["resourceType"] == "Observation")
        observations = all_pages(ehr, f"/fhir/Observation?patient={patient_id}&_count=20")
        assert len(observations) == sent_obs
        assert len(set(ids(observations))) == sent_obs
        assert all(o["subject"]["reference"] == f"Patient/{patient_id}" for o in observations)
        family = patient["name"][0]["family"]
        assert patient_id in ids(all_pages(ehr, f"/fhir/Patient?family={family}"))


def test_synthea_search_by_code_and_date(ehr: FlaskClient, synthea: dict[str, str], fixtures_dir: Path) -> None:
    name, patient_id = next(iter(synthea.items()))
    sent = json.loads((fixtures_dir / "synthea" / name).read_text())
    codes = Counter(
        (c["system"], c["code"])
        for e in sent["entry"] if e["resource"]["resourceType"] == "Observation"
        for c in e["resource"]["code"]["coding"]
    )
    (system, code), n = codes.most_common(1)[0]
    found = all_pages(ehr, f"/fhir/Observation?patient=Patient/{patient_id}&code={system}|{code}")
    assert len(found) == n
    assert all(any(c["code"] == code for c in o["code"]["coding"]) for o in found)
    assert len(all_pages(ehr, f"/fhir/Observation?subject={patient_id}&code={code}")) == n

    everything = {o["id"]: o for o in all_pages(ehr, f"/fhir/Observation?patient={patient_id}")}
    dates = sorted(o["effectiveDateTime"][:10] for o in everything.values())
    pivot = dates[len(dates) // 2]
    later = set(ids(all_pages(ehr, f"/fhir/Observation?patient={patient_id}&date=ge{pivot}")))
    earlier = set(ids(all_pages(ehr, f"/fhir/Observation?patient={patient_id}&date=lt{pivot}")))
    assert later | earlier == set(everything)
    assert later and earlier and not later & earlier
    assert all(everything[i]["effectiveDateTime"][:10] >= pivot for i in later)


# -- Bulk NDJSON ----------------------------------------------------------------------------------
def test_bulk_patients_read_and_search(ehr: FlaskClient, bulk: dict[str, list[dict[str, Any]]]) -> None:
    for patient in bulk["Patient"]:
        resp = get(ehr, f"/fhir/Patient/{patient['id']}")
        assert resp.status_code == 200
        got = body(resp)
        assert got["name"] == patient["name"] and got["birthDate"] == patient["birthDate"]
        assert resp.headers["ETag"] == f'W/"{got["meta"]["versionId"]}"'
    target = bulk["Patient"][0]
    family = target["name"][0]["family"]
    assert target["id"] in ids(all_pages(ehr, f"/fhir/Patient?name={family}"))
    assert target["id"] in ids(all_pages(ehr, f"/fhir/Patient?birthdate={target['birthDate']}"))
    same_day = {p["id"] for p in bulk["Patient"] if p["birthDate"] == target["birthDate"]}
    found = {r["id"] for r in all_pages(ehr, f"/fhir/Patient?birthdate={target['birthDate']}")}
    assert same_day <= found
    identifier = target["identifier"][0]
    assert ids(all_pages(ehr, f"/fhir/Patient?identifier={identifier['system']}|{identifier['value']}")) == [
        target["id"]
    ]


def test_bulk_paging_is_complete_and_duplicate_free(ehr: FlaskClient, bulk: dict[str, list[dict[str, Any]]]) -> None:
    by_patient = Counter(e["subject"]["reference"] for e in bulk["Encounter"])
    reference, n = by_patient.most_common(1)[0]
    expected = {e["id"] for e in bulk["Encounter"] if e["subject"]["reference"] == reference}
    seen = ids(all_pages(ehr, f"/fhir/Encounter?patient={reference}&_count=50"))
    assert len(seen) == n == len(expected)
    assert len(set(seen)) == len(seen) and set(seen) == expected
    assert count(ehr, "Encounter", f"patient={reference}") == n

    conditions = [c for c in bulk["Condition"] if c["subject"]["reference"] == reference]
    coding = Counter((c["code"]["coding"][0]["system"], c["code"]["coding"][0]["code"]) for c in conditions)
    (system, code), k = coding.most_common(1)[0]
    assert count(ehr, "Condition", f"patient={reference}&code={system}|{code}") == k
    statuses = Counter(c["clinicalStatus"]["coding"][0]["code"] for c in conditions)
    for status, k in statuses.items():
        assert count(ehr, "Condition", f"patient={reference}&clinical-status={status}") == k
    requests = [m for m in bulk["MedicationRequest"] if m["subject"]["reference"] == reference]
    for status, k in Counter(m["status"] for m in requests).items():
        assert count(ehr, "MedicationRequest", f"patient={reference}&status={status}") == k


def test_bulk_update_with_if_match_and_delete(ehr: FlaskClient, bulk: dict[str, list[dict[str, Any]]]) -> None:
    patient = bulk["Patient"][1]
    resp = get(ehr, f"/fhir/Patient/{patient['id']}")
    current, tag = body(resp), resp.headers["ETag"]
    current["telecom"] = [{"system": "phone", "value": "555-0100", "use": "home"}]
    updated = ehr.put(f"/fhir/Patient/{patient['id']}", data=orjson.dumps(current),
                      headers={**JSON_HEADERS, "If-Match": tag})
    assert updated.status_code == 200 and updated.headers["ETag"] != tag
    stale = ehr.put(f"/fhir/Patient/{patient['id']}", data=orjson.dumps(current),
                    headers={**JSON_HEADERS, "If-Match": tag})
    assert stale.status_code == 412 and outcome_of(stale)
    assert body(get(ehr, f"/fhir/Patient/{patient['id']}"))["telecom"][0]["value"] == "555-0100"

    encounter = next(e for e in bulk["Encounter"] if e["subject"]["reference"] == f"Patient/{patient['id']}")
    before = count(ehr, "Encounter", f"patient={patient['id']}")
    assert ehr.delete(f"/fhir/Encounter/{encounter['id']}", headers=AUTH).status_code in (200, 204)
    assert get(ehr, f"/fhir/Encounter/{encounter['id']}").status_code == 410
    assert count(ehr, "Encounter", f"patient={patient['id']}") == before - 1
    history = body(get(ehr, f"/fhir/Encounter/{encounter['id']}/_history"))
    assert next(e["request"]["method"] for e in history["entry"]) == "DELETE"


# -- transaction and batch edge cases ---------------------------------------------------------------
def bundle_file(fixtures_dir: Path, name: str) -> bytes:
    return (fixtures_dir / "transaction-bundles" / name).read_bytes()


def totals(ehr: FlaskClient) -> dict[str, int]:
    return {t: count(ehr, t) for t in ("Patient", "Observation", "ImagingStudy", "Encounter", "Binary")}


# Each file's expected outcome. Rejections name the entry (or element) at fault, and write nothing.
REJECTED = [
    # (file, status, a fragment the OperationOutcome must name)
    ("Bundle-Batch.json", 400, "entry[4].fullUrl"),  # bdl-7: entries 2 and 4 share a fullUrl
    ("Bundle-BatchWithDuplicatedItems.json", 400, "entry[2].fullUrl"),
    ("Bundle-BatchWithInvalidEleEnums.json", 400, "entry[4].fullUrl"),
    ("Bundle-BinaryPatch.json", 400, "entry[1]"),
    ("Bundle-FhirPatch.json", 400, "entry[1]"),
    ("Bundle-InvalidBundleType.json", 400, "Bundle.type"),
    ("Bundle-TypeMissing.json", 400, "Bundle.type"),
    ("Bundle-Transaction.json", 400, "entry[7]"),  # ValueSet/$lookup: operations are not supported
    ("Bundle-TransactionForRollBack.json", 404, "entry[1]"),  # GET of a missing Patient fails it all
    ("Bundle-TransactionWithConditionalCreateAndReference.json", 400, "entry[1].resource.series[0].instance[0]"),
    ("Bundle-TransactionWithConditionalUpdateAndReference.json", 400, "entry[1].resource.series[0].instance[0]"),
    ("Bundle-TransactionWithForeignReferenceInResourceBody.json", 400, "entry[0].resource.subject"),
    ("Bundle-TransactionWithInvalidBundleEntry.json", 400, "JSON"),
    ("Bundle-TransactionWithInvalidProcessingRecord.json", 400, "entry[5]"),
    ("Bundle-TransactionWithInvalidProcessingRoutes.json", 400, "entry[1]"),
    ("Bundle-TransactionWithInvalidResourceType.json", 400, "entry[0].resource.subject"),
    ("Bundle-TransactionWithMetaHistory.json", 400, "entry[0]"),
    ("Bundle-TransactionWithMultipleEntriesModifyingSameResource.json", 400, "entry[2]"),
    ("Bundle-TransactionWithMultipleResourcesWithSameFullUrl.json", 400, "entry[1].fullUrl"),
    ("Bundle-TransactionWithPOSTFullUrlMatchesWithPUTRequestUrl.json", 400, "entry[1]"),
]


def test_every_fixture_bundle_is_covered(fixtures_dir: Path) -> None:
    covered = {name for name, _, _ in REJECTED} | {
        "Bundle-TransactionForRollBackWithDelete.json",
        "Bundle-TransactionWithConditionalReferenceInResourceBody.json",
        "Bundle-BatchWithConditionalUpdateByIdentifier.json",
        "Bundle-MissingIdentifier.json",
        "Bundle-TransactionWithAllValidRoutes.json",
        "Bundle-TransactionWithValidBundleEntry.json",
        "Bundle-TransactionWithConditionalReferenceReferringToSameResource.json",
    }
    assert {p.name for p in (fixtures_dir / "transaction-bundles").glob("*.json")} == covered


@pytest.mark.parametrize("name,status,names", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_bundles_write_nothing(
    ehr: FlaskClient, fixtures_dir: Path, name: str, status: int, names: str
) -> None:
    before = totals(ehr)
    resp = ehr.post("/fhir", data=bundle_file(fixtures_dir, name), headers=JSON_HEADERS)
    outcome = outcome_of(resp)
    assert resp.status_code == status, outcome
    assert names in expressions(outcome), outcome
    assert totals(ehr) == before


def test_rollback_with_delete_keeps_the_deleted_resource(ehr: FlaskClient, fixtures_dir: Path) -> None:
    pid = "patient-rollback-0"
    seed = {"resourceType": "Patient", "id": pid, "gender": "unknown"}
    assert ehr.put(f"/fhir/Patient/{pid}", data=orjson.dumps(seed), headers=JSON_HEADERS).status_code in (200, 201)
    raw = json.loads(bundle_file(fixtures_dir, "Bundle-TransactionForRollBackWithDelete.json").decode("utf-8-sig"))
    outcome = outcome_of(ehr.post("/fhir", data=orjson.dumps(raw), headers=JSON_HEADERS))
    assert "entry[2]" in expressions(outcome)  # Observation id differs from its request URL
    assert get(ehr, f"/fhir/Patient/{pid}").status_code == 200  # the DELETE of entry 0 was rolled back
    # Repaired, the If-Match W/"2112" on a resource that does not exist fails the transaction instead.
    raw["entry"][2]["resource"]["id"] = "observation-rollback-1"
    resp = ehr.post("/fhir", data=orjson.dumps(raw), headers=JSON_HEADERS)
    assert resp.status_code in (409, 412), resp.data[:300]
    assert get(ehr, f"/fhir/Patient/{pid}").status_code == 200
    assert get(ehr, "/fhir/Patient/patient-rollback-1").status_code == 404


def with_sop_class(raw: bytes) -> bytes:
    """The fixture's ImagingStudy lacks `sopClass` (1..1 in R4); add it so the rest of the Bundle can be tested."""
    bundle = json.loads(raw.decode("utf-8-sig"))
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ImagingStudy":
            for series in entry["resource"]["series"]:
                series.setdefault("modality", {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"})
                for instance in series["instance"]:
                    instance.setdefault("sopClass", {"system": "urn:ietf:rfc:3986",
                                                     "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"})
    return orjson.dumps(bundle)


def location_id(entry: dict[str, Any], resource_type: str) -> str:
    return str(entry["response"]["location"].split(f"{resource_type}/")[1].split("/")[0])


@pytest.mark.parametrize("name", ["Bundle-TransactionWithConditionalCreateAndReference.json",
                                  "Bundle-TransactionWithConditionalUpdateAndReference.json"])
def test_conditional_create_or_update_and_reference(ehr: FlaskClient, fixtures_dir: Path, name: str) -> None:
    raw = with_sop_class(bundle_file(fixtures_dir, name))
    first = ehr.post("/fhir", data=raw, headers=JSON_HEADERS)
    assert first.status_code == 200, first.data[:500]
    entries = body(first)["entry"]
    patient_id = location_id(entries[0], "Patient")
    study = body(get(ehr, f"/fhir/ImagingStudy/{location_id(entries[1], 'ImagingStudy')}"))
    assert study["subject"]["reference"] == f"Patient/{patient_id}"

    again = body(ehr.post("/fhir", data=raw, headers=JSON_HEADERS))  # the condition now matches that Patient
    assert again["entry"][0]["response"]["status"].startswith("200")
    assert location_id(again["entry"][0], "Patient") == patient_id
    assert count(ehr, "Patient", "identifier=|11788759296811") == 1


def test_conditional_reference_in_body_resolves_to_one_match(ehr: FlaskClient, fixtures_dir: Path) -> None:
    raw = bundle_file(fixtures_dir, "Bundle-TransactionWithConditionalReferenceInResourceBody.json")
    before = totals(ehr)
    resp = ehr.post("/fhir", data=raw, headers=JSON_HEADERS)  # no Patient with identifier 12345 yet
    assert "entry[0]" in expressions(outcome_of(resp))
    assert totals(ehr) == before
    created = ehr.post("/fhir/Patient", data=orjson.dumps(
        {"resourceType": "Patient", "identifier": [{"value": "12345"}]}), headers=JSON_HEADERS)
    patient_id = body(created)["id"]
    resp = ehr.post("/fhir", data=raw, headers=JSON_HEADERS)
    assert resp.status_code == 200, resp.data[:500]
    for entry in body(resp)["entry"]:
        obs = body(get(ehr, f"/fhir/Observation/{location_id(entry, 'Observation')}"))
        assert obs["subject"]["reference"] == f"Patient/{patient_id}"


def test_batch_conditional_updates_create_then_update(ehr: FlaskClient, fixtures_dir: Path) -> None:
    raw = bundle_file(fixtures_dir, "Bundle-BatchWithConditionalUpdateByIdentifier.json")
    first = body(ehr.post("/fhir", data=raw, headers=JSON_HEADERS))
    assert first["type"] == "batch-response"
    # Entry 0's identifier may already exist (the conditional-create fixtures use it too): then it updates.
    assert [e["response"]["status"].split()[0] for e in first["entry"]][1:] == ["201"] * 3
    second = body(ehr.post("/fhir", data=raw, headers=JSON_HEADERS))
    assert [e["response"]["status"].split()[0] for e in second["entry"]] == ["200"] * 4
    for a, b in zip(first["entry"], second["entry"]):
        assert location_id(a, "Patient") == location_id(b, "Patient")
        version = int(a["response"]["etag"][3:-1])
        assert b["response"]["etag"] == f'W/"{version + 1}"'


def test_batch_entries_fail_alone(ehr: FlaskClient, fixtures_dir: Path) -> None:
    resp = ehr.post("/fhir", data=bundle_file(fixtures_dir, "Bundle-MissingIdentifier.json"), headers=JSON_HEADERS)
    assert resp.status_code == 200
    (entry,) = body(resp)["entry"]
    assert entry["response"]["status"].startswith("400")
    assert "entry[0]" in expressions(entry["response"]["outcome"])

    # Bundle-Batch.json without its bdl-7 violation: every entry gets its own status.
    bundle = json.loads(bundle_file(fixtures_dir, "Bundle-Batch.json").decode("utf-8-sig"))
    del bundle["entry"][4]["fullUrl"]
    result = body(ehr.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS))
    assert result["type"] == "batch-response" and len(result["entry"]) == 10
    statuses = [e["response"]["status"].split()[0] for e in result["entry"]]
    assert statuses[0] == "201"
    assert statuses[2] in ("200", "201")  # PUT Patient/123
    assert statuses[4] in ("400", "412")  # If-Match W/"3a" is not a version of it
    assert statuses[7].startswith("4")  # $lookup is not supported
    assert statuses[9] == "404"  # GET Patient/12334
    for entry, status in zip(result["entry"], statuses):
        if status.startswith("4"):
            assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert get(ehr, "/fhir/Patient/123").status_code == 200


@pytest.mark.parametrize("name", ["Bundle-TransactionWithAllValidRoutes.json",
                                  "Bundle-TransactionWithValidBundleEntry.json"])
def test_valid_transactions_commit_every_entry(ehr: FlaskClient, fixtures_dir: Path, name: str) -> None:
    sent = json.loads(bundle_file(fixtures_dir, name).decode("utf-8-sig"))
    resp = ehr.post("/fhir", data=bundle_file(fixtures_dir, name), headers=JSON_HEADERS)
    assert resp.status_code == 200, resp.data[:500]
    result = body(resp)
    assert result["type"] == "transaction-response" and len(result["entry"]) == len(sent["entry"])
    for sent_entry, got in zip(sent["entry"], result["entry"]):
        status = got["response"]["status"].split()[0]
        assert status in ("200", "201"), got
        if sent_entry["request"]["method"] in ("POST", "PUT"):
            rtype = sent_entry["request"]["url"].split("/")[0].split("?")[0]
            assert get(ehr, f"/fhir/{rtype}/{location_id(got, rtype)}").status_code == 200


def test_conditional_references_to_the_same_resource_stay_consistent(ehr: FlaskClient, fixtures_dir: Path) -> None:
    name = "Bundle-TransactionWithConditionalReferenceReferringToSameResource.json"
    before = count(ehr, "Patient", "identifier=http:/example.org/fhir/ids|234234")
    resp = ehr.post("/fhir", data=bundle_file(fixtures_dir, name), headers=JSON_HEADERS)
    after = count(ehr, "Patient", "identifier=http:/example.org/fhir/ids|234234")
    if resp.status_code == 200:
        created = sum(e["response"]["status"].startswith("201") for e in body(resp)["entry"])
        assert after == before + created
    else:
        outcome_of(resp)
        assert after == before


# -- the official R4 examples ---------------------------------------------------------------------------
def _comparable(resource: dict[str, Any]) -> dict[str, Any]:
    resource = dict(resource)
    meta = {k: v for k, v in (resource.pop("meta", None) or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        resource["meta"] = meta
    return resource


def test_official_examples_round_trip(ehr: FlaskClient, fixtures_dir: Path) -> None:
    folder = fixtures_dir / "fhir-r4-examples"
    checked = 0
    for path in sorted(folder.glob("*.json")):
        raw = path.read_bytes()
        sent = loads_json(raw)
        rtype = sent["resourceType"]
        if path.name == "bundle-questionnaire.json":
            resp = ehr.post(f"/fhir/{rtype}", data=raw, headers=JSON_HEADERS)
            outcome = outcome_of(resp)
            assert resp.status_code == 400 and outcome["issue"][0].get("expression"), outcome
            continue
        if rtype == "AuditEvent":
            # /fhir/AuditEvent is the server's own access log, read-only: a client cannot plant entries in it.
            resp = ehr.put(f"/fhir/{rtype}/{sent['id']}", data=raw, headers=JSON_HEADERS)
            assert resp.status_code == 405 and outcome_of(resp)["issue"][0]["code"] == "not-supported"
            continue
        if "id" in sent:
            resp = ehr.put(f"/fhir/{rtype}/{sent['id']}", data=raw, headers=JSON_HEADERS)
        else:
            resp = ehr.post(f"/fhir/{rtype}", data=raw, headers=JSON_HEADERS)
        assert resp.status_code in (200, 201), (path.name, resp.data[:400])
        new_id = body(resp)["id"]
        got = loads_json(get(ehr, f"/fhir/{rtype}/{new_id}").data)
        expected = parse_resource(raw)
        expected["id"] = new_id
        if rtype == "Consent":
            # Shown with its on-chain state: a permitting Consent nobody signed is still "proposed".
            state = [e for e in got.pop("extension") if e["url"] == CHAIN_STATE_URL]
            assert state and state[0]["extension"][0] == {"url": "state", "valueCode": "unsigned"}, path.name
            if "extension" in expected:
                got["extension"] = expected["extension"]
            if expected["status"] in ("active", "proposed"):
                permits = consent_rules(expected).root.type == "permit"
                assert got["status"] == ("proposed" if permits else "active"), path.name
                got["status"] = expected["status"]
        assert _comparable(got) == _comparable(expected), path.name
        checked += 1
    assert checked >= 60


def test_xml_bodies_are_refused_with_415(ehr: FlaskClient, fixtures_dir: Path) -> None:
    raw = (fixtures_dir / "fhir-r4-examples" / "condition-example.xml").read_bytes()
    resp = ehr.post("/fhir/Condition", data=raw, headers={**AUTH, "Content-Type": "application/fhir+xml"})
    assert resp.status_code == 415 and outcome_of(resp)
