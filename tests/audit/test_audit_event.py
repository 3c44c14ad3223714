"""Access-log entries as FHIR R4 AuditEvents (validated against the R4B models), and the patient index behind them.

The first part is pure rendering. The second covers the storage the AuditEvent search relies on: the
keyed patient pseudonym, the pseudonym column (filled on append, backfilled by the migration, checked by
`verify_log`) and the batch append.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import update

from fhir_adapters.audit_event import (
    ACT_REASON,
    ACTOR_SYSTEM,
    BREAK_THE_GLASS_EXTENSION,
    LEAF_INDEX_EXTENSION,
    PATIENT_PSEUDONYM_SYSTEM,
    RESTFUL_INTERACTION,
    audit_event,
)
from fhir_adapters.validation import parse_resource
from healthledger.actions import LOGGED_ACTIONS
from healthledger.audit.entries import AccessEntry, decode_entry, encode_entry
from healthledger.audit.log import Anchor, checkpoint, integrate, record_access, record_accesses, verify_log
from healthledger.audit.models import AccessLogEntry
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.db import alembic_config, make_engine, session_factory, upgrade
from healthledger.store.envelope import BlindIndexer

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
PSEUDONYM = "ab" * 16


BASE = AccessEntry(
    time=T0, actor="client-7", organization="Organization/org-1", role="clinician", purpose="TREAT",
    action="read", resource_type="Observation", resource_id="obs-1", patient_pseudonym=PSEUDONYM,
    decision="permit", reason="policy:treating-clinician",
)


def entry(**changes: Any) -> AccessEntry:
    return dataclasses.replace(BASE, **changes)


def render(e: AccessEntry, *, entry_id: int = 41, leaf_index: int | None = None, patient_ref: str | None = None) -> dict:
    event = audit_event(dataclasses.asdict(e), entry_id=entry_id, leaf_index=leaf_index, patient_ref=patient_ref)
    assert parse_resource(event, "AuditEvent") == event  # valid R4B, and nothing empty to drop
    return event


def extension(event: dict, url: str) -> Any:
    found = [x for x in event.get("extension", []) if x["url"] == url]
    assert len(found) <= 1
    return found[0] if found else None


def patient_entity(event: dict) -> dict | None:
    found = [e for e in event.get("entity", []) if e["role"]["code"] == "1"]
    assert len(found) <= 1
    return found[0] if found else None


# -- rendering -----------------------------------------------------------------------------------------------


def test_a_permitted_read() -> None:
    event = render(entry())
    assert event["id"] == "41"
    assert event["type"] == {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                             "display": "Patient Record"}
    assert event["subtype"] == [{"system": RESTFUL_INTERACTION, "code": "read"}]
    assert event["action"] == "R"
    assert event["recorded"] == "2026-03-01T10:00:00.000000Z"
    assert event["outcome"] == "0"
    assert event["outcomeDesc"] == "policy:treating-clinician"
    assert event["purposeOfEvent"] == [{"coding": [{"system": ACT_REASON, "code": "TREAT"}]}]
    actor, org = event["agent"]
    assert actor["requestor"] is True
    assert actor["who"] == {"identifier": {"system": ACTOR_SYSTEM, "value": "client-7"}}
    assert actor["role"][0]["coding"][0]["code"] == "clinician"
    assert org == {"who": {"reference": "Organization/org-1"}, "requestor": False}
    assert event["source"]["observer"] == {"display": "HealthLedger"}
    accessed = event["entity"][0]
    assert accessed["what"] == {"reference": "Observation/obs-1"}
    assert accessed["type"]["code"] == "Observation"
    assert extension(event, BREAK_THE_GLASS_EXTENSION) is None
    assert extension(event, LEAF_INDEX_EXTENSION) is None


@pytest.mark.parametrize(
    ("action", "resource_id", "subtype", "code"),
    [
        ("read", "o1", "read", "R"),
        ("vread", "o1", "vread", "R"),
        ("search", "", "search-type", "E"),
        ("history", "o1", "history-instance", "R"),
        ("history", "", "history-type", "R"),
        ("create", "o1", "create", "C"),
        ("update", "o1", "update", "U"),
        ("delete", "o1", "delete", "D"),
        ("export", "", "operation", "E"),
        ("decide", "o1", None, "E"),
    ],
)
def test_every_action_maps_to_an_interaction(action: str, resource_id: str, subtype: str | None, code: str) -> None:
    event = render(entry(action=action, resource_id=resource_id))
    assert event["action"] == code
    assert event.get("subtype") == (None if subtype is None else [{"system": RESTFUL_INTERACTION, "code": subtype}])
    accessed = event["entity"][0]
    assert accessed["type"]["code"] == "Observation"
    assert ("what" in accessed) == bool(resource_id)  # a search names the type, not an instance


def test_every_logged_action_is_covered() -> None:
    for action in LOGGED_ACTIONS:
        render(entry(action=action))


@pytest.mark.parametrize(("decision", "outcome"), [("permit", "0"), ("deny", "4"), ("error", "8")])
def test_outcome(decision: str, outcome: str) -> None:
    event = render(entry(decision=decision, reason="consent:c1/provision[0]"))
    assert event["outcome"] == outcome and event["outcomeDesc"] == "consent:c1/provision[0]"


def test_patient_is_a_reference_only_when_the_caller_knows_the_id() -> None:
    pseudonymous = patient_entity(render(entry()))
    assert pseudonymous is not None
    assert pseudonymous["what"] == {"identifier": {"system": PATIENT_PSEUDONYM_SYSTEM, "value": PSEUDONYM}}
    assert pseudonymous["type"]["code"] == "1"
    named = patient_entity(render(entry(), patient_ref="Patient/p-1"))
    assert named is not None and named["what"] == {"reference": "Patient/p-1"}
    assert PSEUDONYM not in json.dumps(render(entry(), patient_ref="Patient/p-1"))


def test_no_patient_entity_without_a_compartment() -> None:
    event = render(entry(patient_pseudonym="", resource_type="Organization", resource_id="org-1"))
    assert patient_entity(event) is None
    assert [e["what"] for e in event["entity"]] == [{"reference": "Organization/org-1"}]


def test_break_the_glass_is_flagged_twice_and_the_note_never_shown() -> None:
    note = b"sealed:" + secrets.token_bytes(24)
    event = render(entry(purpose="ETREAT", break_glass=True, sealed_note=note))
    assert event["purposeOfEvent"] == [
        {"coding": [{"system": ACT_REASON, "code": "ETREAT"}]},
        {"coding": [{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]},
    ]
    assert extension(event, BREAK_THE_GLASS_EXTENSION) == {"url": BREAK_THE_GLASS_EXTENSION, "valueBoolean": True}
    text = json.dumps(event)
    assert base64.b64encode(note).decode() not in text and "sealed" not in text


def test_leaf_index_when_sequenced() -> None:
    assert extension(render(entry(), leaf_index=0), LEAF_INDEX_EXTENSION)["valueUnsignedInt"] == 0
    assert extension(render(entry(), leaf_index=1234), LEAF_INDEX_EXTENSION)["valueUnsignedInt"] == 1234
    with pytest.raises(ValueError):
        audit_event(dataclasses.asdict(entry()), entry_id=1, leaf_index=2**31, patient_ref=None)


def test_organisation_without_a_reference_is_an_identifier() -> None:
    _, org = render(entry(organization="org-1"))["agent"]
    assert org["who"]["identifier"]["value"] == "org-1"
    assert len(render(entry(organization=""))["agent"]) == 1


def test_time_is_rendered_in_utc_and_the_encoded_form_is_accepted() -> None:
    local = T0.astimezone(timezone(timedelta(hours=-5))) + timedelta(microseconds=7)
    assert render(entry(time=local))["recorded"] == "2026-03-01T10:00:00.000007Z"
    decoded = json.loads(encode_entry(entry(time=local)))  # time as the log's canonical string
    decoded.pop("v")
    event = audit_event(decoded, entry_id=1, leaf_index=None, patient_ref=None)
    assert event["recorded"] == "2026-03-01T10:00:00.000007Z"


def test_unrenderable_entries_raise() -> None:
    good = dataclasses.asdict(entry())
    for bad in ({**good, "action": "peek"}, {**good, "decision": "maybe"}, {**good, "time": datetime(2026, 1, 1)}):
        with pytest.raises(ValueError):
            audit_event(bad, entry_id=1, leaf_index=None, patient_ref=None)


# -- the patient pseudonym -----------------------------------------------------------------------------------


def test_pseudonym_is_a_keyed_hash_of_the_patient_id() -> None:
    master = secrets.token_bytes(32)
    indexer = BlindIndexer(master, "tenant-a")
    p = patient_pseudonym(indexer, "patient-1")
    assert p == patient_pseudonym(BlindIndexer(master, "tenant-a"), "patient-1")  # deterministic
    assert len(p) == 32 and int(p, 16) >= 0  # 16-byte HMAC, hex
    assert p != patient_pseudonym(indexer, "patient-2")
    assert p != patient_pseudonym(BlindIndexer(secrets.token_bytes(32), "tenant-a"), "patient-1")  # keyed
    assert p != patient_pseudonym(BlindIndexer(master, "tenant-b"), "patient-1")  # per tenant
    assert p not in {hashlib.sha256(b"patient-1").hexdigest()[:32], hashlib.sha256(b"Patient/patient-1").hexdigest()[:32]}
    # Its own index key: not the term the store's blind index writes for the same id.
    assert bytes.fromhex(p) not in indexer.query_terms("Observation", "patient", ["patient-1", "Patient/patient-1"])
    assert patient_pseudonym(indexer, "") == ""


# -- the pseudonym column ------------------------------------------------------------------------------------


def _column(s: Any, entry_id: int) -> str | None:
    return s.scalar(sa.select(AccessLogEntry.patient_pseudonym).where(AccessLogEntry.id == entry_id))


def test_append_fills_the_column_and_stores_utc(sessions: Any, log_id: str) -> None:
    plus_two = timezone(timedelta(hours=2))
    with sessions.begin() as s:
        with_patient = record_access(s, entry(time=T0.astimezone(plus_two)), log_id=log_id)
        without = record_access(s, entry(patient_pseudonym=""), log_id=log_id)
    with sessions() as s:
        assert _column(s, with_patient) == PSEUDONYM and _column(s, without) is None
        # Stored in UTC, so a UTC bound finds it on SQLite too (which drops offsets).
        found = s.scalars(
            sa.select(AccessLogEntry.id).where(
                AccessLogEntry.log_id == log_id, AccessLogEntry.recorded_at >= T0, AccessLogEntry.recorded_at < T0 + timedelta(seconds=1)
            )
        ).all()
        assert set(found) == {with_patient, without}


def test_batch_append_is_one_executemany_in_order(sessions: Any, log_id: str) -> None:
    batch = [entry(resource_id=f"obs-{i}", patient_pseudonym=f"{i:02x}" * 16, time=T0 + timedelta(seconds=i))
             for i in range(5)]
    engine = sessions.kw["bind"]
    inserts: list[bool] = []

    def watch(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO ACCESS_LOG"):
            inserts.append(executemany)

    sa.event.listen(engine, "before_cursor_execute", watch)
    try:
        with sessions.begin() as s:
            record_accesses(s, batch, log_id=log_id)
            record_accesses(s, [], log_id=log_id)
    finally:
        sa.event.remove(engine, "before_cursor_execute", watch)
    assert inserts == [True]  # one INSERT statement, executed with many parameter sets
    with sessions() as s:
        rows = s.execute(
            sa.select(AccessLogEntry.body, AccessLogEntry.patient_pseudonym)
            .where(AccessLogEntry.log_id == log_id)
            .order_by(AccessLogEntry.id)
        ).all()
    assert [decode_entry(body) for body, _ in rows] == batch
    assert [p for _, p in rows] == [e.patient_pseudonym for e in batch]


def _filled(sessions: Any, log_id: str, n: int = 8) -> tuple[list[int], list[Anchor]]:
    ids: list[int] = []
    with sessions.begin() as s:
        for i in range(n):
            ids.append(record_access(s, entry(resource_id=f"obs-{i}", patient_pseudonym="" if i == 3 else PSEUDONYM,
                                              time=T0 + timedelta(seconds=i)), log_id=log_id))
    with sessions.begin() as s:
        cp = checkpoint(s, T0, log_id=log_id)
        assert cp is not None
        return ids, [Anchor(cp.size, cp.root, "test")]


@pytest.mark.parametrize(
    ("column", "forged"),
    [
        ("patient_pseudonym", "cd" * 16),
        ("patient_pseudonym", None),
        ("recorded_at", T0 - timedelta(days=400)),
        ("recorded_at", T0 + timedelta(seconds=5, microseconds=1)),
    ],
)
def test_verify_detects_a_changed_index_column(sessions: Any, log_id: str, column: str, forged: Any) -> None:
    """Moving an entry out of a patient's index (or its time) hides it from searches while every hash matches."""
    ids, anchors = _filled(sessions, log_id)
    with sessions.begin() as s:
        assert verify_log(s, anchors, log_id=log_id).ok
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == ids[5]).values({column: forged}))
    with sessions.begin() as s:
        report = verify_log(s, anchors, log_id=log_id)
    assert not report.ok and report.problem.kind == "altered" and column in report.problem.message
    assert report.problem.entry_id == ids[5] and report.problem.leaf_index == 5
    assert report.problem.anchor is None  # the anchored hashes still match: it is the index that lies
    assert report.anchors_checked == 1


def test_verify_detects_a_pseudonym_added_to_an_entry_without_a_patient(sessions: Any, log_id: str) -> None:
    ids, anchors = _filled(sessions, log_id)
    with sessions.begin() as s:
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == ids[3]).values(patient_pseudonym=PSEUDONYM))
    with sessions.begin() as s:
        report = verify_log(s, anchors, log_id=log_id)
    assert not report.ok and report.problem.kind == "altered" and report.problem.entry_id == ids[3]


def test_verify_checks_entries_not_sequenced_yet(sessions: Any, log_id: str) -> None:
    _, anchors = _filled(sessions, log_id, 4)
    with sessions.begin() as s:
        pending = record_access(s, entry(resource_id="late"), log_id=log_id)
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == pending).values(patient_pseudonym="ee" * 16))
    with sessions.begin() as s:
        report = verify_log(s, anchors, log_id=log_id)
    assert not report.ok and report.problem.kind == "altered"
    assert report.problem.entry_id == pending and report.problem.leaf_index is None


def test_an_altered_body_is_still_named_first(sessions: Any, log_id: str) -> None:
    """A body change contradicts the anchor; that is the finding, even with an index change earlier."""
    ids, anchors = _filled(sessions, log_id)
    with sessions.begin() as s:
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == ids[1]).values(patient_pseudonym=None))
        forged = encode_entry(entry(resource_id="obs-6", time=T0 + timedelta(seconds=6), decision="deny"))
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == ids[6]).values(body=forged))
    with sessions.begin() as s:
        report = verify_log(s, anchors, log_id=log_id)
    assert not report.ok and report.problem.kind == "altered"
    assert report.problem.leaf_index == 6 and report.problem.anchor is not None


def test_sequencing_leaves_the_column_alone(sessions: Any, log_id: str) -> None:
    ids, _ = _filled(sessions, log_id, 3)
    with sessions.begin() as s:
        integrate(s, T0, log_id=log_id)
        assert [_column(s, i) for i in ids] == [PSEUDONYM, PSEUDONYM, PSEUDONYM]


# -- the migration -------------------------------------------------------------------------------------------


def test_migration_backfills_existing_entries_and_downgrades(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        cfg = alembic_config(engine)
        command.upgrade(cfg, "audit_0001")
        old = sa.table(
            "access_log", sa.column("log_id"), sa.column("body"), sa.column("recorded_at", sa.DateTime(timezone=True))
        )
        plus_two = timezone(timedelta(hours=2))
        with engine.begin() as conn:
            for p in (PSEUDONYM, "", "cd" * 16):
                e = entry(patient_pseudonym=p, time=T0.astimezone(plus_two))
                # As the old record_access did: SQLite keeps the +02:00 wall-clock digits, 12:00.
                conn.execute(sa.insert(old).values(log_id="access", body=encode_entry(e), recorded_at=e.time))
            conn.execute(sa.insert(old).values(log_id="other", body=b"damaged", recorded_at=T0))
        upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT patient_pseudonym, recorded_at FROM access_log ORDER BY id")).all()
            indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("access_log")}
        assert [p for p, _ in rows] == [PSEUDONYM, None, "cd" * 16, None]
        assert [str(t)[:19] for _, t in rows[:3]] == ["2026-03-01 10:00:00"] * 3  # now in UTC
        assert {"ix_access_log_patient_pseudonym", "ix_access_log_recorded_at"} <= indexes
        with session_factory(engine).begin() as s:
            assert verify_log(s, []).ok
        command.downgrade(cfg, "audit@audit_0001")
        with engine.connect() as conn:
            assert "patient_pseudonym" not in {c["name"] for c in sa.inspect(conn).get_columns("access_log")}
            assert conn.execute(sa.text("SELECT count(*) FROM access_log")).scalar_one() == 4
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_drops_the_log_id_index_and_downgrade_restores_it(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # (PostgreSQL: a schema of this module's own; the session's is already at every head.)
    url = f"sqlite:///{tmp_path / 'm.db'}" if database == "sqlite" else request.getfixturevalue("postgres_module_schema_url")[0]
    engine = make_engine(url)

    def indexes() -> set[str]:
        with engine.connect() as conn:
            return {ix["name"] for ix in sa.inspect(conn).get_indexes("access_log")}

    try:
        cfg = alembic_config(engine)
        command.upgrade(cfg, "audit_0002")
        assert "ix_access_log_log_id" in indexes()
        upgrade(engine)
        assert indexes() >= {"ix_access_log_recorded_at", "ix_access_log_patient_pseudonym"}
        assert "ix_access_log_log_id" not in indexes()
        command.downgrade(cfg, "audit@audit_0002")
        assert "ix_access_log_log_id" in indexes()
    finally:
        engine.dispose()
