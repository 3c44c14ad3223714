"""The research API without proving: studies (checks, drafts, publishing through the outbox), credentials
(activation by the patient's password, who may read them, the path under the anchored root) and the 4xx of
`$enrol` that come before a proof is checked. The proving scenario is tests/research/test_scenario.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from consent_world import FHIR, PASSWORD, UNIVERSITY, World, password_parameters, world_per_database

from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    MAX_PARTICIPANTS_URL,
    study_terms,
)
from healthledger.research.studies import ETHICS_APPROVAL_URL, PublishedCircuit
from zk.credential import EligibilityAttributes, identity_commitment, leaf
from zk.merkle import MerklePath, compute_root


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_per_database(request, tmp_path_factory, "research-api")


def study_body(**changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    criteria = changes.pop("criteria", {"age": {"$between": [40, 75]}, "hba1c": {"$gte": 6.0}})
    categories = changes.pop("categories", ["Observation", "Condition"])
    extension = [
        {"url": CRITERIA_URL, "valueString": json.dumps(criteria)},
        *({"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": c}]} for c in categories),
        {"url": DATA_PERIOD_URL, "valuePeriod": {"start": "2015-01-01"}},
        {"url": MAX_PARTICIPANTS_URL, "valuePositiveInt": changes.pop("max_participants", 50)},
    ]
    if changes.pop("ethics", True):
        extension.append({"url": ETHICS_APPROVAL_URL,
                          "valueIdentifier": {"system": "urn:irb:university", "value": "IRB-2026-042"}})
    body: dict[str, Any] = {
        "resourceType": "ResearchStudy", "title": "HbA1c in middle age",
        "sponsor": {"reference": "Organization/university"},
        "principalInvestigator": {"reference": "Practitioner/pi-1"},
        "period": changes.pop("period", {"start": now.date().isoformat(),
                                         "end": (now + timedelta(days=90)).date().isoformat()}),
        "extension": extension,
    }
    body.update(changes)
    return body


def post(world: World, client: str, path: str, body: dict[str, Any]) -> Any:
    return world.client.post(f"/fhir/{path}", data=orjson.dumps(body),
                             headers={**world.headers(client), "Content-Type": FHIR})


def issue(resp: Any) -> str:
    outcome = resp.get_json()
    return str(outcome["issue"][0]["diagnostics"])


def test_a_researcher_creates_a_draft_with_its_cohort_in_words(world: World) -> None:
    resp = post(world, "research", "ResearchStudy", study_body())
    assert resp.status_code == 201, resp.get_data(as_text=True)
    study = resp.get_json()
    terms = study_terms(study)
    assert terms.status == "draft" and terms.owner_organization == UNIVERSITY
    assert terms.owner_principal == "client:research"
    group = world.dev_read(f"Group/{terms.cohort_group_id}")
    words = {c["code"]["text"]: c["valueCodeableConcept"]["text"] for c in group["characteristic"]}
    assert words["Age"] == "between 40 and 75 years"
    assert words["HbA1c"].startswith("at least 6 %")


@pytest.mark.parametrize(("changes", "says"), [
    ({"criteria": {"age": {"$ne": 40}}}, "cannot express"),
    ({"criteria": {"income": {"$gt": 1}}}, "unknown attribute 'income'"),
    ({"categories": ["AuditEvent"]}, "broader than the research purpose"),
    ({"categories": ["Observation", "Observation"]}, "named twice"),
    ({"period": {"start": "2020-01-01", "end": "2021-01-01"}}, "in the past"),
    ({"ethics": False}, "ethics approval"),
    ({"max_participants": 0}, "maximum number of participants"),
    ({"sponsor": None}, "sponsor"),
])
def test_validation_names_what_is_wrong(world: World, changes: dict[str, Any], says: str) -> None:
    resp = post(world, "research", "ResearchStudy", study_body(**changes))
    assert resp.status_code in (400, 422), resp.get_data(as_text=True)
    assert says in issue(resp)


def test_only_researchers_define_studies(world: World) -> None:
    resp = post(world, "ehr", "ResearchStudy", study_body())
    assert resp.status_code == 403
    assert "researcher" in issue(resp)


def test_drafts_are_the_owners_and_publishing_makes_the_study_active(world: World) -> None:
    study = post(world, "research", "ResearchStudy", study_body(title="Published study")).get_json()
    ann = world.patient_session("ann")
    assert ann.get(f"ResearchStudy/{study['id']}").status_code == 404  # a draft is the owner's
    listed = ann.get("ResearchStudy?status=active").get_json()
    assert all(e["resource"]["id"] != study["id"] for e in listed.get("entry", []))
    assert post(world, "ehr", f"ResearchStudy/{study['id']}/$publish", {}).status_code == 403  # not a researcher
    resp = post(world, "research", f"ResearchStudy/{study['id']}/$publish", {})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    published = resp.get_json()
    assert published["status"] == "draft"  # until the chain confirms the registration
    circuit = PublishedCircuit.from_study(published)
    assert circuit.criteria_hash > 0 and circuit.inputs["flags"] != "0"
    assert post(world, "research", f"ResearchStudy/{study['id']}/$publish", {}).status_code == 409
    world.sync()
    shown = ann.get(f"ResearchStudy/{study['id']}").get_json()
    assert shown["status"] == "active"
    listed = ann.get("ResearchStudy?status=active").get_json()
    assert [e["resource"]["id"] for e in listed["entry"]] == [study["id"]]
    registry = world.chain.contract("StudyRegistry")
    on_chain = world.chain.call(registry.functions.studies(circuit.chain_study_id))
    assert on_chain[0] == circuit.criteria_hash and on_chain[4] == 50


def credential_of(world: World, name: str, *, password: str | None = None, study: str | None = None) -> Any:
    session = world.patient_session(name)
    pid = world.patients[name]
    if password is None:
        return session.get(f"Patient/{pid}/$eligibility-credential")
    params = password_parameters(password)
    if study:
        params["parameter"].append({"name": "study", "valueString": study})
    return session.post(f"Patient/{pid}/$eligibility-credential", params)


def parameters(resp: Any) -> dict[str, Any]:
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in resp.get_json()["parameter"]}


def test_the_credential_is_activated_by_the_patients_password_and_only_theirs(world: World) -> None:
    assert credential_of(world, "ann").status_code == 404  # not activated yet
    assert credential_of(world, "ann", password="wrong password!").status_code == 403
    resp = credential_of(world, "ann", password=PASSWORD)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    got = parameters(resp)
    assert got["anchored"] is False
    inputs = json.loads(got["circuitInputs"])
    secret = int(inputs["secret"])
    world.sync()
    again = parameters(credential_of(world, "ann"))
    assert again["anchored"] is True and "secret" not in json.loads(again["circuitInputs"])
    attrs = EligibilityAttributes(int(inputs["birthDays"]), int(inputs["sex"]),
                                  tuple(int(c) for c in inputs["conditions"]), tuple(int(v) for v in inputs["labs"]),
                                  int(inputs["issuanceEpoch"]))
    assert identity_commitment(secret) == int(got["identityCommitment"])
    path = MerklePath(int(got["leafIndex"]), [int(s) for s in inputs["siblings"]], [int(b) for b in inputs["pathBits"]])
    assert compute_root(leaf(identity_commitment(secret), attrs), path) == int(again["root"])
    registry = world.chain.contract("CredentialRegistry")
    assert world.chain.call(registry.functions.isKnownRoot(int(again["root"])))
    # Denied answers like missing: another patient, a clinician, the researcher.
    bob = world.patient_session("bob")
    assert bob.get(f"Patient/{world.patients['ann']}/$eligibility-credential").status_code == 404
    for client in ("ehr", "research"):
        resp = world.client.get(f"/fhir/Patient/{world.patients['ann']}/$eligibility-credential",
                                headers=world.headers(client))
        assert resp.status_code == 404
        assert issue(resp) == "no eligibility credential has been issued to this patient"


def test_enrol_refuses_malformed_proofs_and_non_patients(world: World) -> None:
    study = post(world, "research", "ResearchStudy", study_body(title="Refusals")).get_json()
    post(world, "research", f"ResearchStudy/{study['id']}/$publish", {})
    world.sync()
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "proof", "valueString": "{}"}, {"name": "publicSignals", "valueString": "[]"},
        {"name": "password", "valueString": PASSWORD}]}
    assert post(world, "research", f"ResearchStudy/{study['id']}/$enrol", body).status_code == 403
    resp = world.patient_session("ann").post(f"ResearchStudy/{study['id']}/$enrol", body)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert "snarkjs" in issue(resp)
    assert world.patient_session("ann").post("ResearchStudy/nope/$enrol", body).status_code == 404


def test_the_worker_reissues_patients_whose_records_changed(world: World) -> None:
    from healthledger.db import session_factory
    from healthledger.research.worker import ResearchWorker

    store = world.app.extensions["healthledger.store"]
    worker = ResearchWorker(store, session_factory(store.engine), owner="test-worker", reissue_every=0.0)
    if credential_of(world, "ann").status_code == 404:
        credential_of(world, "ann", password=PASSWORD)
    first = worker.run_once().reissue
    assert first is not None and first.reissued == 0 and first.examined >= 1  # nothing changed since issuing
    before = parameters(credential_of(world, "ann"))["root"]
    world.dev_create({"resourceType": "Observation", "status": "final",
                      "subject": {"reference": f"Patient/{world.patients['ann']}"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]},
                      "effectiveDateTime": "2025-09-01", "valueQuantity": {"value": 28.4, "unit": "kg/m2"}})
    second = worker.run_once().reissue
    assert second is not None and second.reissued == 1 and second.anchor_item is not None
    world.sync()
    after = parameters(credential_of(world, "ann"))
    assert after["root"] != before and after["anchored"] is True
    third = worker.run_once().reissue
    assert third is not None and third.reissued == 0 and third.root is None  # nothing new: no new root


def dummy_proof() -> str:
    """Well-formed snarkjs JSON with points on the curves (the generators): parses, never verifies."""
    from py_ecc.bn128 import G2

    (x0, x1), (y0, y1) = (G2[0].coeffs, G2[1].coeffs)
    return json.dumps({"protocol": "groth16", "curve": "bn128", "pi_a": ["1", "2", "1"], "pi_c": ["1", "2", "1"],
                       "pi_b": [[str(x0), str(x1)], [str(y0), str(y1)], ["1", "0"]]})


def test_enrol_refusals_in_order(world: World) -> None:
    """Each refusal of $enrol before the relay, with its status (no real proof needed to reach them)."""
    from sqlalchemy import update

    from healthledger.research.models import Enrolment, PublishedStudy

    study = post(world, "research", "ResearchStudy", study_body(title="Refusals in order")).get_json()
    sid = study["id"]
    post(world, "research", f"ResearchStudy/{sid}/$publish", {})
    world.sync()
    circuit = PublishedCircuit.from_study(world.patient_session("ann").get(f"ResearchStudy/{sid}").get_json())
    if credential_of(world, "ann").status_code == 404:
        credential_of(world, "ann", password=PASSWORD)
        world.sync()
    cred = parameters(credential_of(world, "ann", password=PASSWORD, study=f"ResearchStudy/{sid}"))
    root, enrollee = int(cred["root"]), int(cred["enrollee"], 16)
    assert cred["anchored"] is True

    def enrol(signals: list[int], proof: str | None = None) -> Any:
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "proof", "valueString": proof or dummy_proof()},
            {"name": "publicSignals", "valueString": json.dumps([str(s) for s in signals])},
            {"name": "password", "valueString": PASSWORD}]}
        return world.patient_session("ann").post(f"ResearchStudy/{sid}/$enrol", body)

    good = [root, circuit.chain_study_id, circuit.criteria_hash, enrollee, 12345]
    cases = [
        ([root, circuit.chain_study_id + 1, *good[2:]], 422, "another study"),
        ([*good[:3], enrollee + 1, 12345], 422, "not bound to your pseudonym"),
        ([root + 1, *good[1:]], 409, "stale"),
        (good, 422, "does not verify"),
    ]
    for signals, code, says in cases:
        resp = enrol(signals)
        assert (resp.status_code, says in issue(resp)) == (code, True), resp.get_data(as_text=True)
    with world.sessions.begin() as s:
        s.add(Enrolment(id="x" * 32, tenant=world.app.extensions["healthledger.store"].tenant, study_id=sid,
                        nullifier="12345", enrollee="0x" + "00" * 20, root=str(root), enrol_item=1, consent_id="c",
                        enrolled_at=0.0))
    resp = enrol(good)
    assert resp.status_code == 409 and "already enrolled" in issue(resp)
    with world.sessions.begin() as s:
        s.execute(update(PublishedStudy).where(PublishedStudy.study_id == sid).values(max_participants=1))
    resp = enrol([*good[:4], 777])
    assert resp.status_code == 409 and "full" in issue(resp)
    with world.sessions.begin() as s:
        s.execute(update(PublishedStudy).where(PublishedStudy.study_id == sid).values(max_participants=50,
                                                                                      closes_at=1000))
    resp = enrol([*good[:4], 777])
    assert resp.status_code == 409 and "window" in issue(resp)
    shown = world.patient_session("ann").get(f"ResearchStudy/{sid}").get_json()
    assert shown["status"] == "closed-to-accrual"  # an ended window closes the study for everyone
    listed = world.patient_session("ann").get("ResearchStudy?status=active").get_json()
    assert sid not in {e["resource"]["id"] for e in listed.get("entry", [])}


def test_drafts_stay_hidden_on_every_read_path(world: World) -> None:
    draft = post(world, "research", "ResearchStudy", study_body(title="Hidden draft")).get_json()
    ann = world.patient_session("ann")
    for path in (f"ResearchStudy/{draft['id']}/_history", f"ResearchStudy/{draft['id']}/_history/1",
                 "ResearchStudy/_history"):
        assert ann.get(path).status_code == 404, path
    searched = ann.browser.post("/fhir/ResearchStudy/_search", data="status=draft",
                                headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": FHIR,
                                         "X-CSRFToken": ann.csrf}).get_json()
    assert searched["resourceType"] == "Bundle" and searched["total"] == 0
    owner = world.client.get(f"/fhir/ResearchStudy/{draft['id']}/_history", headers=world.headers("research"))
    assert owner.status_code == 200 and owner.get_json()["total"] == 1
    assert world.client.get("/fhir/ResearchStudy?status=draft", headers=world.headers("research")).get_json()["total"] >= 1


def test_a_study_changes_only_through_its_operations(world: World) -> None:
    study = post(world, "research", "ResearchStudy", study_body(title="Not editable")).get_json()
    edited = {**study, "status": "active"}
    for client in ("research", "ehr"):
        resp = world.client.put(f"/fhir/ResearchStudy/{study['id']}", data=orjson.dumps(edited),
                                headers={**world.headers(client), "Content-Type": FHIR})
        assert resp.status_code == 403 and "$publish" in issue(resp)
        assert world.client.delete(f"/fhir/ResearchStudy/{study['id']}", headers=world.headers(client)).status_code == 403
    assert world.dev_read(f"ResearchStudy/{study['id']}")["status"] == "draft"


def bundle(world: World, client: str | None, kind: str, urls: list[str]) -> Any:
    """POST a batch or transaction of GET entries, as a client (by its token) or as ann in her web session."""
    body = {"resourceType": "Bundle", "type": kind, "entry": [{"request": {"method": "GET", "url": u}} for u in urls]}
    if client is None:
        return world.patient_session("ann").post("", body)
    return post(world, client, "", body)


def ids(searchset: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in searchset.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_study_searches_and_reads_in_a_bundle_answer_as_the_direct_requests(world: World, kind: str) -> None:
    """A GET entry of ResearchStudy (or ResearchSubject) is answered by the research module as the same GET outside
    a Bundle is: `status` is understood, and a draft stays its owner's (read or searched) on this path too."""
    draft = post(world, "research", "ResearchStudy", study_body(title=f"Draft in a {kind}")).get_json()
    for client in (None, "ehr", "research"):
        direct = (world.patient_session("ann").get("ResearchStudy?status=active") if client is None else
                  world.client.get("/fhir/ResearchStudy?status=active", headers=world.headers(client)))
        resp = bundle(world, client, kind, ["ResearchStudy?status=active", "ResearchStudy?status=draft",
                                            f"ResearchSubject?study=ResearchStudy/{draft['id']}"])
        assert resp.status_code == 200, resp.get_data(as_text=True)
        active, drafts, subjects = (e["resource"] for e in resp.get_json()["entry"])
        assert ids(active) == ids(direct.get_json()) and active["total"] == direct.get_json()["total"]
        assert (draft["id"] in ids(drafts)) is (client == "research"), client
        assert subjects["resourceType"] == "Bundle" and subjects["total"] == 0
    hidden = bundle(world, None, kind, [f"ResearchStudy/{draft['id']}"])
    missing = bundle(world, None, kind, ["ResearchStudy/no-such-study"])
    if kind == "batch":
        assert hidden.status_code == missing.status_code == 200
        hidden, missing = (r.get_json()["entry"][0]["response"] for r in (hidden, missing))
        assert hidden["status"] == missing["status"] and hidden["status"].startswith("404")
        said = [r["outcome"]["issue"][0]["diagnostics"] for r in (hidden, missing)]
    else:
        assert hidden.status_code == missing.status_code == 404
        said = [issue(r) for r in (hidden, missing)]
    assert said[0].replace(draft["id"], "ID") == said[1].replace("no-such-study", "ID")
    owner = bundle(world, "research", kind, [f"ResearchStudy/{draft['id']}"])
    assert owner.status_code == 200 and owner.get_json()["entry"][0]["resource"]["title"] == draft["title"]


def test_research_searches_handle_what_they_do_not_support_like_every_search(world: World) -> None:
    """Lenient by default: an unsupported parameter is left out and named in an OperationOutcome entry (search
    mode outcome); `Prefer: handling=strict` makes it a 400. The same rule as the generic search (api/fhir.py)."""
    draft = post(world, "research", "ResearchStudy", study_body(title="Searched leniently")).get_json()
    for path in ("ResearchStudy?status=draft&title=x", f"ResearchSubject?study=ResearchStudy/{draft['id']}&title=x"):
        lenient = world.client.get(f"/fhir/{path}", headers=world.headers("research"))
        assert lenient.status_code == 200, lenient.get_data(as_text=True)
        outcome = [e for e in lenient.get_json()["entry"] if e["search"]["mode"] == "outcome"]
        assert len(outcome) == 1 and "ignored (not supported by this server): title" in (
            outcome[0]["resource"]["issue"][0]["diagnostics"])
        strict = world.client.get(f"/fhir/{path}", headers=world.headers("research", Prefer="handling=strict"))
        assert strict.status_code == 400 and "'title' is not a supported search parameter" in issue(strict)
    searched = world.client.get("/fhir/ResearchStudy?status=draft&title=x", headers=world.headers("research"))
    assert draft["id"] in ids(searched.get_json())  # the ignored parameter did not narrow the search
    assert world.client.get("/fhir/ResearchStudy?status=nonsense",
                            headers=world.headers("research")).status_code == 400  # a bad value is an error either way


def test_a_search_by_study_finds_the_research_subjects_clients_stored(world: World) -> None:
    """A ResearchSubject created by a client (POST) is listed by `GET ResearchSubject?study=`, subject to the
    consent decisions like any search: the patient it is about finds it, another patient does not."""
    study = post(world, "research", "ResearchStudy", study_body(title="Recorded elsewhere")).get_json()
    subject = {"resourceType": "ResearchSubject", "status": "on-study",
               "study": {"reference": f"ResearchStudy/{study['id']}"},
               "individual": {"reference": f"Patient/{world.patients['ann']}"}}
    created = post(world, "ehr", "ResearchSubject", subject)
    assert created.status_code == 201, created.get_data(as_text=True)
    sid = created.get_json()["id"]
    query = f"ResearchSubject?study=ResearchStudy/{study['id']}"
    found = world.client.get(f"/fhir/{query}", headers=world.headers("ehr")).get_json()
    assert ids(found) == [sid] and found["total"] == 1
    assert ids(world.patient_session("ann").get(query).get_json()) == [sid]
    assert sid in ids(world.patient_session("ann").get("ResearchSubject").get_json())
    assert ids(world.patient_session("bob").get(query).get_json()) == []
    before = world.log_size()
    other = world.client.get("/fhir/ResearchSubject?study=ResearchStudy/another", headers=world.headers("ehr"))
    assert other.status_code == 200 and ids(other.get_json()) == []
    # Another study's search neither shows this subject nor records it as shown (or counted) in the access log.
    assert sid not in {e.resource_id for e in world.log_since(before)}
    before = world.log_size()
    none_shown = world.client.get(f"/fhir/{query}&_count=0", headers=world.headers("ehr")).get_json()
    assert none_shown["total"] == 1 and ids(none_shown) == []
    counted = [e for e in world.log_since(before) if e.resource_type == "ResearchSubject"]
    assert len(counted) == 1 and counted[0].resource_id == "" and counted[0].patient_pseudonym  # counted, not shown
    in_batch = bundle(world, "ehr", "batch", [query]).get_json()["entry"][0]["resource"]
    assert ids(in_batch) == [sid]


def test_a_study_whose_registration_failed_is_published_again_and_settles_when_requeued(world: World) -> None:
    from sqlalchemy import select, update

    from healthledger.ledger import outbox
    from healthledger.ledger.models import OutboxItem
    from healthledger.research.models import PublishedStudy

    def fail_registration(study_id: str) -> int:
        """The registration write fails before it is mined (as a revert or an exhausted retry would leave it)."""
        with world.sessions.begin() as s:
            item = s.scalars(select(PublishedStudy.register_item).where(PublishedStudy.study_id == study_id)).one()
            s.execute(update(OutboxItem).where(OutboxItem.id == item).values(
                state="failed", failure_reason="reverted: injected by the test"))
        world.sync()
        return int(item)

    def state(study_id: str) -> tuple[str, str]:
        resource = world.client.get(f"/fhir/ResearchStudy/{study_id}", headers=world.headers("research")).get_json()
        with world.sessions() as s:
            row = s.scalars(select(PublishedStudy.state).where(PublishedStudy.study_id == study_id)).one()
        return resource["status"], row

    # 1. Publishing again retries the failed registration: the same write queued again, active once mined.
    first = post(world, "research", "ResearchStudy", study_body(title="Retried by the researcher")).get_json()["id"]
    assert post(world, "research", f"ResearchStudy/{first}/$publish", {}).status_code == 202
    fail_registration(first)
    assert state(first) == ("draft", "failed")
    assert post(world, "research", f"ResearchStudy/{first}/$publish", {}).status_code == 202
    assert state(first) == ("draft", "publishing")
    world.sync()
    assert state(first) == ("active", "active")
    resp = post(world, "research", f"ResearchStudy/{first}/$publish", {})
    assert resp.status_code == 409 and "already published (status active)" in resp.get_data(as_text=True)

    # 2. An operator requeues the failed write (`healthledger relay requeue`): settling picks it up.
    second = post(world, "research", "ResearchStudy", study_body(title="Retried by the operator")).get_json()["id"]
    assert post(world, "research", f"ResearchStudy/{second}/$publish", {}).status_code == 202
    item = fail_registration(second)
    assert state(second) == ("draft", "failed")
    with world.sessions.begin() as s:
        outbox.requeue_failed(s, item, now=time.time())
    world.sync()
    assert state(second) == ("active", "active")
    registry = world.chain.contract("StudyRegistry")
    for study_id in (first, second):
        shown = world.client.get(f"/fhir/ResearchStudy/{study_id}", headers=world.headers("research")).get_json()
        circuit = PublishedCircuit.from_study(shown)
        assert world.chain.call(registry.functions.studies(circuit.chain_study_id))[0] == circuit.criteria_hash


def test_two_patients_enrolling_at_once_for_the_last_place_one_is_refused(world: World,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-study check is count-then-insert: serialised by a lock on the study's row (PostgreSQL: FOR
    UPDATE) it lets exactly one of two simultaneous enrolments take the last place. Proof verification is
    stubbed (both proofs 'verify'): the race is about the places, not the proofs."""
    import threading

    from sqlalchemy import func, select

    from healthledger.research.models import Enrolment
    from zk import groth16

    study = post(world, "research", "ResearchStudy", study_body(title="One place", max_participants=1)).get_json()
    sid = study["id"]
    post(world, "research", f"ResearchStudy/{sid}/$publish", {})
    world.sync()
    circuit = PublishedCircuit.from_study(world.patient_session("ann").get(f"ResearchStudy/{sid}").get_json())
    bodies = {}
    for name in ("ann", "bob"):
        if credential_of(world, name).status_code == 404:
            credential_of(world, name, password=PASSWORD)
            world.sync()
    for nullifier, name in enumerate(("ann", "bob"), 1000):
        cred = parameters(credential_of(world, name, password=PASSWORD, study=f"ResearchStudy/{sid}"))
        assert cred["anchored"] is True
        signals = [int(cred["root"]), circuit.chain_study_id, circuit.criteria_hash, int(cred["enrollee"], 16), nullifier]
        bodies[name] = {"resourceType": "Parameters", "parameter": [
            {"name": "proof", "valueString": dummy_proof()},
            {"name": "publicSignals", "valueString": json.dumps([str(s) for s in signals])},
            {"name": "password", "valueString": PASSWORD}]}
    monkeypatch.setattr(groth16, "verify", lambda *_: True)
    sessions = {name: world.patient_session(name) for name in bodies}
    start = threading.Barrier(2)
    answers: dict[str, Any] = {}

    def enrol(name: str) -> None:
        start.wait()
        answers[name] = sessions[name].post(f"ResearchStudy/{sid}/$enrol", bodies[name])

    threads = [threading.Thread(target=enrol, args=(name,)) for name in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(a.status_code for a in answers.values()) == [201, 409], {
        n: a.get_data(as_text=True)[:300] for n, a in answers.items()}
    refused = next(a for a in answers.values() if a.status_code == 409)
    assert "is full (1 participants)" in issue(refused)
    with world.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Enrolment).where(Enrolment.study_id == sid)) == 1


def test_an_enrolment_the_chain_refused_takes_no_place_and_can_be_made_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain's verifier has the last word: an enrolment whose enrolFor reverts (here a dummy proof the Python
    check is told to accept) was never counted on-chain, so it takes no place in a full study here either and
    its nullifier is free: enrolling again replaces it, its study consent withdrawn (refused before: "already
    enrolled" for good)."""
    from sqlalchemy import update

    from healthledger.research import enrolment as enrolment_module
    from healthledger.research.models import PublishedStudy

    sid = post(world, "research", "ResearchStudy", study_body(title="Refused on-chain")).get_json()["id"]
    post(world, "research", f"ResearchStudy/{sid}/$publish", {})
    world.sync()
    ann = world.patient_session("ann")
    circuit = PublishedCircuit.from_study(ann.get(f"ResearchStudy/{sid}").get_json())
    if credential_of(world, "ann").status_code == 404:
        credential_of(world, "ann", password=PASSWORD)
        world.sync()
    cred = parameters(credential_of(world, "ann", password=PASSWORD, study=f"ResearchStudy/{sid}"))
    signals = [int(cred["root"]), circuit.chain_study_id, circuit.criteria_hash, int(cred["enrollee"], 16), 4242]
    with world.sessions.begin() as s:
        s.execute(update(PublishedStudy).where(PublishedStudy.study_id == sid).values(max_participants=1))
    monkeypatch.setattr(enrolment_module.groth16, "verify", lambda *_: True)

    def enrol() -> Any:
        return ann.post(f"ResearchStudy/{sid}/$enrol", {"resourceType": "Parameters", "parameter": [
            {"name": "proof", "valueString": dummy_proof()},
            {"name": "publicSignals", "valueString": json.dumps([str(x) for x in signals])},
            {"name": "password", "valueString": PASSWORD}]})

    def chain_state(subject: dict[str, Any]) -> str:
        return next(e["valueCode"] for e in subject["extension"] if e["url"].endswith("chain-state"))

    first = enrol()
    assert first.status_code == 201, first.get_data(as_text=True)
    refused = first.get_json()
    world.sync()  # StudyRegistry's verifier refuses the dummy proof: enrolFor reverts, the outbox item fails
    assert chain_state(ann.get(f"ResearchSubject/{refused['id']}").get_json()) == "failed"

    again = enrol()  # a full study (1 place) and a used nullifier, but the chain never counted the first
    assert again.status_code == 201, again.get_data(as_text=True)
    assert again.get_json()["id"] != refused["id"]
    assert ann.get(f"ResearchSubject/{refused['id']}").status_code == 404
    old_consent = refused["consent"]["reference"]
    assert ann.get(old_consent).get_json()["status"] == "inactive"  # withdrawn, its grant revoked
    world.sync()
    assert chain_state(ann.get(f"ResearchSubject/{again.get_json()['id']}").get_json()) == "failed"
    assert enrol().status_code == 201  # refused again on-chain, so again free: never a place taken for good


def test_study_searches_take_the_result_controls_of_every_search(world: World) -> None:
    """`_sort`, `_summary`, `_elements` and `_total` on ResearchStudy as on every type (R4 3.1.1.5); a `_sort` key it
    does not have is ignored and named, or refused under strict handling."""
    tag = f"Sorted {time.time_ns()}"
    made = [post(world, "research", "ResearchStudy", study_body(title=f"{tag} {letter}")).get_json()["id"]
            for letter in ("A", "C", "B")]
    strict = world.headers("research", Prefer="handling=strict")

    def searched(query: str, headers: dict[str, str] = strict) -> dict[str, Any]:
        resp = world.client.get(f"/fhir/ResearchStudy?status=draft&{query}", headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        found: dict[str, Any] = resp.get_json()
        return found

    def titles(bundle: dict[str, Any]) -> list[str]:
        return [e["resource"]["title"] for e in bundle.get("entry", [])
                if e["search"]["mode"] == "match" and e["resource"].get("title", "").startswith(tag)]

    assert titles(searched("_sort=-title")) == [f"{tag} C", f"{tag} B", f"{tag} A"]
    assert titles(searched("_sort=title")) == [f"{tag} A", f"{tag} B", f"{tag} C"]
    assert [i for i in ids(searched("_sort=-_lastUpdated")) if i in made] == made[::-1]
    everything = searched("")["total"]
    counted = searched("_summary=count")
    assert counted["total"] == everything and "entry" not in counted
    assert "total" not in searched("_total=none")
    subset = [e["resource"] for e in searched("_elements=title")["entry"]]
    assert subset and all("extension" not in s and "SUBSETTED" in str(s["meta"]) for s in subset)
    summary = [e["resource"] for e in searched("_summary=true")["entry"]]
    assert summary and all("SUBSETTED" in str(s["meta"]) for s in summary)
    refused = world.client.get("/fhir/ResearchStudy?_sort=sponsor", headers=strict)
    assert refused.status_code == 400 and refused.get_json()["issue"][0]["code"] == "not-supported"
    lenient = searched("_sort=sponsor,-title", world.headers("research"))
    assert titles(lenient)[:1] == [f"{tag} C"]
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "_sort=sponsor" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    # The self link says the search as applied: what was left out is not in it (as in every search).
    self_link = lenient["link"][0]["url"]
    assert "sponsor" not in self_link and "_sort=-title" in self_link and "status=draft" in self_link
    ignored = searched("nickname=x", world.headers("research"))
    assert "nickname" not in ignored["link"][0]["url"]
