"""The API on PostgreSQL: racing writers get 200/412/409, never a 500 or a lost update; a read sends no BEGIN
or COMMIT (its SELECT, then its access-log entry's INSERT, in autocommit), and its connection goes back to the
pool as it came."""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app, dispose
from flask import Flask
from sqlalchemy import event

from healthledger.audit.models import AccessLogEntry

pytestmark = pytest.mark.postgres

RACERS = 8


@pytest.fixture(scope="module")
def pg_app(postgres_schema_url: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    url, _schema = postgres_schema_url
    app = build_app(api_settings(Path(tmp_path_factory.mktemp("api-pg")), url))
    yield app
    dispose(app)


def test_racing_if_match_updates_let_exactly_one_win(pg_app: Flask) -> None:
    client = pg_app.test_client()
    pid = "race-" + secrets.token_hex(4)
    seed = {"resourceType": "Patient", "id": pid, "gender": "unknown"}
    assert client.put(f"/fhir/Patient/{pid}", data=orjson.dumps(seed), headers=JSON_HEADERS).status_code == 201

    def update(i: int) -> int:
        body = {**seed, "name": [{"family": f"Racer{i}"}]}
        resp = pg_app.test_client().put(f"/fhir/Patient/{pid}", data=orjson.dumps(body),
                                        headers={**JSON_HEADERS, "If-Match": 'W/"1"'})
        return resp.status_code

    with ThreadPoolExecutor(RACERS) as pool:
        statuses = Counter(pool.map(update, range(RACERS)))
    assert statuses[200] == 1, statuses
    assert set(statuses) <= {200, 409, 412}, statuses
    history = orjson.loads(client.get(f"/fhir/Patient/{pid}/_history", headers=AUTH).data)
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']


def test_racing_unconditional_updates_all_land_as_versions(pg_app: Flask) -> None:
    client = pg_app.test_client()
    pid = "race-" + secrets.token_hex(4)
    seed = {"resourceType": "Patient", "id": pid}
    assert client.put(f"/fhir/Patient/{pid}", data=orjson.dumps(seed), headers=JSON_HEADERS).status_code == 201

    def update(i: int) -> int:
        body = {**seed, "name": [{"family": f"Writer{i}"}]}
        return pg_app.test_client().put(f"/fhir/Patient/{pid}", data=orjson.dumps(body),
                                        headers=JSON_HEADERS).status_code

    with ThreadPoolExecutor(RACERS) as pool:
        statuses = Counter(pool.map(update, range(RACERS)))
    assert set(statuses) <= {200, 409}, statuses  # a conflict is an honest answer; a 500 is not
    history = orjson.loads(client.get(f"/fhir/Patient/{pid}/_history", headers=AUTH).data)
    versions = [int(e["response"]["etag"][3:-1]) for e in history["entry"]]
    assert versions == list(range(1 + statuses[200], 0, -1))  # no gaps, no duplicates, none lost


def test_same_suite_runs_here_too(pg_app: Flask) -> None:
    # The whole tests/api suite is parametrised over SQLite and PostgreSQL; this checks the wiring here.
    assert pg_app.extensions["healthledger.engine"].dialect.name == "postgresql"
    client = pg_app.test_client()

    def total() -> int:
        resp = client.get("/fhir/Patient?_summary=count", headers=AUTH)
        assert resp.status_code == 200
        return int(orjson.loads(resp.data)["total"])

    before = total()
    resp = client.post("/fhir/Patient", data=orjson.dumps({"resourceType": "Patient"}), headers=JSON_HEADERS)
    assert resp.status_code == 201
    assert total() == before + 1


def test_a_read_of_one_resource_is_a_select_and_an_insert_committed_by_itself(pg_app: Flask, tmp_path: Path) -> None:
    # libpq's own trace of the protocol on every connection the read opens: each Query or Sync is a round trip.
    client = pg_app.test_client()
    pid = "rt-" + secrets.token_hex(4)
    body = orjson.dumps({"resourceType": "Patient", "id": pid})
    assert client.put(f"/fhir/Patient/{pid}", data=body, headers=JSON_HEADERS).status_code == 201
    assert client.get(f"/fhir/Patient/{pid}", headers=AUTH).status_code == 200  # keys and caches warm
    engine = pg_app.extensions["healthledger.engine"]
    with engine.connect() as conn:
        logged = conn.scalar(sa_count_entries())
    engine.dispose()  # new connections from here, each traced
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as sink:
        def traced(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.pgconn.trace(sink.fileno())

        event.listen(engine, "connect", traced)
        try:
            resp = client.get(f"/fhir/Patient/{pid}", headers=AUTH)
        finally:
            event.remove(engine, "connect", traced)
            engine.dispose()
    assert resp.status_code == 200 and orjson.loads(resp.data)["id"] == pid
    text = trace.read_text()
    # [type, arguments] of each message (a statement's own line breaks continue its Parse line)
    messages = [(fields + [""])[3:5] for fields in (line.split("\t") for line in text.splitlines()) if len(fields) > 3]
    transaction_control = [m for m in messages if m[0] == "Query" and re.search(r"BEGIN|COMMIT|ROLLBACK", m[1])]
    assert transaction_control == []
    inserts = [i for i, m in enumerate(messages) if m[0] == "Parse" and "INSERT INTO access_log" in m[1]]
    assert len(inserts) == 1
    # The INSERT's answer ends idle ("I"): committed by itself, before the response went out.
    ready = next(m for m in messages[inserts[0]:] if m[0] == "ReadyForQuery")
    assert ready[1].strip() == "I"
    round_trips = sum(1 for m in messages if m[0] in ("Sync", "Query"))
    # The consent index's freshness (a SMART token's client lookup carries it), the read's SELECT, the INSERT.
    assert round_trips == 3
    with engine.connect() as conn:
        assert conn.scalar(sa_count_entries()) == logged + 1
        assert conn.connection.driver_connection.autocommit is False  # the pool's connections as they were


def sa_count_entries():  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.select(sa.func.count()).select_from(AccessLogEntry)
