"""Backup and restore: a backup taken while writes run restores to a state that passes `audit verify`; every
restored resource opens; a patient erased before the backup stays unreadable; keys live apart."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import FIXTURES, invoke_cli, patient_phi

from healthledger.app import bootstrap, create_app
from healthledger.backup import BackupError, backup, libpq_url, restore
from healthledger.config import Settings
from healthledger.db import make_engine
from healthledger.ledger.service import check_contracts
from healthledger.store.maintenance import erase_patient

AUTH = {"Authorization": "Bearer dev-token", "Content-Type": "application/fhir+json"}


def _settings(data_dir: Path, url: str = "", **extra: Any) -> Settings:
    return Settings(data_dir=data_dir, database_url=url, load_demo_data=False, tenant="backup-test", **extra)



def _patient(client: Any, family: str) -> str:
    response = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}],
                                                  "birthDate": "1961-02-03"}, headers=AUTH)
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def _observation(client: Any, patient: str, i: int) -> str:
    body = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min"}}
    response = client.post("/fhir/Observation", json=body, headers=AUTH)
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def _scenario(source: Settings, dest: Path, keys_dest: Path) -> tuple[str, str, list[str], dict[str, Any]]:
    """Data, anchors, an erasure, then a backup taken while a writer keeps writing; (kept, erased, acknowledged
    observation ids, writer stats)."""
    bootstrap(source)
    check_contracts(source, embedded=True)
    app = create_app(source)
    client = app.test_client()
    kept, erased = _patient(client, "Backupkeeper"), _patient(client, "Erasedbefore")
    for i in range(5):
        _observation(client, kept, i)
        _observation(client, erased, i)
    assert invoke_cli(source, "anchor").exit_code == 0
    erase_patient(app.extensions["healthledger.store"], erased)
    acknowledged: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        writing = app.test_client()
        try:
            i = 0
            while not stop.is_set():
                acknowledged.append(_observation(writing, kept, i))
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.5)
    before = len(acknowledged)
    backup(source, dest, keys_dest=keys_dest)
    during = len(acknowledged) - before
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=30)
    assert not errors
    anchored = invoke_cli(source, "anchor")  # the live system goes on anchoring after the backup
    assert anchored.exit_code == 0, anchored.output
    app.extensions["healthledger.engine"].dispose()
    return kept, erased, acknowledged, {"during_backup": during, "total": len(acknowledged)}


def test_backup_while_writing_restores_verifiable_and_erasure_survives(tmp_path: Path) -> None:
    source = _settings(tmp_path / "live")
    dest, keys_dest = tmp_path / "backup", tmp_path / "vault" / "keys"
    kept, erased, acknowledged, stats = _scenario(source, dest, keys_dest)

    # The data backup holds no key and no plaintext PHI; the key backup holds no data.
    assert not list(dest.glob("kek*")) and (keys_dest / "kek.json").exists()
    blob = b"".join(p.read_bytes() for p in dest.iterdir())
    assert b"Backupkeeper" not in blob and b"1961-02-03" not in blob

    target = _settings(tmp_path / "restored")
    assert invoke_cli(target, "restore", str(dest), "--keys", str(keys_dest)).exit_code == 0
    verified = invoke_cli(target, "audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert "intact" in verified.output

    app = create_app(target)
    client = app.test_client()
    assert client.get(f"/fhir/Patient/{kept}", headers=AUTH).status_code == 200
    assert client.get(f"/fhir/Patient/{erased}", headers=AUTH).status_code == 410  # erased before: unreadable
    engine = app.extensions["healthledger.engine"]
    with engine.connect() as conn:
        restored = set(conn.execute(sa.text(
            "select resource_id from store_resources where resource_type = 'Observation'")).scalars())
    # Every restored resource opens, and the acknowledged writes form a prefix: nothing half-written.
    in_backup = [i for i in acknowledged if i in restored]
    assert in_backup == acknowledged[: len(in_backup)] and len(in_backup) >= 1
    for obs in in_backup[:: max(1, len(in_backup) // 10)]:
        assert client.get(f"/fhir/Observation/{obs}", headers=AUTH).status_code == 200
    engine.dispose()
    print(f"\nbackup: {stats['total']} writes acknowledged, {stats['during_backup']} while the backup ran, "
          f"{len(in_backup)} in it, audit verify intact, erased patient 410")


def test_restore_refuses_a_damaged_backup_and_keys_inside_the_backup(tmp_path: Path) -> None:
    source = _settings(tmp_path / "live")
    bootstrap(source)
    with pytest.raises(BackupError, match="apart"):
        backup(source, tmp_path / "b", keys_dest=tmp_path / "b" / "keys")
    report = backup(source, tmp_path / "b2")
    (report.path / "database.sqlite3").write_bytes(b"tampered")
    with pytest.raises(BackupError, match="SHA-256"):
        restore(_settings(tmp_path / "r"), report.path)
    with pytest.raises(BackupError, match="exists"):
        restore(source, backup(source, tmp_path / "b3").path)  # never over a live database without --force


def test_libpq_url_keeps_the_schema_of_the_search_path() -> None:
    url, schema = libpq_url("postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dhl_x")
    assert url.startswith("postgresql://postgres@127.0.0.1:5432/test") and schema == "hl_x"
    assert libpq_url("postgresql://u@h/db")[1] is None


@pytest.mark.postgres
def test_postgres_backup_and_restore_pass_audit_verify(postgres_module_schema_url: tuple[str, str], tmp_path: Path) -> None:
    url, schema = postgres_module_schema_url
    source = _settings(tmp_path / "live", url)
    dest, keys_dest = tmp_path / "backup", tmp_path / "vault"
    kept, erased, _acknowledged, _stats = _scenario(source, dest, keys_dest)
    admin = make_engine(url.split("?")[0])
    with admin.begin() as conn:  # the database is lost
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))  # the restore creates it again
    target = _settings(tmp_path / "restored", url)
    restored = invoke_cli(target, "restore", str(dest), "--keys", str(keys_dest))
    assert restored.exit_code == 0, restored.output
    verified = invoke_cli(target, "audit", "verify")
    assert verified.exit_code == 0, verified.output
    app = create_app(target)
    client = app.test_client()
    assert client.get(f"/fhir/Patient/{kept}", headers=AUTH).status_code == 200
    assert client.get(f"/fhir/Patient/{erased}", headers=AUTH).status_code == 410
    app.extensions["healthledger.engine"].dispose()
    admin.dispose()


def test_fixture_phi_helper_reads_patients() -> None:
    assert patient_phi({"resourceType": "Patient", "name": [{"family": "Quiggleworth"}]}) == {"Quiggleworth"}
    assert FIXTURES.is_dir()
