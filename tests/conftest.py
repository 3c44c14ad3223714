"""Shared fixtures: settings on a temporary data dir, and a per-run PostgreSQL schema."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import FIXTURES, NODE_BIN, ROOT, node_tool  # noqa: F401  (re-exported for old imports)

from healthledger.config import Settings

# PostgreSQL on this machine (trust auth). Each test run gets its own schema, dropped at the end.
POSTGRES_URL = os.environ.get("HEALTHLEDGER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_reachable() -> bool:
    try:
        eng = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(sa.text("select 1"))
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure to connect means "not reachable"
        return False


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults on a fresh data directory (SQLite, local key file, embedded chain)."""
    return Settings(data_dir=tmp_path / "var", load_demo_data=False)


@pytest.fixture(scope="session")
def postgres_schema_url() -> Iterator[tuple[str, str]]:
    """(url, schema): a fresh schema in database `test`, used through search_path; dropped afterwards.

    In CI a missing PostgreSQL is a failure, not a skip: the suite promises to run on it.
    """
    yield from _fresh_schema()


@pytest.fixture(scope="module")
def postgres_module_schema_url() -> Iterator[tuple[str, str]]:
    """Like postgres_schema_url, but a schema of the test module's own (for a whole deployment per module)."""
    yield from _fresh_schema()


def _fresh_schema() -> Iterator[tuple[str, str]]:
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL not reachable")
    schema = f"hl_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url, schema
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def _migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file with every migration applied, copied per test (migrating each time is slow)."""
    from healthledger.db import make_engine, upgrade

    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture()
def migrated_sqlite_url(_migrated_sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, fully migrated SQLite database for this test."""
    target = tmp_path / "db.sqlite"
    shutil.copyfile(_migrated_sqlite_template, target)
    return f"sqlite:///{target}"
