"""Key rotation without downtime and crypto-shredding of a patient (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from healthledger.errors import Gone, NotFound
from healthledger.keys import KEY_FILES, KeyFileKind
from healthledger.store import maintenance
from healthledger.store.maintenance import rotate_keys
from healthledger.store.models import data_keys_table, resources_table, terms_table
from healthledger.store.repository import ResourceStore
from tests.store.test_repository import observation, patient


def _kek_ids_in_db(store: ResourceStore) -> set[str]:
    with store.engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(data_keys_table.c.kek_id).where(data_keys_table.c.wrapped.is_not(None)))}


def test_rotation_rewraps_without_reencrypting(store: ResourceStore) -> None:
    a, _ = store.create(patient())
    obs, _ = store.create(observation(a.id))
    org, _ = store.create({"resourceType": "Organization", "name": "General Hospital"})
    provider = store.keyring.provider
    old_kek = provider.active_kek_id()
    with store.engine.connect() as conn:
        payloads_before = dict(conn.execute(sa.select(resources_table.c.row_id, resources_table.c.payload)).all())

    # Mid-rotation: a new KEK is active, nothing rewrapped yet; reads and writes keep working.
    provider.rotate()
    assert store.read("Observation", obs.id).resource is not None
    store.create(observation(a.id, value=80))

    report = maintenance.rotate_keys(store, retire_old=True)
    assert report.rewrapped >= 3 and report.remaining_on_old == 0
    assert old_kek in report.retired and old_kek not in provider.kek_ids()
    assert _kek_ids_in_db(store) == {report.new_kek_id}
    key_file = json.loads((store.keys_dir / "kek.json").read_text())
    assert set(key_file["keys"]) == {report.new_kek_id}

    with store.engine.connect() as conn:
        payloads_after = dict(conn.execute(sa.select(resources_table.c.row_id, resources_table.c.payload)).all())
    for row_id, payload in payloads_before.items():
        assert payloads_after[row_id] == payload  # ciphertexts untouched

    # A fresh process (empty key cache) reads everything with the new KEK alone.
    fresh = ResourceStore(store.engine, type(provider)(store.keys_dir), tenant=store.tenant, keys_dir=store.keys_dir)
    assert fresh.read("Patient", a.id).resource["name"][0]["family"] == "Quarrington"  # type: ignore[index]
    assert fresh.read("Organization", org.id).resource is not None
    assert fresh.search_params("Observation", [("patient", a.id)]).total == 2


def test_rotation_without_retire_keeps_old_kek(store: ResourceStore) -> None:
    store.create(patient())
    old_kek = store.keyring.provider.active_kek_id()
    report = maintenance.rotate_keys(store)
    assert report.retired == [] and old_kek in store.keyring.provider.kek_ids()


def test_erase_patient_shreds_the_compartment(store: ResourceStore) -> None:
    a, _ = store.create(patient())
    b, _ = store.create(patient(family="Keeper", mrn="MRN-99"))
    o1, _ = store.create(observation(a.id))
    store.update("Observation", o1.id, observation(a.id, value=90))
    store.create(observation(a.id, code="29463-7"))
    kept, _ = store.create(observation(b.id))

    report = maintenance.erase_patient(store, a.id)
    assert report.resources == {"Observation": 2, "Patient": 1}
    assert report.versions == 4 and report.key_destroyed

    for resource_type, rid in (("Patient", a.id), ("Observation", o1.id)):
        with pytest.raises(Gone):
            store.read(resource_type, rid)
    with pytest.raises(Gone):
        store.vread("Observation", o1.id, 1)
    with pytest.raises(Gone):
        store.history("Observation", o1.id)
    assert store.search_params("Observation", [("patient", a.id)]).total == 0
    assert store.search_params("Patient", [("identifier", "MRN-77")]).total == 0
    assert {r.id for r in store.search_params("Observation", []).items} == {kept.id}
    assert store.read("Patient", b.id).resource is not None

    with store.engine.connect() as conn:
        destroyed = conn.execute(
            sa.select(data_keys_table).where(data_keys_table.c.destroyed_at.is_not(None))
        ).all()
        assert len(destroyed) == 1 and destroyed[0].wrapped is None and destroyed[0].kek_id is None
        erased_rows = conn.execute(
            sa.select(resources_table.c.row_id).where(resources_table.c.erased.is_(True))
        ).scalars().all()
        assert len(erased_rows) == 4
        assert conn.execute(
            sa.select(sa.func.count()).select_from(terms_table).where(terms_table.c.row_id.in_(erased_rows))
        ).scalar_one() == 0

    # New records for an erased patient are refused; a second erasure reports nothing left.
    with pytest.raises(Gone):
        store.create(observation(a.id))
    again = maintenance.erase_patient(store, a.id)
    assert again.resources == {} and not again.key_destroyed
    with pytest.raises(NotFound):
        maintenance.erase_patient(store, "nobody-here")


def test_erasure_is_seen_by_another_process_with_a_warm_cache(store: ResourceStore) -> None:
    a, _ = store.create(patient())
    other = ResourceStore(store.engine, store.keyring.provider, tenant=store.tenant, keys_dir=store.keys_dir)
    assert other.read("Patient", a.id).resource is not None  # warms its key cache
    maintenance.erase_patient(store, a.id)
    with pytest.raises(Gone):
        other.read("Patient", a.id)


def test_reads_keep_working_while_rotation_runs(store: ResourceStore) -> None:
    import threading

    from healthledger.keys import LocalFileKeyProvider

    ids = [store.create(patient(mrn=f"R{i}"))[0].id for i in range(12)]
    failures: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set() and reads < 2000:
            # a cold store per round, as a freshly started worker process would be
            other = ResourceStore(store.engine, LocalFileKeyProvider(store.keys_dir), tenant=store.tenant, keys_dir=store.keys_dir)
            try:
                for rid in ids:
                    assert other.read("Patient", rid).resource is not None
                    reads += 1
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            maintenance.rotate_keys(store, retire_old=True, batch_size=2)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures[:1]
    assert reads > 0
    assert len(store.keyring.provider.kek_ids()) == 1


def test_old_kek_is_not_retired_while_other_packages_still_use_it(store: ResourceStore) -> None:
    store.create(patient())
    provider = store.keyring.provider
    old_kek = provider.active_kek_id()
    kind = KeyFileKind("some-signing-key.json", "some signing key", b"another package's key")
    registry = KEY_FILES.extended(kind)
    key_file = registry.file(store.keys_dir, kind)
    key_file.load_or_create(provider, lambda: b"k" * 32)
    other = key_file.read()
    assert other is not None

    report = rotate_keys(store, retire_old=True, key_files=registry)
    assert report.retired == [] and report.blocked_by == ["key file some-signing-key.json"]
    assert old_kek in provider.kek_ids()
    assert provider.unwrap(other.wrapped, b"another package's key") == b"k" * 32

    key_file.rewrap(provider)
    report = rotate_keys(store, retire_old=True, rotate=False, key_files=registry)
    assert report.retired == [old_kek] and report.blocked_by == []
    assert provider.kek_ids() == [report.new_kek_id]
