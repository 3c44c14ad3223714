"""`Group/{cohort}/$export`: the Bulk Data protocol, and what the files hold — exactly the remaining participants'
consented data, de-identified, with every delivery in the patients' access log. Synthea patients (Bulk Data
fixtures) and invented ones; real grants signed with patients' keys, mined on the embedded chain and indexed.
On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import consent_world
import orjson
import pytest
from consent_world import PASSWORD, World, password_parameters
from fhir_api_support import JSON_HEADERS, build_app, dispose
from flask import Flask
from research_support import (
    add_patient,
    put_study,
    register_researcher,
    sources_phi,
    study_consent,
    study_resource,
)
from sqlalchemy import select, update
from support import FIXTURES, node_tool

from fhir_adapters.deidentify import PSEUDED
from healthledger import leases
from healthledger.audit.entries import decode_entry
from healthledger.audit.models import AccessLogEntry
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.audit.spool import ingest
from healthledger.auth.users import AccountNames, create_user
from healthledger.consent.models import ConsentBinding
from healthledger.db import session_factory
from healthledger.ledger import outbox, relayer
from healthledger.ledger.chain import rpc_chain
from healthledger.ledger.models import OutboxItem
from healthledger.ledger.outbox import OutboxState
from healthledger.ledger.patient_keys import create_patient_key
from healthledger.principal import SYSTEM
from healthledger.research.data_models import ExportFileContent, ExportJob
from healthledger.research.export import SHA256_EXTENSION
from healthledger.research.models import Enrolment
from healthledger.store.importer import Importer
from tests.integration.anvil import running_anvil

FHIR = "application/fhir+json"
INDEXERS: dict[Flask, Any] = {}  # app -> the indexer that keeps its consent index fresh
BULK = FIXTURES / "bulk-10-patients"
STUDY = "diabetes-outcomes"
COHORT = f"{STUDY}-cohort"
CATEGORIES = ("Patient", "Condition", "Encounter")
DATA_PERIOD = ("2000-01-01", "2030-12-31")
NARROW_PERIOD = ("2015-01-01", "2030-12-31")


def bulk(resource_type: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (BULK / f"{resource_type}.000.ndjson").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "anvil"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """SQLite and PostgreSQL with the embedded chain; SQLite with a real anvil node over JSON-RPC."""
    with ExitStack() as stack:
        yield from _world(request, tmp_path_factory, stack)


def _world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           stack: ExitStack) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp(f"export-{request.param}")
    url = request.getfixturevalue("postgres_module_schema_url")[0] if request.param == "postgres" else ""
    if request.param == "anvil":
        node = stack.enter_context(running_anvil(node_tool("anvil")))

        def anvil_chain(data_dir: Path, provider: Any, **_: Any) -> Any:
            chain = rpc_chain(node, provider, keys_dir=data_dir / "keys", poll_seconds=0.02)
            chain.w3.provider.make_request("anvil_setBalance", [chain.operator.address, hex(10**24)])
            return chain

        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(consent_world, "embedded_chain", anvil_chain)
    w = World.build(data_dir, url, export_min_poll_seconds=0.3)
    app = w.app
    app.extensions["healthledger.research_exports"].enabled = False  # the test runs the worker itself
    store = app.extensions["healthledger.store"]
    paths = [BULK / f"{t}.000.ndjson" for t in ("Patient", "Condition", "Encounter", "Organization", "Practitioner",
                                                 "Location")]
    report = Importer(store, workers=0).import_paths(paths)
    assert not report.failed
    synthea = bulk("Patient")
    invented = add_patient(app, name="Quixotewright")
    put_study(app, study_resource(STUDY, categories=CATEGORIES, data_period=DATA_PERIOD))
    # Participants: three Synthea patients and one invented; the third will leave. The second consents to
    # Conditions only (narrower than the study asks). One more patient consents to another study only.
    engine = app.extensions["healthledger.engine"]
    provider = _provider(app)
    sessions = session_factory(engine)
    chosen = [*_most_data(synthea, 3), invented]
    others = [p["id"] for p in synthea if p["id"] not in chosen]
    with sessions.begin() as s:
        for pid in [*chosen, others[0]]:
            create_patient_key(s, f"Patient/{pid}", PASSWORD, provider, now=time.time())
        create_user(s, AccountNames(store), username="first-participant", password=PASSWORD, role="patient",
                    now=datetime.now(UTC), patient_id=chosen[0])
    consents = {}
    for pid in chosen:
        # The study's period applies to all; the second participant narrows it further, and to Conditions.
        narrow = pid == chosen[1]
        consent = study_consent(pid, STUDY, classes=("Condition",) if narrow else CATEGORIES,
                                data_period=NARROW_PERIOD if narrow else None)
        consents[pid] = _signed_consent(w, consent)
    put_study(app, study_resource("other-study", categories=CATEGORIES))
    _signed_consent(w, study_consent(others[0], "other-study", classes=CATEGORIES, data_period=None))
    # Live study consents that make nobody a participant: one no enrolment points to (the patient never enrolled
    # by proof), one whose on-chain enrolment failed, one whose enrolment is still pending on-chain.
    with sessions.begin() as s:
        for pid in others[1:4]:
            create_patient_key(s, f"Patient/{pid}", PASSWORD, provider, now=time.time())
    for pid, enrolment in zip(others[1:4], (None, "failed", "pending"), strict=True):
        _signed_consent(w, study_consent(pid, STUDY, classes=CATEGORIES, data_period=None), enrolment=enrolment)
    w.sync()
    # The third participant leaves: the grant is revoked on-chain.
    resp = w.client.post(f"/fhir/Consent/{consents[chosen[2]]}/$revoke", data=orjson.dumps(password_parameters()),
                         headers=JSON_HEADERS)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    w.sync()
    INDEXERS[app] = w.indexer
    yield {"backend": request.param, "world": w, "app": app, "token": w.token("research"), "remaining": chosen[:2] + [invented],
           "left": chosen[2], "narrow": chosen[1], "synthea": synthea, "invented": invented,
           "not_participants": others[1:4]}
    w.close()


def _most_data(patients: list[dict[str, Any]], n: int) -> list[str]:
    """The n Synthea patients with the most Conditions and Encounters inside the study's period."""
    count: dict[str, int] = {p["id"]: 0 for p in patients}
    for resource_type in ("Condition", "Encounter"):
        for r in bulk(resource_type):
            pid = r["subject"]["reference"].rsplit("/", 1)[-1].removeprefix("urn:uuid:")
            if pid in count and _within(r, resource_type, DATA_PERIOD):
                count[pid] += 1
    return sorted(count, key=lambda pid: -count[pid])[:n]


def _provider(app: Flask) -> Any:
    from healthledger.keys import key_provider_for

    settings = app.config["SETTINGS"]
    return key_provider_for(settings.key_provider, settings.keys_dir)


def _signed_consent(w: World, consent: dict[str, Any], *, enrolment: str | None = "confirmed") -> str:
    """A signed study consent and, unless `enrolment` is None, the enrolment row `$enrol` writes with it. Its
    enrolment write is `confirmed` (it stands in as the consent's own grant write, mined by `w.sync()`: the
    proof and the real `enrolFor` are the scenario's, tests/research/test_scenario.py), `failed`, or `pending`
    (queued, never due). The store refuses to write a Consent naming a study outside `$enrol`: this writes it
    the way `$enrol` does."""
    store = w.app.extensions["healthledger.store"]
    with store.unit_of_work(SYSTEM) as uow:
        stored, _ = uow.create(consent, study_consent=True)
    consent_id = str(stored.id)
    resp = w.client.post(f"/fhir/Consent/{consent_id}/$sign", data=orjson.dumps(password_parameters()),
                         headers=JSON_HEADERS)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    if enrolment is None:
        return consent_id
    study_id = consent["provision"]["actor"][0]["reference"]["reference"].removeprefix("ResearchStudy/")
    with w.sessions.begin() as s:
        if enrolment == "confirmed":
            item = s.scalars(select(ConsentBinding.grant_item).where(ConsentBinding.consent_id == consent_id)).one()
        else:
            item = outbox.enqueue(s, relayer.STUDY_ENROL, {"nullifier": consent_id}, now=time.time())
            state = OutboxState.FAILED if enrolment == "failed" else OutboxState.QUEUED
            s.execute(update(OutboxItem).where(OutboxItem.id == item).values(state=state.value, next_attempt_at=1e12))
        s.add(Enrolment(id=secrets.token_hex(16), tenant=store.tenant, study_id=study_id,
                        nullifier=str(secrets.randbits(200)), enrollee=consent["extension"][0]["valueString"],
                        root="1", enrol_item=item, consent_id=consent_id, enrolled_at=time.time()))
    return consent_id


def kick_off(app: Flask, token: str, query: str = "", group: str = COHORT) -> Any:
    return app.test_client().get(
        f"/fhir/Group/{group}/$export{query}",
        headers={"Authorization": f"Bearer {token}", "Accept": FHIR, "Prefer": "respond-async"})


def poll(app: Flask, token: str, status_url: str) -> Any:
    return app.test_client().get(status_url, headers={"Authorization": f"Bearer {token}"})


def run_to_completion(app: Flask, token: str, status_url: str) -> Any:
    INDEXERS[app].catch_up(time.time())  # the ledger worker keeps the consent index fresh
    app.extensions["healthledger.research_exports"].worker.run_once()
    time.sleep(0.35)
    done = poll(app, token, status_url)
    assert done.status_code == 200, (done.status_code, done.get_data(as_text=True))
    return done


def download(app: Flask, token: str, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        resp = app.test_client().get(item["url"], headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200 and resp.content_type == "application/fhir+ndjson"
        assert hashlib.sha256(resp.data).hexdigest() == item["extension"][SHA256_EXTENSION]
        lines = [json.loads(line) for line in resp.data.splitlines() if line.strip()]
        assert len(lines) == item["count"]
        out.setdefault(item["type"], []).extend(lines)
    return out


def expected_counts(app: Flask, patients: list[str], narrow: str) -> dict[str, int]:
    """What each remaining participant consented to, within the study's categories and data period."""
    store = app.extensions["healthledger.store"]
    counts: dict[str, int] = {}
    for pid in patients:
        for resource_type in CATEGORIES:
            if pid == narrow and resource_type != "Condition":
                continue
            if resource_type == "Patient":
                counts["Patient"] = counts.get("Patient", 0) + 1
                continue
            page = store.search_params(resource_type, [("patient", f"Patient/{pid}")], count=10_000, principal=SYSTEM)
            period = NARROW_PERIOD if pid == narrow else DATA_PERIOD
            inside = [r for r in page.items if _within(r.resource, resource_type, period)]
            counts[resource_type] = counts.get(resource_type, 0) + len(inside)
    return {k: v for k, v in counts.items() if v}


def _within(resource: dict[str, Any], resource_type: str, period: tuple[str, str]) -> bool:
    """Inside the period by the resource's own dates (Condition: onset to abatement; Encounter: its period)."""
    if resource_type == "Condition":
        start = resource.get("onsetDateTime") or resource.get("recordedDate") or ""
        end = resource.get("abatementDateTime") or start
    else:
        start, end = resource["period"]["start"], resource["period"].get("end") or resource["period"]["start"]
    return bool(start) and period[0] <= start[:10] and end[:10] <= period[1]


def test_export_holds_exactly_the_remaining_participants_consented_data_deidentified(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    kicked = kick_off(app, token)
    assert kicked.status_code == 202, kicked.get_data(as_text=True)
    status_url = kicked.headers["Content-Location"]
    assert "/fhir/$export-status/" in status_url
    pending = poll(app, token, status_url)
    assert pending.status_code == 202 and pending.headers["X-Progress"] and int(pending.headers["Retry-After"]) >= 1
    assert "Content-Type" not in pending.headers  # no body
    too_soon = poll(app, token, status_url)
    assert too_soon.status_code == 429 and too_soon.headers["Retry-After"]
    assert too_soon.get_json()["issue"][0]["code"] == "throttled"

    done = run_to_completion(app, token, status_url)
    assert done.content_type == "application/json" and done.headers["Expires"]
    manifest = done.get_json()
    assert manifest["requiresAccessToken"] is True and manifest["request"].endswith(f"/Group/{COHORT}/$export")
    assert manifest["transactionTime"].endswith("Z") and manifest["error"] == []
    files = download(app, token, manifest)

    # Exactly the remaining participants' consented categories within the study's period.
    counts = {t: len(v) for t, v in files.items()}
    assert counts == expected_counts(app, world["remaining"], world["narrow"])
    assert counts["Patient"] == 2  # the narrow consent gave Conditions only; the one who left gave nothing now

    # De-identified: pseudonymous ids, PSEUDED, no PHI of any source patient, years only.
    text = "\n".join(orjson.dumps(r).decode() for rs in files.values() for r in rs)
    strings = {v for rs in files.values() for r in rs for v in _strings(r)}
    patients = [*world["synthea"], _stored_patient(app, world["invented"])]
    # A value is found as a string of the export, or inside its text when long enough not to occur by chance
    # (a 5-digit postal code occurs in some hex pseudonym of thousands now and then: that is no leak).
    leaked = {v for v in sources_phi(patients) if v in strings or (len(v) >= 6 and v in text)}
    assert not leaked
    for resources in files.values():
        for r in resources:
            assert {"system": PSEUDED[0], "code": PSEUDED[1]} in r["meta"]["security"]
            assert "text" not in r
    for p in files["Patient"]:
        assert len(p["birthDate"]) == 4 and "name" not in p and "identifier" not in p and "telecom" not in p
        assert all(set(a) <= {"country"} for a in p.get("address", []))
    # Consistent within the study: every Condition's subject is one of the exported Patients' pseudonyms.
    exported_patients = {f"Patient/{p['id']}" for p in files["Patient"]}
    subjects = {c["subject"]["reference"] for c in files["Condition"]}
    assert len(subjects) == 3 and len(subjects & exported_patients) == 2

    # Every delivered resource is an access-log entry the patient sees; the manifest's hash is logged too.
    entries = world["world"].log_since(0)
    exported = [e for e in entries if e.action == "export" and e.actor == f"ResearchStudy/{STUDY}"
                and e.decision == "permit"]
    assert len(exported) == sum(counts.values())
    indexer = app.extensions["healthledger.store"].indexer
    first = world["remaining"][0]
    mine = [e for e in exported if e.patient_pseudonym == patient_pseudonym(indexer, first)]
    assert len(mine) == sum(expected_counts(app, [first], "").values())
    left = patient_pseudonym(indexer, world["left"])
    assert not [e for e in exported if e.patient_pseudonym == left]
    manifest_hash = hashlib.sha256(done.data).hexdigest()
    assert [e for e in entries if e.reason.endswith(f"sha256={manifest_hash}")]

    # At rest the files are ciphertext: no exported (pseudonymous) id is anywhere in the database files.
    if world["backend"] == "sqlite":
        settings = app.config["SETTINGS"]
        raw = b"".join(p.read_bytes() for p in (*settings.data_dir.glob("healthledger.db*"),
                                                 *settings.data_dir.glob("healthledger.db-access-spool/*")) if p.is_file())
        exported_ids = {r["id"].encode() for rs in files.values() for r in rs}
        assert exported_ids and not {i for i in exported_ids if i in raw}


def test_a_study_consent_without_an_enrolment_by_proof_is_refused_and_makes_nobody_a_participant(
        world: dict[str, Any]) -> None:
    app, token, w = world["app"], world["token"], world["world"]
    first = world["remaining"][0]
    # Written directly, a Consent naming a study is refused: by the patient themself, and by a caller who may
    # write anything else (POST, PUT, and as a transaction entry).
    own = study_consent(first, STUDY, classes=CATEGORIES, data_period=None)
    mine = w.patient_session("first-participant").post("Consent", own)
    anyone = w.client.post("/fhir/Consent", data=orjson.dumps(own), headers=JSON_HEADERS)
    put = w.client.put("/fhir/Consent/self-made", data=orjson.dumps({**own, "id": "self-made"}), headers=JSON_HEADERS)
    for resp in (mine, anyone, put):
        assert resp.status_code == 422, resp.get_data(as_text=True)
        issue = resp.get_json()["issue"][0]
        assert "$enrol" in issue["diagnostics"] and issue["expression"] == ["Consent.provision.actor"]
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": own, "request": {"method": "POST", "url": "Consent"}}]}
    assert w.client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS).status_code == 422
    # A consent to another purpose is still the patient's to write.
    ordinary = json.loads(json.dumps(own))
    ordinary["provision"]["actor"][0]["reference"]["reference"] = "Organization/university"
    assert w.patient_session("first-participant").post("Consent", ordinary).status_code == 201
    # The fixture's live study consents of three patients who are no participants (never enrolled; enrolment
    # failed on-chain; enrolment pending) deliver nothing, and nobody of theirs is logged as exported.
    size = len(w.log_since(0))
    done = run_to_completion(app, token, kick_off(app, token).headers["Content-Location"])
    files = download(app, token, done.get_json())
    assert len(files["Patient"]) == 2
    indexer = app.extensions["healthledger.store"].indexer
    outsiders = {patient_pseudonym(indexer, pid) for pid in world["not_participants"]}
    insiders = {patient_pseudonym(indexer, pid) for pid in world["remaining"]}
    exported = {e.patient_pseudonym for e in w.log_since(size)
                if e.action == "export" and e.decision == "permit" and e.patient_pseudonym}
    assert exported and exported <= insiders and not exported & outsiders


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value (keys too), and its whitespace-separated words."""
    if isinstance(value, str):
        yield value
        yield from value.split()
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _stored_patient(app: Flask, pid: str) -> dict[str, Any]:
    return app.extensions["healthledger.store"].read("Patient", pid, principal=SYSTEM).resource  # type: ignore[no-any-return]


def test_pseudonyms_are_unlinkable_across_studies(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    remaining = world["remaining"]
    put_study(app, study_resource("second-study", categories=("Condition",)))
    second = _signed_consent(world["world"], study_consent(remaining[0], "second-study", classes=("Condition",)))
    world["world"].sync()
    assert second
    a = download(app, token, run_to_completion(app, token, kick_off(app, token, "?_type=Condition")
                                               .headers["Content-Location"]).get_json())
    b = download(app, token, run_to_completion(app, token, kick_off(app, token, group="second-study-cohort")
                                               .headers["Content-Location"]).get_json())
    ids_a = {c["id"] for c in a["Condition"]}
    ids_b = {c["id"] for c in b["Condition"]}
    subjects_b = {c["subject"]["reference"] for c in b["Condition"]}
    assert len(subjects_b) == 1 and ids_b and not ids_a & ids_b
    assert not subjects_b & {c["subject"]["reference"] for c in a["Condition"]}


def test_type_and_since(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    only = kick_off(app, token, "?_type=Condition&_outputFormat=application/fhir%2Bndjson")
    manifest = run_to_completion(app, token, only.headers["Content-Location"]).get_json()
    assert {o["type"] for o in manifest["output"]} == {"Condition"}
    future = kick_off(app, token, "?_since=2999-01-01T00:00:00Z")
    assert run_to_completion(app, token, future.headers["Content-Location"]).get_json()["output"] == []
    for query, fragment in [("?_type=Observation", "not among the study's data categories"),
                            ("?_type=Nonsense", "not a FHIR resource type"),
                            ("?_since=yesterday", "_since must be an instant"),
                            ("?_outputFormat=text/csv", "_outputFormat"),
                            ("?_typeFilter=Condition%3Fcode%3Dx", "not supported")]:
        resp = kick_off(app, token, query)
        assert resp.status_code == 400 and fragment in resp.get_json()["issue"][0]["diagnostics"], query
    no_prefer = app.test_client().get(f"/fhir/Group/{COHORT}/$export",
                                      headers={"Authorization": f"Bearer {token}", "Accept": FHIR})
    assert no_prefer.status_code == 400 and "respond-async" in no_prefer.get_json()["issue"][0]["diagnostics"]


def test_only_the_researcher_and_only_with_the_token(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    other = register_researcher(app, "rival-lab")
    assert kick_off(app, other).status_code == kick_off(app, other, group="no-such-group").status_code == 404
    status_url = kick_off(app, token).headers["Content-Location"]
    manifest = run_to_completion(app, token, status_url).get_json()
    file_url = manifest["output"][0]["url"]
    assert app.test_client().get(file_url).status_code == 401
    size = world["world"].log_size()
    assert app.test_client().get(file_url, headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert poll(app, other, status_url).status_code == 404
    assert app.test_client().delete(status_url, headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert app.test_client().get(file_url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    logged = world["world"].log_since(size)
    assert [(e.actor, e.decision, e.reason.split(":")[1]) for e in logged] == [
        ("client:rival-lab", "deny", "download"), ("client:rival-lab", "deny", "status"),
        ("client:rival-lab", "deny", "cancel"), ("client:research", "permit", "download")]


def test_delete_cancels_and_removes_files(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    done_url = kick_off(app, token).headers["Content-Location"]
    manifest = run_to_completion(app, token, done_url).get_json()
    job_id = done_url.rsplit("/", 1)[1]
    deleted = app.test_client().delete(done_url, headers={"Authorization": f"Bearer {token}"})
    assert deleted.status_code == 202
    assert poll(app, token, done_url).status_code == 404
    assert app.test_client().get(manifest["output"][0]["url"],
                                 headers={"Authorization": f"Bearer {token}"}).status_code == 404
    sessions = session_factory(app.extensions["healthledger.engine"])
    app.extensions["healthledger.research_exports"].worker.run_once()
    with sessions() as s:
        assert not s.scalars(select(ExportFileContent).where(ExportFileContent.job_id == job_id)).all()
    listed = _cli(app, "exports")
    assert {"job": job_id, "state": "cancelled", "resources": 0} == {
        k: v for k, v in next(j for j in listed if j["job"] == job_id).items() if k in ("job", "state", "resources")}
    assert all(j["manifest_sha256"] for j in listed if j["state"] == "complete")
    # A queued job cancelled before it ran never runs.
    queued_url = kick_off(app, token).headers["Content-Location"]
    assert app.test_client().delete(queued_url, headers={"Authorization": f"Bearer {token}"}).status_code == 202
    assert app.extensions["healthledger.research_exports"].worker.run_once() == 0
    assert poll(app, token, queued_url).status_code == 404


def test_a_job_survives_a_restart_and_a_dead_worker(world: dict[str, Any], tmp_path: Path) -> None:
    app, token = world["app"], world["token"]
    status_url = kick_off(app, token, "?_type=Patient").headers["Content-Location"]
    job_id = status_url.rsplit("/", 1)[1]
    sessions = session_factory(app.extensions["healthledger.engine"])
    # A worker took the job and died holding its lease.
    # (A long lease and a worker whose clock is moved past it: a short real lease ran out while a loaded CI
    # machine was still building the restarted app.)
    assert leases.acquire(sessions, f"research-export:{job_id}", "dead-worker", now=time.time(), ttl=120.0)
    with sessions.begin() as s:
        s.execute(update(ExportJob).where(ExportJob.id == job_id).values(status="running", progress="participant 1"))
    restarted = build_app(app.config["SETTINGS"])
    restarted.extensions["healthledger.research_exports"].enabled = False
    world["world"].indexer.catch_up(time.time())
    try:
        worker = restarted.extensions["healthledger.research_exports"].worker
        assert worker.run_once() == 0  # the lease is still the dead worker's
        worker.wall = lambda: time.time() + 121.0  # ...until it runs out
        assert worker.run_once() == 1
        time.sleep(0.35)
        done = poll(restarted, token, status_url)
        assert done.status_code == 200
        assert [o["count"] for o in done.get_json()["output"]] == [2]
    finally:
        dispose(restarted)


def test_the_in_process_worker_runs_a_kicked_off_job(world: dict[str, Any]) -> None:
    """Without a test driving it: the kick-off wakes the replica's background worker, polls see it finish."""
    app, token = world["app"], world["token"]
    background = app.extensions["healthledger.research_exports"]
    background.enabled = True
    world["world"].indexer.catch_up(time.time())
    try:
        status_url = kick_off(app, token, "?_type=Patient").headers["Content-Location"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.4)
            resp = poll(app, token, status_url)
            if resp.status_code != 202:
                break
        assert resp.status_code == 200 and [o["count"] for o in resp.get_json()["output"]] == [2]
    finally:
        background.enabled = False
        if background._thread is not None:
            background._thread.join(timeout=30)


def test_a_stale_consent_index_makes_the_job_wait_not_deliver_nothing(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    world["world"].make_index_stale()
    status_url = kick_off(app, token, "?_type=Patient").headers["Content-Location"]
    assert app.extensions["healthledger.research_exports"].worker.run_once() == 0
    waiting = poll(app, token, status_url)
    assert waiting.status_code == 202 and "consent index" in waiting.headers["X-Progress"]
    time.sleep(0.35)
    assert [o["count"] for o in run_to_completion(app, token, status_url).get_json()["output"]] == [2]


def test_the_patient_sees_which_study_received_their_records(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    first = world["remaining"][0]
    before = _study_events(world, first)
    manifest = run_to_completion(app, token, kick_off(app, token, "?_type=Condition").headers["Content-Location"])
    conditions = expected_counts(app, [first], "")["Condition"]
    assert sum(o["count"] for o in manifest.get_json()["output"]) > conditions  # others' too, not shown to them
    events = _study_events(world, first)[len(before):]
    assert len(events) == conditions
    for event in events:
        who = event["agent"][0]["who"]
        assert who["identifier"]["value"] == f"ResearchStudy/{STUDY}"
        assert who["display"] == f"Research study: Study {STUDY}"
        assert event["action"] == "E" and event["outcome"] == "0"


def _study_events(world: dict[str, Any], patient_id: str) -> list[dict[str, Any]]:
    """The patient's own AuditEvents (as the patient reads them) naming the study as the agent."""
    session = world["world"].patient_session("first-participant")
    url = f"AuditEvent?patient=Patient/{patient_id}&_count=50"
    found: list[dict[str, Any]] = []
    while url:
        resp = session.get(url)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        bundle = resp.get_json()
        found += [e["resource"] for e in bundle.get("entry", [])
                  if e["resource"]["agent"][0]["who"].get("identifier", {}).get("value") == f"ResearchStudy/{STUDY}"]
        url = next((link["url"].split("/fhir/", 1)[1] for link in bundle.get("link", []) if link["relation"] == "next"),
                   "")
    return sorted(found, key=lambda e: (e["recorded"], e["id"]))


def test_a_study_that_ended_receives_no_data(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    put_study(app, study_resource("ended-study", status="completed"))
    refused = kick_off(app, token, group="ended-study-cohort")
    assert refused.status_code == 409 and "completed" in refused.get_json()["issue"][0]["diagnostics"]
    # Withdrawn after the kick-off: the job fails, delivering nothing.
    put_study(app, study_resource("withdrawn-study"))
    status_url = kick_off(app, token, group="withdrawn-study-cohort").headers["Content-Location"]
    put_study(app, study_resource("withdrawn-study", status="withdrawn"))
    INDEXERS[app].catch_up(time.time())
    app.extensions["healthledger.research_exports"].worker.run_once()
    time.sleep(0.35)
    failed = poll(app, token, status_url)
    assert failed.status_code == 500 and "withdrawn" in failed.get_json()["issue"][0]["diagnostics"]


def _cli(app: Flask, command: str) -> Any:
    from click.testing import CliRunner

    from healthledger.cli import cli
    from healthledger.runtime import Runtime

    settings = app.config["SETTINGS"]
    runtime = Runtime(load_settings=lambda **o: settings.model_copy(update=o))
    try:
        result = CliRunner().invoke(cli, ["research-data", command, "--json"], obj=runtime)
    finally:
        runtime.close()
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the researcher's own access log and their study's release history ------------------------------------
def _all_entries(app: Flask) -> list[tuple[int, Any]]:
    engine = app.extensions["healthledger.engine"]
    ingest(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(AccessLogEntry.id, AccessLogEntry.body).order_by(AccessLogEntry.id)).all()
    return [(row.id, decode_entry(row.body)) for row in rows]


def _search_all(app: Flask, token: str) -> list[dict[str, Any]]:
    url, found = "/fhir/AuditEvent?_count=100", []
    while url:
        resp = app.test_client().get(url, headers={"Authorization": f"Bearer {token}", "Accept": FHIR})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        bundle = resp.get_json()
        found += [e["resource"] for e in bundle.get("entry", [])]
        url = next((link["url"].split("localhost", 1)[1] for link in bundle.get("link", [])
                    if link["relation"] == "next"), "")
    return found


def researchers_view(entries: list[tuple[int, Any]], actor: str) -> set[int]:
    """The reference model: a researcher sees the entries they are the actor of that name no patient."""
    return {entry_id for entry_id, e in entries if e.actor == actor and e.patient_pseudonym == ""}


def test_a_researcher_reads_their_own_requests_and_nothing_that_names_a_patient(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    rival = register_researcher(app, "rival-lab-log")
    manifest = run_to_completion(app, token, kick_off(app, token).headers["Content-Location"]).get_json()
    auth = {"Authorization": f"Bearer {token}", "Accept": FHIR}
    assert app.test_client().get(manifest["output"][0]["url"], headers=auth).status_code == 200
    # A read that the log records against a patient (denied: researchers read no records): never shown back.
    patient = world["remaining"][0]
    assert app.test_client().get(f"/fhir/Patient/{patient}", headers=auth).status_code in (403, 404)
    assert kick_off(app, rival).status_code == 404  # the rival's own (denied) request
    entries = _all_entries(app)
    assert any(e.actor == "client:research" and e.patient_pseudonym for _, e in entries)  # the model has work to do
    assert any(e.actor == f"ResearchStudy/{STUDY}" and e.patient_pseudonym for _, e in entries)  # per-patient deliveries

    seen = _search_all(app, token)
    after = _all_entries(app)  # the searches are logged too (as requests of the researcher naming no patient)
    expected = researchers_view(after, "client:research")
    ids = {int(e["id"]) for e in seen}
    assert ids <= expected and researchers_view(entries, "client:research") <= ids
    reasons = {e.reason.split(":")[1] for i, e in after if i in ids and e.reason.startswith("export:")}
    assert {"kick-off", "manifest", "download"} <= reasons
    store = app.extensions["healthledger.store"]
    pseudonyms = {patient_pseudonym(store.indexer, p["id"]) for p in world["synthea"]} | {
        patient_pseudonym(store.indexer, world["invented"])}
    text = json.dumps(seen)
    assert "Patient/" not in text and not any(p in text for p in pseudonyms)
    assert all(e["agent"][0]["who"].get("identifier", {}).get("value") != f"ResearchStudy/{STUDY}" for e in seen)

    # Reads by id: the researcher's own entry is read; an entry naming a patient, another researcher's entry
    # and a missing id all get the same 404.
    own = min(ids)
    assert app.test_client().get(f"/fhir/AuditEvent/{own}", headers=auth).status_code == 200
    naming = next(i for i, e in after if e.actor == "client:research" and e.patient_pseudonym)
    rivals = next(i for i, e in after if e.actor == "client:rival-lab-log")
    missing = app.test_client().get("/fhir/AuditEvent/999999999", headers=auth)
    for hidden in (naming, rivals):
        resp = app.test_client().get(f"/fhir/AuditEvent/{hidden}", headers=auth)
        assert (resp.status_code, resp.get_json()) == (missing.status_code, missing.get_json()) == (
            404, missing.get_json())
    # The rival sees only their own requests; a patient filter shows a researcher nothing.
    rival_seen = {int(e["id"]) for e in _search_all(app, rival)}
    assert rival_seen and rival_seen <= researchers_view(_all_entries(app), "client:rival-lab-log")
    by_patient = app.test_client().get(f"/fhir/AuditEvent?patient=Patient/{patient}", headers=auth).get_json()
    assert by_patient["total"] == 0 and not by_patient.get("entry")


def test_the_owner_lists_past_exports_with_counts_only_and_others_get_a_missing_study(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    manifest = run_to_completion(app, token, kick_off(app, token).headers["Content-Location"]).get_json()
    auth = {"Authorization": f"Bearer {token}", "Accept": FHIR}
    listed = app.test_client().get(f"/fhir/ResearchStudy/{STUDY}/$export-jobs", headers=auth)
    assert listed.status_code == 200, listed.get_data(as_text=True)
    jobs = [{p["name"]: p for p in job["part"]} for job in listed.get_json()["parameter"]]
    newest = jobs[0]
    assert newest["status"]["valueCode"] == "complete"
    job_id = newest["job"]["valueString"]
    assert manifest["output"][0]["url"].split("/$export-file/")[1].startswith(job_id)
    counts: dict[str, int] = {}
    for o in manifest["output"]:
        counts[o["type"]] = counts.get(o["type"], 0) + o["count"]
    outputs = [p for p in next(j for j in listed.get_json()["parameter"] if j["part"][0]["valueString"] == job_id)["part"]
               if p["name"] == "output"]
    assert {o["part"][0]["valueCode"]: o["part"][1]["valueInteger"] for o in outputs} == counts
    store = app.extensions["healthledger.store"]
    text = listed.get_data(as_text=True)
    assert "Patient/" not in text and patient_pseudonym(store.indexer, world["remaining"][0]) not in text

    rival = register_researcher(app, "rival-lab-jobs")
    for op in ("$export-jobs", "$feasibility-releases"):
        theirs = app.test_client().get(f"/fhir/ResearchStudy/{STUDY}/{op}", headers={"Authorization": f"Bearer {rival}"})
        missing = app.test_client().get(f"/fhir/ResearchStudy/no-such-study/{op}", headers={"Authorization": f"Bearer {rival}"})
        assert theirs.status_code == missing.status_code == 404
        assert [i["code"] for i in theirs.get_json()["issue"]] == [i["code"] for i in missing.get_json()["issue"]]
