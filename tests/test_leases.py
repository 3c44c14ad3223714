"""Named leases with fencing tokens, on SQLite and PostgreSQL: one holder at a time, renewal, takeover after
expiry, and a late holder's write refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from healthledger import leases
from healthledger.db import make_engine, session_factory, upgrade


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path) -> Iterator[sessionmaker[Session]]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = request.getfixturevalue("migrated_sqlite_url")
        engine = make_engine(url)
    else:
        url, _schema = request.getfixturevalue("postgres_schema_url")
        engine = make_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM ops_leases")
    yield session_factory(engine)
    engine.dispose()


def test_one_holder_renewal_takeover_and_fencing(sessions: sessionmaker[Session]) -> None:
    a = leases.acquire(sessions, "indexer", "a", now=100.0, ttl=10)
    assert a is not None and a.token == 1
    assert leases.acquire(sessions, "indexer", "b", now=105.0, ttl=10) is None  # held by a
    renewed = leases.acquire(sessions, "indexer", "a", now=108.0, ttl=10)
    assert renewed is not None and renewed.token == 1 and renewed.expires_at == 118.0
    assert leases.acquire(sessions, "indexer", "b", now=115.0, ttl=10) is None  # the renewal counts
    b = leases.acquire(sessions, "indexer", "b", now=119.0, ttl=10)  # a stopped renewing: b takes over
    assert b is not None and b.token == 2
    with sessions.begin() as s:
        assert not leases.holds(s, renewed, now=119.5)  # a's late write is refused (token moved on)
        assert leases.holds(s, b, now=119.5)
    assert leases.acquire(sessions, "other-work", "a", now=119.0, ttl=10) is not None  # names are independent


def test_release_hands_over_at_once(sessions: sessionmaker[Session]) -> None:
    a = leases.acquire(sessions, "anchoring", "a", now=0.0, ttl=60)
    assert a is not None
    leases.release(sessions, a)
    b = leases.acquire(sessions, "anchoring", "b", now=1.0, ttl=60)
    assert b is not None and b.token == a.token + 1


def test_ttl_must_be_positive(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError):
        leases.acquire(sessions, "x", "a", now=0.0, ttl=0)
