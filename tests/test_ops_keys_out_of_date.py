"""A replica still holding the key files of before a KEK rotation: not ready, and a 503 OperationOutcome
(never a 500 page), also when the failure comes while a refusal is recorded."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import sqlalchemy as sa
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app, dispose
from support import invoke_cli

from healthledger.app import create_app
from healthledger.db import session_factory
from healthledger.key_rotation import rewrap_outside_store
from healthledger.ledger.models import IndexerCursor
from healthledger.store import maintenance


def test_a_replica_with_key_files_older_than_the_rotation_is_not_ready_and_answers_503(tmp_path: Path) -> None:
    settings = api_settings(tmp_path / "a")
    current = build_app(settings)
    created = current.test_client().post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON_HEADERS)
    assert created.status_code == 201
    first_deploy = shutil.copytree(settings.keys_dir, tmp_path / "first-deploy-keys")  # the Secret made at first deploy
    store = current.extensions["healthledger.store"]
    rotated = maintenance.rotate_keys(store)
    rewrap_outside_store(settings, store.keyring.provider, session_factory(current.extensions["healthledger.engine"]))
    engine = current.extensions["healthledger.engine"]
    with sa.orm.Session(engine) as session, session.begin():
        session.add(IndexerCursor(name="ledger", last_block=0, updated_at=time.time()))

    stale_settings = api_settings(tmp_path / "b", database_url=settings.database_url, tenant=settings.tenant,
                                  home_organization="Organization/hospital")  # as the operations team set it
    shutil.copytree(first_deploy, stale_settings.keys_dir)
    stale = create_app(stale_settings)
    stale.testing = True
    client = stale.test_client()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["status"] == "not-ready"
        keys = ready.json["checks"]["key_provider"]
        assert keys["ok"] is False and rotated.new_kek_id in keys["detail"] and "out of date" in keys["detail"]

        read = client.get(f"/fhir/Patient/{created.json['id']}", headers=AUTH)
        # A 400 whose refusal is recorded under the named patient's pseudonym (a keyed hash: the keys are needed).
        refused = client.get("/fhir/Observation?patient=some-patient&date=not-a-date", headers=AUTH)
        for response in (read, refused):
            assert response.status_code == 503 and response.mimetype == "application/fhir+json"
            issue = response.json["issue"][0]
            assert issue["code"] == "transient" and "key files are out of date" in issue["diagnostics"]

        shutil.copy2(settings.keys_dir / "kek.json", stale_settings.keys_dir / "kek.json")  # the Secret updated
        assert client.get("/readyz").json["checks"]["key_provider"] == {"ok": True}
        assert client.get(f"/fhir/Patient/{created.json['id']}", headers=AUTH).status_code == 200
        assert client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON_HEADERS).status_code == 201
    finally:
        dispose(stale)
        dispose(current)


def test_adding_the_kek_first_keeps_every_replica_ready_through_a_rotation(tmp_path: Path) -> None:
    """The documented procedure for mounted key files: `keys add` (no data key moves), the new kek.json to every
    replica, then `rotate-keys --retire-only`: a replica is never without the KEK its data keys need."""
    settings = api_settings(tmp_path / "a")
    current = build_app(settings)
    engine = current.extensions["healthledger.engine"]
    with sa.orm.Session(engine) as session, session.begin():
        session.add(IndexerCursor(name="ledger", last_block=0, updated_at=time.time()))
    replica_settings = api_settings(tmp_path / "b", database_url=settings.database_url, tenant=settings.tenant,
                                    home_organization="Organization/hospital")
    shutil.copytree(settings.keys_dir, replica_settings.keys_dir)
    replica = create_app(replica_settings)
    client = replica.test_client()

    def run(*args: str) -> str:
        result = invoke_cli(settings, *args)
        assert result.exit_code == 0, result.output
        return result.output

    try:
        added = run("keys", "add")
        assert "rotate-keys --retire-only" in added
        assert client.get("/readyz").json["checks"]["key_provider"] == {"ok": True}  # no data key moved yet
        shutil.copy2(settings.keys_dir / "kek.json", replica_settings.keys_dir / "kek.json")  # handed to the replica
        assert "retired:" in run("rotate-keys", "--retire-only")
        assert client.get("/readyz").json["checks"]["key_provider"] == {"ok": True}
        created = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON_HEADERS)
        assert created.status_code == 201
        assert client.get(f"/fhir/Patient/{created.json['id']}", headers=AUTH).status_code == 200
        assert client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON_HEADERS).status_code == 201
    finally:
        dispose(replica)
        dispose(current)


def test_a_running_replica_does_not_wrap_new_data_keys_under_a_kek_a_rotation_replaced(tmp_path: Path) -> None:
    """A replica that was serving before the rotation (its keys unwrapped and cached) and whose key files were not
    updated would wrap a new patient's data key under its old active KEK, which the rotation retires next: that
    key would then open nowhere (the patient's data lost). It refuses instead, 503, and writes nothing."""
    settings = api_settings(tmp_path / "a")
    current = build_app(settings)
    replica_settings = api_settings(tmp_path / "b", database_url=settings.database_url, tenant=settings.tenant)
    shutil.copytree(settings.keys_dir, replica_settings.keys_dir)  # the Secret made at first deploy
    replica = build_app(replica_settings)
    client = replica.test_client()
    engine = current.extensions["healthledger.engine"]

    def data_keys() -> list[str]:
        with engine.connect() as conn:
            return [str(k) for k in conn.execute(sa.text("select kek_id from store_data_keys")).scalars()]

    try:
        assert client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON_HEADERS).status_code == 201
        store = current.extensions["healthledger.store"]
        rotated = maintenance.rotate_keys(store)  # elsewhere: the replica's files still say the old KEK is active
        before = data_keys()
        assert set(before) == {rotated.new_kek_id}
        refused = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON_HEADERS)
        assert refused.status_code == 503 and refused.json["issue"][0]["code"] == "transient"
        assert "key files are out of date" in refused.json["issue"][0]["diagnostics"]
        assert data_keys() == before  # nothing wrapped under the old KEK
        shutil.copy2(settings.keys_dir / "kek.json", replica_settings.keys_dir / "kek.json")  # the Secret updated
        assert client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON_HEADERS).status_code == 201
        assert set(data_keys()) == {rotated.new_kek_id}
    finally:
        dispose(replica)
        dispose(current)
