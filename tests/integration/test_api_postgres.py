"""The API on PostgreSQL under concurrency: racing writers get 200/412/409, never a 500 or a lost update."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app, dispose
from flask import Flask

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
