"""Group commit of access-log entries: many requests' entries made durable by one transaction.

A read may answer only once its access-log entries are committed. Committing each request's entries on
its own costs a transaction (and on PostgreSQL a WAL flush) per request; here the requests that arrive
while a commit is under way wait together, and the next commit carries all of them (leader/follower, as
databases group their own WAL flushes):

1. a request queues its entries; if no commit is under way, it becomes the leader;
2. the leader takes everything queued (its own entries first come first), appends it in one INSERT, and
   commits; every request of that group is then told the outcome, together;
3. a request returns only when its group committed; if the group's transaction failed (or the process
   dies in it) no request of the group returns normally: each raises `AccessLogWriteFailed`, so no
   response goes out for an entry that is not durable, and a failed group fails every request in it.

No thread of its own: the leader is a request thread, so nothing is left running across a fork or at exit.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from sqlalchemy import Connection, Engine

from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import DEFAULT_LOG, commit_accesses_on_driver, record_accesses
from healthledger.errors import HealthLedgerError

# One group's entries at most (the rest wait for the next group): bounds the INSERT and the wait.
MAX_GROUP_ENTRIES = 2_000


class AccessLogWriteFailed(HealthLedgerError):
    """The access log could not record an access: nothing about it is returned (fail closed)."""

    status = 503
    code = "transient"

    def __init__(self) -> None:
        super().__init__("the access log could not record this request, so nothing is returned; retry the request")


class WriterTurn:
    """Leaders of the worker processes sharing one SQLite file take turns at writing through an OS file lock.

    SQLite lets one writer in at a time; the others wait in its busy handler, which sleeps 1, 2, 5, 10 ... 100 ms
    between tries, so a leader that could have written at once often wakes milliseconds late (the latency of
    every read in its group) and its group stays small. A leader waiting on `flock` instead is woken the moment
    the lock is released, and every read that arrives meanwhile joins its group. PostgreSQL, whose writers do
    not exclude one another, needs no turn (`for_engine` gives a no-op there, and for in-memory databases).
    The lock file is opened once per process (a descriptor inherited across gunicorn's fork would be one lock
    shared by both processes), and one turn is kept per file (`for_engine`), so a long-running process holds one
    descriptor. It orders processes only: threads of one process are ordered by their group commit's leader, and
    SQLite's own lock stays the authority either way.
    """

    _kept: ClassVar[dict[Path, WriterTurn]] = {}
    _opening: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    @classmethod
    def for_engine(cls, engine: Engine) -> WriterTurn:
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:" or database.startswith("file:"):
            return cls(None)
        path = Path(f"{database}-access-log.lock")
        with cls._opening:
            return cls._kept.setdefault(path, cls(path))

    def __enter__(self) -> None:
        if self.path is None:
            return
        with self._opening:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        if self.path is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


@dataclass(eq=False)
class _Waiting:
    entries: Sequence[AccessEntry]
    done: bool = False
    failed: BaseException | None = None


@dataclass
class GroupStats:
    """Counts for tests and metrics: groups committed, requests and entries in them, groups failed."""

    groups: int = 0
    requests: int = 0
    entries: int = 0
    failed_groups: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # requests per group -> how many groups


class GroupCommitLog:
    """Appends access-log entries for concurrent callers, one transaction per group of waiting callers."""

    def __init__(
        self,
        engine: Engine,
        *,
        log_id: str = DEFAULT_LOG,
        write: Callable[[Connection, list[AccessEntry]], None] | None = None,
    ) -> None:
        """`write(conn, entries)` appends a group in the open transaction (default: `record_accesses`);
        tests hand in one that fails or dies mid-group."""
        self._engine = engine
        self._log_id = log_id
        self._custom_write = write is not None
        self._write = write or (lambda conn, entries: record_accesses(conn, entries, log_id=log_id))
        self._cond = threading.Condition()
        self._turn = WriterTurn.for_engine(engine)
        self._queue: list[_Waiting] = []
        self._leading = False
        self.stats = GroupStats()

    def append(self, entries: Sequence[AccessEntry], *, conn: Connection | None = None) -> None:
        """Return once `entries` are committed; raise AccessLogWriteFailed if their group's commit failed.

        `conn`: a connection the caller holds (a read's, whose transaction only read): a leader writes its
        group on it, in that transaction, instead of checking out another.
        """
        if not entries:
            return
        mine = _Waiting(entries)
        with self._cond:
            self._queue.append(mine)
        while True:
            with self._cond:
                while self._leading and not mine.done:
                    self._cond.wait()
                if mine.done:
                    break
                self._leading = True  # no commit under way and ours is queued: lead the next group
            with self._turn:  # (SQLite) the other workers' leaders go first; what arrives meanwhile joins us
                with self._cond:
                    group = self._take_group()
                self._lead(group, conn)  # a group full before ours is reached: then lead again, or follow
        if mine.failed is not None:
            raise AccessLogWriteFailed() from mine.failed

    def _take_group(self) -> list[_Waiting]:
        group: list[_Waiting] = []
        count = 0
        while self._queue and (not group or count + len(self._queue[0].entries) <= MAX_GROUP_ENTRIES):
            waiting = self._queue.pop(0)
            group.append(waiting)
            count += len(waiting.entries)
        return group

    def _lead(self, group: list[_Waiting], held: Connection | None) -> None:
        failed: BaseException | None = None
        entries = [e for waiting in group for e in waiting.entries]
        try:
            if held is None:
                with self._engine.begin() as conn:
                    self._write(conn, entries)
            elif not self._custom_write:
                commit_accesses_on_driver(held, entries, log_id=self._log_id)  # INSERT and COMMIT, rollback on error
            else:
                try:
                    self._write(held, entries)
                    held.commit()
                except BaseException:
                    held.rollback()
                    raise
        except BaseException as exc:  # noqa: BLE001 - every kind: no caller of the group may answer as if durable
            failed = exc
        with self._cond:
            for waiting in group:
                waiting.done, waiting.failed = True, failed
            self._leading = False
            self._record(group, failed)
            self._cond.notify_all()  # the group's callers return; one of the rest leads the next group
        if failed is not None and not isinstance(failed, Exception):
            raise failed  # KeyboardInterrupt, SystemExit: after the group was told

    def _record(self, group: list[_Waiting], failed: BaseException | None) -> None:
        s = self.stats
        if failed is not None:
            s.failed_groups += 1
            return
        s.groups += 1
        s.requests += len(group)
        s.entries += sum(len(w.entries) for w in group)
        s.largest = max(s.largest, len(group))
        s.sizes[len(group)] = s.sizes.get(len(group), 0) + 1
