"""Fixtures of the access-log tests: a migrated database on SQLite and on PostgreSQL, and a fresh log id."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from healthledger.db import make_engine, session_factory, upgrade


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'a.db'}"
    else:
        url, _schema = request.getfixturevalue("postgres_schema_url")
    engine = make_engine(url)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture()
def log_id() -> str:
    return "t" + secrets.token_hex(6)
