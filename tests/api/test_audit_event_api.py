"""GET /fhir/AuditEvent and /fhir/AuditEvent/{id} over a real migrated SQLite store, with fake authenticate/record.

The app also mounts the generic FHIR blueprint, as create_app does, to show AuditEvent URLs are served by the
access log and never by the resource store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from fhir_adapters.audit_event import LEAF_INDEX_EXTENSION, PATIENT_PSEUDONYM_SYSTEM
from fhir_adapters.validation import parse_resource
from healthledger.api.audit_events import AuditPages, audit_event_blueprint
from healthledger.api.fhir import fhir_blueprint
from healthledger.api.outcomes import error_response
from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import integrate, record_access, record_accesses
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.auth.scopes import ResourceScope
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.errors import Unauthorized
from healthledger.keys import LocalFileKeyProvider
from healthledger.principal import Principal
from healthledger.store.repository import ResourceStore, store_for_settings

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
DEV_TOKEN = "audit-event-test-token"

HOME = "Organization/home"
PATIENT_SCOPES = (ResourceScope("patient", "*", "cruds"),)  # what a patient's web session holds
STAFF_SCOPES = (ResourceScope("user", "*", "rs"),)  # what an auditor's web session holds
LOG_SCOPES = (ResourceScope("system", "AuditEvent", "rs"),)

PRINCIPALS = {
    "alice": Principal("user-alice", role="patient", patient_id="pat-a", scope_context="patient",
                       scopes=PATIENT_SCOPES),
    "bob": Principal("user-bob", role="patient", patient_id="pat-b", scope_context="patient", scopes=PATIENT_SCOPES),
    "nobody": Principal("user-x", role="patient", scope_context="patient", scopes=PATIENT_SCOPES),  # no patient id
    "auditor": Principal("user-audit", role="auditor", organization=HOME, scope_context="user", scopes=STAFF_SCOPES),
    "auditor-a": Principal("user-audit-a", role="auditor", organization="Organization/o-a", scope_context="user",
                           scopes=STAFF_SCOPES),  # pat-a's care organisation
    "auditor-x": Principal("user-audit-x", role="auditor", organization="Organization/o-x", scope_context="user",
                           scopes=STAFF_SCOPES),  # cares for nobody here
    "auditor-no-org": Principal("user-audit-0", role="auditor", scope_context="user", scopes=STAFF_SCOPES),
    "internal": Principal("svc", role="internal"),
    "clinic": Principal("client-clinic", role="clinician", organization="Organization/o1",
                        scopes=(ResourceScope("system", "Observation", "rs"),)),
    "audit-client": Principal("client-audit", role="system", scopes=LOG_SCOPES, registered_scopes=LOG_SCOPES),
    "wildcard": Principal("client-wild", role="system", organization=HOME, scopes=LOG_SCOPES,
                          registered_scopes=(ResourceScope("system", "*", "rs"),)),
    "read-only": Principal("client-ro", role="system", scopes=(ResourceScope("system", "AuditEvent", "r"),),
                           registered_scopes=(ResourceScope("system", "AuditEvent", "r"),)),
    "wrong-context": Principal("client-u", role="clinician", scope_context="user",
                               scopes=(ResourceScope("system", "AuditEvent", "rs"),)),
}
NO_PATIENT = (("", ""),)


@dataclass(frozen=True)
class Recorded:
    principal: Principal
    action: str
    targets: tuple[tuple[str, str], ...]  # (AuditEvent id or "", patient pseudonym or "") per entry
    decision: str
    reason: str


class FakeCare:
    """pat-a is cared for by Organization/o-a; the home organisation cares for everyone."""

    home_organization = HOME

    def __init__(self) -> None:
        self.asked: list[str] = []

    def patients_cared_for(self, conn: Any, organization: str) -> frozenset[str]:
        self.asked.append(organization)
        return frozenset({"pat-a"}) if organization == "Organization/o-a" else frozenset()


@dataclass
class Env:
    client: FlaskClient
    store: ResourceStore
    recorded: list[Recorded]
    record_fails: list[bool]  # set [True] to make `record` raise
    ids: dict[str, list[int]]  # "a", "b", "none" -> entry ids in time order
    pa: str  # pseudonyms of pat-a and pat-b
    pb: str

    def get(self, path: str, as_: str | None, *, strict: bool = False, **params: Any) -> Any:
        headers = {"X-Test-Principal": as_} if as_ else {}
        if strict:
            headers["Prefer"] = "handling=strict"
        before = len(self.recorded)
        response = self.client.get(path, query_string=params or None, headers=headers)
        if as_ is not None:
            assert len(self.recorded) == before + 1, "every AuditEvent request is recorded exactly once"
            assert self.recorded[-1].principal is PRINCIPALS[as_]
        else:
            assert len(self.recorded) == before
        assert response.content_type == "application/fhir+json; charset=utf-8"
        return response

    @property
    def last(self) -> Recorded:
        return self.recorded[-1]


def _entry(minute: int, pseudonym: str, **changes: Any) -> AccessEntry:
    entry = AccessEntry(
        time=T0 + timedelta(minutes=minute), actor="client-clinic", organization="Organization/o1", role="clinician",
        purpose="TREAT", action="read", resource_type="Observation", resource_id=f"obs-{minute}",
        patient_pseudonym=pseudonym, decision="permit", reason="policy:treating-clinician",
    )
    return replace(entry, **changes)


@pytest.fixture()
def env(migrated_sqlite_url: str, tmp_path: Path) -> Iterator[Env]:
    settings = Settings(data_dir=tmp_path / "var", database_url=migrated_sqlite_url, load_demo_data=False,
                        dev_token=DEV_TOKEN, default_page_size=4, max_page_size=5)
    engine = make_engine(migrated_sqlite_url)
    store = store_for_settings(engine, LocalFileKeyProvider(settings.keys_dir), settings)
    pa = patient_pseudonym(store.indexer, "pat-a")
    pb = patient_pseudonym(store.indexer, "pat-b")
    ids: dict[str, list[int]] = {"a": [], "b": [], "none": []}
    sessions = session_factory(engine)
    # Minutes 0..5 for pat-a (minute 4 recorded in +01:00), 6..7 for pat-b, 8 with no patient.
    with sessions.begin() as s:
        for minute in range(4):
            ids["a"].append(record_access(s, _entry(minute, pa)))
        local = T0.astimezone(timezone(timedelta(hours=1))) + timedelta(minutes=4)
        ids["a"].append(record_access(s, _entry(4, pa, time=local, break_glass=True, purpose="ETREAT")))
        ids["a"].append(record_access(s, _entry(5, pa, decision="deny", reason="consent:c9")))
        record_accesses(s, [_entry(6, pb), _entry(7, pb, action="search", resource_id="")])
        ids["b"] = list(range(ids["a"][-1] + 1, ids["a"][-1] + 3))
        ids["none"].append(record_access(s, _entry(8, "", resource_type="Organization", resource_id="o1")))
    with sessions.begin() as s:
        integrate(s, T0)  # the first nine are sequenced
    with sessions.begin() as s:
        ids["a"].append(record_access(s, _entry(9, pa)))  # not yet sequenced

    recorded: list[Recorded] = []
    record_fails: list[bool] = []

    def authenticate() -> Principal:
        name = request.headers.get("X-Test-Principal")
        if name is None:
            raise Unauthorized("a bearer token is required")
        return PRINCIPALS[name]

    def record(principal: Principal, action: str, targets: Any, decision: str, reason: str) -> None:
        if record_fails:
            raise RuntimeError("the access log is unavailable")
        recorded.append(Recorded(principal, action, tuple(targets), decision, reason))

    app = Flask("audit-event-test")
    app.testing = True
    app.register_blueprint(fhir_blueprint(store, settings))
    app.register_blueprint(audit_event_blueprint(store, authenticate, record, FakeCare(), pages=AuditPages(4, 5)))
    app.register_error_handler(Exception, error_response)
    yield Env(app.test_client(), store, recorded, record_fails, ids, pa, pb)
    engine.dispose()


def ids_of(bundle: dict) -> list[int]:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    events = [e["resource"] for e in bundle.get("entry", [])]
    for e, event in zip(bundle.get("entry", []), events, strict=True):
        assert parse_resource(event, "AuditEvent") == event
        assert e["fullUrl"].endswith(f"/fhir/AuditEvent/{event['id']}")
    return [int(event["id"]) for event in events]


def patient_what(event: dict) -> dict | None:
    found = [e["what"] for e in event.get("entity", []) if e["role"]["code"] == "1"]
    return found[0] if found else None


def outcome(response: Any, status: int, code: str) -> dict:
    assert response.status_code == status
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code
    return body


def link(bundle: dict, relation: str) -> str | None:
    found = [x["url"] for x in bundle["link"] if x["relation"] == relation]
    return found[0] if found else None


# -- who sees what -------------------------------------------------------------------------------------------


def test_a_patient_sees_only_their_own_entries(env: Env) -> None:
    bundle = env.get("/fhir/AuditEvent", "alice", _count=5).get_json()
    assert bundle["total"] == 7
    first_page = ids_of(bundle)
    assert first_page == env.ids["a"][:5]
    for event in (e["resource"] for e in bundle["entry"]):
        assert patient_what(event) == {"reference": "Patient/pat-a"}  # the id is known: she is asking
    assert env.last == Recorded(PRINCIPALS["alice"], "search", (("", env.pa),), "permit", "audit:own-entries")

    same = env.get("/fhir/AuditEvent", "alice", patient="Patient/pat-a", _count=5).get_json()
    assert ids_of(same) == first_page and same["total"] == 7
    bare = env.get("/fhir/AuditEvent", "alice", patient="pat-a", _count=5).get_json()
    assert ids_of(bare) == first_page


def test_a_patient_asking_for_another_patient_gets_an_empty_bundle(env: Env) -> None:
    bundle = env.get("/fhir/AuditEvent", "alice", patient="Patient/pat-b").get_json()
    assert bundle["total"] == 0 and "entry" not in bundle
    # Nothing was disclosed: recorded against no patient.
    assert env.last == Recorded(PRINCIPALS["alice"], "search", NO_PATIENT, "deny", "audit:other-patient")
    # Own and other ORed: only her own.
    mixed = env.get("/fhir/AuditEvent", "alice", patient="pat-b,pat-a", _count=5).get_json()
    assert mixed["total"] == 7 and set(ids_of(mixed)) <= set(env.ids["a"])
    # Own and other ANDed: nobody is both.
    both = env.get("/fhir/AuditEvent", "alice", patient=["pat-a", "pat-b"]).get_json()
    assert both["total"] == 0


def test_a_patient_reads_own_entry_and_gets_404_for_anothers_exactly_like_a_missing_id(env: Env) -> None:
    own = env.get(f"/fhir/AuditEvent/{env.ids['a'][0]}", "alice")
    assert own.status_code == 200
    event = own.get_json()
    assert parse_resource(event, "AuditEvent") == event and event["id"] == str(env.ids["a"][0])
    assert patient_what(event) == {"reference": "Patient/pat-a"}
    assert env.last == Recorded(PRINCIPALS["alice"], "read", ((str(env.ids["a"][0]), env.pa),), "permit",
                                "audit:own-entries")

    other = env.get(f"/fhir/AuditEvent/{env.ids['b'][0]}", "alice")
    assert env.last == Recorded(PRINCIPALS["alice"], "read", ((str(env.ids["b"][0]), ""),), "deny",
                                "audit:other-patient")
    no_patient = env.get(f"/fhir/AuditEvent/{env.ids['none'][0]}", "alice")
    missing = env.get("/fhir/AuditEvent/99999", "alice")
    assert env.last.decision == "error" and env.last.reason == "audit:not-found"
    malformed = env.get("/fhir/AuditEvent/not-a-number", "alice")
    assert env.last.targets == NO_PATIENT
    for response in (other, no_patient, malformed):
        assert response.status_code == missing.status_code == 404
        assert response.get_data() == missing.get_data()


def test_an_auditor_of_the_home_organisation_sees_every_entry_with_pseudonyms_unless_the_patient_was_named(
    env: Env,
) -> None:
    everything = sorted(env.ids["a"] + env.ids["b"] + env.ids["none"])
    pages = [env.get("/fhir/AuditEvent", "auditor", _count=5).get_json()]
    while (url := link(pages[-1], "next")) is not None:
        pages.append(env.get(urlsplit(url).path, "auditor", **dict(parse_qsl(urlsplit(url).query))).get_json())
    assert [bundle["total"] for bundle in pages] == [len(everything)] * 2
    assert [i for bundle in pages for i in ids_of(bundle)] == everything
    # The second page held a5 (pat-a), b0, b1 (pat-b), the entry naming no patient and a6 (pat-a):
    # one recorded entry per patient disclosed, one for the entries naming none.
    assert env.last == Recorded(PRINCIPALS["auditor"], "search", (("", env.pa), ("", env.pb), ("", "")), "permit",
                                "audit:auditor-of-the-home-organisation")
    event = pages[0]["entry"][0]["resource"]
    assert patient_what(event) == {"identifier": {"system": PATIENT_PSEUDONYM_SYSTEM, "value": env.pa}}

    named = env.get("/fhir/AuditEvent", "auditor", patient="Patient/pat-b").get_json()
    assert ids_of(named) == env.ids["b"]
    assert [patient_what(e["resource"]) for e in named["entry"]] == [{"reference": "Patient/pat-b"}] * 2
    assert env.last.targets == (("", env.pb),)

    read = env.get(f"/fhir/AuditEvent/{env.ids['b'][1]}", "auditor").get_json()
    assert read["action"] == "E" and patient_what(read) == {"identifier": {"system": PATIENT_PSEUDONYM_SYSTEM,
                                                                          "value": env.pb}}
    assert env.get("/fhir/AuditEvent", "internal").get_json()["total"] == len(everything)
    assert env.last.reason == "audit:unrestricted"


def test_leaf_index_and_break_the_glass_show(env: Env) -> None:
    sequenced = env.get(f"/fhir/AuditEvent/{env.ids['a'][4]}", "auditor").get_json()
    leaf = [x for x in sequenced["extension"] if x["url"] == LEAF_INDEX_EXTENSION]
    assert leaf == [{"url": LEAF_INDEX_EXTENSION, "valueUnsignedInt": 4}]
    assert sequenced["recorded"] == "2026-03-01T10:04:00.000000Z"  # recorded in +01:00, shown in UTC
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG",
            "display": "break the glass"} in [c["coding"][0] for c in sequenced["purposeOfEvent"]]
    pending = env.get(f"/fhir/AuditEvent/{env.ids['a'][-1]}", "auditor").get_json()
    assert not any(x["url"] == LEAF_INDEX_EXTENSION for x in pending.get("extension", []))


@pytest.mark.parametrize("who", ["clinic", "wrong-context"])
def test_callers_without_an_audit_event_scope_get_403(env: Env, who: str) -> None:
    search = env.get("/fhir/AuditEvent", who)
    outcome(search, 403, "forbidden")
    assert env.last.decision == "deny" and env.last.action == "search"
    read = env.get(f"/fhir/AuditEvent/{env.ids['a'][0]}", who)
    outcome(read, 403, "forbidden")
    assert env.last.decision == "deny" and env.last.action == "read"
    assert env.last.targets == ((str(env.ids["a"][0]), ""),)
    missing = env.get("/fhir/AuditEvent/99999", who)
    assert missing.get_data() == read.get_data()  # refused before the id is looked up


def test_a_log_client_is_one_registered_for_audit_event_by_name(env: Env) -> None:
    everything = len(env.ids["a"] + env.ids["b"] + env.ids["none"])
    assert env.get("/fhir/AuditEvent", "audit-client").get_json()["total"] == everything
    assert env.last.reason == "audit:registered-for-the-log"
    assert env.get(f"/fhir/AuditEvent/{env.ids['b'][0]}", "read-only").status_code == 200
    outcome(env.get("/fhir/AuditEvent", "read-only"), 403, "forbidden")  # r without s
    # The same token scopes, from a registration for `system/*.rs`: the log is not what it was given.
    wildcard = env.get("/fhir/AuditEvent", "wildcard").get_json()
    assert wildcard["total"] == 0 and "entry" not in wildcard
    assert env.last == Recorded(PRINCIPALS["wildcard"], "search", NO_PATIENT, "deny", "audit:not-a-log-reader")


# Which entries each caller sees (docs/consent-semantics.md, "Who may read the access log"), written down:
# "all" every entry; "a" / "b" the entries of pat-a / pat-b only; "none" no entry at all.
VIEWS = {
    "alice": "a",  # the patient herself
    "bob": "b",  # another patient: his own
    "auditor-a": "a",  # auditor of pat-a's care organisation
    "auditor-x": "none",  # auditor of an organisation caring for nobody here
    "auditor-no-org": "none",
    "auditor": "all",  # auditor of the home organisation
    "audit-client": "all",  # registered for system/AuditEvent.rs
    "wildcard": "none",  # registered for system/*.rs
    "nobody": "none",  # a patient account with no patient
    "internal": "all",  # the service itself
}
# (total of a search for everything, total of `patient=pat-a`, read of a pat-a entry, read of the entry
# naming no patient), per view. 10 entries: 7 of pat-a, 2 of pat-b, 1 naming no patient.
ANSWERS = {"all": (10, 7, 200, 200), "a": (7, 7, 200, 404), "b": (2, 0, 404, 404), "none": (0, 0, 404, 404)}
# The recorded decision of a search for everything: denied only when the rule shows nothing at all.
SEARCH_ALL_DECISION = {"all": "permit", "a": "permit", "b": "permit", "none": "deny"}


@pytest.mark.parametrize("who", sorted(VIEWS))
def test_who_sees_what_and_every_attempt_is_recorded(env: Env, who: str) -> None:
    view = VIEWS[who]
    everything, of_a, read_a, read_none = ANSWERS[view]
    shown = {"all": (env.pa,), "a": (env.pa,), "b": (env.pb,), "none": ()}[view]

    search_all = env.get("/fhir/AuditEvent", who, _count=3).get_json()
    assert search_all["total"] == everything
    expected_page = {"all": env.ids["a"][:3], "a": env.ids["a"][:3], "b": env.ids["b"], "none": []}[view]
    assert ids_of(search_all) == expected_page
    assert env.last.action == "search" and env.last.decision == SEARCH_ALL_DECISION[view]
    assert env.last.targets == (tuple(("", p) for p in shown) or NO_PATIENT)

    search_a = env.get("/fhir/AuditEvent", who, patient="Patient/pat-a", _count=3).get_json()
    assert search_a["total"] == of_a and len(search_a.get("entry", [])) == min(of_a, 3)
    assert env.last.targets == ((("", env.pa),) if of_a else NO_PATIENT)
    assert env.last.decision == ("permit" if of_a else "deny")

    missing = env.get("/fhir/AuditEvent/99999", who)
    assert missing.status_code == 404
    assert env.last == Recorded(PRINCIPALS[who], "read", (("99999", ""),), "error", "audit:not-found")
    for entry_id, status, pseudonym in ((env.ids["a"][1], read_a, env.pa), (env.ids["none"][0], read_none, "")):
        read = env.get(f"/fhir/AuditEvent/{entry_id}", who)
        assert read.status_code == status
        if status == 404:
            assert read.get_data() == missing.get_data()  # exactly like an id that does not exist
            assert env.last.targets == ((str(entry_id), ""),) and env.last.decision == "deny"
        else:
            assert read.get_json()["id"] == str(entry_id)
            assert env.last.targets == ((str(entry_id), pseudonym),) and env.last.decision == "permit"


def test_an_auditor_of_a_care_organisation_sees_its_patients_entries_under_pseudonyms(env: Env) -> None:
    bundle = env.get("/fhir/AuditEvent", "auditor-a", _count=5).get_json()
    assert [patient_what(e["resource"]) for e in bundle["entry"]] == [
        {"identifier": {"system": PATIENT_PSEUDONYM_SYSTEM, "value": env.pa}}] * 5
    assert env.last.reason == "audit:auditor-of-a-care-organisation"
    outcome_b = env.get("/fhir/AuditEvent", "auditor-a", patient="pat-b").get_json()
    assert outcome_b["total"] == 0
    assert env.last == Recorded(PRINCIPALS["auditor-a"], "search", NO_PATIENT, "deny", "audit:not-cared-for")
    # pat-a named together with pat-b (OR): pat-a's entries only.
    either = env.get("/fhir/AuditEvent", "auditor-a", patient="pat-b,pat-a", _count=5).get_json()
    assert either["total"] == 7 and set(ids_of(either)) <= set(env.ids["a"])


def test_unauthenticated_requests_get_401_and_are_not_recorded(env: Env) -> None:
    outcome(env.get("/fhir/AuditEvent", None), 401, "login")
    outcome(env.get(f"/fhir/AuditEvent/{env.ids['a'][0]}", None), 401, "login")
    assert env.recorded == []


def test_nothing_is_returned_when_the_access_cannot_be_recorded(env: Env) -> None:
    env.record_fails.append(True)
    headers = {"X-Test-Principal": "auditor"}
    for path in ("/fhir/AuditEvent", f"/fhir/AuditEvent/{env.ids['a'][0]}"):
        response = env.client.get(path, headers=headers)
        body = outcome(response, 500, "exception")
        assert body["issue"][0]["diagnostics"] == "internal server error"
        assert b"AuditEvent/" not in response.get_data() and env.pa.encode() not in response.get_data()


# -- search parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dates", "minutes"),
    [
        (["ge2026-03-01T10:02Z"], [2, 3, 4, 5, 6, 7, 8, 9]),
        (["gt2026-03-01T10:02:00Z"], [3, 4, 5, 6, 7, 8, 9]),  # second precision: after 10:02:01
        (["gt2026-03-01T10:02Z"], [3, 4, 5, 6, 7, 8, 9]),
        (["le2026-03-01T10:02Z"], [0, 1, 2]),  # the whole minute 10:02
        (["lt2026-03-01T10:02Z"], [0, 1]),
        (["eq2026-03-01T10:04Z"], [4]),  # the entry recorded in +01:00
        (["2026-03-01T10:04Z"], [4]),
        (["ge2026-03-01T11:03+01:00"], [3, 4, 5, 6, 7, 8, 9]),
        (["2026-03-01"], list(range(10))),
        (["2026-03"], list(range(10))),
        (["2026-03-02"], []),
        (["ne2026-03-01T10:04Z"], [0, 1, 2, 3, 5, 6, 7, 8, 9]),
        (["ge2026-03-01T10:01Z", "lt2026-03-01T10:04Z"], [1, 2, 3]),  # parameters AND
        (["lt2026-03-01T10:01Z,ge2026-03-01T10:08Z"], [0, 8, 9]),  # a comma ORs
        (["sa2026-03-01T10:07Z"], [8, 9]),
        (["eb2026-03-01T10:01Z"], [0]),
        (["ge9999"], []),
    ],
)
def test_date_search(env: Env, dates: list[str], minutes: list[int]) -> None:
    by_minute = dict(enumerate(env.ids["a"][:6] + env.ids["b"] + env.ids["none"] + env.ids["a"][6:]))
    bundle = env.get("/fhir/AuditEvent", "auditor", date=dates, _count=5).get_json()
    assert bundle["total"] == len(minutes)
    assert ids_of(bundle) == sorted(by_minute[m] for m in minutes)[:5]
    assert [v for n, v in parse_qsl(urlsplit(link(bundle, "self")).query) if n == "date"] == dates


def test_date_and_patient_combine(env: Env) -> None:
    bundle = env.get("/fhir/AuditEvent", "alice", date="ge2026-03-01T10:03Z").get_json()
    assert ids_of(bundle) == env.ids["a"][3:7]
    bundle = env.get("/fhir/AuditEvent", "auditor", patient="pat-b", date="lt2026-03-01T10:07Z").get_json()
    assert ids_of(bundle) == env.ids["b"][:1]


def test_paging_with_links_and_offset(env: Env) -> None:
    first = env.get("/fhir/AuditEvent", "alice", _count=3).get_json()
    assert ids_of(first) == env.ids["a"][:3] and link(first, "previous") is None
    nxt = link(first, "next")
    assert nxt is not None and "_cursor=" in nxt
    second = env.get(urlsplit(nxt).path, "alice", **dict(parse_qsl(urlsplit(nxt).query))).get_json()
    assert ids_of(second) == env.ids["a"][3:6] and link(second, "previous") is not None
    third_url = link(second, "next")
    third = env.get(urlsplit(third_url).path, "alice", **dict(parse_qsl(urlsplit(third_url).query))).get_json()
    assert ids_of(third) == env.ids["a"][6:] and link(third, "next") is None

    by_offset = env.get("/fhir/AuditEvent", "alice", _count=3, _offset=3).get_json()
    assert ids_of(by_offset) == env.ids["a"][3:6]
    past_the_end = env.get("/fhir/AuditEvent", "alice", _offset=50).get_json()
    assert past_the_end["total"] == 7 and "entry" not in past_the_end
    capped = env.get("/fhir/AuditEvent", "auditor", _count=500).get_json()
    assert len(capped["entry"]) == 5  # max_page_size
    default = env.get("/fhir/AuditEvent", "auditor").get_json()
    assert len(default["entry"]) == 4  # default_page_size
    only_total = env.get("/fhir/AuditEvent", "auditor", _count=0).get_json()
    assert only_total["total"] == 10 and "entry" not in only_total and len(only_total["link"]) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"date": "yesterday"},
        {"date": "ap2026-03-01"},
        {"date": "ge2026-03-01,"},
        {"date": "2026-13-01"},
        {"patient": "Observation/1"},
        {"patient": ""},
        {"patient": "not an id!"},
        {"_count": "-1"},
        {"_count": "many"},
        {"_count": ["1", "2"]},
        {"_offset": "x"},
        {"_cursor": "not-a-cursor"},
    ],
)
def test_bad_parameters_get_400(env: Env, params: dict[str, Any]) -> None:
    """Malformed values are refused (`invalid`)."""
    outcome(env.get("/fhir/AuditEvent", "auditor", strict=True, **params), 400, "invalid")
    assert env.last.decision == "error" and env.last.action == "search"


@pytest.mark.parametrize(
    "params", [{"code": "x"}, {"_sort": "-outcome"}, {"patient:Patient": "pat-a"}, {"agent": "Practitioner/1"}])
def test_unsupported_parameters_get_400_when_strict(env: Env, params: dict[str, Any]) -> None:
    """Unknown parameters are refused (`not-supported`, as in every search) when the client asks for strict
    handling."""
    outcome(env.get("/fhir/AuditEvent", "auditor", strict=True, **params), 400, "not-supported")
    assert env.last.decision == "error" and env.last.action == "search"


def test_only_json_is_served(env: Env) -> None:
    outcome(env.get("/fhir/AuditEvent", "auditor", _format="xml"), 406, "not-supported")
    assert env.last.decision == "error"
    assert env.get("/fhir/AuditEvent", "auditor", _format="json").status_code == 200


# -- the log is read-only through the API --------------------------------------------------------------------


def test_audit_events_cannot_be_written_or_reached_through_the_resource_store(env: Env) -> None:
    body = {"resourceType": "AuditEvent", "type": {"code": "110110"}, "recorded": "2026-01-01T00:00:00Z",
            "agent": [{"requestor": True}], "source": {"observer": {"display": "x"}}}
    auth = {"Authorization": f"Bearer {DEV_TOKEN}", "Content-Type": "application/fhir+json"}
    for method, path in [("POST", "/fhir/AuditEvent"), ("PUT", f"/fhir/AuditEvent/{env.ids['a'][0]}"),
                         ("DELETE", f"/fhir/AuditEvent/{env.ids['a'][0]}"), ("POST", "/fhir/AuditEvent/_search")]:
        response = env.client.open(path, method=method, json=body, headers=auth)
        outcome(response, 405, "not-supported")
        assert response.headers["Allow"] == "GET"
    for path in ("/fhir/AuditEvent/_history", f"/fhir/AuditEvent/{env.ids['a'][0]}/_history"):
        response = env.client.get(path, headers={"X-Test-Principal": "auditor", **auth})
        assert response.status_code == 404 and response.get_json()["resourceType"] == "OperationOutcome"
    # The generic API still serves other types.
    assert env.client.get("/fhir/Observation", headers=auth).status_code == 200
