"""gunicorn's threaded worker, taking only its share of the connections (all workers accept on one socket).

gunicorn's workers share the listening socket and the kernel wakes whichever it likes: under a burst of
keep-alive connections (a load balancer's pool, wrk's 16) one worker often accepts them all and the service runs
on one core while the other idles. Each `BalancedThreadWorker` publishes how many connections it holds in a
table in shared memory (created in the arbiter before it forks, so every worker inherits it) and accepts only
while it holds no more than the least loaded live worker plus `ACCEPT_SLACK`; one that holds `SHED_MARGIN` more
answers a request with `Connection: close` (one at a time), and the client's reconnection goes to a worker with
fewer: that is how the first worker up hands over its share of the connections it took before the others were.

It never starves a client: a worker whose slot has not been refreshed for `FRESH_SECONDS` (stuck, or killed) or
whose process is gone is not waited for, the least loaded worker may always accept, and a worker that is
stopping leaves the table first. gunicorn's own `worker_connections` limit still applies on top.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray
from typing import Any, ClassVar

from gunicorn.workers.gthread import ThreadWorker

# A worker accepts while it holds at most this many connections more than the least loaded one.
ACCEPT_SLACK = 1
# ...and sheds one (Connection: close) while it holds at least this many more: above the most accepting leaves
# between two workers (ACCEPT_SLACK + 1), so a shed connection never comes back to the worker that shed it.
SHED_MARGIN = ACCEPT_SLACK + 2
# ...one at a time: a shed connection counts until it is closed, and its client reconnects only afterwards.
SHED_INTERVAL_SECONDS = 0.1
# A live worker refreshes its slot on every turn of its loop, at least once a second (gthread polls for 1 s).
FRESH_SECONDS = 3.0
# The arbiter gives a new worker the slot of one not heard of for this long (killed without leaving the table).
REUSE_SECONDS = 10.0
# How often a worker that stands back for its share looks again (its loop would otherwise sleep up to 1 s).
RECHECK_SECONDS = 0.05


def may_accept(own: int, others: Iterable[int], slack: int = ACCEPT_SLACK) -> bool:
    """Whether a worker holding `own` connections takes another, given what the other live workers hold.

    True when no other worker is live (never starve), so the least loaded worker always may.
    """
    least = min(others, default=None)
    return least is None or own <= least + slack


def should_shed(own: int, others: Iterable[int], margin: int = SHED_MARGIN) -> bool:
    """Whether a worker holding `own` connections closes one after its next response (another holds `margin` fewer)."""
    least = min(others, default=None)
    return least is not None and own >= least + margin


@dataclass(frozen=True)
class Slot:
    """One worker's entry: its pid, the connections it holds, when it last wrote (time.monotonic, system-wide)."""

    pid: int
    connections: int
    written_at: float


class ConnectionTable:
    """One slot per worker in shared memory (`multiprocessing.RawArray`: plain memory, inherited over fork).

    Each worker writes only its own slot, from its main thread; the arbiter only hands out slots. A reader may
    see a slot half written: the worst that does is one connection accepted or not, never a lost one.
    """

    def __init__(self, slots: int) -> None:
        self._pid = RawArray("q", slots)
        self._connections = RawArray("q", slots)
        self._written_at = RawArray("d", slots)

    def reserve(self, now: float) -> int | None:
        """(The arbiter, before a fork.) A slot for a new worker: never used, left, or silent for REUSE_SECONDS."""
        for slot, (pid, written_at) in enumerate(zip(self._pid[:], self._written_at[:], strict=True)):
            if pid == 0 or now - written_at > REUSE_SECONDS:
                self._pid[slot], self._connections[slot], self._written_at[slot] = -1, 0, now
                return slot
        return None

    def publish(self, slot: int, pid: int, connections: int, now: float) -> None:
        self._pid[slot], self._connections[slot], self._written_at[slot] = pid, connections, now

    def leave(self, slot: int, pid: int) -> None:
        """A stopping worker's slot is free at once (unless a new worker already has it)."""
        if self._pid[slot] == pid:
            self._pid[slot] = 0

    def others(self, slot: int, now: float) -> list[Slot]:
        """The live-looking workers but the one in `slot`: a pid published within FRESH_SECONDS."""
        return [
            Slot(pid, connections, written_at)
            for index, (pid, connections, written_at) in enumerate(
                zip(self._pid[:], self._connections[:], self._written_at[:], strict=True))
            if index != slot and pid > 0 and now - written_at <= FRESH_SECONDS
        ]


def process_exists(pid: int) -> bool:
    """kill(2) with signal 0: whether `pid` is still a process (a worker killed outright leaves a fresh slot)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's `gthread` worker that accepts and keeps only its share of connections (module docstring).

    gunicorn names a worker class in its settings and builds the workers in the arbiter; the class is the one
    object both see before the fork, so it holds the table (made once per arbiter, in `check_config`).
    """

    table: ClassVar[ConnectionTable | None] = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """(The arbiter, before any fork.) Twice as many slots as workers: replacements of killed ones too."""
        super().check_config(cfg, log)
        if cls.table is None:
            cls.table = ConnectionTable(max(4, 2 * int(cfg.workers)))

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # in the arbiter, before the fork
        super().__init__(*args, **kwargs)
        table = type(self).table
        self.slot = table.reserve(time.monotonic()) if table is not None else None
        self._shed_at = 0.0

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._leave()

    def set_accept_enabled(self, enabled: bool) -> None:
        """gunicorn's loop asks to accept whenever the worker is under `worker_connections`; add the share."""
        super().set_accept_enabled(enabled and self._may_accept())

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Each turn of gunicorn's loop: publish this worker's count, look at the share again, then poll."""
        if not self.alive:
            self._leave()  # stopping: accepts no more, so no worker should wait for it
        elif self.slot is not None:
            self._publish()
            within_limit = self.nr_conns < self.worker_connections
            self.set_accept_enabled(within_limit)
            if within_limit and not self._accepting:
                timeout = min(timeout, RECHECK_SECONDS)
        super().wait_for_and_dispatch_events(timeout)

    def handle_request(self, req: Any, conn: Any) -> bool:
        """A worker holding SHED_MARGIN more connections than another answers with `Connection: close`."""
        now = time.monotonic()
        if (self.slot is not None and self.alive and now - self._shed_at >= SHED_INTERVAL_SECONDS
                and should_shed(self.nr_conns, self._live_counts(check_processes=False))
                and should_shed(self.nr_conns, self._live_counts())):
            self._shed_at = now
            req.must_close = True
        result: bool = super().handle_request(req, conn)
        return result

    def _may_accept(self) -> bool:
        if self.slot is None or not self.alive:
            return True  # no table (or stopping: gunicorn turns accepting off itself)
        if may_accept(self.nr_conns, self._live_counts(check_processes=False)):
            return True
        # About to stand back: only for workers whose process still exists.
        return may_accept(self.nr_conns, self._live_counts())

    def _live_counts(self, *, check_processes: bool = True) -> list[int]:
        table, slot = type(self).table, self.slot
        assert table is not None and slot is not None
        return [other.connections for other in table.others(slot, time.monotonic())
                if not check_processes or process_exists(other.pid)]

    def _publish(self) -> None:
        table = type(self).table
        if table is not None and self.slot is not None:
            table.publish(self.slot, os.getpid(), self.nr_conns, time.monotonic())

    def _leave(self) -> None:
        table = type(self).table
        if table is not None and self.slot is not None:
            table.leave(self.slot, os.getpid())
