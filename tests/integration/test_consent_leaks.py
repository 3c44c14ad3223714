"""The consent leaks an outside tester found, each closed at its mechanism (issue: close the consent leaks).

Each test is written from the policy (docs/consent-semantics.md) and failed before its fix. The world is
tests/consent_world.py: Ann (cared for by the hospital, whose EHR is `ehr`), Bob (another hospital), a
clinic with no consent from either, and Carl, cared for by the clinic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from consent_world import CLINIC, MRN_SYSTEM, World
from fhir_api_support import AUTH, JSON_HEADERS

from healthledger.audit.pseudonym import patient_pseudonym

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = request.getfixturevalue("postgres_module_schema_url")[0] if request.param == "postgres" else ""
    built = World.build(tmp_path_factory.mktemp(f"leaks-{request.param}"), url)
    built.add_patient("carl", CLINIC)
    built.sync()
    yield built
    built.close()


def post(world: World, client_id: str, path: str, body: dict[str, Any], **headers: str) -> Any:
    return world.client.post(f"/fhir/{path}", data=orjson.dumps(body),
                             headers=world.headers(client_id, **{"Content-Type": FHIR_JSON, **headers}))


def put(world: World, client_id: str, path: str, body: dict[str, Any]) -> Any:
    return world.client.put(f"/fhir/{path}", data=orjson.dumps(body),
                            headers=world.headers(client_id, **{"Content-Type": FHIR_JSON}))


def get(world: World, client_id: str, path: str) -> Any:
    return world.client.get(f"/fhir/{path}", headers=world.headers(client_id))


def body_without(resp: Any, *texts: str) -> bytes:
    """The response body with the ids it may legitimately echo replaced (what the caller asked for)."""
    data: bytes = resp.data
    for text in texts:
        data = data.replace(text.encode(), b"<id>")
    return data


def pseudonym(world: World, name: str) -> str:
    store = world.app.extensions["healthledger.store"]
    return patient_pseudonym(store.indexer, world.patients[name])


def new_patient_body(**extra: Any) -> dict[str, Any]:
    # The clinic creates it: a new Patient names the organisation that will care for it (docs/consent-semantics.md).
    return {"resourceType": "Patient", "name": [{"family": "Probe"}], "managingOrganization": {"reference": CLINIC},
            **extra}


# -- 1. Conditional create answers as if the caller's denied matches did not exist -------------------------
@pytest.mark.parametrize("condition", [
    "identifier={mrn_system}|MRN-ann",
    "family=Testperson-ann&birthdate=1970-03-04",
    "_id={ann}",
])
def test_conditional_create_is_no_existence_oracle(world: World, condition: str) -> None:
    known = condition.format(mrn_system=MRN_SYSTEM, ann=world.patients["ann"])
    unknown = known.replace("ann", "nobody").replace(world.patients["ann"], "no-such-id")
    size = world.log_size()
    hit = post(world, "clinic", "Patient", new_patient_body(), **{"If-None-Exist": known})
    entries = world.log_since(size)
    miss = post(world, "clinic", "Patient", new_patient_body(), **{"If-None-Exist": unknown})
    # The clinic may not read Ann: her record does not exist for it, so it creates, exactly as for nobody.
    assert hit.status_code == miss.status_code == 201, hit.get_data(as_text=True)
    assert orjson.loads(hit.data)["id"] != world.patients["ann"]
    # The probe touched Ann's data: it is in her log, denied.
    assert any(e.patient_pseudonym == pseudonym(world, "ann") and e.decision == "deny" for e in entries)
    # Her care organisation sees her, and gets her record back without writing anything.
    found = post(world, "ehr", "Patient", new_patient_body(), **{"If-None-Exist": known})
    assert found.status_code == 200 and orjson.loads(found.data)["id"] == world.patients["ann"]


def test_conditional_create_in_a_batch_is_no_existence_oracle(world: World) -> None:
    def entry(mrn: str) -> dict[str, Any]:
        return {"resource": new_patient_body(), "request": {
            "method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN_SYSTEM}|{mrn}"}}

    for kind in ("batch", "transaction"):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [entry("MRN-ann"), entry("MRN-nobody-" + kind)]}
        resp = post(world, "clinic", "", bundle)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        statuses = [e["response"]["status"] for e in orjson.loads(resp.data)["entry"]]
        assert statuses == ["201 Created", "201 Created"], (kind, statuses)


def test_conditional_create_counts_only_visible_matches(world: World) -> None:
    # Two patients answer to the same family name; the clinic may read neither (no 412 for it), the
    # hospital's EHR may read only Ann: one visible match, returned.
    family = "Sharedname"
    for name in ("ann", "bob"):
        pid = world.patients[name]
        current = world.dev_read(f"Patient/{pid}")
        current["name"] = [*current["name"], {"family": family}]
        world.dev_put(current)
    assert post(world, "clinic", "Patient", new_patient_body(), **{"If-None-Exist": f"family={family}"}).status_code == 201
    found = post(world, "ehr", "Patient", new_patient_body(), **{"If-None-Exist": f"family={family}"})
    assert found.status_code == 200 and orjson.loads(found.data)["id"] == world.patients["ann"]
    both = world.client.post("/fhir/Patient", data=orjson.dumps(new_patient_body()),
                             headers={**JSON_HEADERS, "If-None-Exist": f"family={family}"})
    assert both.status_code == 412  # the service itself sees both


# -- 2. History across a deleted id: every version is decided on its own -----------------------------------
def test_a_deleted_resource_of_one_patient_cannot_be_taken_over_for_another(world: World) -> None:
    ann, carl = world.patients["ann"], world.patients["carl"]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "HIV viral load"},
           "subject": {"reference": f"Patient/{ann}"}}
    made = post(world, "ehr", "Observation", obs)
    assert made.status_code == 201
    oid = orjson.loads(made.data)["id"]
    assert world.client.delete(f"/fhir/Observation/{oid}", headers=world.headers("ehr")).status_code == 204
    # The clinic may write Carl's record, not Ann's: reusing her deleted Observation's id for Carl is an
    # update of her record.
    takeover = {**obs, "id": oid, "code": {"text": "x"}, "subject": {"reference": f"Patient/{carl}"}}
    assert put(world, "clinic", f"Observation/{oid}", takeover).status_code == 403
    # The service may; then Carl sees his version only, never Ann's.
    world.dev_put(takeover)
    carl_session = world.patient_session("carl")
    history = orjson.loads(carl_session.get(f"Observation/{oid}/_history").data)
    assert [e["resource"]["subject"]["reference"] for e in history["entry"] if "resource" in e] == [f"Patient/{carl}"]
    assert history["total"] == 1
    assert b"HIV" not in carl_session.get(f"Observation/{oid}/_history").data
    hidden = carl_session.get(f"Observation/{oid}/_history/1")
    missing = carl_session.get(f"Observation/{oid}/_history/99")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.data == missing.data
    # Ann's care organisation sees her versions and the deletion, not Carl's.
    ehr = orjson.loads(get(world, "ehr", f"Observation/{oid}/_history").data)
    assert [e["request"]["method"] for e in ehr["entry"]] == ["DELETE", "POST"]


# -- 3. What the compartment check did not recognise ------------------------------------------------------
@pytest.mark.parametrize(("resource", "element"), [
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
      "subject": {"identifier": {"system": MRN_SYSTEM, "value": "MRN-ann"}}}, "Observation.subject"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
      "subject": {"reference": "patient/{ann}"}}, "Observation.subject"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
      "subject": {"reference": " Patient/{ann}"}}, "Observation.subject"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
      "subject": {"reference": "Patient?identifier=MRN-ann"}}, "Observation.subject"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
      "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "Doe"}]}],
      "subject": {"reference": "#p"}}, "Observation.subject"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
      "subject": {"reference": "Patient/{ann}"}, "performer": [{"reference": "Patient/{bob}"}]},
     "Observation.subject"),
])
def test_unresolvable_patient_references_are_refused_naming_the_element(
    world: World, resource: dict[str, Any], element: str
) -> None:
    text = orjson.dumps(resource).decode().replace("{ann}", world.patients["ann"]).replace("{bob}", world.patients["bob"])
    resp = world.client.post(f"/fhir/{resource['resourceType']}", data=text, headers=JSON_HEADERS)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    issue = orjson.loads(resp.data)["issue"][0]
    assert issue["expression"] == [element]
    assert "MRN-ann" not in resp.get_data(as_text=True)


def test_a_task_and_a_group_about_a_patient_are_hers(world: World) -> None:
    ann = world.patients["ann"]
    task = world.dev_create({"resourceType": "Task", "status": "requested", "intent": "order",
                             "description": "Refer for psychiatric assessment", "for": {"reference": f"Patient/{ann}"}})
    group = world.dev_create({"resourceType": "Group", "type": "person", "actual": True, "name": "Ann's family",
                              "member": [{"entity": {"reference": f"Patient/{ann}"}}]})
    for path in (f"Task/{task}", f"Group/{group}"):
        assert get(world, "clinic", path).status_code == 404  # decided: the clinic has no consent
        assert get(world, "ehr", path).status_code == 200  # Ann's care organisation
        assert world.patient_session("ann").get(path).status_code == 200
        assert world.patient_session("bob").get(path).status_code == 404
    researcher = orjson.loads(get(world, "research", f"Task?_id={task}").data)
    assert researcher["total"] == 0
    # Sealed under Ann's key: erasing Ann erases them.
    from healthledger.store import maintenance

    store = world.app.extensions["healthledger.store"]
    victim = world.add_patient("dora", CLINIC)
    dora_task = world.dev_create({"resourceType": "Task", "status": "requested", "intent": "order",
                                  "for": {"reference": f"Patient/{victim}"}})
    maintenance.erase_patient(store, victim)
    assert world.client.get(f"/fhir/Task/{dora_task}", headers=AUTH).status_code == 410


# -- 6. Patients write only their own Consents ------------------------------------------------------------
def test_patients_write_nothing_shared(world: World) -> None:
    ann = world.patient_session("ann")
    hospital = world.dev_read("Organization/general-hospital")
    renamed = {**hospital, "name": "Renamed by a patient", "identifier": [*hospital["identifier"],
                                                                         {"system": "x", "value": "y"}]}
    assert ann.put("Organization/general-hospital", renamed).status_code == 403
    assert world.dev_read("Organization/general-hospital")["name"] == hospital["name"]
    for body in ({"resourceType": "Organization", "name": "Mine"},
                 {"resourceType": "Practitioner", "name": [{"family": "Fake"}]},
                 {"resourceType": "Patient", "name": [{"family": "Other"}]}):
        assert ann.post(body["resourceType"], body).status_code == 403
    own = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{world.patients['ann']}"}}
    assert ann.post("Observation", own).status_code == 403  # patients record consents, clinicians data


# -- 8. Denied and missing answer alike ----------------------------------------------------------------------
def test_denied_and_missing_read_alike_everywhere(world: World) -> None:
    bob = world.observations["bob"]
    for suffix in ("", "/_history", "/_history/1"):
        denied = get(world, "clinic", f"Observation/{bob}{suffix}")
        missing = get(world, "clinic", f"Observation/no-such-id{suffix}")
        assert denied.status_code == missing.status_code == 404
        assert body_without(denied, bob) == body_without(missing, "no-such-id")
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{bob}/_history/1"}},
        {"request": {"method": "GET", "url": "Observation/no-such-id/_history/1"}},
        {"request": {"method": "GET", "url": f"Observation/{bob}"}},
        {"request": {"method": "GET", "url": "Observation/no-such-id"}},
    ]}
    entries = orjson.loads(post(world, "clinic", "", bundle).data)["entry"]
    for i, (denied, missing) in enumerate(((entries[0], entries[1]), (entries[2], entries[3]))):
        # The same answer, apart from the id asked for and the entry's own index.
        strip = orjson.dumps(denied).replace(bob.encode(), b"<id>")
        strip = strip.replace(f"entry {2 * i}".encode(), b"entry <n>").replace(f"entry[{2 * i}]".encode(), b"entry[<n>]")
        other = orjson.dumps(missing).replace(b"no-such-id", b"<id>")
        other = other.replace(f"entry {2 * i + 1}".encode(), b"entry <n>").replace(
            f"entry[{2 * i + 1}]".encode(), b"entry[<n>]")
        assert strip == other
    denied_delete = world.client.delete(f"/fhir/Observation/{bob}", headers=world.headers("clinic"))
    missing_delete = world.client.delete("/fhir/Observation/no-such-id", headers=world.headers("clinic"))
    assert denied_delete.status_code == missing_delete.status_code == 404
    assert body_without(denied_delete, bob) == body_without(missing_delete, "no-such-id")
    assert get(world, "ehr", f"Observation/{world.observations['ann']}").status_code == 200  # nothing deleted
    assert world.dev_read(f"Observation/{bob}")["id"] == bob


# -- 9. Every authenticated attempt leaves one entry, refused before any decision or not --------------------
def test_refused_requests_are_attempts_too(world: World) -> None:
    ann, obs = world.patients["ann"], world.observations["ann"]
    cases = [
        ("GET", f"/fhir/Observation?patient=Patient/{ann}&no-such-parameter=1", {"Prefer": "handling=strict"},
         "search", "Observation", "", "ann"),
        ("GET", f"/fhir/Observation/{obs}", {"X-Purpose-Of-Use": "NOT-A-PURPOSE"}, "read", "Observation", obs, "ann"),
        ("GET", f"/fhir/Patient/{ann}/_history?_since=yesterday", {}, "history", "Patient", ann, "ann"),
        ("GET", f"/fhir/Observation/{obs}?_format=xml", {}, "read", "Observation", obs, "ann"),
        ("PUT", f"/fhir/Observation/{obs}", {"Content-Type": FHIR_JSON}, "update", "Observation", obs, "ann"),
        ("GET", f"/fhir/Observation?subject={ann}&_count=many", {}, "search", "Observation", "", "ann"),
    ]
    for method, url, extra, action, rtype, rid, patient in cases:
        size = world.log_size()
        resp = world.client.open(url, method=method, data=b"{" if method == "PUT" else None,
                                 headers=world.headers("clinic", **extra))
        assert 400 <= resp.status_code < 500, (url, resp.status_code)
        entries = world.log_since(size)
        assert len(entries) == 1, (url, entries)
        entry = entries[0]
        assert (entry.action, entry.resource_type, entry.resource_id, entry.decision) == (action, rtype, rid, "deny")
        assert entry.patient_pseudonym == pseudonym(world, patient), url
        assert entry.reason.startswith("refused(http-4")
    # A request decided as usual still leaves exactly one entry (no second one for its refusal).
    size = world.log_size()
    assert get(world, "clinic", f"Observation/{obs}").status_code == 404
    assert len(world.log_since(size)) == 1


# -- Found by the property test (tests/security) -----------------------------------------------------------------
def test_scopes_are_checked_before_existence(world: World) -> None:
    existing = get(world, "narrow", f"Observation/{world.observations['ann']}")
    missing = get(world, "narrow", "Observation/no-such-id")
    assert existing.status_code == missing.status_code == 403
    assert existing.data == missing.data
    for suffix in ("/_history/1", "/_history"):
        assert get(world, "narrow", f"Observation/no-such-id{suffix}").status_code == 403
    # A conditional delete needs the delete scope before it searches anything.
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": "Observation?code=http://loinc.org|4548-4"}}]}
    entry = orjson.loads(post(world, "research", "", bundle).data)["entry"][0]
    assert entry["response"]["status"] == "403 Forbidden"
    # In a transaction, an entry the scopes refuse fails it before any conditional reference is resolved.
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": f"Patient?identifier={MRN_SYSTEM}|MRN-nobody"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    assert post(world, "narrow", "", transaction).status_code == 403


def test_an_operation_on_a_consent_is_one_entry(world: World) -> None:
    from consent_world import password_parameters, permit_consent

    carl = world.patient_session("carl")
    made = carl.post("Consent", permit_consent(world.patients["carl"], "Organization/university"))
    assert made.status_code == 201
    cid = orjson.loads(made.data)["id"]
    size = world.log_size()
    signed = carl.post(f"Consent/{cid}/$sign", password_parameters())
    assert signed.status_code == 200, signed.get_data(as_text=True)
    entries = world.log_since(size)
    assert [(e.action, e.decision, e.resource_id) for e in entries] == [("update", "permit", cid)]
    # Another patient gets the same 404 as for a Consent that does not exist, and one entry.
    bob = world.patient_session("bob")
    size = world.log_size()
    denied = bob.post(f"Consent/{cid}/$sign", password_parameters())
    missing = bob.post("Consent/no-such-id/$sign", password_parameters())
    assert denied.status_code == missing.status_code == 404
    assert body_without(denied, cid) == body_without(missing, "no-such-id")
    assert len(world.log_since(size)) == 2


def test_a_count_is_a_disclosure_too(world: World) -> None:
    ann = world.patients["ann"]
    size = world.log_size()
    count = orjson.loads(get(world, "ehr", f"Observation?patient=Patient/{ann}&_summary=count").data)
    assert count["total"] >= 1 and "entry" not in count
    entries = world.log_since(size)
    assert [(e.decision, e.patient_pseudonym) for e in entries] == [("permit", pseudonym(world, "ann"))]


def test_researchers_see_no_real_id_beside_a_pseudonym(world: World) -> None:
    from consent_world import password_parameters, permit_consent

    dora = world.add_patient("erin", CLINIC)
    erin = world.patient_session("erin")
    made = erin.post("Consent", permit_consent(dora, "Organization/university"))
    cid = orjson.loads(made.data)["id"]
    assert erin.post(f"Consent/{cid}/$sign", password_parameters()).status_code == 200
    world.sync()
    obs = world.observations["erin"]
    for path in (f"Observation?patient=Patient/{dora}", f"Observation/{obs}/_history", "Observation/_history"):
        resp = get(world, "research", path)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = orjson.loads(resp.data)
        shown = [e for e in body.get("entry", []) if e.get("resource", {}).get("meta")]
        assert shown, path
        text = orjson.dumps(body.get("entry", [])).decode()
        assert obs not in text and dora not in text, path  # the query itself may name them: not the entries


def test_the_break_the_glass_key_exists_before_the_first_emergency(world: World) -> None:
    from sqlalchemy import select

    from healthledger.consent.enforcement import ACCESS_LOG_KEY_CLASS
    from healthledger.store.models import data_keys_table as keys_table

    store = world.app.extensions["healthledger.store"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(keys_table.c.key_id).where(
            keys_table.c.tenant == store.tenant, keys_table.c.key_class == ACCESS_LOG_KEY_CLASS)).all()
    assert len(rows) == 1
