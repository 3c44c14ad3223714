"""The store on real PostgreSQL under concurrency: writers of one resource serialise, key creation races."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from healthledger.config import Settings
from healthledger.db import make_engine, upgrade
from healthledger.keys import LocalFileKeyProvider
from healthledger.store.models import data_keys_table, resources_table
from healthledger.store.repository import ResourceStore, store_for_settings

pytestmark = pytest.mark.postgres


@pytest.fixture()
def pg_store(postgres_schema_url: tuple[str, str], tmp_path: Path) -> Iterator[ResourceStore]:
    url, _ = postgres_schema_url
    engine = make_engine(url, pool_size=8)
    upgrade(engine)
    settings = Settings(data_dir=tmp_path, database_url=url, tenant=f"t-{tmp_path.name[-12:]}", load_demo_data=False)
    yield store_for_settings(engine, LocalFileKeyProvider(settings.keys_dir), settings)
    engine.dispose()


def _patient(n: int) -> dict:
    return {"resourceType": "Patient", "name": [{"family": f"Concurrent{n}"}]}


def test_concurrent_updates_of_one_resource_lose_nothing(pg_store: ResourceStore) -> None:
    made, _ = pg_store.update("Patient", "race-1", _patient(0))

    def writer(w: int) -> list[int]:
        return [pg_store.update("Patient", made.id, _patient(w * 100 + i))[0].version_id for i in range(8)]

    with ThreadPoolExecutor(4) as pool:
        versions = [v for vs in pool.map(writer, range(4)) for v in vs]
    assert sorted(versions) == list(range(2, 34))
    assert pg_store.read("Patient", made.id).version_id == 33
    with pg_store.engine.connect() as conn:
        current = conn.execute(
            sa.select(sa.func.count()).select_from(resources_table).where(
                resources_table.c.tenant == pg_store.tenant,
                resources_table.c.resource_id == made.id,
                resources_table.c.is_current.is_(True),
            )
        ).scalar_one()
    assert current == 1
    assert pg_store.history("Patient", made.id, count=100).total == 33


def test_concurrent_first_writes_share_one_compartment_key(pg_store: ResourceStore) -> None:
    pg_store.update("Patient", "race-2", _patient(1))
    pg_store.keyring._keys = type(pg_store.keyring._keys)(16)  # cold cache

    def write(i: int) -> str:
        obs = {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/race-3"}, "valueQuantity": {"value": i},
        }
        return pg_store.create(obs)[0].id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(write, range(12)))
    assert len(set(ids)) == 12
    with pg_store.engine.connect() as conn:
        keys = conn.execute(
            sa.select(sa.func.count()).select_from(data_keys_table).where(
                data_keys_table.c.tenant == pg_store.tenant, data_keys_table.c.key_class == "patient"
            )
        ).scalar_one()
    assert keys == 2  # race-2 and race-3, however many writers raced to create race-3's key
    assert pg_store.search_params("Observation", [("subject", "Patient/race-3")]).total == 12
