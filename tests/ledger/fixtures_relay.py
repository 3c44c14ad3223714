"""Database fixtures for the relay side of the ledger (patient keys, outbox, indexer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from healthledger.db import Base, make_engine, session_factory
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import models

RELAY_TABLES = [
    models.PatientKeyRecord.__table__,
    models.PatientPseudonym.__table__,
    models.OutboxItem.__table__,
    models.SenderNonce.__table__,
    models.ConsentEvent.__table__,
    models.LogAnchorEvent.__table__,
    models.IndexerCursor.__table__,
    models.IndexedBlock.__table__,
]


def relay_engine(url: str) -> Engine:
    engine = make_engine(url)
    Base.metadata.create_all(engine, tables=RELAY_TABLES)
    return engine


@pytest.fixture()
def relay_db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A session factory over a fresh SQLite file holding this package's tables."""
    engine = relay_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture()
def key_provider(tmp_path: Path) -> LocalFileKeyProvider:
    return LocalFileKeyProvider(tmp_path / "keys")
