"""Database engine, declarative base and schema migrations (Alembic, one branch per package)."""

from __future__ import annotations

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
    import time

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
    Connection it runs on that connection (in its transaction, if any); on an Engine, on a pooled one.
    """
    dialect = conn.dialect
    if dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("?", "%s")
    raw = conn.raw_connection() if isinstance(conn, Engine) else conn.connection
    driver = raw.driver_connection
    # On a connection of its own, no transaction (psycopg would otherwise send BEGIN first and ROLLBACK when
    # the pool takes it back: two more round trips for one SELECT). sqlite3 opens none for a SELECT anyway.
    own_autocommit = isinstance(conn, Engine) and dialect.name == "postgresql"
    if own_autocommit:
        driver.autocommit = True  # type: ignore[union-attr]
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else tuple(row)
    except dbapi_error as exc:
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
        if own_autocommit and raw.is_valid:  # (an invalidated connection has nothing to reset)
            driver.autocommit = False  # type: ignore[union-attr]
        if isinstance(conn, Engine):
            raw.close()  # back to the pool (or discarded, when invalidated)
