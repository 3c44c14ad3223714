"""/healthz, /readyz, /metrics and the request hooks (request ids, one JSON log line per request, by route)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app, dispose
from flask import Flask

from healthledger.api.operations import (
    REPLICA_STARTED_ENV,
    LedgerGauges,
    Readiness,
    mark_replica_started,
    replica_started_at,
)
from healthledger.audit.anchoring import chain_log_id
from healthledger.audit.log import integrate
from healthledger.audit.models import AccessLogEntry
from healthledger.audit.spool import ingest
from healthledger.db import make_engine
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.models import IndexerCursor, LogAnchorEvent
from healthledger.observability import configure_logging, exception_summary, request_id_for

STARTED_AGO = 600.0  # the module's app belongs to a replica started this long ago (its gunicorn master's mark)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(REPLICA_STARTED_ENV, repr(time.time() - STARTED_AGO))
        application = build_app(api_settings(tmp_path_factory.mktemp("ops")))
    yield application
    dispose(application)


def _set_index_age(app: Flask, age: float | None) -> None:
    engine = app.extensions["healthledger.engine"]
    with sa.orm.Session(engine) as session, session.begin():
        session.execute(sa.delete(IndexerCursor))
        if age is not None:
            session.add(IndexerCursor(name="ledger", last_block=0, updated_at=time.time() - age))


def test_healthz_answers_without_checking_anything(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_readyz_waits_for_a_consent_index_fresh_since_the_replica_started(app: Flask) -> None:
    client = app.test_client()
    _set_index_age(app, None)
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json["checks"]
    assert checks["database"]["ok"] and checks["migrations"]["ok"] and checks["key_provider"]["ok"]
    assert not checks["consent_index"]["ok"] and "not indexed" in checks["consent_index"]["detail"]
    _set_index_age(app, 3600)  # stale, and last fresh long before this replica started: the start-up gate holds
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json["status"] == "not-ready"
    assert "3600 s ago" in response.json["checks"]["consent_index"]["detail"]
    assert "required" not in response.json["checks"]["consent_index"]
    _set_index_age(app, 1)
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json["status"] == "ready"


def test_a_chain_side_outage_after_the_start_degrades_readiness_without_failing_it(app: Flask) -> None:
    """The index was fresh after the replica started, then the chain or the ledger worker went away: every
    replica sees the same stale index, so none leaves the load balancer; the body and /metrics say so."""
    client = app.test_client()
    _set_index_age(app, 90)  # stale (bound 60 s), but fresh until 30 s ago, after the start 600 s ago
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json["status"] == "degraded"
    index = response.json["checks"]["consent_index"]
    assert index["ok"] is False and index["required"] is False and "90 s ago" in index["detail"]
    assert "healthledger_consent_index_fresh 0.0" in client.get("/metrics").data.decode()
    _set_index_age(app, 1)
    assert client.get("/readyz").json["status"] == "ready"
    assert "healthledger_consent_index_fresh 1.0" in client.get("/metrics").data.decode()


def test_the_replica_start_is_marked_once_for_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLICA_STARTED_ENV, raising=False)
    assert replica_started_at(default=5.0) == 5.0  # not under gunicorn: the process is the replica
    mark_replica_started(now=1234.5)
    assert replica_started_at(default=5.0) == 1234.5  # what every forked (or re-forked) worker inherits


def test_readyz_names_a_schema_behind_the_release(app: Flask) -> None:
    engine = app.extensions["healthledger.engine"]
    with engine.begin() as conn:
        kept = conn.execute(sa.text("select version_num from alembic_version")).scalars().all()
        conn.execute(sa.text("delete from alembic_version where version_num = :v"), {"v": kept[0]})
    try:
        _set_index_age(app, 1)
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert "1 migration branch(es) behind" in response.json["checks"]["migrations"]["detail"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("insert into alembic_version (version_num) values (:v)"), {"v": kept[0]})


class _BrokenKms:
    def wrap(self, key: bytes, context: bytes = b"") -> object:
        raise TimeoutError("kms at 10.0.0.1 did not answer")

    def unwrap(self, wrapped: object, context: bytes = b"") -> bytes:
        raise TimeoutError


def test_readiness_reports_an_unavailable_key_provider_and_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    checks = {c.name: c for c in Readiness(engine, _BrokenKms(), max_index_age_seconds=60).checks()}  # type: ignore[arg-type]
    assert not checks["key_provider"].ok and checks["key_provider"].detail == "unavailable (TimeoutError)"
    assert "10.0.0.1" not in checks["key_provider"].detail  # the reason never repeats an address or a message
    down = make_engine("postgresql://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    provider = LocalFileKeyProvider(tmp_path / "keys")
    checks = {c.name: c for c in Readiness(down, provider, max_index_age_seconds=60).checks()}
    assert not checks["database"].ok and checks["database"].detail.startswith("unavailable (")
    assert checks["key_provider"].ok and not checks["migrations"].ok and not checks["consent_index"].ok
    engine.dispose()
    down.dispose()


def test_metrics_count_requests_by_route_and_decisions_by_outcome(app: Flask) -> None:
    client = app.test_client()
    created = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Zylberstein"}]},
                          headers=JSON_HEADERS)
    assert created.status_code == 201
    patient_id = created.json["id"]
    assert client.get(f"/fhir/Patient/{patient_id}", headers=AUTH).status_code == 200
    assert client.get("/fhir/Patient?family=Zylberstein", headers=AUTH).status_code == 200
    text = client.get("/metrics").data.decode()
    assert 'healthledger_http_request_duration_seconds_count{method="GET",route="/fhir/<resource_type>/<resource_id>",status="200"}' in text
    assert 'route="/fhir/<resource_type>",status="201"' in text
    assert 'healthledger_consent_decisions_total{decision="permit",rule="unrestricted"}' in text
    for gauge in ("healthledger_outbox_items{state=\"queued\"}", "healthledger_access_log_appended",
                  "healthledger_access_log_sequenced", "healthledger_anchoring_lag_entries",
                  "healthledger_store_versions", "healthledger_database_up 1.0"):
        assert gauge in text
    # Route rules only: neither the id nor the search value reaches a label.
    assert patient_id not in text and "Zylberstein" not in text


def test_every_request_gets_a_request_id_and_one_json_line_without_ids_or_query(app: Flask) -> None:
    stream = io.StringIO()
    kept = structlog.get_config()
    configure_logging("json", stream, force=True)
    try:
        client = app.test_client()
        offered = client.get("/fhir/Patient/no-such-id-0042", headers={**AUTH, "X-Request-Id": "proxy-id-12345"})
        assert offered.headers["X-Request-Id"] == "proxy-id-12345"
        minted = client.get("/fhir/Patient?family=Quiggleworth&birthdate=1961-02-03", headers=AUTH)
        hostile = client.get("/fhir/metadata", headers={"X-Request-Id": "x forged=1 <script>"})
        assert len(minted.headers["X-Request-Id"]) == 16 and hostile.headers["X-Request-Id"] != "x forged=1 <script>"
    finally:
        structlog.configure(**kept)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = [line for line in lines if line["event"] == "http.request"]
    assert [r["request_id"] for r in requests][:2] == ["proxy-id-12345", minted.headers["X-Request-Id"]]
    assert requests[0]["route"] == "/fhir/<resource_type>/<resource_id>" and requests[0]["status"] == 404
    logged = stream.getvalue()
    assert "no-such-id-0042" not in logged and "Quiggleworth" not in logged and "1961-02-03" not in logged


def test_anchoring_lag_counts_from_the_oldest_entry_no_anchor_covers(app: Flask) -> None:
    engine = app.extensions["healthledger.engine"]
    clock = time.time() + 100
    gauges = LedgerGauges(engine, tenant=app.config["SETTINGS"].tenant, max_index_age_seconds=60,
                          wall_clock=lambda: clock)

    def lag() -> float:
        family = next(f for f in gauges.collect() if f.name == "healthledger_anchoring_lag_seconds")
        return float(family.samples[0].value)

    def recorded(which: Any) -> float:
        ingest(engine)
        with sa.orm.Session(engine) as session:
            moment = session.scalar(sa.select(AccessLogEntry.recorded_at).order_by(which).limit(1))
        assert moment is not None
        return moment.replace(tzinfo=moment.tzinfo or UTC).timestamp()

    client = app.test_client()
    assert client.get("/fhir/Patient/no-such-patient", headers=AUTH).status_code == 404  # one entry at least
    with sa.orm.Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(LogAnchorEvent)) == 0
    first = recorded(AccessLogEntry.id)
    assert lag() == pytest.approx(clock - first, abs=0.01) and lag() >= 100  # nothing anchored yet: not 0
    with sa.orm.Session(engine) as session, session.begin():
        head = integrate(session, datetime.now(UTC))
    assert lag() == pytest.approx(clock - first, abs=0.01)  # sequenced, still not anchored
    with sa.orm.Session(engine) as session, session.begin():
        session.add(LogAnchorEvent(log_id="0x" + chain_log_id(app.config["SETTINGS"].tenant).hex(),
                                   tree_size=head.size, root_hash="0x" + head.root.hex(), block_number=1,
                                   block_hash="0x" + "11" * 32, tx_hash="0x" + "22" * 32, log_index=0))
    assert lag() == 0.0  # every entry anchored
    assert client.get("/fhir/Patient/another-missing-one", headers=AUTH).status_code == 404
    assert lag() == pytest.approx(clock - recorded(AccessLogEntry.id.desc()), abs=0.01)  # the new, unsequenced one


def test_request_ids_offered_are_kept_only_when_plain() -> None:
    assert request_id_for("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for offered in (None, "", "short", "x" * 65, "a b c d e f", "ünïcødé-id", "id\r\nSet-Cookie: a"):
        assert request_id_for(offered, lambda: "fresh") == "fresh"


def test_exceptions_are_logged_by_type_and_frames_not_by_message() -> None:
    try:
        raise ValueError("patient Quiggleworth born 1961-02-03")
    except ValueError as exc:
        summary = exception_summary(type(exc), exc.__traceback__)
    assert summary.startswith("builtins.ValueError at test_operations.py:")
    assert "Quiggleworth" not in summary
