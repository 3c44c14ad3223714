"""Requests for access end to end: a clinic that does not care for a patient asks, the patient answers on the
Requests page, the clinic reads the outcome through the API, and the asking tells it nothing else.

The world (tests/consent_world.py): Ann is cared for by the general hospital, not by the city clinic, whose
backend client (`clinic`) asks; the university's client (`research`) is another organisation.
"""

from __future__ import annotations

import html
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
from consent_world import CLINIC, HOSPITAL, PASSWORD, UNIVERSITY, World, permit_consent, world_per_database
from sqlalchemy import func, select

from healthledger.consent.models import ConsentRequest

FHIR = "application/fhir+json"
# What differs between two answers by construction: when, and which request (its id is in Location).
_PER_RESPONSE_HEADERS = {"Date", "Last-Modified", "Location", "X-Request-Id"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_per_database(request, tmp_path_factory, "consent-requests")


def request_body(patient_id: str, *actors: str, status: str = "proposed", days: int = 90) -> dict[str, Any]:
    """What a clinic sends to ask: a proposed permit for itself, for treatment, Observations, for `days`."""
    body = permit_consent(patient_id, *actors, classes=("Observation",), status=status,
                          period_end=(date.today() + timedelta(days=days)).isoformat())
    body["provision"]["purpose"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]
    return body


def ask(world: World, patient_id: str, *actors: str, who: str = "clinic", **kw: Any) -> Any:
    return world.client.post("/fhir/Consent", data=orjson.dumps(request_body(patient_id, *(actors or (CLINIC,)), **kw)),
                             headers={**world.headers(who), "Content-Type": FHIR})


def without_ids(value: Any, ids: dict[str, str]) -> Any:
    """`value` with each id replaced by its placeholder and server timestamps blanked."""
    text = orjson.dumps(value).decode()
    for real, placeholder in ids.items():
        text = text.replace(real, placeholder)
    return re.sub(r'"lastUpdated":"[^"]+"', '"lastUpdated":"-"', text)


def comparable_headers(resp: Any, ids: dict[str, str]) -> dict[str, str]:
    return {k: without_ids(v, ids) for k, v in resp.headers.items() if k not in _PER_RESPONSE_HEADERS}


def csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def words(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_an_outside_clinic_asks_a_patient_for_access(world: World) -> None:
    ann = world.patients["ann"]
    before = world.log_size()
    resp = ask(world, ann)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    made = orjson.loads(resp.data)
    assert made["status"] == "proposed" and resp.headers["Location"].endswith(f"/Consent/{made['id']}/_history/1")
    [entry] = world.log_since(before)
    assert (entry.action, entry.resource_type, entry.resource_id, entry.decision, entry.reason) == (
        "create", "Consent", made["id"], "permit", "policy:access-request")
    assert entry.patient_pseudonym  # in Ann's own history: she sees who asked
    # The clinic still sees nothing of Ann: asking is not being let in.
    for path in (f"Patient/{ann}", f"Observation/{world.observations['ann']}"):
        assert world.client.get(f"/fhir/{path}", headers=world.headers("clinic")).status_code == 404


def test_asking_about_a_patient_nobody_has_answers_exactly_alike(world: World) -> None:
    ann, nobody = world.patients["ann"], str(uuid.uuid4())
    assert len(nobody) == len(ann)  # server ids are UUIDs too: bodies and lengths compare
    known, unknown = ask(world, ann), ask(world, nobody)
    assert known.status_code == unknown.status_code == 201
    k, u = orjson.loads(known.data), orjson.loads(unknown.data)
    assert without_ids(k, {k["id"]: "ID", ann: "PATIENT"}) == without_ids(u, {u["id"]: "ID", nobody: "PATIENT"})
    assert comparable_headers(known, {k["id"]: "ID"}) == comparable_headers(unknown, {u["id"]: "ID"})
    # Read back later: the same again (an unanswered request stays proposed until its period ends).
    read_k = world.client.get(f"/fhir/Consent/{k['id']}", headers=world.headers("clinic"))
    read_u = world.client.get(f"/fhir/Consent/{u['id']}", headers=world.headers("clinic"))
    assert read_k.status_code == read_u.status_code == 200
    assert without_ids(orjson.loads(read_k.data), {k["id"]: "ID", ann: "PATIENT"}) == without_ids(
        orjson.loads(read_u.data), {u["id"]: "ID", nobody: "PATIENT"})
    assert comparable_headers(read_k, {}) == comparable_headers(read_u, {})
    # Refused alike too: a request for someone else, for a known patient and an unknown one.
    refused_k, refused_u = ask(world, ann, UNIVERSITY), ask(world, nobody, UNIVERSITY)
    assert refused_k.status_code == refused_u.status_code == 403
    assert refused_k.data == refused_u.data
    assert comparable_headers(refused_k, {}) == comparable_headers(refused_u, {})


def test_a_request_must_ask_for_the_asker_itself(world: World) -> None:
    ann = world.patients["ann"]
    before = world.log_size()
    cases = {
        "another organisation": ask(world, ann, UNIVERSITY),
        "the asker and another": ask(world, ann, CLINIC, HOSPITAL),
        "active, not proposed": ask(world, ann, status="active"),
        "longer than the policy allows": ask(world, ann, days=5 * 365),
    }
    for why, resp in cases.items():
        assert resp.status_code == 403, why
        issue = orjson.loads(resp.data)["issue"][0]
        assert issue["code"] == "forbidden" and "status 'proposed'" in issue["diagnostics"], why
    entries = world.log_since(before)
    assert len(entries) == len(cases) and {e.decision for e in entries} == {"deny"}
    # A researcher's client may not ask (its role is not a requester's), even for its own organisation.
    assert ask(world, ann, UNIVERSITY, who="research").status_code == 403


def test_the_requester_reads_only_its_own_requests(world: World) -> None:
    ann = world.patients["ann"]
    own = orjson.loads(ask(world, ann).data)["id"]
    # Ann's own Consent for the university, and a paper consent for the clinic the hospital recorded: neither
    # is a request the clinic made.
    mine = world.patient_session("ann").post("Consent", permit_consent(ann, UNIVERSITY, status="proposed"))
    paper = world.client.post("/fhir/Consent", data=orjson.dumps(request_body(ann, CLINIC)),
                              headers={**world.headers("ehr"), "Content-Type": FHIR})
    assert mine.status_code == paper.status_code == 201
    missing = world.client.get("/fhir/Consent/no-such-consent", headers=world.headers("clinic"))
    for other in (orjson.loads(mine.data)["id"], orjson.loads(paper.data)["id"]):
        resp = world.client.get(f"/fhir/Consent/{other}", headers=world.headers("clinic"))
        assert resp.status_code == 404
        assert without_ids(orjson.loads(resp.data), {other: "ID"}) == without_ids(
            orjson.loads(missing.data), {"no-such-consent": "ID"})
    # Its search of Ann's Consents shows its own requests only, and counts only those.
    found = orjson.loads(world.client.get(f"/fhir/Consent?patient=Patient/{ann}", headers=world.headers("clinic")).data)
    ids = {e["resource"]["id"] for e in found.get("entry", [])}
    with world.sessions() as s:
        asked = set(s.scalars(select(ConsentRequest.consent_id).where(ConsentRequest.organization == CLINIC)))
    assert own in ids and ids <= asked and found["total"] == len(ids)
    # Another organisation does not read the clinic's request.
    assert world.client.get(f"/fhir/Consent/{own}", headers=world.headers("research")).status_code == 404
    # Reading its request is not changing it: only the patient's answer does.
    changed = {**request_body(ann, CLINIC), "id": own, "status": "active"}
    put = world.client.put(f"/fhir/Consent/{own}", data=orjson.dumps(changed),
                           headers={**world.headers("clinic"), "Content-Type": FHIR})
    assert put.status_code == 403
    assert orjson.loads(world.client.get(f"/fhir/Consent/{own}", headers=world.headers("clinic")).data)["meta"][
        "versionId"] == "1"


def test_the_patient_approves_and_the_requester_reads_active(world: World) -> None:
    ann, browser = world.patients["ann"], world.patient_session("ann").browser
    cid = orjson.loads(ask(world, ann).data)["id"]
    page = browser.get("/app/requests").get_data(as_text=True)
    # In plain words: who asks (the organisation's name), for what, which data, until when.
    end = date.today() + timedelta(days=90)
    assert "city-clinic asks to see your data" in words(page)
    assert ("city-clinic may see your test results and measurements for your care and treatment, from 1 January 2020 "
            f"until {end.day} {end.strftime('%B')} {end.year}.") in words(page)
    approved = browser.post(f"/app/requests/{cid}/approve",
                            data={"csrf_token": csrf(page), f"r{cid}-password": PASSWORD})
    assert approved.status_code == 303
    pending = orjson.loads(world.client.get(f"/fhir/Consent/{cid}", headers=world.headers("clinic")).data)
    assert pending["status"] == "proposed"  # signed, not yet confirmed by the chain
    world.sync()
    seen = orjson.loads(world.client.get(f"/fhir/Consent/{cid}", headers=world.headers("clinic")).data)
    assert seen["status"] == "active"
    # And now it is let in, for what it asked: Observations, not the rest.
    obs = world.client.get(f"/fhir/Observation/{world.observations['ann']}", headers=world.headers("clinic"))
    assert obs.status_code == 200
    assert world.client.get(f"/fhir/Patient/{ann}", headers=world.headers("clinic")).status_code == 404


def test_the_patient_declines_and_the_requester_reads_rejected(world: World) -> None:
    ann, browser = world.patients["ann"], world.patient_session("ann").browser
    cid = orjson.loads(ask(world, ann).data)["id"]
    page = browser.get("/app/requests").get_data(as_text=True)
    assert browser.post(f"/app/requests/{cid}/decline", data={"csrf_token": csrf(page)}).status_code == 303
    seen = world.client.get(f"/fhir/Consent/{cid}", headers=world.headers("clinic"))
    assert seen.status_code == 200 and orjson.loads(seen.data)["status"] == "rejected"
    history = orjson.loads(world.client.get(f"/fhir/Consent/{cid}/_history", headers=world.headers("clinic")).data)
    assert [e["resource"]["status"] for e in history["entry"]] == ["rejected", "proposed"]
    # Declined is final: it cannot be signed any more.
    session = world.patient_session("ann")
    assert session.post(f"Consent/{cid}/$sign", {"resourceType": "Parameters", "parameter": [
        {"name": "password", "valueString": PASSWORD}]}).status_code == 409


def requests_made_today(world: World) -> int:
    """The clinic's requests for access in the last 24 hours (what the daily bound counts)."""
    with world.sessions() as s:
        since = datetime.now(UTC).timestamp() - 86_400
        return int(s.scalar(select(func.count()).select_from(ConsentRequest).where(
            ConsentRequest.organization == CLINIC, ConsentRequest.requested_at > since)) or 0)


def test_requests_per_organisation_per_day_are_bounded(world: World) -> None:
    policy = world.app.extensions["healthledger.store"].policy
    made = requests_made_today(world)
    original = policy.policy
    policy.policy = replace(original, max_requests_per_day=made + 1)
    try:
        assert ask(world, world.patients["ann"]).status_code == 201
        before = world.log_size()
        known, unknown = ask(world, world.patients["ann"]), ask(world, str(uuid.uuid4()))
        assert known.status_code == unknown.status_code == 429
        assert known.data == unknown.data and orjson.loads(known.data)["issue"][0]["code"] == "throttled"
        assert [(e.decision, e.reason) for e in world.log_since(before)] == [
            ("deny", "policy:access-request-limit")] * 2
        # The bound is the organisation's: the hospital still records consents.
        paper = world.client.post("/fhir/Consent", data=orjson.dumps(request_body(world.patients["ann"], CLINIC)),
                                  headers={**world.headers("ehr"), "Content-Type": FHIR})
        assert paper.status_code == 201
    finally:
        policy.policy = original


class _SlowBound:
    """The policy, whose daily bound takes 0.2 s to read: it is read between the count and the record, so each
    request holds that window open long enough for the others to count too if nothing serialises them."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    @property
    def max_requests_per_day(self) -> int:
        time.sleep(0.2)
        return int(self._policy.max_requests_per_day)


def test_concurrent_requests_at_the_bound_admit_exactly_one(world: World) -> None:
    """Eight requests at once (about eight patients, so nothing of one patient's serialises them) with one left
    under the day's bound: one is recorded, seven are refused (the count and the record are one step per
    organisation, not a count each request passes before any records)."""
    policy = world.app.extensions["healthledger.store"].policy
    made = requests_made_today(world)
    original = policy.policy
    policy.policy = _SlowBound(replace(original, max_requests_per_day=made + 1))
    start = threading.Barrier(8)

    patients = [world.patients["ann"], *(str(uuid.uuid4()) for _ in range(7))]

    def one(i: int) -> int:
        client = world.app.test_client()
        body = orjson.dumps(request_body(patients[i], CLINIC))
        start.wait()
        return int(client.post("/fhir/Consent", data=body,
                               headers={**world.headers("clinic"), "Content-Type": FHIR}).status_code)

    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(one, range(8)))
    finally:
        policy.policy = original
    assert statuses == [201] + [429] * 7, statuses


def test_a_request_whose_time_has_passed_is_no_longer_asked(world: World) -> None:
    """Only staff of a care organisation can record one (a clinic's request must end in the future)."""
    ann, browser = world.patients["ann"], world.patient_session("ann").browser
    ended = world.client.post("/fhir/Consent", headers={**world.headers("ehr"), "Content-Type": FHIR},
                              data=orjson.dumps(request_body(ann, CLINIC, days=-2)))
    live = orjson.loads(ask(world, ann).data)["id"]
    assert ended.status_code == 201
    cid = orjson.loads(ended.data)["id"]
    page = browser.get("/app/requests").get_data(as_text=True)
    assert f"/app/requests/{live}/approve" in page and f"/app/requests/{cid}/" not in page
    answer = browser.post(f"/app/requests/{cid}/approve", data={"csrf_token": csrf(page), f"r{cid}-password": PASSWORD})
    assert answer.status_code == 303
    assert world.dev_read(f"Consent/{cid}")["status"] == "proposed"  # nothing was signed
    assert "Answer this request" not in browser.get(f"/app/consents/{cid}").get_data(as_text=True)
    assert "Answer this request" in browser.get(f"/app/consents/{live}").get_data(as_text=True)
