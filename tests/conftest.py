"""Shared fixtures: settings on a temporary data dir, and a per-run PostgreSQL schema."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import (  # noqa: F401  (re-exported for old imports)
    FIXTURES,
    NODE_BIN,
    ROOT,
    SESSION_LOG_ENV,
    fixture_phi,
    node_tool,
    phi_in,
)

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


@pytest.fixture()
def postgres_own_schema_url() -> Iterator[tuple[str, str]]:
    """A schema of this test's own (the session's is shared with whatever ran before in this process: a
    deployment with key files of its own must not meet another's data keys there)."""
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


# ---- the session's logs, scanned for the fixtures' PHI ---------------------------------------------------

_SESSION_LOG = pytest.StashKey[Path]()
# Under pytest-xdist (`make test` runs two workers) the controller makes the folder, each worker writes its own
# file there, and the controller scans them all at the end of the session.
_SESSION_LOG_DIR_ENV = "HEALTHLEDGER_TEST_SESSION_LOG_DIR"


class _Tee:
    """A text stream writing to the session log file and to the original stream (pytest captures that)."""

    def __init__(self, handle, echo) -> None:  # type: ignore[no-untyped-def]
        self.handle, self.echo = handle, echo

    def write(self, text: str) -> int:
        self.handle.write(text)
        self.handle.flush()
        return self.echo.write(text)

    def flush(self) -> None:
        self.handle.flush()
        self.echo.flush()


def pytest_configure(config: pytest.Config) -> None:
    """Every log line of the session (structlog, stdlib logging, servers' output that tests append) also goes
    to one file; `pytest_sessionfinish` scans it for the fixtures' PHI (names, identifiers, birth dates)."""
    import logging
    import sys
    import tempfile

    from healthledger.observability import configure_logging, stdlib_json_formatter

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    shared = os.environ.get(_SESSION_LOG_DIR_ENV, "")
    if not (worker and shared):
        shared = tempfile.mkdtemp(prefix="healthledger-test-logs-")
        os.environ[_SESSION_LOG_DIR_ENV] = shared  # inherited by the xdist workers, started after this
    path = Path(shared) / f"session-{worker or 'main'}.log"
    config.stash[_SESSION_LOG] = path
    os.environ[SESSION_LOG_ENV] = str(path)
    handle = open(path, "a")  # noqa: SIM115 (open for the whole session)
    configure_logging("json", _Tee(handle, sys.stderr), force=True)
    handler = logging.StreamHandler(handle)
    handler.setFormatter(stdlib_json_formatter())
    logging.getLogger().addHandler(handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.stash.get(_SESSION_LOG, None)
    if os.environ.get("PYTEST_XDIST_WORKER") or path is None or not path.exists() or not FIXTURES.is_dir():
        return  # a worker's file is scanned by the controller, with the others
    text = "".join(log.read_text(errors="replace") for log in sorted(path.parent.glob("session-*.log")))
    leaked = phi_in(text, fixture_phi(FIXTURES))
    lines = text.count("\n")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"session logs: {lines} lines scanned for {len(fixture_phi(FIXTURES))} fixture PHI "
                            f"values, {len(leaked)} found")
    if leaked:
        if reporter is not None:
            reporter.write_line(f"PHI in the session's logs ({path.parent}): {sorted(leaked)[:10]}", red=True)
        session.exitstatus = 1
    else:
        shutil.rmtree(path.parent, ignore_errors=True)
