"""The store on real PostgreSQL: writers of one resource serialise, key creation races, and an access-log group
written in autocommit is all or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import commit_accesses_on_driver
from healthledger.audit.models import AccessLogEntry
from healthledger.config import Settings
from healthledger.db import make_engine, upgrade
from healthledger.keys import LocalFileKeyProvider
from healthledger.store.access import DevelopmentPolicy, Principal, Screened
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


@pytest.mark.parametrize("rows", [3, 2_001])  # one INSERT statement; past _ONE_STATEMENT_ROWS, a transaction
def test_a_group_written_in_autocommit_is_all_or_nothing(pg_store: ResourceStore, rows: int) -> None:
    """A one-resource read's view runs in autocommit; a group its leader writes there commits whole or not at all."""

    def entry(n: int, pseudonym: str = "ab" * 16) -> AccessEntry:
        return AccessEntry(time=datetime.now(UTC), actor=f"caller-{n}", organization="Organization/h1", role="system",
                           purpose="TREAT", action="read", resource_type="Patient", resource_id=f"p{n}",
                           patient_pseudonym=pseudonym, decision="permit", reason="policy")

    def count() -> int:
        with pg_store.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(AccessLogEntry)))

    good = [entry(n) for n in range(rows)]
    too_long = entry(rows, pseudonym="c" * 65)  # the column holds 64: PostgreSQL refuses the row
    before = count()
    with pg_store.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(psycopg.errors.StringDataRightTruncation) as refused:
            commit_accesses_on_driver(conn, [*good[:-1], too_long, good[-1]])
        assert "too long" in str(refused.value)
        assert count() == before  # none of the group, though the bad row was not the first
        commit_accesses_on_driver(conn, good)
    assert count() == before + rows


def test_long_scans_in_autocommit_see_every_match_once_in_order(pg_store: ResourceStore) -> None:
    """A read view on PostgreSQL runs in autocommit, where scans go in keyset batches of _SCAN_BATCH: a search
    and a type history longer than two batches, with updates between, give every match once, in order."""
    from fhir_adapters import search as fhir_search
    from healthledger.store.repository import _SCAN_BATCH

    family = "Keyset" + pg_store.tenant[-6:]
    n = 2 * _SCAN_BATCH + 37
    made = [pg_store.create({"resourceType": "Patient", "name": [{"family": family}], "gender": "female"})[0].id
            for _ in range(n)]
    for pid in made[::50]:  # a second version of some: the search sees each once, the history both
        pg_store.update("Patient", pid, {"resourceType": "Patient", "id": pid, "name": [{"family": family}]})
    pg_store.policy = ScreensEveryVersion()  # decides per resource: the history scans too
    caller = Principal("caller", role="clinician", scopes=())
    query = fhir_search.parse_search("Patient", [("family", family)])
    with pg_store.reading(caller) as uow:
        assert uow.conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        page = uow.search("Patient", query, count=n + 10)
    assert page.total == n
    assert [item.id for item in page.items] == sorted(made)
    versions = len(made) + len(made[::50])
    history = pg_store.history("Patient", count=versions + 10, principal=caller)
    assert history.total == versions
    moments = [(item.last_updated, item.id, item.version_id) for item in history.items]
    assert moments == sorted(moments, key=lambda m: m[0], reverse=True)
    assert len(set(moments)) == versions


class ScreensEveryVersion(DevelopmentPolicy):
    """Shows a restricted caller everything, deciding each resource (and each version) on its own."""

    filters_search_results = True

    def check(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Any:
        return resource

    def screen(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Screened:
        return Screened(resource_type, resource["id"], "", resource)
