"""The access-log spool: on SQLite, reads append their entries to a file of their own process before answering.

A read may answer only once its access-log entries are durable. On SQLite, committing them costs a write
transaction per read (or per group of reads, healthledger.audit.group_commit): the one write lock of the
database taken in turn by every worker process, the WAL frames of four B-trees written, and every other
connection's page cache emptied by the change, so that the reads after it start cold. That was most of what
consent enforcement cost a read.

Here a read appends its entries to its worker process's spool file instead, in one `write` of whole lines,
before it answers. This is as durable as the commit it replaces: the service runs SQLite with
`synchronous=NORMAL` (healthledger.db), so a committed transaction is in the WAL file in the operating
system's cache, not yet on disk; a spool line written before the answer is in the spool file in that same
cache. Both survive the process being killed at any point after the answer; neither a power cut before
the next checkpoint. A write that fails (a full disk) fails the read: `AccessLogWriteFailed`, nothing
returned.

The lines are moved into `access_log` in batches by `ingest` (the ledger worker on each pass, and first
thing wherever the log is read: AuditEvent reads and searches, the sequencer, proofs, verification,
backups), each batch in one transaction together with how far it has moved each file
(`access_spool_marks`), so every line is moved exactly once whoever moves it and whenever it is
interrupted. A file whose writer is gone (its process ended, or it turned to a new file) and that has been
moved to its end is deleted.

Files live in `<database file>-access-spool/`, beside the database, private to the service (0700/0600).
Each writer holds a shared `flock` on its current file while it may still write to it, so `ingest` can tell
a finished file by taking the lock itself, whatever process id namespace the writer had. PostgreSQL, the
multi-replica database whose replicas may keep no disk of their own, keeps the group commit.

A line: `log_id` TAB the entry's canonical encoding (healthledger.audit.entries: ASCII JSON, so no raw tab
or newline) LF; the `recorded_at` and `patient_pseudonym` columns are read from the encoding when the line is
moved, so they agree with it. A line that is not one (which `append` never writes: a torn write is cut back
off its file) is set aside in `malformed.lines` in the folder, logged without its content, and not moved. A
line without its LF (a writer killed inside `write`, which never answered) is never moved.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from healthledger.audit.entries import ENCODING_VERSION, TIME_FORMAT, AccessEntry, encode_entry
from healthledger.audit.log import SQLITE_INSERT, sqlite_time

SPOOL_SUFFIX = ".spool"
# A writer turns to a new file past this size, so a finished file can be deleted once moved.
ROTATE_BYTES = 16 * 1024 * 1024
# Rows moved per transaction at most (the rest in the next one, in the same `ingest`).
INGEST_BATCH_BYTES = 1024 * 1024  # ~2,400 entries, ~20 ms of the write lock

_MARKS = "SELECT name, moved_bytes FROM access_spool_marks"
_UPSERT_MARK = (
    "INSERT INTO access_spool_marks (name, moved_bytes) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET moved_bytes = excluded.moved_bytes"
)
_DELETE_MARK = "DELETE FROM access_spool_marks WHERE name = ?"


def _database_file(engine: Engine) -> Path | None:
    """A SQLite database's file, absolute (SQLite opens a relative path from the working directory: every process
    that opens this file, wherever it was started, finds the same spool); None for PostgreSQL and in memory."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def spool_dir(engine: Engine) -> Path | None:
    """The spool directory of a SQLite database file; None for PostgreSQL and in-memory databases."""
    database = _database_file(engine)
    return None if database is None else Path(f"{database}-access-spool")


def spool_lines(entries: Sequence[AccessEntry], log_id: str) -> bytes:
    prefix = log_id.encode() + b"\t"
    return b"".join(prefix + encode_entry(entry) + b"\n" for entry in entries)


class AccessSpool:
    """The spool files of one database written by this process: `append` is durable when it returns."""

    _kept: ClassVar[dict[Path, AccessSpool]] = {}
    _opening: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, directory: Path, *, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._size = 0
        self._serial = 0

    @classmethod
    def for_engine(cls, engine: Engine) -> AccessSpool | None:
        """The one spool of this database in this process (None where the database has none: PostgreSQL)."""
        directory = spool_dir(engine)
        if directory is None:
            return None
        with cls._opening:
            return cls._kept.setdefault(directory, cls(directory))

    def append(self, entries: Sequence[AccessEntry], *, log_id: str) -> None:
        """Write `entries` as whole lines to this process's file, in one write; OSError if they could not be.

        A write that fails part of the way (a full disk, a quota) is cut back off the file, and the file is left
        for a new one: the next read's lines never follow a torn one.
        """
        data = spool_lines(entries, log_id)
        if not data:
            return
        with self._lock:
            fd = self._file()
            view = memoryview(data)
            try:
                while view:  # a regular file takes it whole; a short write is continued, not dropped
                    written = os.write(fd, view)
                    view = view[written:]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)  # (if even that fails: a torn last line, never moved)
                self._close()
                raise
            self._size += len(data)
            if self._size >= self.rotate_bytes:
                self._close()

    def _file(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        # First write in this process (or a forked child's: the parent's descriptor, and its lock, stay the
        # parent's): a new file of its own.
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._serial += 1
        name = f"{os.getpid()}-{time.time_ns()}-{self._serial}"
        # Locked under a name `ingest` does not look at, then renamed: seen unlocked, a file is finished.
        fresh = self.directory / f"{name}.new"
        fd = os.open(fresh, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while this process may write here: `ingest` may not delete it
            os.rename(fresh, self.directory / f"{name}{SPOOL_SUFFIX}")
        except OSError:
            os.close(fd)
            fresh.unlink(missing_ok=True)
            raise
        self._fd, self._pid, self._size = fd, os.getpid(), 0
        return fd

    def _close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)  # releases the lock: once moved to its end, the file may go
        self._fd = None


@contextmanager
def _ingesting(directory: Path) -> Iterator[None]:
    """One mover at a time per database (the others wait): two would only fail each other's transaction."""
    fd = os.open(directory / "ingest.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _finished(path: Path) -> bool:
    """Whether no process may write to `path` any more (no writer holds its lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (releases the lock taken, if it was)
    return True


def pending(engine: Engine) -> bool:
    """Whether any spool file of this database holds lines not yet in `access_log` (no lock, no write)."""
    directory = spool_dir(engine)
    if directory is None or not directory.is_dir():
        return False
    files = {p.name: p.stat().st_size for p in directory.glob(f"*{SPOOL_SUFFIX}")}
    if not files:
        return False
    raw = engine.raw_connection()
    try:
        marks = dict(raw.driver_connection.execute(_MARKS).fetchall())  # type: ignore[union-attr]
    finally:
        raw.close()
    return any(size > marks.get(name, 0) for name, size in files.items())


def ingest(engine: Engine) -> int:
    """Move every whole spooled line of this database into `access_log`; returns how many were moved.

    Lines go in file order, each file's in the order written; the leaf order of the Merkle tree follows.
    Idempotent and safe to run from any process at any time; a no-op on PostgreSQL. A database error is raised
    as SQLAlchemy's (OperationalError and friends: a 503 at the API, a pass to retry for the ledger worker).
    """
    directory = spool_dir(engine)
    if directory is None or not directory.is_dir():
        return 0
    dbapi_error = engine.dialect.loaded_dbapi.Error
    with _ingesting(directory):
        raw = engine.raw_connection()
        try:
            return _move(directory, raw.driver_connection, engine)
        except dbapi_error as exc:
            raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=engine.dialect) from exc
        finally:
            raw.close()


def _move(directory: Path, driver: Any, engine: Engine) -> int:
    moved = 0
    marks = dict(driver.execute(_MARKS).fetchall())
    done: list[str] = []
    for path in sorted(directory.glob(f"*{SPOOL_SUFFIX}"), key=_file_order):
        finished = _finished(path)  # before reading: a writer may add lines until then
        start = marks.get(path.name, 0)
        while True:
            batch = _read_lines(path, start)
            if batch.end == start:
                break
            if batch.malformed:
                _set_aside(directory, path.name, start, batch.malformed)
            try:
                cursor = driver.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                cursor.executemany(SQLITE_INSERT, batch.rows)
                cursor.execute(_UPSERT_MARK, (path.name, batch.end))
                cursor.close()
                driver.commit()
            except BaseException:
                driver.rollback()
                raise
            moved += len(batch.rows)
            start = batch.end
        if finished:
            done.append(path.name)
    if done:
        # A finished file moved to its end (a partial last line, never answered for, is dropped with it). Its rows
        # were committed with synchronous=NORMAL: made durable first (the file's lines may be hours old, long on
        # disk, and a power cut must not find them gone from both). Then the file goes, durably, and then its
        # mark: a mark without its file is harmless, a file without its mark would be moved again.
        _sync_database(engine)
        for name in done:
            (directory / name).unlink(missing_ok=True)
        _sync_path(directory)
        for name in done:
            driver.execute(_DELETE_MARK, (name,))
        driver.commit()
    return moved


def _sync_database(engine: Engine) -> None:
    database = _database_file(engine)
    assert database is not None  # (a spool exists only beside a database file)
    for path in (database, Path(f"{database}-wal")):
        if path.exists():
            _sync_path(path)


def _sync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_order(path: Path) -> tuple[int, int]:
    parts = path.name.removesuffix(SPOOL_SUFFIX).split("-")
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return 0, 0


@dataclass
class _Batch:
    rows: list[tuple[str, bytes, str, str | None]] = field(default_factory=list)
    malformed: list[bytes] = field(default_factory=list)
    end: int = 0


_LOG_ID = re.compile(rb"[A-Za-z0-9_.:-]{1,32}")
_MALFORMED_KEPT = 64 * 1024  # bytes of one malformed line set aside, at most


def _read_lines(path: Path, start: int) -> _Batch:
    """The whole lines of `path` from byte `start` (a batch's worth at most), as rows, and where they end."""
    batch = _Batch(end=start)
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(INGEST_BATCH_BYTES)
            whole = data.rfind(b"\n") + 1
            if whole == 0 and len(data) == INGEST_BATCH_BYTES:
                # No line end in a whole batch: not a line append writes. Set aside up to the next line end.
                skipped = len(data)
                while chunk := f.read(INGEST_BATCH_BYTES):
                    if (at := chunk.find(b"\n")) >= 0:
                        batch.malformed.append(data[:_MALFORMED_KEPT])
                        batch.end = start + skipped + at + 1
                        return batch
                    skipped += len(chunk)
                return batch  # its end not written yet (or never will be: dropped with its file)
    except FileNotFoundError:
        return batch
    for line in data[:whole].split(b"\n")[:-1]:
        row = _row_of(line)
        if row is None:
            batch.malformed.append(line[:_MALFORMED_KEPT])
        else:
            batch.rows.append(row)
    batch.end = start + whole
    return batch


def _row_of(line: bytes) -> tuple[str, bytes, str, str | None] | None:
    """The access_log row of a spool line, its columns read from the entry's encoding; None if it is not one."""
    log_id, tab, body = line.partition(b"\t")
    if not tab or not _LOG_ID.fullmatch(log_id):
        return None
    try:
        fields = orjson.loads(body)
        if not isinstance(fields, dict) or fields.get("v") != ENCODING_VERSION:
            return None
        moment = datetime.strptime(fields["time"], TIME_FORMAT).replace(tzinfo=UTC)
        pseudonym = fields["patient_pseudonym"]
        if not isinstance(pseudonym, str):
            return None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return log_id.decode(), body, sqlite_time(moment), pseudonym or None


def _set_aside(directory: Path, name: str, offset: int, lines: list[bytes]) -> None:
    """Keep malformed lines for whoever investigates (beside the spool, private), and say so without their content."""
    import structlog

    fd = os.open(directory / "malformed.lines", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"".join(f"{name}@{offset}\t".encode() + line + b"\n" for line in lines))
    finally:
        os.close(fd)
    structlog.get_logger("healthledger.audit.spool").warning(
        "audit.spool_malformed_lines", file=name, offset=offset, lines=len(lines))
