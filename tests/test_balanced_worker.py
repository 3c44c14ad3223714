"""The balanced gunicorn worker: the share rule, the shared table, and a real `serve` with 2 workers and 16
keep-alive connections (both workers hold their share, seen from /proc: which process owns each socket)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from gunicorn.config import Config
from serving import Served

from healthledger import balanced_worker
from healthledger.balanced_worker import (
    ACCEPT_SLACK,
    FRESH_SECONDS,
    REUSE_SECONDS,
    SHED_MARGIN,
    BalancedThreadWorker,
    ConnectionTable,
    may_accept,
    process_exists,
    should_shed,
)
from healthledger.server import WORKER_CLASS, gunicorn_options


def test_the_least_loaded_worker_may_always_accept() -> None:
    assert may_accept(0, [0, 3])
    assert may_accept(3, [3, 3])
    assert may_accept(5, [9, 12, 7])


def test_a_worker_accepts_up_to_the_least_loaded_plus_the_slack() -> None:
    assert may_accept(4 + ACCEPT_SLACK, [4, 10])
    assert not may_accept(5 + ACCEPT_SLACK, [4, 10])
    assert not may_accept(16, [0])


def test_a_worker_alone_accepts_whatever_it_holds() -> None:
    assert may_accept(1000, [])


def test_a_worker_sheds_only_past_what_the_accept_rule_can_leave_between_two_workers() -> None:
    # Accepting stops at least + ACCEPT_SLACK + 1 held: no shedding there (it would ping-pong).
    assert not should_shed(4 + ACCEPT_SLACK + 1, [4])
    assert should_shed(4 + SHED_MARGIN, [4, 9])
    assert not should_shed(50, [])


def test_16_connections_arriving_one_by_one_end_up_split_evenly() -> None:
    """The rule applied as workers would: each new connection to a worker that may accept (the busiest first)."""
    held = [0, 0]
    for _ in range(16):
        taker = next(w for w in sorted(range(2), key=lambda w: -held[w]) if may_accept(held[w], [held[1 - w]]))
        held[taker] += 1
    assert sorted(held) == [8, 8] or max(held) - min(held) <= ACCEPT_SLACK + 1


def test_the_table_lists_other_workers_that_wrote_lately() -> None:
    table = ConnectionTable(4)
    a, b, c = (table.reserve(now=100.0) for _ in range(3))
    assert (a, b, c) == (0, 1, 2)
    table.publish(a, pid=11, connections=3, now=100.0)
    table.publish(b, pid=12, connections=5, now=100.0)
    # c was reserved but its worker never published: not a live worker yet.
    assert [(s.pid, s.connections) for s in table.others(a, now=100.5)] == [(12, 5)]
    assert [s.pid for s in table.others(c, now=100.5)] == [11, 12]
    assert table.others(a, now=100.0 + FRESH_SECONDS + 0.1) == []  # b has gone silent: not waited for


def test_a_left_slot_is_free_at_once_and_a_silent_one_after_the_reuse_delay() -> None:
    table = ConnectionTable(2)
    first, second = table.reserve(now=0.0), table.reserve(now=0.0)
    table.publish(first, pid=11, connections=2, now=0.0)
    table.publish(second, pid=12, connections=2, now=0.0)
    assert table.reserve(now=1.0) is None  # full: that worker runs without the table (it accepts)
    table.leave(first, pid=99)  # not its slot: nothing happens
    assert table.reserve(now=1.0) is None
    table.leave(first, pid=11)
    assert table.reserve(now=1.0) == first
    assert table.reserve(now=REUSE_SECONDS + 0.5) == second  # pid 12 silent since 0.0: killed


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _worker(monkeypatch: pytest.MonkeyPatch, table: ConnectionTable) -> BalancedThreadWorker:
    monkeypatch.setattr(BalancedThreadWorker, "table", table)
    return BalancedThreadWorker(1, os.getppid(), [], None, 30, Config(), None)


def test_a_worker_does_not_stand_back_for_a_killed_worker_whose_slot_still_looks_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = ConnectionTable(4)
    worker = _worker(monkeypatch, table)
    assert worker.slot == 0
    other = table.reserve(now=0.0)
    assert other is not None
    worker.nr_conns = 6
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        table.publish(other, pid=sleeper.pid, connections=0, now=balanced_worker.time.monotonic())
        assert not worker._may_accept()  # a live worker holds 6 fewer: stand back
        assert worker.slot is not None and table.others(worker.slot, balanced_worker.time.monotonic())
    finally:
        sleeper.kill()
        sleeper.wait()
    table.publish(other, pid=_dead_pid(), connections=0, now=balanced_worker.time.monotonic())
    assert not process_exists(other_pid := table.others(worker.slot, balanced_worker.time.monotonic())[0].pid)
    assert other_pid > 0 and worker._may_accept()  # its process is gone: never wait for it


def test_a_stopping_worker_leaves_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    table = ConnectionTable(4)
    worker = _worker(monkeypatch, table)
    assert worker.slot is not None
    worker._publish()
    assert [s.pid for s in table.others(worker.slot + 1, balanced_worker.time.monotonic())] == [os.getpid()]
    worker._leave()
    assert table.others(worker.slot + 1, balanced_worker.time.monotonic()) == []


def test_serve_uses_the_balanced_worker(tmp_path: Path) -> None:
    from healthledger.config import Settings

    assert gunicorn_options(Settings(data_dir=tmp_path))["worker_class"] == WORKER_CLASS


# ---- a real server ------------------------------------------------------------------------------


def _server_socket_inodes(port: int) -> dict[int, int]:
    """Established server-side sockets of `port` on loopback: the client's port -> the socket's inode (proc(5))."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and int(local.split(":")[1], 16) == port:  # 01: ESTABLISHED
            found[int(remote.split(":")[1], 16)] = inode
    return found


def _owner_of(inodes: set[int], pids: list[int]) -> dict[int, int]:
    """inode -> pid of the process holding that socket open."""
    owners = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in inodes:
                        owners[inode] = pid
        except OSError:
            continue
    return owners


@pytest.mark.slow
def test_two_workers_share_16_keep_alive_connections(tmp_path: Path) -> None:
    """The first worker up takes the first burst; once the other is up, it hands over what exceeds its share."""
    served = Served(tmp_path / "var", args=["--workers", "2"]).start()
    connections = [http.client.HTTPConnection("127.0.0.1", served.port, timeout=10) for _ in range(16)]
    held: Counter[int] = Counter()
    try:
        for conn in connections:  # all 16 connect before any request: the burst a load generator makes
            conn.connect()
        closed = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for conn in connections:  # a connection closed by the server reconnects on its next request
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                if response.getheader("Connection", "").lower() == "close":
                    closed += 1
                    conn.connect()
            held = _held_by_process(served, connections)
            if sum(held.values()) == 16 and len(held) == 2 and max(held.values()) - min(held.values()) <= ACCEPT_SLACK + 1:
                break
            time.sleep(0.2)
        assert sum(held.values()) == 16
        assert len(held) == 2, f"one worker holds every connection: {held}"
        assert max(held.values()) - min(held.values()) <= ACCEPT_SLACK + 1, held
        assert closed <= 16  # what was shed is what one worker held beyond its share, not a churn
    finally:
        for conn in connections:
            conn.close()
        served.stop()
    assert "BalancedThreadWorker" in served.output()


def _held_by_process(served: Served, connections: list[http.client.HTTPConnection]) -> Counter[int]:
    """How many of `connections` each process of `served` holds the server end of."""
    client_ports = {conn.sock.getsockname()[1] for conn in connections if conn.sock is not None}
    inodes = {port: inode for port, inode in _server_socket_inodes(served.port).items() if port in client_ports}
    owners = _owner_of(set(inodes.values()), [pid for pid, _ in served.members()])
    return Counter(owners.values())
