"""Batch and transaction Bundles on the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection

from fhir_adapters.deidentify import deidentify
from healthledger.actions import Action
from healthledger.errors import HealthLedgerError, NotFound, PreconditionFailed
from healthledger.principal import Principal
from healthledger.store.access import DEV_CLIENT, DevelopmentPolicy, Screened
from healthledger.store.bundles import execute_bundle
from healthledger.store.repository import ResourceStore
from tests.store.test_repository import observation, patient

P_URN = "urn:uuid:0c3b8a3e-8d1e-4e1e-9c55-6a0e7b0e1a01"
O_URN = "urn:uuid:0c3b8a3e-8d1e-4e1e-9c55-6a0e7b0e1a02"


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, if_none_exist: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    entry: dict[str, Any] = {"resource": resource, "request": request}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def obs_for(ref: str) -> dict[str, Any]:
    o = observation("x")
    o["subject"] = {"reference": ref}
    return o


def count(store: ResourceStore, resource_type: str) -> int:
    return store.search_params(resource_type, []).total or 0


def test_transaction_assigns_ids_and_rewrites_urn_references(store: ResourceStore) -> None:
    result = execute_bundle(store, bundle("transaction", post(obs_for(P_URN), O_URN), post(patient(), P_URN)))
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "201 Created"]  # in the order of the request entries
    obs_loc, pat_loc = (e["response"]["location"] for e in result["entry"])
    pid = pat_loc.split("/")[1]
    stored = store.read("Observation", obs_loc.split("/")[1]).resource or {}
    assert stored["subject"]["reference"] == f"Patient/{pid}"
    assert store.search_params("Observation", [("patient", pid)]).total == 1


def test_failed_transaction_rolls_back_whole_and_names_the_entry(store: ResourceStore) -> None:
    tx = bundle("transaction", post(patient(), P_URN), {"request": {"method": "GET", "url": "Patient/nope"}})
    with pytest.raises(NotFound) as err:
        execute_bundle(store, tx)
    assert err.value.expression == "Bundle.entry[1]" and "entry 1" in err.value.message
    assert count(store, "Patient") == 0


def test_if_match_failure_rolls_back_earlier_writes(store: ResourceStore) -> None:
    store.update("Patient", "p-1", patient())
    tx = bundle(
        "transaction",
        {"request": {"method": "DELETE", "url": "Patient/p-1"}},
        post(observation("p-1")),
        {"resource": {**patient(), "id": "p-2"}, "request": {"method": "PUT", "url": "Patient/p-2", "ifMatch": 'W/"5"'}},
    )
    with pytest.raises(PreconditionFailed) as err:
        execute_bundle(store, tx)
    assert err.value.expression == "Bundle.entry[2]"
    assert store.read("Patient", "p-1").version_id == 1
    assert count(store, "Observation") == 0


def test_conditional_references_resolve_or_fail(store: ResourceStore) -> None:
    known, _ = store.create(patient(mrn="COND-1"))
    ok = execute_bundle(store, bundle("transaction", post(obs_for("Patient?identifier=urn:test:mrn|COND-1"))))
    oid = ok["entry"][0]["response"]["location"].split("/")[1]
    assert (store.read("Observation", oid).resource or {})["subject"]["reference"] == f"Patient/{known.id}"

    with pytest.raises(PreconditionFailed) as none:
        execute_bundle(store, bundle("transaction", post(obs_for("Patient?identifier=urn:test:mrn|NOBODY"))))
    assert none.value.expression == "Bundle.entry[0]"
    store.create(patient(mrn="COND-1", family="Duplicate"))
    with pytest.raises(PreconditionFailed):
        execute_bundle(store, bundle("transaction", post(obs_for("Patient?identifier=urn:test:mrn|COND-1"))))
    assert count(store, "Observation") == 1


def test_conditional_create_in_transaction_maps_fullurl_to_existing(store: ResourceStore) -> None:
    existing, _ = store.create(patient(mrn="CC-1"))
    result = execute_bundle(store, 
        bundle("transaction", post(patient(mrn="CC-1"), P_URN, "identifier=urn:test:mrn|CC-1"), post(obs_for(P_URN)))
    )
    assert [e["response"]["status"] for e in result["entry"]] == ["200 OK", "201 Created"]
    oid = result["entry"][1]["response"]["location"].split("/")[1]
    assert (store.read("Observation", oid).resource or {})["subject"]["reference"] == f"Patient/{existing.id}"
    assert count(store, "Patient") == 1


def test_conditional_update_and_delete(store: ResourceStore) -> None:
    made, _ = store.create(patient(mrn="CU-1"))
    put = {"resource": patient(mrn="CU-1", family="Updated"), "request": {"method": "PUT", "url": "Patient?identifier=CU-1"}}
    result = execute_bundle(store, bundle("transaction", put))
    assert result["entry"][0]["response"]["status"] == "200 OK"
    assert (store.read("Patient", made.id).resource or {})["name"][0]["family"] == "Updated"
    execute_bundle(store, bundle("transaction", {"request": {"method": "DELETE", "url": "Patient?identifier=CU-1"}}))
    assert count(store, "Patient") == 0


def test_batch_entries_stand_alone(store: ResourceStore) -> None:
    store.update("Patient", "b-1", patient())
    result = execute_bundle(store, 
        bundle(
            "batch",
            post(patient(mrn="B-2")),
            {"resource": {**patient(), "id": "b-1"}, "request": {"method": "PUT", "url": "Patient/b-1", "ifMatch": 'W/"9"'}},
            {"request": {"method": "GET", "url": "Patient/b-1"}},
            {"request": {"method": "GET", "url": "Patient?identifier=B-2"}},
            {"request": {"method": "POST", "url": "Patient"}},
        )
    )
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses[:4] == ["201 Created", "412 Precondition Failed", "200 OK", "200 OK"] and statuses[4].startswith("400")
    assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert result["entry"][3]["resource"]["total"] == 1
    assert count(store, "Patient") == 2


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("Bundle-TransactionWithValidBundleEntry.json", True),
        ("Bundle-TransactionForRollBack.json", False),
        ("Bundle-TransactionWithConditionalReferenceInResourceBody.json", False),
        ("Bundle-TransactionWithMultipleEntriesModifyingSameResource.json", False),
    ],
)
def test_reference_transaction_bundles(store: ResourceStore, fixtures_dir: Path, name: str, ok: bool) -> None:
    tx = json.loads((fixtures_dir / "transaction-bundles" / name).read_text(encoding="utf-8-sig"))
    before = count(store, "Patient")
    if ok:
        result = execute_bundle(store, tx)
        assert all(e["response"]["status"][0] == "2" for e in result["entry"])
        return
    with pytest.raises(HealthLedgerError) as err:
        execute_bundle(store, tx)
    assert (err.value.expression or "").startswith("Bundle.entry[")
    assert count(store, "Patient") == before


class _DeidentifyingPolicy(DevelopmentPolicy):
    """Shows every resource the way a research purpose does (the consent engine's de-identify obligation):
    pseudonymised, its meta reduced to the security label, as `fhir_adapters.deidentify` returns it."""

    filters_search_results = True

    def check(self, principal: Principal, action: Action, resource_type: str, resource: dict[str, Any] | None, *,
              resource_id: str = "", conn: Connection) -> dict[str, Any] | None:
        return None if resource is None else deidentify(resource, pseudonym=lambda raw: f"ps-{raw[:6]}", now_year=2026)

    def screen(self, principal: Principal, action: Action, resource_type: str, resource: dict[str, Any], *,
               conn: Connection) -> Screened:
        shown = deidentify(resource, pseudonym=lambda raw: f"ps-{raw[:6]}", now_year=2026)
        return Screened(resource_type, str(resource.get("id", "")), "", shown)


def test_batch_gets_say_which_version_they_show_as_rest_does(store: ResourceStore) -> None:
    """A batch GET's resources (read and search) carry meta.versionId and lastUpdated even when what is shown
    lost the stored meta (a researcher's de-identified view), like the REST read and search, which stamp them."""
    store.update("Patient", "v-1", patient(mrn="V-1"))
    store.update("Patient", "v-1", patient(mrn="V-1", gender="male"))  # version 2
    store.policy = _DeidentifyingPolicy()
    result = execute_bundle(store, bundle(
        "batch",
        {"request": {"method": "GET", "url": "Patient/v-1"}},
        {"request": {"method": "GET", "url": "Patient?identifier=V-1"}},
    ), principal=DEV_CLIENT)
    read, search = result["entry"]
    assert read["resource"]["meta"]["versionId"] == "2", read
    [match] = search["resource"]["entry"]
    shown = match["resource"]
    assert shown["id"].startswith("ps-") and shown["meta"]["versionId"] == "2", shown
    assert shown["meta"]["lastUpdated"] == read["resource"]["meta"]["lastUpdated"]
    assert shown["meta"]["security"], "the de-identification label is kept beside the version"


def test_transaction_rewrites_urn_links_in_narrative_and_uri_elements(store: ResourceStore) -> None:
    """R4 http.html#trules: a fullUrl is replaced in references, in elements of type uri (url, valueUri...) and in
    the narrative's <a href> and <img src>; an Identifier.value that repeats it (a string) is left as sent."""
    div = (f'<div xmlns="http://www.w3.org/1999/xhtml"><p>Of <a href="{P_URN}">the patient</a>'
           f'<img src="{P_URN.upper().replace("URN:UUID:", "urn:uuid:")}"/> (id {P_URN})</p></div>')
    obs = {**obs_for(P_URN), "text": {"status": "generated", "div": div},
           "extension": [{"url": "http://example.org/fhir/source", "valueUri": P_URN}],
           "identifier": [{"system": "urn:ietf:rfc:3986", "value": P_URN}]}
    result = execute_bundle(store, bundle("transaction", post(obs, O_URN), post(patient(), P_URN)))
    obs_loc, pat_loc = (e["response"]["location"] for e in result["entry"])
    pid = pat_loc.split("/")[1]
    stored = store.read("Observation", obs_loc.split("/")[1]).resource or {}
    assert f'<a href="Patient/{pid}">' in stored["text"]["div"] and f'<img src="Patient/{pid}"/>' in stored["text"]["div"]
    assert f"(id {P_URN})" in stored["text"]["div"]  # text, not a link
    assert stored["extension"][0]["valueUri"] == f"Patient/{pid}"
    assert stored["identifier"][0]["value"] == P_URN
    assert stored["subject"]["reference"] == f"Patient/{pid}"


def test_response_urls_are_absolute_given_the_base(store: ResourceStore) -> None:
    base = "https://fhir.example.org/fhir"
    result = execute_bundle(store, bundle("transaction", post(patient(), P_URN),
                                          {"request": {"method": "GET", "url": "Patient"}}), base=base)
    created, found = result["entry"]
    pid = created["resource"]["id"]
    assert created["fullUrl"] == f"{base}/Patient/{pid}"
    assert created["response"]["location"] == f"{base}/Patient/{pid}/_history/1"
    assert [e["fullUrl"] for e in found["resource"]["entry"]] == [f"{base}/Patient/{pid}"]


def test_an_empty_entry_array_is_refused_and_a_bundle_without_entries_is_empty() -> None:
    """R4 JSON allows no empty array: `"entry": []` is a 400 naming Bundle.entry, as any other element's would be;
    a batch that leaves `entry` out asks for nothing and answers an empty batch-response."""
    import pytest

    from fhir_adapters.bundles import plan_bundle
    from fhir_adapters.errors import FhirInputError

    with pytest.raises(FhirInputError) as refused:
        plan_bundle({"resourceType": "Bundle", "type": "batch", "entry": []})
    assert refused.value.status == 400 and refused.value.expression == "Bundle.entry"
    assert not plan_bundle({"resourceType": "Bundle", "type": "batch"}).entries
