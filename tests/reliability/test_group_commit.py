"""Group commit keeps "acknowledged => durable": no response goes out for an access-log entry that is not
committed, and a group whose commit fails (or whose process is killed in it) fails every request in it.

- threads on one process, the second group's commit failing: its callers all raise, the first group's
  all return, and the database holds exactly the entries of the callers that returned;
- a process killed with SIGKILL while a group is written (INSERT done, COMMIT not): every entry the
  process acknowledged (printed "ack" after `append` returned) is in the database, the group that was
  being written is not, and none of its entries was acknowledged;
- over the API: a read whose entries cannot be committed answers 503 with an OperationOutcome and
  nothing of the resource.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from consent_world import World, world_per_database
from sqlalchemy import Connection, select
from support import ROOT

from healthledger.audit.entries import AccessEntry, decode_entry
from healthledger.audit.group_commit import AccessLogWriteFailed, GroupCommitLog
from healthledger.audit.log import record_accesses
from healthledger.audit.models import AccessLogEntry
from healthledger.audit.spool import ingest
from healthledger.db import make_engine


def entry(caller: int) -> AccessEntry:
    return AccessEntry(time=datetime.now(UTC), actor=f"caller-{caller}", organization="Organization/h1",
                       role="system", purpose="TREAT", action="read", resource_type="Patient",
                       resource_id=f"p{caller}", patient_pseudonym="ab" * 16, decision="permit", reason="policy")


def durable_actors(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        ingest(engine)
        with engine.connect() as conn:
            return {decode_entry(body).actor for body in conn.scalars(select(AccessLogEntry.body))}
    finally:
        engine.dispose()


def test_a_failed_group_fails_every_request_in_it_and_only_those(migrated_sqlite_url: str) -> None:
    engine = make_engine(migrated_sqlite_url)
    first_group_writing, release_first = threading.Event(), threading.Event()
    groups: list[list[str]] = []

    def write(conn: Connection, entries: list[AccessEntry]) -> None:
        groups.append([e.actor for e in entries])
        record_accesses(conn, entries)  # the INSERT runs in both groups ...
        if len(groups) == 1:
            first_group_writing.set()
            assert release_first.wait(10)
        else:
            raise OSError("disk full")  # ... and the second group's transaction fails before it commits

    log = GroupCommitLog(engine, write=write)
    outcome: dict[int, str] = {}

    def caller(n: int) -> None:
        try:
            log.append([entry(n)])
            outcome[n] = "returned"
        except AccessLogWriteFailed as exc:
            assert isinstance(exc.__cause__, OSError)
            outcome[n] = "failed"

    threads = [threading.Thread(target=caller, args=(0,))]
    threads[0].start()
    assert first_group_writing.wait(10)
    threads += [threading.Thread(target=caller, args=(n,)) for n in range(1, 9)]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while len(log._queue) < 8 and time.monotonic() < deadline:  # the eight wait behind the first group
        time.sleep(0.01)
    assert len(log._queue) == 8
    release_first.set()
    for t in threads:
        t.join(10)

    assert groups == [["caller-0"], [f"caller-{n}" for n in range(1, 9)]]  # one group for the eight
    assert outcome == {0: "returned", **{n: "failed" for n in range(1, 9)}}
    assert durable_actors(migrated_sqlite_url) == {"caller-0"}  # returned <=> durable
    assert (log.stats.groups, log.stats.failed_groups) == (1, 1)
    engine.dispose()


def test_groups_share_commits_under_concurrency(migrated_sqlite_url: str) -> None:
    engine = make_engine(migrated_sqlite_url)
    log = GroupCommitLog(engine)
    threads = [threading.Thread(target=lambda n=n: [log.append([entry(n * 100 + i)]) for i in range(25)])
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert log.stats.entries == 200 == len(durable_actors(migrated_sqlite_url))
    assert log.stats.groups < 200  # some commits carried several requests' entries
    engine.dispose()


CHILD = textwrap.dedent("""
    import sys, threading, time
    from datetime import UTC, datetime
    from healthledger.audit.entries import AccessEntry
    from healthledger.audit.group_commit import GroupCommitLog
    from healthledger.audit.log import record_accesses
    from healthledger.db import make_engine

    def entry(caller):
        return AccessEntry(time=datetime.now(UTC), actor=f"caller-{{caller}}", organization="Organization/h1",
                           role="system", purpose="TREAT", action="read", resource_type="Patient",
                           resource_id=f"p{{caller}}", patient_pseudonym="ab" * 16, decision="permit", reason="policy")

    engine = make_engine({url!r})
    groups = []
    out = threading.Lock()

    def write(conn, entries):
        groups.append(entries)
        record_accesses(conn, entries)
        # In the middle of a group (INSERT done, COMMIT not yet): from the sixth on, one that several requests
        # wait on (any, past the fortieth).
        if len(groups) >= 6 and (len(entries) >= 2 or len(groups) >= 40):
            with out:
                print("mid-group " + ",".join(e.actor for e in entries), flush=True)
            time.sleep(60)  # killed here

    log = GroupCommitLog(engine, write=write)

    def caller(n):
        for i in range(50):
            log.append([entry(n * 1000 + i)])
            with out:
                print("ack caller-" + str(n * 1000 + i), flush=True)  # the response, sent after append returned

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""")


def test_a_writer_killed_mid_group_acknowledged_nothing_that_is_not_durable(migrated_sqlite_url: str,
                                                                             tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(url=migrated_sqlite_url))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    acked: set[str] = set()
    in_flight: set[str] = set()
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("ack "):
            acked.add(line.split()[1])
        elif line.startswith("mid-group "):
            in_flight = set(line.split()[1].split(","))
            os.kill(child.pid, signal.SIGKILL)
            break
    acked |= {line.split()[1] for line in child.stdout.read().splitlines() if line.startswith("ack ")}
    child.wait(10)
    assert child.returncode == -signal.SIGKILL, "the child was to be killed mid-group"

    durable = durable_actors(migrated_sqlite_url)
    assert in_flight and acked, (in_flight, acked)
    assert acked <= durable  # acknowledged => durable
    assert not in_flight & durable  # the group being written when the process died is not there ...
    assert not in_flight & acked  # ... and none of its requests was answered
    print(json.dumps({"acknowledged": len(acked), "durable": len(durable), "killed_group": len(in_flight)}))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """SQLite: a read's entries go to the spool; PostgreSQL: through the group commit."""
    yield from world_per_database(request, tmp_path_factory, "group-commit")


@pytest.mark.slow
def test_a_read_whose_entry_cannot_be_committed_answers_503_and_shows_nothing(world: World) -> None:
    path = f"/fhir/Patient/{world.patients['ann']}"
    assert world.client.get(path, headers=world.headers("ehr")).status_code == 200
    from healthledger.audit import group_commit
    from healthledger.audit.spool import AccessSpool

    real_commit = group_commit.commit_accesses_on_driver
    real_append = AccessSpool.append
    before = world.log_size()

    def failing(conn: Connection, entries: list[AccessEntry], *, log_id: str) -> None:
        if conn.dialect.name != "sqlite":
            raise OSError("the database went away")  # (PostgreSQL: the one autocommitted INSERT never arrives)
        driver = conn.connection.driver_connection
        cursor = driver.cursor()  # the INSERT is made, then the COMMIT fails
        cursor.executemany("INSERT INTO access_log (log_id, body, recorded_at, patient_pseudonym) VALUES (?, ?, ?, ?)",
                           [(log_id, b"{}", "2026-01-01 00:00:00.000000", None) for _ in entries])
        driver.rollback()
        raise OSError("the database went away")

    def full_disk(self: AccessSpool, entries: list[AccessEntry], *, log_id: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # (SQLite) the spool file cannot take the lines

    group_commit.commit_accesses_on_driver = failing  # type: ignore[assignment]
    AccessSpool.append = full_disk  # type: ignore[method-assign]
    try:
        response = world.client.get(path, headers=world.headers("ehr"))
        search = world.client.get(f"/fhir/Observation?patient={world.patients['ann']}", headers=world.headers("ehr"))
    finally:
        group_commit.commit_accesses_on_driver = real_commit
        AccessSpool.append = real_append  # type: ignore[method-assign]
    assert world.log_size() == before  # the failed reads' entries are not stored
    for failed in (response, search):
        assert failed.status_code == 503, failed.get_data(as_text=True)
        body = failed.get_json()
        assert body["resourceType"] == "OperationOutcome" and "access log" in json.dumps(body)
        assert "Testperson" not in failed.get_data(as_text=True) and "4548-4" not in failed.get_data(as_text=True)
    assert world.client.get(path, headers=world.headers("ehr")).status_code == 200


def test_leaders_of_processes_sharing_a_sqlite_file_take_turns(migrated_sqlite_url: str, tmp_path: Path) -> None:
    """WriterTurn: a leader holds the file lock from taking its group to its COMMIT; a leader in another process
    (a gunicorn worker forked from the same parent) waits for it. Each process opens its own descriptor."""
    from healthledger.audit.group_commit import WriterTurn

    engine = make_engine(migrated_sqlite_url)
    turn = WriterTurn.for_engine(engine)
    assert turn.path is not None and turn.path.name.endswith("-access-log.lock")
    assert WriterTurn.for_engine(make_engine("sqlite://")).path is None  # in memory: one process
    marks = tmp_path / "marks"
    with turn:  # opened in this process before the fork, as the app is before gunicorn forks its workers
        pass
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the marks file and exits
        try:
            time.sleep(0.05)
            with turn, open(marks, "a") as out:
                out.write(f"child {time.monotonic()}\n")
        finally:
            os._exit(0)
    with turn:
        with open(marks, "a") as out:
            out.write(f"parent-in {time.monotonic()}\n")
        time.sleep(0.4)  # the child is waiting now
        with open(marks, "a") as out:
            out.write(f"parent-out {time.monotonic()}\n")
    os.waitpid(child, 0)
    order = [line.split()[0] for line in marks.read_text().splitlines()]
    assert order == ["parent-in", "parent-out", "child"]  # the child's turn came only after the parent's
    engine.dispose()
