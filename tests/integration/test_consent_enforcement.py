"""Consent enforcement end to end: SMART tokens, the patient's session and key, the embedded chain, the log.

One small hospital (tests/consent_world.py) per module: patients Ann (cared for by the hospital) and
Bob (by another hospital), a clinic, a university, the hospital's EHR, an auditor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from consent_world import (
    CLINIC,
    HOSPITAL,
    MRN_SYSTEM,
    ORG_SYSTEM,
    OTHER_HOSPITAL,
    UNIVERSITY,
    World,
    deny_consent,
    password_parameters,
    permit_consent,
    world_per_database,
)
from fhir_api_support import AUTH
from sqlalchemy import select

from healthledger.consent.lifecycle import CHAIN_STATE_URL, chain_states, present_consent
from healthledger.ledger.models import ConsentEvent, OutboxItem


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_per_database(request, tmp_path_factory, "consent-world")


def status(resp) -> int:  # type: ignore[no-untyped-def]
    return int(resp.status_code)


def chain_state(consent: dict) -> str:  # type: ignore[type-arg]
    ext = next(e for e in consent["extension"] if e["url"] == CHAIN_STATE_URL)
    return str(next(e["valueCode"] for e in ext["extension"] if e["url"] == "state"))


def test_treating_organisation_reads_its_patients_and_nobody_elses(world: World) -> None:
    ann, bob = world.observations["ann"], world.observations["bob"]
    assert status(world.client.get(f"/fhir/Observation/{ann}", headers=world.headers("ehr"))) == 200
    denied = world.client.get(f"/fhir/Observation/{bob}", headers=world.headers("ehr"))
    missing = world.client.get("/fhir/Observation/no-such-id", headers=world.headers("ehr"))
    assert status(denied) == status(missing) == 404
    # Same answer as a missing resource, apart from the id it names.
    assert orjson.loads(denied.data)["issue"][0]["code"] == orjson.loads(missing.data)["issue"][0]["code"]


def test_searches_leave_out_what_is_denied_without_counting_it(world: World) -> None:
    body = orjson.loads(world.client.get("/fhir/Observation", headers=world.headers("ehr")).data)
    ids = {e["resource"]["id"] for e in body.get("entry", [])}
    assert world.observations["ann"] in ids and world.observations["bob"] not in ids
    assert body["total"] == len(ids)
    count = orjson.loads(world.client.get("/fhir/Observation?_summary=count", headers=world.headers("ehr")).data)
    assert count["total"] == len(ids)
    # A clinic with no consent sees nothing, and the total says zero.
    none = orjson.loads(world.client.get("/fhir/Observation", headers=world.headers("clinic")).data)
    assert none["total"] == 0 and "entry" not in none


def test_scopes_bound_the_token(world: World) -> None:
    resp = world.client.get(f"/fhir/Observation/{world.observations['ann']}", headers=world.headers("narrow"))
    assert status(resp) == 403
    assert status(world.client.get(f"/fhir/Patient/{world.patients['ann']}", headers=world.headers("narrow"))) == 200
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{world.patients['ann']}"}}
    resp = world.client.post("/fhir/Observation", data=orjson.dumps(obs), headers={
        **world.headers("research"), "Content-Type": "application/fhir+json"})
    assert status(resp) == 403  # research tokens are read-only (system/*.rs)


def test_patient_sees_own_record_only(world: World) -> None:
    ann = world.patient_session("ann")
    assert status(ann.get(f"Observation/{world.observations['ann']}")) == 200
    assert status(ann.get(f"Observation/{world.observations['bob']}")) == 404
    body = orjson.loads(ann.get("Observation").data)
    assert {e["resource"]["id"] for e in body["entry"]} == {world.observations["ann"]}


def test_cookie_writes_need_the_csrf_token(world: World) -> None:
    ann = world.patient_session("ann")
    resp = ann.post("Consent", permit_consent(world.patients["ann"], CLINIC), csrf=False)
    assert status(resp) == 400
    [issue] = orjson.loads(resp.data)["issue"]  # says what is missing and how to send it, not just "bad request"
    assert issue["code"] == "security" and "CSRF token is missing" in issue["diagnostics"]
    assert "X-CSRFToken" in issue["diagnostics"]


def test_consent_lifecycle_proposed_signed_active_revoked(world: World) -> None:
    ann = world.patient_session("ann")
    obs = f"/fhir/Observation/{world.observations['ann']}"
    created = ann.post("Consent", permit_consent(world.patients["ann"], CLINIC, classes=("Observation",)))
    assert status(created) == 201, created.get_data(as_text=True)
    consent = orjson.loads(created.data)
    cid = consent["id"]
    assert consent["status"] == "proposed" and chain_state(consent) == "unsigned"
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 404

    assert status(ann.post(f"Consent/{cid}/$sign", password_parameters("not the password at all"))) == 403
    signed = ann.post(f"Consent/{cid}/$sign", password_parameters())
    assert status(signed) == 200 and chain_state(orjson.loads(signed.data)) == "pending"
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 404  # not on-chain yet
    assert status(ann.post(f"Consent/{cid}/$sign", password_parameters())) == 409  # signed once

    world.sync()
    shown = orjson.loads(ann.get(f"Consent/{cid}").data)
    assert shown["status"] == "active" and chain_state(shown) == "active"
    grant = next(e for e in shown["extension"] if e["url"] == CHAIN_STATE_URL)["extension"][1]["extension"]
    assert {e["url"] for e in grant} >= {"grantee", "state", "block", "transaction"}
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 200
    # The consent names the clinic and Observations only.
    assert status(world.client.get(f"/fhir/Patient/{world.patients['ann']}", headers=world.headers("clinic"))) == 404
    assert status(world.client.get(obs, headers=world.headers("research"))) == 404

    revoked = ann.post(f"Consent/{cid}/$revoke", password_parameters())
    assert status(revoked) == 200 and orjson.loads(revoked.data)["status"] == "inactive"
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 404  # at once, off-chain
    world.sync()
    shown = orjson.loads(ann.get(f"Consent/{cid}").data)
    assert shown["status"] == "inactive" and chain_state(shown) == "revoked"


def test_staff_may_record_a_paper_consent_but_only_the_patients_key_activates_it(world: World) -> None:
    paper = permit_consent(world.patients["ann"], UNIVERSITY, classes=("Patient",), status="active")
    resp = world.client.post("/fhir/Consent", data=orjson.dumps(paper),
                             headers={**world.headers("ehr"), "Content-Type": "application/fhir+json"})
    assert status(resp) == 201
    consent = orjson.loads(resp.data)
    assert consent["status"] == "proposed"  # whatever the hospital wrote
    world.sync()
    patient = f"/fhir/Patient/{world.patients['ann']}"
    assert status(world.client.get(patient, headers=world.headers("research"))) == 404
    # The hospital cannot sign for the patient: it does not know the patient's password.
    resp = world.client.post(f"/fhir/Consent/{consent['id']}/$sign", data=orjson.dumps(password_parameters("guess-guess-guess")),
                             headers={**world.headers("ehr"), "Content-Type": "application/fhir+json"})
    assert status(resp) == 403
    ann = world.patient_session("ann")
    assert status(ann.post(f"Consent/{consent['id']}/$sign", password_parameters())) == 200
    world.sync()
    resp = world.client.get(patient, headers=world.headers("research"))
    assert status(resp) == 200
    # Research purpose: de-identified (no name, birth date reduced to the year).
    body = orjson.loads(resp.data)
    assert "name" not in body and body.get("birthDate", "1970") == "1970"


def test_a_revocation_on_chain_takes_effect_within_one_indexer_poll(world: World) -> None:
    """Revoked on-chain behind the API's back (the chain is the authority): reads stop after one poll."""
    ann = world.patient_session("ann")
    obs = f"/fhir/Observation/{world.observations['ann']}"
    cid = orjson.loads(ann.post("Consent", permit_consent(world.patients["ann"], CLINIC)).data)["id"]
    ann.post(f"Consent/{cid}/$sign", password_parameters())
    world.sync()
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 200
    # Revoke directly through the relayer (as any holder of the patient's signature could), leaving the
    # FHIR Consent untouched: only the chain knows.
    from healthledger.consent import lifecycle

    store = world.app.extensions["healthledger.store"]
    with store.unit_of_work() as uow:
        from sqlalchemy.orm import Session as OrmSession

        from healthledger.consent.models import ConsentBinding
        from healthledger.ledger import eip712, patient_keys, relayer

        with OrmSession(bind=uow.conn, join_transaction_mode="create_savepoint") as s:
            binding = s.scalars(select(ConsentBinding).where(ConsentBinding.consent_id == cid)).one()
            master = patient_keys.unlock(s, f"Patient/{world.patients['ann']}", "correct horse battery staple")
            account = patient_keys.pseudonym_for(master, binding.grantee_ref)
            domain = lifecycle.registry_domain(uow.conn)
            msg = eip712.RevokeMessage(account.address, binding.grantee_address, bytes.fromhex(binding.scope_hash[2:]),
                                       1, int(time.time()) + 600)
            item = relayer.submit_revoke(s, domain, msg, eip712.sign(bytes(account.key), domain, msg), now=time.time())
            s.commit()  # releases the savepoint into the store's transaction
    from healthledger.ledger import outbox

    outbox.drain(world.sessions, world.chain, time.time)  # mined: the chain says revoked
    with world.sessions() as s:
        assert outbox.status(s, item).state.value == "confirmed"
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 200  # the index has not polled yet
    started = time.perf_counter()
    world.indexer.run_once(time.time())  # one poll
    resp = world.client.get(obs, headers=world.headers("clinic"))
    elapsed = time.perf_counter() - started
    assert status(resp) == 404
    with world.sessions() as s:
        assert s.scalar(select(ConsentEvent.status).order_by(ConsentEvent.id.desc()).limit(1)) == "revoked"
    print(f"revocation reached reads {elapsed * 1000:.1f} ms after the indexer's pass began")


def test_a_denying_consent_applies_at_once_and_wins(world: World) -> None:
    bob_session = world.patient_session("bob")
    # Bob's hospital is not ours, so give the clinic a live permit first, then deny Observations to it.
    cid = orjson.loads(bob_session.post("Consent", permit_consent(world.patients["bob"], CLINIC)).data)["id"]
    bob_session.post(f"Consent/{cid}/$sign", password_parameters())
    world.sync()
    obs = f"/fhir/Observation/{world.observations['bob']}"
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 200
    resp = bob_session.post("Consent", deny_consent(world.patients["bob"], CLINIC, classes=("Observation",)))
    assert status(resp) == 201 and orjson.loads(resp.data)["status"] == "active"  # no signature needed
    assert status(world.client.get(obs, headers=world.headers("clinic"))) == 404
    assert status(world.client.get(f"/fhir/Patient/{world.patients['bob']}", headers=world.headers("clinic"))) == 200


def test_break_the_glass_is_allowed_for_clinicians_flagged_and_sealed(world: World) -> None:
    obs = f"/fhir/Observation/{world.observations['bob']}"
    before = world.log_size()
    reason = "unconscious in the emergency department"
    missing_reason = world.client.get(obs, headers=world.headers("clinic", **{"X-Purpose-Of-Use": "ETREAT"}))
    assert status(missing_reason) == 400
    resp = world.client.get(obs, headers=world.headers(
        "clinic", **{"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": reason}))
    assert status(resp) == 200
    refused, entry = world.log_since(before)  # the attempt without a reason is recorded too
    assert refused.decision == "deny" and not refused.break_glass and refused.reason.startswith("refused(")
    assert entry.break_glass and entry.purpose == "ETREAT" and entry.decision == "permit"
    assert entry.sealed_note and reason.encode() not in entry.sealed_note
    # Systems and researchers cannot break the glass.
    resp = world.client.get(obs, headers=world.headers(
        "research", **{"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": reason}))
    assert status(resp) == 404


def test_a_stale_consent_index_fails_closed_except_for_emergencies(world: World) -> None:
    obs = f"/fhir/Observation/{world.observations['ann']}"
    try:
        world.make_index_stale()
        before = world.log_size()
        assert status(world.client.get(obs, headers=world.headers("ehr"))) == 404
        [entry] = world.log_since(before)
        assert entry.decision == "deny" and entry.reason.startswith("index-stale")
        assert status(world.client.get(obs, headers=world.headers(
            "clinic", **{"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": "cardiac arrest"}))) == 200
        assert status(world.patient_session("ann").get(f"Observation/{world.observations['ann']}")) == 200
    finally:
        world.indexer.run_once(time.time())
    assert status(world.client.get(obs, headers=world.headers("ehr"))) == 200


def test_every_attempt_is_logged_once_including_misses_and_failed_transactions(world: World) -> None:
    before = world.log_size()
    world.client.get(f"/fhir/Observation/{world.observations['ann']}", headers=world.headers("ehr"))
    world.client.get(f"/fhir/Observation/{world.observations['bob']}", headers=world.headers("ehr"))
    world.client.get("/fhir/Observation/does-not-exist", headers=world.headers("ehr"))
    # A transaction that fails on its second entry: the first entry's decision is rolled back with
    # its data, but both attempts are still in the log.
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{world.observations['ann']}"}},
        {"request": {"method": "GET", "url": f"Observation/{world.observations['bob']}"}},
    ]}
    resp = world.client.post("/fhir", data=orjson.dumps(bundle),
                             headers={**world.headers("ehr"), "Content-Type": "application/fhir+json"})
    assert status(resp) == 404
    entries = world.log_since(before)
    assert [(e.decision, e.resource_id) for e in entries] == [
        ("permit", world.observations["ann"]), ("deny", world.observations["bob"]), ("deny", "does-not-exist"),
        ("permit", world.observations["ann"]), ("deny", world.observations["bob"]),
    ]
    assert all(e.actor == "client:ehr" and e.organization == HOSPITAL for e in entries)


def test_no_phi_in_the_access_log_or_on_chain(world: World) -> None:
    from healthledger.audit.models import AccessLogEntry

    with world.sessions() as s:
        bodies = b"".join(s.scalars(select(AccessLogEntry.body)).all())
        payloads = "".join(s.scalars(select(OutboxItem.payload)).all())
    # Log entries name resources by id (server-assigned, never an MRN) and patients by keyed pseudonym only.
    for secret in ("Testperson-ann", "Testperson-bob", "1970-03-04"):
        assert secret.encode() not in bodies, secret
    for secret in ("Testperson-ann", "Testperson-bob", "1970-03-04", world.patients["ann"], world.patients["bob"]):
        assert secret not in payloads, secret
    assert f"Patient/{world.patients['ann']}".encode() not in bodies
    # and none in any transaction the chain holds
    w3 = world.chain.w3
    for number in range(w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            data = bytes(tx.get("input", tx.get("data", b"")))
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            data += b"".join(bytes(log["data"]) + b"".join(bytes(t) for t in log["topics"]) for log in receipt["logs"])
            for secret in ("Testperson-ann", "1970-03-04", world.patients["ann"], "city-clinic", "Organization"):
                assert secret.encode() not in data


def test_expired_grants_stop_counting(world: World) -> None:
    """A grant past its end no longer permits (the engine's clock is moved on rather than slept through)."""
    bob_session = world.patient_session("bob")
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    cid = orjson.loads(bob_session.post(
        "Consent", permit_consent(world.patients["bob"], UNIVERSITY, classes=("Patient",),
                                  period_end=end.strftime("%Y-%m-%dT%H:%M:%SZ"))).data)["id"]
    assert status(bob_session.post(f"Consent/{cid}/$sign", password_parameters())) == 200
    world.sync()
    patient = f"/fhir/Patient/{world.patients['bob']}"
    assert status(world.client.get(patient, headers=world.headers("research"))) == 200
    policy = world.app.extensions["healthledger.store"].policy
    real_clock = policy.clock
    policy.clock = lambda: real_clock() + timedelta(minutes=10)
    try:
        assert status(world.client.get(patient, headers=world.headers("research"))) == 404
    finally:
        policy.clock = real_clock
    with world.app.extensions["healthledger.engine"].connect() as conn:
        later = chain_states(conn, world.app.config["SETTINGS"].tenant, [cid], now=end.timestamp() + 1)[cid]
    assert later["state"] == "expired" and later["grants"][0]["state"] == "expired"
    assert present_consent({"resourceType": "Consent", "status": "active"}, later)["status"] == "inactive"


def consult(world: World, client_id: str, patient: str, actor: str, classes: tuple[str, ...],
            purpose: str = "TREAT") -> dict:  # type: ignore[type-arg]
    body = {
        "hook": "patient-consent-consult", "hookInstance": "9f1c4c0e-7a3b-4f55-8f0b-2a8d1e6c1d01",
        "context": {
            "patientId": [{"system": MRN_SYSTEM, "value": f"MRN-{patient}"}],
            "scope": "patient-privacy",
            "purposeOfUse": [purpose],
            "actor": [{"system": ORG_SYSTEM, "value": actor}],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": c} for c in classes],
        },
    }
    resp = world.client.post("/cds-services/patient-consent-consult", data=orjson.dumps(body),
                             headers={"Authorization": f"Bearer {world.token(client_id)}",
                                      "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return orjson.loads(resp.data)  # type: ignore[no-any-return]


def test_cds_hooks_consult_gives_the_engines_answer_and_is_logged(world: World) -> None:
    pid = world.add_patient("cara", HOSPITAL)
    cara = world.patient_session("cara")
    cid = orjson.loads(cara.post("Consent", permit_consent(pid, CLINIC, classes=("Observation",))).data)["id"]
    assert world.client.get("/cds-services").get_json()["services"][0]["hook"] == "patient-consent-consult"

    before = world.log_size()
    assert consult(world, "clinic", "cara", "city-clinic", ("Observation",))["cards"][0]["summary"] == "NO_CONSENT"
    [entry] = world.log_since(before)
    assert entry.action == "decide" and entry.actor == "client:clinic" and entry.patient_pseudonym

    cara.post(f"Consent/{cid}/$sign", password_parameters())
    world.sync()
    assert consult(world, "clinic", "cara", "city-clinic", ("Observation",))["cards"][0]["summary"] == "CONSENT_PERMIT"
    # Not for other classes, and not for organisations the consent does not name (each client asks as
    # itself: tests/integration/test_cds_hooks_consult.py).
    assert consult(world, "clinic", "cara", "city-clinic", ("Patient",))["cards"][0]["summary"] == "NO_CONSENT"
    assert consult(world, "research", "cara", "university", ("Observation",))["cards"][0]["summary"] == "NO_CONSENT"
    cara.post("Consent", deny_consent(pid, CLINIC, classes=("Observation",)))
    assert consult(world, "clinic", "cara", "city-clinic", ("Observation",))["cards"][0]["summary"] == "CONSENT_DENY"
    # An unknown patient answers like a patient without consent.
    assert consult(world, "clinic", "nobody", "city-clinic", ("Observation",))["cards"][0]["summary"] == "NO_CONSENT"
    # Asking needs a token that may read Consents.
    resp = world.client.post("/cds-services/patient-consent-consult", data=b"{}", headers={
        "Authorization": f"Bearer {world.token('auditor')}", "Content-Type": "application/json"})
    assert resp.status_code in (400, 403)


def test_patients_see_who_accessed_their_record_including_break_the_glass(world: World) -> None:
    pid = world.add_patient("dora", OTHER_HOSPITAL)
    obs = world.observations["dora"]
    world.client.get(f"/fhir/Observation/{obs}", headers=world.headers("clinic"))  # denied
    world.client.get(f"/fhir/Observation/{obs}", headers=world.headers(
        "clinic", **{"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": "anaphylaxis"}))  # permitted, flagged
    dora = world.patient_session("dora")
    resp = dora.get(f"AuditEvent?patient=Patient/{pid}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    events = [e["resource"] for e in orjson.loads(resp.data).get("entry", [])]
    by_clinic = [e for e in events if any(
        a.get("who", {}).get("identifier", {}).get("value") == "client:clinic" for a in e.get("agent", []))]
    assert len(by_clinic) == 2
    assert {e["outcome"] for e in by_clinic} == {"0", "4"}
    flagged = [e for e in by_clinic if any(c.get("code") == "BTG" for p in e.get("purposeOfEvent", [])
                                           for c in p.get("coding", []))]
    assert len(flagged) == 1
    # The reason is sealed in the log and opened for the patient whose data it was (and their care
    # organisations' auditors), never for a log feed.
    [btg] = [p for p in flagged[0]["purposeOfEvent"] if p["coding"][0]["code"] == "BTG"]
    assert btg["text"] == "anaphylaxis"
    feed = world.client.get(f"/fhir/AuditEvent?patient=Patient/{pid}", headers=world.headers("auditor"))
    assert "anaphylaxis" not in feed.get_data(as_text=True)
    # Another patient sees none of Dora's entries, and an auditor sees them all.
    other = orjson.loads(world.patient_session("ann").get(f"AuditEvent?patient=Patient/{pid}").data)
    assert other["total"] == 0 and "entry" not in other
    audit = orjson.loads(world.client.get(f"/fhir/AuditEvent?patient=Patient/{pid}",
                                          headers=world.headers("auditor")).data)
    assert audit["total"] >= 2


def test_the_consent_index_reloads_on_consent_inputs_only(world: World) -> None:
    index = world.app.extensions["healthledger.consent_index"]
    obs = f"/fhir/Observation/{world.observations['ann']}"
    world.client.get(obs, headers=world.headers("ehr"))
    loads = index.loads
    world.client.get(obs, headers=world.headers("ehr"))
    assert index.loads == loads  # served from memory
    world.dev_create({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                      "subject": {"reference": f"Patient/{world.patients['ann']}"}})
    world.client.get(obs, headers=world.headers("ehr"))
    assert index.loads == loads  # clinical data written all day does not empty the index
    patient = world.dev_read(f"Patient/{world.patients['ann']}")
    patient.pop("meta")
    world.dev_put(patient)
    world.client.get(obs, headers=world.headers("ehr"))
    assert index.loads == loads + 1  # a Patient (care organisations) does


def test_cds_hooks_does_not_accept_the_web_session(world: World) -> None:
    """/cds-services is exempt from CSRF checks because it never reads the session: it must not."""
    session = world.patient_session("ann")
    body = {"hook": "patient-consent-consult", "hookInstance": "x", "context": {
        "patientId": [{"system": MRN_SYSTEM, "value": "MRN-ann"}], "actor": [{"value": "city-clinic"}]}}
    resp = session.browser.post("/cds-services/patient-consent-consult", data=orjson.dumps(body),
                                headers={"Content-Type": "application/json"})
    assert resp.status_code == 401


def test_reading_a_deleted_resource_is_logged_whoever_asks(world: World) -> None:
    from fhir_api_support import AUTH

    oid = world.dev_create({"resourceType": "Observation", "status": "final", "code": {"text": "temp"},
                            "subject": {"reference": f"Patient/{world.patients['ann']}"}})
    assert world.client.delete(f"/fhir/Observation/{oid}", headers=AUTH).status_code == 204
    before = world.log_size()
    assert world.client.get(f"/fhir/Observation/{oid}", headers=AUTH).status_code == 410  # the service sees it
    # Ann's care organisation could read it: 410, decided on the version deleted; the clinic could not: 404.
    assert world.client.get(f"/fhir/Observation/{oid}", headers=world.headers("ehr")).status_code == 410
    assert world.client.get(f"/fhir/Observation/{oid}", headers=world.headers("clinic")).status_code == 404
    entries = world.log_since(before)
    assert [(e.actor, e.decision, e.resource_id) for e in entries] == [
        ("dev-client", "deny", oid), ("client:ehr", "permit", oid), ("client:clinic", "deny", oid)]


def test_the_index_freshness_read_with_the_token_serves_its_own_request_only(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token check reads the consent index's freshness in the client lookup's statement (one round trip fewer
    per request, healthledger.consent.index.Freshness). The request's first operation uses it; nothing of it
    survives the request (one refused before any operation included); a later operation reads it anew."""
    from healthledger.consent import index as index_module
    from healthledger.consent.index import _PREFETCHED, Freshness

    freshness_reads: list[str] = []
    real_fetch = index_module.driver_fetch_one

    def counting(conn: Any, sql: str, params: tuple[Any, ...]) -> Any:
        freshness_reads.append(sql)
        return real_fetch(conn, sql, params)

    monkeypatch.setattr(index_module, "driver_fetch_one", counting)
    obs = f"/fhir/Observation/{world.observations['ann']}"
    assert status(world.client.get(obs, headers=world.headers("ehr"))) == 200  # ann's hospital
    assert freshness_reads == []  # read with the token's client, not again
    assert status(world.client.get(obs, headers=AUTH)) == 200
    assert len(freshness_reads) == 1  # no token check: the operation reads it itself

    refused = world.client.get("/fhir/Observation?no-such-parameter=1",
                               headers=world.headers("ehr", Prefer="handling=strict"))
    assert status(refused) == 400
    assert _PREFETCHED.get() is None  # read by its token check, taken by no operation, gone with the request

    # Taken once, by the first operation: a stale value handed in is used there (its age fails closed), then the
    # next operation reads the database's.
    index = world.app.extensions["healthledger.consent_index"]
    Freshness.received(index._generation, 0.0)
    with world.app.extensions["healthledger.engine"].connect() as conn:
        assert index.refresh(conn) > 3600  # the epoch: as stale as can be
        assert index.refresh(conn) < 60


def test_a_search_pinned_to_a_patient_the_caller_may_see_nothing_of_never_reads_their_records(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answered as for a patient who does not exist, without decrypting or deciding any of their records: the
    time a search takes would otherwise grow with records the caller may not know exist (denied == missing)."""
    from healthledger.audit.pseudonym import patient_pseudonym

    store = world.app.extensions["healthledger.store"]
    screened: list[str] = []
    real_screen = store.policy.screen

    def counting_screen(principal: Any, action: Any, resource_type: str, resource: dict, **kw: Any) -> Any:
        screened.append(str(resource.get("id")))
        return real_screen(principal, action, resource_type, resource, **kw)

    monkeypatch.setattr(store.policy, "screen", counting_screen)
    bob = world.patients["bob"]  # cared for by the other hospital: nothing of his for the hospital's EHR
    before = world.log_size()
    for query in (f"Observation?patient={bob}", f"Observation?subject=Patient/{bob}",
                  f"Observation?subject:Patient={bob}&code=4548-4", f"Patient?_id={bob}",
                  f"Observation?patient={bob}&_summary=count"):
        denied = world.client.get(f"/fhir/{query}", headers=world.headers("ehr"))
        missing = world.client.get(f"/fhir/{query.replace(bob, 'no-such-patient')}", headers=world.headers("ehr"))
        assert status(denied) == status(missing) == 200
        shown, absent = orjson.loads(denied.data), orjson.loads(missing.data)
        assert shown["total"] == absent["total"] == 0 and "entry" not in shown
        assert {k: v for k, v in shown.items() if k not in ("id", "link", "meta")} == {
            k: v for k, v in absent.items() if k not in ("id", "link", "meta")}
    assert screened == []
    entries = [e for e in world.log_since(before) if e.patient_pseudonym == patient_pseudonym(store.indexer, bob)]
    assert len(entries) == 5 and all(e.decision != "permit" for e in entries)  # each attempt on him is logged
    # Where some records may be shown, each match is decided as ever.
    ann = world.patients["ann"]
    mine = orjson.loads(world.client.get(f"/fhir/Observation?patient={ann}", headers=world.headers("ehr")).data)
    assert world.observations["ann"] in screened and mine["total"] >= 1


def test_a_consent_written_or_read_in_a_bundle_shows_its_chain_state_as_rest_does(world: World) -> None:
    """A permit recorded by staff is `proposed` until the patient signs it (its grants are not live): the
    transaction's answer says so, with the chain-state extension, exactly as a REST read of it does."""
    consent = permit_consent(world.patients["ann"], CLINIC)  # sent as `active`: the chain decides what it is
    headers = {**world.headers("ehr"), "Content-Type": "application/fhir+json"}
    written = world.client.post("/fhir", data=orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:4b0c0a4e-58f4-4c6e-9d43-3b1f1f6f3a01", "resource": consent,
         "request": {"method": "POST", "url": "Consent"}}]}), headers=headers)
    assert status(written) == 200
    [entry] = orjson.loads(written.data)["entry"]
    cid = entry["resource"]["id"]
    read = orjson.loads(world.client.get(f"/fhir/Consent/{cid}", headers=world.headers("ehr")).data)
    assert entry["resource"]["status"] == read["status"] == "proposed"
    assert chain_state(entry["resource"]) == chain_state(read)
    for kind in ("transaction", "batch"):
        got = world.client.post("/fhir", data=orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "GET", "url": f"Consent/{cid}"}},
            {"request": {"method": "GET", "url": f"Consent?_id={cid}"}}]}), headers=headers)
        one, found = orjson.loads(got.data)["entry"]
        searched = found["resource"]["entry"][0]["resource"]
        for shown in (one["resource"], searched):
            assert shown["status"] == "proposed" and chain_state(shown) == chain_state(read), kind


def test_a_write_refused_either_way_does_not_tell_whether_the_id_is_taken(world: World) -> None:
    """PUT to a Patient the clinic may not change and to an id nobody holds, which it may not create: the same 403
    in the same words (it was 'update on …' against 'create on …'), over REST and in a batch."""
    headers = {**world.headers("clinic"), "Content-Type": "application/fhir+json"}

    def put(pid: str) -> Any:
        body = {"resourceType": "Patient", "id": pid, "managingOrganization": {"reference": OTHER_HOSPITAL}}
        return world.client.put(f"/fhir/Patient/{pid}", data=orjson.dumps(body), headers=headers)

    hers = world.dev_create({"resourceType": "Patient", "managingOrganization": {"reference": HOSPITAL}})
    taken, free = put(hers), put("no-such-patient-id")
    assert status(taken) == status(free) == 403
    said = [orjson.loads(r.data)["issue"][0]["diagnostics"] for r in (taken, free)]
    assert said[0] == said[1] == "writing this Patient is not permitted for this caller"
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": pid}, "request": {"method": "PUT", "url": f"Patient/{pid}"}}
        for pid in (hers, "no-such-patient-id")]}
    first, second = orjson.loads(world.client.post("/fhir", data=orjson.dumps(batch), headers=headers).data)["entry"]
    assert first["response"] == second["response"]
