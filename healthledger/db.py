"""Database engine, declarative base and schema migrations (Alembic, one branch per package)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from healthledger.data_dir import private_sqlite_file

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Every table of every package. Each package keeps its models in its own module."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine; SQLite gets WAL, foreign keys and a busy timeout so concurrent workers wait, not fail.

    A SQLite database file is created 0600 first (healthledger.data_dir): SQLite gives its -wal and -shm
    files the database file's mode.
    """
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            private_sqlite_file(Path(database))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, **kwargs)
    _ping_idle_connections(engine)
    return engine


# A pooled connection idle for longer than this is pinged before it is handed out (the server may have
# restarted, or a firewall dropped it). One in use all along is not: a ping per checkout was a round trip
# on every request (several per request: token, read, access log).
IDLE_PING_SECONDS = 5.0


def _ping_idle_connections(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling ("pre ping"), only for connections that sat idle."""
    from sqlalchemy import exc

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _checked_out(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            if not getattr(dbapi_conn, "autocommit", True):
                dbapi_conn.rollback()
        except Exception as error:  # any failure: the pool replaces this connection
            raise exc.DisconnectionError() from error


def session_factory(engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema up to date: every package's migration branch to its head."""
    command.upgrade(alembic_config(engine), "heads")


def driver_fetch_one(conn: Connection | Engine, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """One row of a small, hot SELECT through the database driver itself (`?` placeholders).

    For the few statements on every request's path (the token's client, the consent index's freshness):
    SQLAlchemy's statement handling costs 3-4x the query itself there (43 µs against 13 µs on SQLite). On a
    Connection it runs on that connection (in its transaction, if any); on an Engine, on a connection of its
    own: for PostgreSQL the calling thread's dedicated one (`_HotReads`), for SQLite a pooled one.
    """
    dialect = conn.dialect
    if dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("?", "%s")
    if isinstance(conn, Engine) and dialect.name == "postgresql":
        return _hot_reads(conn).fetch_one(conn, sql, params)
    raw = _checkout(conn) if isinstance(conn, Engine) else conn.connection
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        if dialect.name == "postgresql":  # (on a Connection: an Engine's went to _hot_reads above)
            cursor = _kept_cursor(raw)
            cursor.execute(sql, params)
            row = cursor.fetchone()
        else:
            cursor = raw.cursor()
            try:
                cursor.execute(sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
        return None if row is None else tuple(row)
    except dbapi_error as exc:
        raw.info.pop(_KEPT_CURSOR, None)
        # The driver's own error, translated as SQLAlchemy would (OperationalError and friends), so a lost
        # database is the same clean 503 here as everywhere else; a dead connection is not given back.
        disconnect = dialect.is_disconnect(exc, raw.dbapi_connection, None)
        if disconnect:
            if isinstance(conn, Engine):
                raw.invalidate(exc)
            else:
                conn.invalidate(exc)
        raise DBAPIError.instance(sql, params, exc, dbapi_error, connection_invalidated=disconnect,
                                  dialect=dialect) from exc
    finally:
        if isinstance(conn, Engine):
            raw.close()  # back to the pool (or discarded, when invalidated)


_KEPT_CURSOR = "healthledger.kept_cursor"


def _kept_cursor(raw: Any) -> Any:
    """A psycopg cursor kept with the pooled connection for `driver_fetch_one`: a new cursor's first execute sets up
    its type loaders again (~8 µs CPU). Kept in the pool entry's `info`, with the driver connection it belongs to:
    the entry outlives a connection the pool replaced, so one of another connection is made anew."""
    driver = raw.driver_connection
    kept = raw.info.get(_KEPT_CURSOR)
    if kept is None or kept[0] is not driver:
        kept = raw.info[_KEPT_CURSOR] = (driver, driver.cursor())
    return kept[1]


def _checkout(engine: Engine) -> Any:
    """A pooled connection; the driver's error translated (a DBAPIError: a clean 503) when none can be made.

    (`Engine.raw_connection` raises the driver's own error, where `Engine.connect` translates it.)
    """
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        return engine.raw_connection()
    except dbapi_error as exc:
        raise DBAPIError.instance(None, None, exc, dbapi_error, connection_invalidated=False,
                                  dialect=dialect) from exc


class _HotConnection:
    """One thread's dedicated driver connection, in autocommit, with its cursor (see `_HotReads`)."""

    __slots__ = ("cursor", "driver", "generation", "pid", "proxy", "used_at")

    def __init__(self, proxy: Any, driver: Any, generation: int) -> None:
        self.proxy = proxy  # the detached pool proxy: closing it closes the connection
        self.driver = driver
        driver.autocommit = True
        self.cursor = self.driver.cursor()
        self.generation = generation
        self.pid = os.getpid()
        self.used_at = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already broken: nothing left to close cleanly
            self.proxy.close()


# Connections a forked child inherited from its parent: never closed nor collected there (closing, or libpq's
# finaliser, would end the parent's session on the shared socket); only dropped from use.
_INHERITED: list[_HotConnection] = []


# Connections kept for threads to come, per engine, once the thread that used one ended (a server that starts a
# thread per request, as werkzeug's does, would otherwise connect on every request); more are closed.
_HOT_IDLE_KEPT = 8


class _Lease:
    """A thread's hold on its connection, in the thread's `threading.local`: dropped when the thread ends, which
    gives the connection back (`_HotReads._release`)."""

    __slots__ = ("hot", "owner")

    def __init__(self, owner: _HotReads) -> None:
        self.owner = owner
        self.hot: _HotConnection | None = None

    def __del__(self) -> None:
        if self.hot is not None:
            with contextlib.suppress(Exception):  # (at interpreter exit, the module may be half gone)
                self.owner._release(self.hot)


class _HotReads:
    """Each thread's own PostgreSQL connection for `driver_fetch_one` on an Engine (the per-request SELECTs).

    A pooled connection cost ~35 µs CPU per SELECT on top of the query: the pool's checkout and checkin, autocommit
    switched on and off (psycopg would otherwise send BEGIN and, at checkin, ROLLBACK: two more round trips), and a
    new cursor, whose first execute builds its type loaders again. A connection kept in autocommit with one cursor
    skips all three, and psycopg prepares the statement on the server after a few runs.

    Nothing is cached but the connection: each SELECT runs in its own snapshot, as on a pooled connection in
    autocommit. The connection is made by the engine's pool (its connect events and URL options) and detached from
    it, so it does not hold one of the pool's slots: one more connection per thread that uses it (gunicorn's
    gthread workers keep theirs), and up to _HOT_IDLE_KEPT kept for new threads when threads end. One idle for
    IDLE_PING_SECONDS is pinged first, as the pool does (`_ping_idle_connections`); one that failed is closed and
    a new one made on the next call; one made in another process (gunicorn forks its workers) is not used; all are
    closed when the engine is disposed.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        # Re-entrant: a thread's lease may be dropped (and give its connection back) wherever that thread ends.
        self._lock = threading.RLock()
        self._open: set[_HotConnection] = set()  # every connection made and not closed: leased or idle
        self._idle: list[_HotConnection] = []  # given back by threads that ended
        self._generation = 0  # bumped by Engine.dispose: connections of an older one are closed

    def fetch_one(self, engine: Engine, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        dialect = engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        lease = self._lease()
        hot = self._connection(engine, lease, dbapi_error)
        try:
            hot.cursor.execute(sql, params)
            row = hot.cursor.fetchone()
        except dbapi_error as exc:
            # Translated as SQLAlchemy would (a lost database is a clean 503); the connection is not used again.
            disconnect = dialect.is_disconnect(exc, hot.driver, None)
            lease.hot = None
            self._close(hot)
            raise DBAPIError.instance(sql, params, exc, dbapi_error, connection_invalidated=disconnect,
                                      dialect=dialect) from exc
        hot.used_at = time.monotonic()
        return None if row is None else tuple(row)

    def _lease(self) -> _Lease:
        lease: _Lease | None = getattr(self._local, "lease", None)
        if lease is None:
            lease = self._local.lease = _Lease(self)
        return lease

    def _connection(self, engine: Engine, lease: _Lease, dbapi_error: type[Exception]) -> _HotConnection:
        hot = lease.hot
        if hot is None:
            with self._lock:
                hot = self._idle.pop() if self._idle else None
        if hot is not None:
            if hot.pid != os.getpid():
                _INHERITED.append(hot)
                hot = None
            elif hot.generation != self._generation:
                self._close(hot)
                hot = None
            elif time.monotonic() - hot.used_at >= IDLE_PING_SECONDS:
                try:
                    hot.cursor.execute("SELECT 1")
                    hot.cursor.fetchone()
                except dbapi_error:  # the server restarted, or the connection was dropped: a new one
                    self._close(hot)
                    hot = None
        if hot is None:
            lease.hot = None
            proxy = _checkout(engine)
            try:
                driver = proxy.driver_connection
                proxy.detach()
                hot = _HotConnection(proxy, driver, self._generation)
            except BaseException:
                proxy.close()
                raise
            with self._lock:
                self._open.add(hot)
        lease.hot = hot
        return hot

    def _release(self, hot: _HotConnection) -> None:
        """A thread ended: its connection waits for another thread, or is closed if enough already wait."""
        if hot.pid != os.getpid():
            _INHERITED.append(hot)
            return
        with self._lock:
            keep = hot in self._open and hot.generation == self._generation and len(self._idle) < _HOT_IDLE_KEPT
            if keep:
                self._idle.append(hot)
        if not keep:
            self._close(hot)

    def _close(self, hot: _HotConnection) -> None:
        with self._lock:
            self._open.discard(hot)
        hot.close()

    def close_all(self) -> None:
        """The engine was disposed: close every connection (each thread makes a new one when next used)."""
        with self._lock:
            self._generation += 1
            closing = [hot for hot in self._open if hot.pid == os.getpid()]
            self._open.clear()
            self._idle.clear()
        for hot in closing:
            hot.close()


_HOT_READS: weakref.WeakKeyDictionary[Engine, _HotReads] = weakref.WeakKeyDictionary()
_HOT_READS_LOCK = threading.Lock()


def _hot_reads(engine: Engine) -> _HotReads:
    found = _HOT_READS.get(engine)
    if found is not None:
        return found
    with _HOT_READS_LOCK:
        found = _HOT_READS.get(engine)
        if found is None:
            found = _HOT_READS[engine] = _HotReads()
            event.listen(engine, "engine_disposed", lambda _engine: found.close_all())
    return found
