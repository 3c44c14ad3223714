"""The access-log spool (healthledger.audit.spool): reads' entries written to a file of their process, moved into
`access_log` exactly once, never lost once `append` returned, and finished files deleted only when moved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from healthledger.audit import spool as spool_module
from healthledger.audit.entries import AccessEntry, decode_entry, encode_entry
from healthledger.audit.log import verify_log
from healthledger.audit.models import AccessLogEntry, AccessSpoolMark
from healthledger.audit.spool import SPOOL_SUFFIX, AccessSpool, ingest, pending, spool_dir, spool_lines
from healthledger.db import make_engine
from healthledger.errors import HealthLedgerError

ROOT = Path(__file__).resolve().parents[2]


def entry(n: int, *, pseudonym: str = "ab" * 32) -> AccessEntry:
    return AccessEntry(time=datetime.now(UTC), actor=f"client:c{n}", organization="Organization/h1", role="system",
                       purpose="TREAT", action="read", resource_type="Patient", resource_id=f"p{n}",
                       patient_pseudonym=pseudonym, decision="permit", reason="policy")


def stored(engine: object) -> list[tuple[bytes, str | None, datetime]]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(AccessLogEntry.body, AccessLogEntry.patient_pseudonym, AccessLogEntry.recorded_at)
            .order_by(AccessLogEntry.id))]


def database_and_spool(url: str) -> tuple[Engine, Path]:
    engine = make_engine(url)
    directory = spool_dir(engine)
    assert directory is not None  # a database file: it has a spool folder
    return engine, directory


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SPOOL_SUFFIX}"))


def test_appended_entries_are_moved_once_with_their_columns(migrated_sqlite_url: str) -> None:
    engine = make_engine(migrated_sqlite_url)
    spool = AccessSpool(spool_dir(engine))  # type: ignore[arg-type]
    entries = [entry(1), entry(2, pseudonym=""), entry(3)]
    spool.append(entries[:2], log_id="access")
    spool.append(entries[2:], log_id="access")
    assert stored(engine) == [] and pending(engine)
    assert ingest(engine) == 3
    rows = stored(engine)
    assert [decode_entry(body) for body, _, _ in rows] == entries
    assert [body for body, _, _ in rows] == [encode_entry(e) for e in entries]
    assert [p for _, p, _ in rows] == ["ab" * 32, None, "ab" * 32]  # no patient: NULL, as record_accesses stores it
    assert [t.replace(tzinfo=UTC) for _, _, t in rows] == [e.time for e in entries]
    assert ingest(engine) == 0 and len(stored(engine)) == 3 and not pending(engine)  # moved once
    spool.append([entry(4)], log_id="access")
    assert ingest(engine) == 1 and len(stored(engine)) == 4
    with Session(engine) as session:
        assert verify_log(session, []).ok  # the columns agree with the bodies


def test_files_are_private_and_a_live_writers_file_stays(migrated_sqlite_url: str) -> None:
    engine, directory = database_and_spool(migrated_sqlite_url)
    spool = AccessSpool(directory)
    spool.append([entry(1)], log_id="access")
    ingest(engine)
    [path] = spool_files(directory)
    assert (directory.stat().st_mode & 0o777) == 0o700 and (path.stat().st_mode & 0o777) == 0o600
    spool.append([entry(2)], log_id="access")  # still written to: the same file, kept
    assert ingest(engine) == 1 and spool_files(directory) == [path]


def test_a_rotated_file_is_deleted_once_moved_and_not_before(migrated_sqlite_url: str) -> None:
    engine, directory = database_and_spool(migrated_sqlite_url)
    spool = AccessSpool(directory, rotate_bytes=1)  # every append closes its file
    spool.append([entry(1)], log_id="access")
    spool.append([entry(2)], log_id="access")
    assert len(spool_files(directory)) == 2  # finished, not moved yet: kept
    assert ingest(engine) == 2
    assert spool_files(directory) == []
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(AccessSpoolMark)) == 0  # marks go with their files
    assert [decode_entry(b).resource_id for b, _, _ in stored(engine)] == ["p1", "p2"]  # in the order written


def test_a_line_without_its_end_is_never_moved_and_goes_with_its_finished_file(migrated_sqlite_url: str) -> None:
    engine, directory = database_and_spool(migrated_sqlite_url)
    directory.mkdir(mode=0o700)
    whole = spool_lines([entry(1)], "access")
    torn = spool_lines([entry(2)], "access")[:40]  # a writer killed inside its write: never answered
    path = directory / f"1-1-1{SPOOL_SUFFIX}"
    path.write_bytes(whole + torn)  # no writer holds it: finished
    assert ingest(engine) == 1
    assert [decode_entry(b).resource_id for b, _, _ in stored(engine)] == ["p1"]
    assert not path.exists()


def test_a_file_larger_than_a_batch_is_moved_in_several_transactions(migrated_sqlite_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(migrated_sqlite_url)
    one = len(spool_lines([entry(1)], "access"))
    monkeypatch.setattr(spool_module, "INGEST_BATCH_BYTES", one * 3 + 5)
    spool = AccessSpool(spool_dir(engine))  # type: ignore[arg-type]
    spool.append([entry(n) for n in range(10)], log_id="access")
    assert ingest(engine) == 10
    assert [decode_entry(b).resource_id for b, _, _ in stored(engine)] == [f"p{n}" for n in range(10)]
    monkeypatch.setattr(spool_module, "INGEST_BATCH_BYTES", one // 3)
    spool.append([entry(11), entry(12)], log_id="access")  # lines no batch can hold: set aside, the rest goes on
    assert ingest(engine) == 0
    directory = spool_dir(engine)
    assert directory is not None and (directory / "malformed.lines").read_bytes().count(b"\n") == 2


WRITER = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime
    from healthledger.audit.entries import AccessEntry
    from healthledger.audit.spool import AccessSpool
    from healthledger.db import make_engine

    spool = AccessSpool.for_engine(make_engine(sys.argv[1]))
    for n in range(int(sys.argv[2])):
        spool.append([AccessEntry(time=datetime.now(UTC), actor="client:killed", organization="", role="system",
                                  purpose="TREAT", action="read", resource_type="Patient", resource_id=f"k{n}",
                                  patient_pseudonym="", decision="permit", reason="policy")], log_id="access")
    print("appended", flush=True)  # what a read does before it answers
    time.sleep(120)
""")


def test_entries_appended_before_the_writer_is_killed_are_moved(migrated_sqlite_url: str) -> None:
    engine = make_engine(migrated_sqlite_url)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, migrated_sqlite_url, "50"], stdout=subprocess.PIPE,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"appended"
        directory = spool_dir(engine)
        assert directory is not None
        assert ingest(engine) == 50 and len(spool_files(directory)) == 1  # alive: its file stays
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    assert ingest(engine) == 0 and spool_files(directory) == []  # dead: its lock is gone, and so is its file
    assert sorted(decode_entry(b).resource_id for b, _, _ in stored(engine)) == sorted(f"k{n}" for n in range(50))


def test_concurrent_writers_and_movers_move_every_line_exactly_once(migrated_sqlite_url: str) -> None:
    engine = make_engine(migrated_sqlite_url)
    spool = AccessSpool(spool_dir(engine), rotate_bytes=20_000)  # type: ignore[arg-type]  # rotates as it goes
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        for n in range(300):
            spool.append([entry(thread * 1000 + n)], log_id="access")

    def move() -> None:
        other = make_engine(migrated_sqlite_url)  # a mover with its own engine, as another process has
        try:
            while not stop.is_set():
                ingest(other)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            other.dispose()

    movers = [threading.Thread(target=move) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(t,)) for t in range(3)]
    for t in movers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in movers:
        t.join()
    assert not errors
    ingest(engine)
    ids = [decode_entry(b).resource_id for b, _, _ in stored(engine)]
    assert sorted(ids) == sorted(f"p{t * 1000 + n}" for t in range(3) for n in range(300))  # none lost, none twice


def test_a_forked_child_writes_a_file_of_its_own(migrated_sqlite_url: str) -> None:
    engine, directory = database_and_spool(migrated_sqlite_url)
    spool = AccessSpool(directory)
    spool.append([entry(1)], log_id="access")
    pid = os.fork()
    if pid == 0:  # the child: as a gunicorn worker forked after the parent wrote
        try:
            spool.append([entry(2)], log_id="access")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    files = spool_files(directory)
    assert len(files) == 2 and {f.name.split("-")[0] for f in files} == {str(os.getpid()), str(pid)}
    assert ingest(engine) == 2
    assert len(spool_files(directory)) == 1  # the child's, finished, is gone; the parent's, open, stays


def test_postgresql_and_memory_databases_have_no_spool() -> None:
    assert spool_dir(make_engine("sqlite://")) is None
    assert AccessSpool.for_engine(make_engine("sqlite://")) is None
    assert spool_dir(make_engine("postgresql://postgres@127.0.0.1:5432/test")) is None  # (no connection made)


def test_a_write_that_fails_is_an_error_the_read_turns_into_503(tmp_path: Path) -> None:
    from healthledger.audit.group_commit import AccessLogWriteFailed

    spool = AccessSpool(tmp_path / "not-a-dir")
    (tmp_path / "not-a-dir").write_text("a file where the folder should be")
    with pytest.raises(OSError):
        spool.append([entry(1)], log_id="access")
    assert issubclass(AccessLogWriteFailed, HealthLedgerError) and AccessLogWriteFailed.status == 503


texts = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(actor=texts, organization=texts, resource_id=texts, reason=texts, purpose=texts,
       pseudonym=st.sampled_from(["", "ab" * 32, "0f" * 32]))
def test_any_entry_round_trips_through_a_spool_line(tmp_path_factory: pytest.TempPathFactory, actor: str,
                                                    organization: str, resource_id: str, reason: str, purpose: str,
                                                    pseudonym: str) -> None:
    e = AccessEntry(time=datetime.now(UTC), actor=actor, organization=organization, role="system", purpose=purpose,
                    action="read", resource_type="Patient", resource_id=resource_id, patient_pseudonym=pseudonym,
                    decision="deny", reason=reason)
    line = spool_lines([e], "access")
    assert line.count(b"\n") == 1 and line.endswith(b"\n") and line.count(b"\t") == 1  # no raw separators in it
    path = tmp_path_factory.mktemp("line") / f"1-1-1{SPOOL_SUFFIX}"
    path.write_bytes(line * 2)
    batch = spool_module._read_lines(path, 0)
    assert batch.end == 2 * len(line) and not batch.malformed
    assert [decode_entry(body) for _, body, _, _ in batch.rows] == [e, e]
    assert [p for _, _, _, p in batch.rows] == [pseudonym or None] * 2


def test_a_relative_database_path_finds_the_same_folder(migrated_sqlite_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = Path(migrated_sqlite_url.removeprefix("sqlite:///"))
    monkeypatch.chdir(absolute.parent)
    relative = make_engine(f"sqlite:///{absolute.name}")  # e.g. the CLI started in the data folder
    assert spool_dir(relative) == spool_dir(make_engine(migrated_sqlite_url)) == Path(f"{absolute}-access-spool")
    AccessSpool.for_engine(relative).append([entry(1)], log_id="access")  # type: ignore[union-attr]
    assert ingest(make_engine(migrated_sqlite_url)) == 1


def test_malformed_lines_are_set_aside_and_the_rest_moved(migrated_sqlite_url: str) -> None:
    engine, directory = database_and_spool(migrated_sqlite_url)
    directory.mkdir(mode=0o700)
    good = spool_lines([entry(1)], "access")
    bad = [b"no tab here\n", b"access\t{not json\n", b"acc ess\t{}\n", b"access\t{\"v\": 9}\n",
           spool_lines([entry(2)], "access")[:30] + b"\n"]  # a torn line followed by a line end
    (directory / f"1-1-1{SPOOL_SUFFIX}").write_bytes(good + b"".join(bad) + spool_lines([entry(3)], "access"))
    assert ingest(engine) == 2  # no exception: a reader of the log is not stopped by one bad line
    assert [decode_entry(b).resource_id for b, _, _ in stored(engine)] == ["p1", "p3"]
    kept = (directory / "malformed.lines").read_bytes()
    assert kept.count(b"\n") == len(bad) and (directory / "malformed.lines").stat().st_mode & 0o777 == 0o600


TORN = textwrap.dedent("""
    import resource, signal, sys
    from datetime import UTC, datetime
    from healthledger.audit.entries import AccessEntry
    from healthledger.audit.spool import AccessSpool, spool_dir
    from healthledger.db import make_engine

    def entry(n):
        return AccessEntry(time=datetime.now(UTC), actor="client:x", organization="", role="system", purpose="TREAT",
                           action="read", resource_type="Patient", resource_id=f"t{n}", patient_pseudonym="",
                           decision="permit", reason="policy")

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG instead
    spool = AccessSpool(spool_dir(make_engine(sys.argv[1])))
    spool.append([entry(1)], log_id="access")
    resource.setrlimit(resource.RLIMIT_FSIZE, (spool._size + 150, resource.RLIM_INFINITY))
    try:
        spool.append([entry(n) for n in range(2, 40)], log_id="access")  # the disk fills part of the way
        print("written")
    except OSError as exc:
        print("failed", exc.errno)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    spool.append([entry(40)], log_id="access")  # the next read: a new file, after no torn line
    print("appended")
""")


def test_a_write_that_fails_part_of_the_way_is_cut_back_and_the_next_goes_to_a_new_file(
        migrated_sqlite_url: str) -> None:
    import errno

    done = subprocess.run([sys.executable, "-c", TORN, migrated_sqlite_url], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=True)
    said = [line for line in done.stdout.splitlines() if line.startswith(("failed", "written", "appended"))]
    assert said == [f"failed {errno.EFBIG}", "appended"]
    engine = make_engine(migrated_sqlite_url)
    assert ingest(engine) == 2
    assert [decode_entry(b).resource_id for b, _, _ in stored(engine)] == ["t1", "t40"]  # the failed read's: none
    directory = spool_dir(engine)
    assert directory is not None and not (directory / "malformed.lines").exists() and spool_files(directory) == []


def test_a_database_error_while_moving_is_sqlalchemys(migrated_sqlite_url: str) -> None:
    import sqlite3

    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    engine = create_engine(migrated_sqlite_url, connect_args={"timeout": 0.1})  # a short busy timeout
    AccessSpool(spool_dir(engine)).append([entry(1)], log_id="access")  # type: ignore[arg-type]
    holder = sqlite3.connect(migrated_sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
    try:
        with pytest.raises(OperationalError):  # the API's 503, the ledger worker's pass to retry
            ingest(engine)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ingest(engine) == 1
