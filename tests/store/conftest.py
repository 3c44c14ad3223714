"""A ResourceStore on SQLite and on PostgreSQL: the shared store suite runs against both."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from healthledger.config import Settings
from healthledger.db import make_engine, upgrade
from healthledger.keys import LocalFileKeyProvider
from healthledger.store.models import data_keys_table, resources_table, terms_table
from healthledger.store.repository import ResourceStore, store_for_settings


class TickingClock:
    """A clock that advances one millisecond per reading: deterministic, strictly increasing."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upgraded, empty SQLite database, copied for each test (migrations run once per session)."""
    db = tmp_path_factory.mktemp("store-template") / "template.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return db


@pytest.fixture(scope="session")
def _pg_engine(postgres_schema_url: tuple[str, str]) -> Iterator[sa.Engine]:
    url, _schema = postgres_schema_url
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


def make_store(engine: sa.Engine, tmp_path: Path, **settings: object) -> ResourceStore:
    cfg = Settings(data_dir=tmp_path / "var", load_demo_data=False, **settings)  # type: ignore[arg-type]
    return store_for_settings(engine, LocalFileKeyProvider(cfg.keys_dir), cfg, clock=TickingClock())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty store schema on the backend (PostgreSQL: one schema per run, tables emptied per test)."""
    if request.param == "sqlite":
        db = tmp_path / "store.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), db)
        engine = make_engine(f"sqlite:///{db}")
        yield engine
        engine.dispose()
        return
    engine = request.getfixturevalue("_pg_engine")
    with engine.begin() as conn:
        for table in (terms_table, resources_table, data_keys_table):
            conn.execute(sa.delete(table))
    yield engine


@pytest.fixture()
def store(backend: sa.Engine, tmp_path: Path) -> ResourceStore:
    return make_store(backend, tmp_path)
