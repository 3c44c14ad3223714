"""The ledger worker's heartbeat: a file whose modification time the worker sets at every pass of its loop.

A liveness probe reads only the file's age (`healthledger relay alive`): no database, no chain, no start-up work.
So a worker whose loop is stuck (a call that never returns) is restarted once the file is older than the bound,
while a worker that keeps looping through a database or chain outage is left alone: its passes fail and say so,
and restarting it would not bring the database back.
"""

from __future__ import annotations

import os
from pathlib import Path

HEARTBEAT_ENV = "HEALTHLEDGER_WORKER_HEARTBEAT"  # the file, for both `relay work` and `relay alive`
DEFAULT_MAX_AGE_SECONDS = 120.0


def beat(path: Path, now: float) -> None:
    """Set the heartbeat to `now` (the file is created empty, 0600, if absent; it holds nothing)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    os.utime(path, (now, now))


def age(path: Path, now: float) -> float | None:
    """Seconds since the last beat, or None if the worker never beat (no file)."""
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None
