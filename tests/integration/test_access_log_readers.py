"""Who may read the access log, through the real API: tokens from registered clients, patients' web sessions,
the development token; the consent index's care organisations; every attempt recorded in the log itself.

The expected answers are written down from docs/consent-semantics.md ("Who may read the access log"), not
computed by the code under test. The hospital is the home organisation (a care organisation of everyone);
Bob is cared for by the other hospital, Ann by the hospital; the clinic cares for nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from consent_world import CLINIC, HOSPITAL, OTHER_HOSPITAL, World
from fhir_api_support import AUTH
from sqlalchemy import func, select

from fhir_adapters.audit_event import PATIENT_PSEUDONYM_SYSTEM
from healthledger.audit.entries import AccessEntry, decode_entry
from healthledger.audit.models import AccessLogEntry
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.audit.spool import ingest
from healthledger.auth.tokens import register_client

FHIR = "application/fhir+json"
MISSING = "999999999"

# client id -> (role, organisation, registered scopes), beside consent_world's clients
LOG_READERS = {
    "auditor-bob-care": ("auditor", OTHER_HOSPITAL, "system/*.rs"),  # auditor of Bob's care organisation
    "auditor-clinic": ("auditor", CLINIC, "system/*.rs"),  # auditor of an organisation caring for nobody
    "auditor-home": ("auditor", HOSPITAL, "system/*.rs"),  # auditor of the home organisation
    "siem": ("system", "", "system/AuditEvent.rs"),  # registered for the log by name
    "integration": ("system", HOSPITAL, "system/*.rs"),  # the wildcard every integration asks for
}

# Which entries each caller sees: "all", "bob" / "ann" (that patient's only), "own" (its own requests naming no
# patient), or "none".
VIEWS = {
    "bob": "bob",  # the patient himself
    "ann": "ann",  # another patient: her own, never Bob's
    "auditor-bob-care": "bob",  # the other hospital cares for Bob only
    "auditor-clinic": "none",
    "auditor-home": "all",
    "siem": "all",
    "integration": "none",
    "clinic": "none",  # a clinician client (system/*.cruds)
    "research": "own",  # a researcher client (system/*.rs): its own requests, never an entry naming a patient
    "dev": "all",  # the development token: the service itself
}
# Can the view see Bob's entries (search patient=Bob, read an entry of Bob's), and an entry naming no patient?
SEES_BOB = {"all": True, "bob": True, "ann": False, "own": False, "none": False}
SEES_NO_PATIENT = {"all": True, "bob": False, "ann": False, "own": False, "none": False}  # the service's entry


@dataclass
class LogWorld:
    world: World
    tokens: dict[str, str]
    pseudonyms: dict[str, str]  # "bob", "ann" -> their pseudonym in the log
    bob_entry: int  # an entry about Bob
    no_patient_entry: int  # an entry naming no patient

    def get(self, caller: str, path: str, **params: str) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        url = f"/fhir/{path}" + (f"?{query}" if query else "")
        if caller in ("bob", "ann"):
            return self.world.patient_session(caller).browser.get(url, headers={"Accept": FHIR})
        if caller == "dev":
            return self.world.client.get(url, headers={**AUTH, "Accept": FHIR})
        token = self.tokens.get(caller) or self.world.token(caller)
        return self.world.client.get(url, headers={"Authorization": f"Bearer {token}", "Accept": FHIR})

    def count(self, pseudonym: str | None = None) -> int:
        ingest(self.world.sessions.kw["bind"])
        with self.world.sessions() as s:
            stmt = select(func.count()).select_from(AccessLogEntry)
            if pseudonym is not None:
                stmt = stmt.where(AccessLogEntry.patient_pseudonym == pseudonym)
            return int(s.scalar(stmt) or 0)

    def count_own(self, actor: str) -> int:
        """The reference model of a researcher's view: entries whose actor they are, naming no patient."""
        ingest(self.world.sessions.kw["bind"])
        with self.world.sessions() as s:
            bodies = s.scalars(select(AccessLogEntry.body)).all()
        return sum(1 for body in bodies if (e := decode_entry(body)).actor == actor and not e.patient_pseudonym)

    def bodies(self, ids: list[int]) -> dict[int, AccessEntry]:
        ingest(self.world.sessions.kw["bind"])
        with self.world.sessions() as s:
            rows = s.execute(select(AccessLogEntry.id, AccessLogEntry.body).where(AccessLogEntry.id.in_(ids))).all()
        return {row.id: decode_entry(row.body) for row in rows}

    def attempt(self, caller: str, request: Callable[[], Any]) -> tuple[Any, list[AccessEntry]]:
        """Run one request; return its response and the log entries it left."""
        before = self.world.log_size()
        response = request()
        entries = self.world.log_since(before)
        for entry in entries:
            assert entry.resource_type == "AuditEvent"
            if caller in ("bob", "ann"):
                assert entry.role == "patient" and entry.actor.startswith("user:")
            else:
                assert entry.actor == ("dev-client" if caller == "dev" else f"client:{caller}")
        return response, entries


def _last_with(world: World, pseudonym: str, resource_type: str) -> int:
    ingest(world.sessions.kw["bind"])
    with world.sessions() as s:
        rows = s.execute(select(AccessLogEntry.id, AccessLogEntry.body).order_by(AccessLogEntry.id.desc())).all()
    for row in rows:
        entry = decode_entry(row.body)
        if entry.patient_pseudonym == pseudonym and entry.resource_type == resource_type:
            return int(row.id)
    raise AssertionError("no such entry")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogWorld]:
    url = request.getfixturevalue("postgres_module_schema_url")[0] if request.param == "postgres" else ""
    world = World.build(tmp_path_factory.mktemp(f"log-readers-{request.param}"), url,
                        home_organization=HOSPITAL)
    tokens: dict[str, str] = {}
    with world.sessions.begin() as s:
        secrets = {}
        for client_id, (role, org, scopes) in LOG_READERS.items():
            _, secret = register_client(s, client_id=client_id, name=client_id, scopes=scopes, role=role,
                                        organization=org, with_secret=True, now=datetime.now(UTC))
            secrets[client_id] = secret
    for client_id, (_, _, scopes) in LOG_READERS.items():
        resp = world.client.post("/auth/token", data={"grant_type": "client_credentials", "scope": scopes,
                                                      "client_id": client_id, "client_secret": secrets[client_id]})
        assert resp.status_code == 200, resp.get_json()
        tokens[client_id] = resp.get_json()["access_token"]
    store = world.app.extensions["healthledger.store"]
    pseudonyms = {name: patient_pseudonym(store.indexer, world.patients[name]) for name in ("ann", "bob")}
    # Entries to look for: the clinic tries Bob's Observation (denied), the hospital's EHR reads Ann's, the
    # service reads an Organization (no patient).
    world.client.get(f"/fhir/Observation/{world.observations['bob']}", headers=world.headers("clinic"))
    world.client.get(f"/fhir/Observation/{world.observations['ann']}", headers=world.headers("ehr"))
    world.client.get("/fhir/Organization/city-clinic", headers=AUTH)
    built = LogWorld(world, tokens, pseudonyms, _last_with(world, pseudonyms["bob"], "Observation"),
                     _last_with(world, "", "Organization"))
    yield built
    world.close()


def _patient_of(event: dict[str, Any]) -> dict[str, Any] | None:
    found = [e["what"] for e in event.get("entity", []) if e["role"]["code"] == "1"]
    return found[0] if found else None


@pytest.mark.parametrize("caller", sorted(VIEWS))
def test_search_everything(log_world: LogWorld, caller: str) -> None:
    view = VIEWS[caller]
    if view == "all":
        expected_total = log_world.count()  # every entry, up to this request
    elif view == "none":
        expected_total = 0
    elif view == "own":
        expected_total = log_world.count_own(f"client:{caller}")
    else:
        expected_total = log_world.count(log_world.pseudonyms[view])
    resp, entries = log_world.attempt(caller, lambda: log_world.get(caller, "AuditEvent", _count="50"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    bundle = orjson.loads(resp.data)
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == expected_total
    shown = [int(e["resource"]["id"]) for e in bundle.get("entry", [])]
    bodies = log_world.bodies(shown)
    if view in ("bob", "ann"):
        assert {bodies[i].patient_pseudonym for i in shown} == {log_world.pseudonyms[view]}
    if view == "own":
        assert all(bodies[i].actor == f"client:{caller}" and not bodies[i].patient_pseudonym for i in shown)
    # Recorded: one entry per patient whose entries the page disclosed (entries naming none count as one),
    # a single entry naming no patient when nothing was disclosed.
    disclosed = list(dict.fromkeys(bodies[i].patient_pseudonym for i in shown))
    assert [e.patient_pseudonym for e in entries] == (disclosed or [""])
    assert {(e.action, e.decision) for e in entries} == {("search", "deny" if view == "none" else "permit")}
    if view == "all":
        assert {log_world.pseudonyms["ann"], log_world.pseudonyms["bob"], ""} <= set(disclosed)


@pytest.mark.parametrize("caller", sorted(VIEWS))
def test_search_bobs_entries(log_world: LogWorld, caller: str) -> None:
    bob = log_world.world.patients["bob"]
    sees = SEES_BOB[VIEWS[caller]]
    expected_total = log_world.count(log_world.pseudonyms["bob"]) if sees else 0
    resp, entries = log_world.attempt(
        caller, lambda: log_world.get(caller, "AuditEvent", patient=f"Patient/{bob}", _count="50"))
    assert resp.status_code == 200
    bundle = orjson.loads(resp.data)
    assert bundle["total"] == expected_total
    events = [e["resource"] for e in bundle.get("entry", [])]
    assert len(events) == min(expected_total, 50)
    assert all(_patient_of(e) == {"reference": f"Patient/{bob}"} for e in events)
    if sees:
        assert [(e.action, e.decision, e.patient_pseudonym) for e in entries] == [
            ("search", "permit", log_world.pseudonyms["bob"])]
    else:
        assert [(e.action, e.decision, e.patient_pseudonym) for e in entries] == [("search", "deny", "")]


@pytest.mark.parametrize("caller", sorted(VIEWS))
def test_read_an_entry_of_bobs_and_a_missing_one(log_world: LogWorld, caller: str) -> None:
    view = VIEWS[caller]
    missing, missing_entries = log_world.attempt(caller, lambda: log_world.get(caller, f"AuditEvent/{MISSING}"))
    assert missing.status_code == 404
    assert [(e.action, e.decision, e.resource_id, e.patient_pseudonym, e.reason) for e in missing_entries] == [
        ("read", "error", MISSING, "", "audit:not-found")]

    for entry_id, sees, pseudonym in (
        (log_world.bob_entry, SEES_BOB[view], log_world.pseudonyms["bob"]),
        (log_world.no_patient_entry, SEES_NO_PATIENT[view], ""),
    ):
        resp, entries = log_world.attempt(caller, lambda entry_id=entry_id: log_world.get(caller, f"AuditEvent/{entry_id}"))
        if sees:
            assert resp.status_code == 200
            event = orjson.loads(resp.data)
            assert event["id"] == str(entry_id)
            if pseudonym:
                assert _patient_of(event) in ({"reference": f"Patient/{log_world.world.patients['bob']}"},
                                              {"identifier": {"system": PATIENT_PSEUDONYM_SYSTEM, "value": pseudonym}})
            assert [(e.decision, e.resource_id, e.patient_pseudonym) for e in entries] == [
                ("permit", str(entry_id), pseudonym)]
        else:
            assert resp.status_code == 404
            assert resp.data == missing.data  # the same answer as an id that does not exist
            assert [(e.decision, e.resource_id, e.patient_pseudonym) for e in entries] == [
                ("deny", str(entry_id), "")]


def test_a_patient_sees_who_read_their_log(log_world: LogWorld) -> None:
    bob = log_world.world.patients["bob"]
    log_world.get("auditor-bob-care", "AuditEvent", patient=f"Patient/{bob}")
    log_world.get("siem", f"AuditEvent/{log_world.bob_entry}")
    resp = log_world.get("bob", "AuditEvent", patient=f"Patient/{bob}", _count="50",
                         _offset=str(max(0, log_world.count(log_world.pseudonyms["bob"]) - 50)))
    events = [e["resource"] for e in orjson.loads(resp.data)["entry"]]
    log_reads = [
        (next(a["who"]["identifier"]["value"] for a in e["agent"] if a["requestor"]),
         next((x.get("what", {}).get("reference") for x in e["entity"] if x["type"]["code"] == "AuditEvent"), None))
        for e in events if any(x["type"].get("code") == "AuditEvent" for x in e.get("entity", []))
    ]
    assert ("client:auditor-bob-care", None) in log_reads
    assert ("client:siem", f"AuditEvent/{log_world.bob_entry}") in log_reads


def test_scopes_still_come_first(log_world: LogWorld) -> None:
    # The narrow client's token covers Patient only: refused before any rule, as for any type.
    resp, entries = log_world.attempt("narrow", lambda: log_world.get("narrow", "AuditEvent"))
    assert resp.status_code == 403
    assert [(e.action, e.decision, e.patient_pseudonym) for e in entries] == [("search", "deny", "")]


def test_an_auditors_patients_follow_the_patient_record_at_once(log_world: LogWorld) -> None:
    """Care organisations as the consent index computes them: generalPractitioner counts too, and a
    Patient written changes what the auditor sees on the next request (the index generation)."""
    from consent_world import UNIVERSITY

    world = log_world.world
    with world.sessions.begin() as s:
        _, secret = register_client(s, client_id="auditor-university", name="u", scopes="system/*.rs",
                                    role="auditor", organization=UNIVERSITY, with_secret=True, now=datetime.now(UTC))
    resp = world.client.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                                  "client_id": "auditor-university", "client_secret": secret})
    log_world.tokens["auditor-university"] = resp.get_json()["access_token"]

    def total() -> int:
        return int(orjson.loads(log_world.get("auditor-university", "AuditEvent").data)["total"])

    assert total() == 0

    eve = world.dev_create({"resourceType": "Patient", "generalPractitioner": [{"reference": UNIVERSITY}]})
    world.dev_read(f"Patient/{eve}")
    eves = log_world.count(patient_pseudonym(world.app.extensions["healthledger.store"].indexer, eve))
    assert eves >= 1 and total() == eves  # every entry about Eve, and nothing else
    patient = world.dev_read(f"Patient/{eve}")
    patient.pop("meta")
    patient["generalPractitioner"] = [{"reference": CLINIC}]
    world.dev_put(patient)
    assert total() == 0  # no longer the university's patient: none of her entries, old or new
