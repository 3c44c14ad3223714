"""driver_fetch_one on an Engine (the per-request SELECTs: the token's client, the consent index's freshness).

On PostgreSQL each thread has a dedicated connection in autocommit for them (healthledger.db._HotReads); these
tests hold it to what a pooled connection gave: every call sees what was committed before it (nothing cached), a
lost database is a DBAPIError marked invalidated and the next call after it is back gets a new connection, one
that sat idle is pinged first, and Engine.dispose closes them. On SQLite the pooled path is unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from healthledger import db
from healthledger.db import driver_fetch_one, make_engine
from tests.reliability.faults import TcpProxy


@pytest.fixture()
def pg_engine(postgres_own_schema_url: tuple[str, str]) -> Iterator[Engine]:
    engine = make_engine(postgres_own_schema_url[0])
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE hot (id int PRIMARY KEY, value text)"))
        conn.execute(sa.text("INSERT INTO hot VALUES (1, 'first')"))
    yield engine
    engine.dispose()


def _backend_alive(engine: Engine, pid: int, *, settle: float = 3.0) -> bool:
    """Whether the server still has this backend, allowing it `settle` seconds to exit after its client closed."""
    deadline = time.monotonic() + settle
    while True:
        with engine.connect() as conn:
            alive = bool(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar())
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.mark.postgres
def test_each_call_sees_what_was_committed_before_it(pg_engine: Engine) -> None:
    assert driver_fetch_one(pg_engine, "SELECT value FROM hot WHERE id = ?", (1,)) == ("first",)
    with pg_engine.begin() as conn:
        conn.execute(sa.text("UPDATE hot SET value = 'second' WHERE id = 1"))
    assert driver_fetch_one(pg_engine, "SELECT value FROM hot WHERE id = ?", (1,)) == ("second",)
    assert driver_fetch_one(pg_engine, "SELECT value FROM hot WHERE id = ?", (2,)) is None
    # In autocommit: no transaction is left open on it between calls (it would hold back vacuum, and a snapshot).
    pid = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())
    assert pid is not None
    with pg_engine.connect() as conn:
        state = conn.execute(sa.text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": pid[0]}).scalar()
    assert state == "idle"


@pytest.mark.postgres
def test_a_thread_keeps_its_connection_and_threads_do_not_share_one(pg_engine: Engine) -> None:
    mine = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())
    assert driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ()) == mine
    theirs: list[object] = []
    thread = threading.Thread(target=lambda: theirs.append(driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())))
    thread.start()
    thread.join()
    assert theirs and theirs[0] != mine


@pytest.mark.postgres
def test_a_thread_that_ends_leaves_its_connection_to_the_next(pg_engine: Engine) -> None:
    """A server with a thread per request (werkzeug's) connects once, not on every request."""
    seen: list[object] = []
    for _ in range(5):
        thread = threading.Thread(target=lambda: seen.append(driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())))
        thread.start()
        thread.join()
    assert len(seen) == 5 and len(set(seen)) == 1


@pytest.mark.postgres
def test_dispose_closes_the_dedicated_connections(pg_engine: Engine) -> None:
    before = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())
    assert before is not None and _backend_alive(pg_engine, before[0], settle=0)
    pg_engine.dispose()
    assert not _backend_alive(pg_engine, before[0])
    after = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())  # a new one, made on the next call
    assert after is not None and after != before


@pytest.mark.postgres
def test_an_error_discards_the_connection_and_the_next_call_gets_a_new_one(pg_engine: Engine) -> None:
    before = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())
    with pytest.raises(DBAPIError) as raised:
        driver_fetch_one(pg_engine, "SELECT nothing FROM nowhere", ())
    assert not raised.value.connection_invalidated  # a statement's error, not a lost connection
    after = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())
    assert after is not None and after != before
    assert before is not None and not _backend_alive(pg_engine, before[0])  # closed, not leaked


@pytest.mark.postgres
def test_a_connection_idle_for_a_while_is_pinged_so_a_dropped_one_is_replaced(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())
    assert before is not None
    with pg_engine.connect() as conn:  # the server drops it (a restart, a firewall)
        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": before[0]})
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    after = driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ())  # no error: pinged, replaced
    assert after is not None and after != before


@pytest.mark.postgres
def test_a_lost_database_is_a_dbapi_error_and_the_next_call_after_it_returns_works(
    postgres_own_schema_url: tuple[str, str],
) -> None:
    url = postgres_own_schema_url[0]
    proxy = TcpProxy("127.0.0.1", 5432)
    engine = make_engine(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
    try:
        assert driver_fetch_one(engine, "SELECT 1", ()) == (1,)
        proxy.cut()
        with pytest.raises(DBAPIError) as raised:
            driver_fetch_one(engine, "SELECT 1", ())
        assert raised.value.connection_invalidated
        with pytest.raises(DBAPIError):  # no connection to be had while it is away: the same clean error
            driver_fetch_one(engine, "SELECT 1", ())
        proxy.restore()
        assert driver_fetch_one(engine, "SELECT 1", ()) == (1,)
    finally:
        proxy.close()
        engine.dispose()


def test_sqlite_reads_through_the_pool(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hot.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE hot (id int PRIMARY KEY, value text)"))
        conn.execute(sa.text("INSERT INTO hot VALUES (1, 'first')"))
    assert driver_fetch_one(engine, "SELECT value FROM hot WHERE id = ?", (1,)) == ("first",)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE hot SET value = 'second' WHERE id = 1"))
    assert driver_fetch_one(engine, "SELECT value FROM hot WHERE id = ?", (1,)) == ("second",)
    with pytest.raises(DBAPIError):
        driver_fetch_one(engine, "SELECT nothing FROM nowhere", ())
    engine.dispose()


@pytest.mark.postgres
def test_on_a_connection_it_reads_in_that_connections_transaction(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        conn.execute(sa.text("UPDATE hot SET value = 'uncommitted' WHERE id = 1"))
        for _ in range(3):  # (a cursor kept with the connection, the same answers each time)
            assert driver_fetch_one(conn, "SELECT value FROM hot WHERE id = ?", (1,)) == ("uncommitted",)
        assert driver_fetch_one(pg_engine, "SELECT value FROM hot WHERE id = ?", (1,)) == ("first",)
        conn.rollback()
    with pg_engine.connect() as conn:  # (the pool's reset on return ended the transaction the error left)
        assert driver_fetch_one(conn, "SELECT value FROM hot WHERE id = ?", (1,)) == ("first",)
        with pytest.raises(DBAPIError):
            driver_fetch_one(conn, "SELECT nothing FROM nowhere", ())
    with pg_engine.connect() as conn:
        assert driver_fetch_one(conn, "SELECT value FROM hot WHERE id = ?", (1,)) == ("first",)
    with pg_engine.connect() as conn:  # the pool replaced the connection: the cursor kept is not the old one's
        conn.invalidate()
        assert driver_fetch_one(conn, "SELECT value FROM hot WHERE id = ?", (1,)) == ("first",)


@pytest.mark.postgres
def test_threads_that_ended_leave_at_most_a_few_connections_open(pg_engine: Engine) -> None:
    barrier = threading.Barrier(db._HOT_IDLE_KEPT + 4)
    pids: list[object] = []

    def read() -> None:
        pids.append(driver_fetch_one(pg_engine, "SELECT pg_backend_pid()", ()))
        barrier.wait()  # all at once: each its own connection

    threads = [threading.Thread(target=read) for _ in range(barrier.parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pids)) == barrier.parties
    deadline = time.monotonic() + 3.0  # (a closed connection's backend exits a moment later)
    while True:
        alive = [pid for (pid,) in pids if _backend_alive(pg_engine, pid, settle=0)]  # type: ignore[misc]
        if len(alive) <= db._HOT_IDLE_KEPT or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(alive) == db._HOT_IDLE_KEPT
