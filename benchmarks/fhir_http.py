"""FHIR read and search latency and throughput under gunicorn on loopback, privacy on vs off, with wrk.

Two servers (gunicorn, 2 workers each) run on temporary data directories holding the same generated
patients: one stores resources encrypted with blind indexes (the product), the other with
`privacy_off_for_benchmark=True` (plaintext, unkeyed digests). Each operation is measured on both in
the same run, alternating, so the privacy overhead is a ratio of figures taken side by side.

Usage: .venv/bin/python benchmarks/fhir_http.py [--patients 300] [--duration 5] [--repeats 3] [--connections 16]
Needs `wrk` (Debian: apt-get install wrk); installs nothing. Writes benchmarks/results/fhir_http.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "fhir_http.json"
TOKEN = "bench-token"

# wrk Lua: requests cycle through a fixed list of paths; done() prints the summary as one JSON line.
LUA = """
local paths = {%(paths)s}
local i = 0
local headers = {["Authorization"] = "Bearer %(token)s", ["Accept"] = "application/fhir+json"}
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], headers)
end
local non2xx = 0
response = function(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"mean_us": %%f, "socket_errors": %%d, "status_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(data_dir: Path, port: int, privacy_off: bool, workers: int) -> None:
    """Child process: gunicorn with our settings, no access log (it would dominate the measurement)."""
    from healthledger.config import Settings
    from healthledger.server import run_gunicorn

    settings = Settings(
        data_dir=data_dir, port=port, workers=workers, dev_token=TOKEN, load_demo_data=False,
        privacy_off_for_benchmark=privacy_off,
    )
    extra = json.loads(os.environ.get("FHIR_HTTP_GUNICORN", "{}"))
    run_gunicorn(settings, accesslog=None, errorlog="-", loglevel="warning", **extra)


def prepare(data_dir: Path, patients: int, privacy_off: bool, database_url: str = "") -> dict[str, Any]:
    """Schema, keys and the generated patients imported through the store's importer; returns ids to query."""
    from healthledger.app import bootstrap
    from healthledger.config import Settings
    from healthledger.db import make_engine
    from healthledger.demo import demo_resources
    from healthledger.keys import key_provider_for
    from healthledger.store.importer import Importer
    from healthledger.store.repository import store_for_settings

    settings = Settings(data_dir=data_dir, load_demo_data=False, privacy_off_for_benchmark=privacy_off,
                        database_url=database_url)
    bootstrap(settings)
    resources = demo_resources(patients=patients, observations_per_patient=6)
    ndjson = data_dir / "bench.ndjson"
    ndjson.write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    engine = make_engine(settings.database_url)
    store = store_for_settings(engine, key_provider_for(settings.key_provider, settings.keys_dir), settings)
    started = time.perf_counter()
    report = Importer(store).import_paths([ndjson])
    elapsed = time.perf_counter() - started
    engine.dispose()
    ndjson.unlink()
    if report.rejected or report.imported != len(resources):
        raise SystemExit(f"import failed: {report.imported} imported, {report.rejected} rejected")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    return {"resources": len(resources), "import_seconds": elapsed, "by_type": by_type}


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on port {port} did not become ready")


def check(port: int, path: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise SystemExit(f"{path} answered {resp.status}")


def server_cpu_by_process(master_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of a gunicorn master and each of its children, by a label.

    Children forked from the master (the gunicorn workers) share its command line and are labelled
    `worker <pid>`; the others (ledger worker, chain node) by their command's last words.
    """
    tick = os.sysconf("SC_CLK_TCK")
    pids = [master_pid]
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    master_command = _command_line(master_pid)
    out: dict[str, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        command = _command_line(pid)
        if pid == master_pid:
            label = "master"
        elif command == master_command:
            label = f"worker {pid}"
        else:
            label = f"{' '.join(command.split()[-3:])} {pid}"
        out[label] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15)
    return out


def database_cpu_seconds() -> float | None:
    """CPU seconds (user + system) so far of every PostgreSQL process on this machine (server, backends, WAL
    writer, checkpointer...); None when there is none to see (SQLite, or a database on another machine).

    On PostgreSQL part of a request's cost is the database's: its backends parse, plan and run each statement
    and flush the WAL at each commit, in processes of their own that the server's CPU does not count. Other
    users of the same PostgreSQL show up here too; the benchmarks keep the other server idle while they measure.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total, seen = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith("postgres"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        seen = True
        total += (int(fields[11]) + int(fields[12])) / tick
    return total if seen else None


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def start_server(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A benchmark server in a process group of its own, its output (a JSON line per request) into `log`,
    not the terminal: the figures stay readable. `show_server_logs` prints the ends of the logs on a failure."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def show_server_logs(logs: list[Path], lines: int = 30) -> None:
    """The last `lines` of each server log (after a failure, before the temporary directory goes)."""
    for log in logs:
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- last {len(tail)} lines of {log.name} ---", *tail, sep="\n", file=sys.stderr)


def stop_servers(procs: list[subprocess.Popen[bytes]], *, timeout: float) -> None:
    """SIGTERM each server's process group, then SIGKILL what has not stopped within `timeout`."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_wrk(
    port: int, paths: list[str], *, duration: int, connections: int, threads: int, workdir: Path,
    master_pid: int | None = None, token: str = TOKEN, database: bool = False,
) -> dict[str, Any]:
    """One wrk run; with `database`, the local PostgreSQL's CPU per request as well (database_cpu_seconds)."""
    script = workdir / f"wrk-{port}.lua"
    script.write_text(LUA % {"paths": ", ".join(json.dumps(p) for p in paths), "token": token})
    cpu_before = server_cpu_by_process(master_pid) if master_pid else {}
    database_before = database_cpu_seconds() if database else None
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds = raw["duration_us"] / 1e6
    cpu_after = server_cpu_by_process(master_pid) if master_pid else {}
    database_after = database_cpu_seconds() if database else None
    # Each process's share (a worker that served nothing shows the kernel's accept imbalance).
    by_process = {label: round(seconds - cpu_before.get(label, 0.0), 2) for label, seconds in cpu_after.items()}
    cpu = sum(by_process.values())
    cpu_ms = cpu * 1000 / raw["requests"] if raw["requests"] else 0.0
    return {
        # Server CPU per request is independent of how busy the (shared) machine is; 2 cores divided
        # by it is the throughput this code could reach if it had both cores to itself.
        "server_cpu_ms_per_request": cpu_ms,
        "cpu_bound_req_per_s_on_2_cores": 2000 / cpu_ms if cpu_ms else None,
        "requests": raw["requests"],
        "req_per_s": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "errors": raw["socket_errors"] + raw["status_errors"],
        "server_cpu_s_by_process": by_process,
        "database_cpu_ms_per_request": (
            (database_after - database_before) * 1000 / raw["requests"]
            if database_before is not None and database_after is not None and raw["requests"] else None
        ),
    }


def operations(by_type: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    patients = by_type["Patient"]
    observations = by_type["Observation"]
    return {
        "read Patient": [f"/fhir/Patient/{p['id']}" for p in patients],
        "read Observation": [f"/fhir/Observation/{o['id']}" for o in observations[:2000]],
        "search Observation?patient": [f"/fhir/Observation?patient={p['id']}&_count=20" for p in patients],
        "search Observation?patient&code": [
            f"/fhir/Observation?patient={p['id']}&code=http://loinc.org|29463-7" for p in patients
        ],
        "search Patient?identifier": [
            f"/fhir/Patient?identifier={p['identifier'][0]['system']}|{p['identifier'][0]['value']}" for p in patients
        ],
    }


def _call_wsgi(app: Any, environ: dict[str, Any]) -> str:
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    b"".join(app.wsgi_app(environ, start_response))
    return statuses[0]


def in_process(data_dirs: dict[str, Path], ops: dict[str, list[str]], *, rounds: int = 10, per_round: int = 300,
               privacy_off: dict[str, bool]) -> dict[str, dict[str, Any]]:
    """CPU per request through the whole WSGI stack in this process, privacy on/off alternating in rounds.

    No sockets and one thread, so the figure hardly depends on what else runs on the machine: the
    median over rounds of process CPU time per request, and the on/off ratio of those medians.
    """
    import io
    import statistics

    from werkzeug.test import EnvironBuilder

    from healthledger.app import create_app
    from healthledger.config import Settings

    apps = {
        label: create_app(Settings(data_dir=d, dev_token=TOKEN, load_demo_data=False,
                                   privacy_off_for_benchmark=privacy_off[label]))
        for label, d in data_dirs.items()
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    out: dict[str, dict[str, Any]] = {}
    for op, paths in ops.items():
        environs = [EnvironBuilder(path=p.split("?")[0], query_string=p.partition("?")[2], headers=headers).get_environ()
                    for p in paths]
        samples: dict[str, list[float]] = {label: [] for label in apps}
        for round_no in range(rounds):
            order = list(apps.items())
            if round_no % 2:
                order.reverse()  # neither mode always runs first (caches, CPU frequency)
            for label, app in order:
                started = time.process_time()
                for i in range(per_round):
                    environ = dict(environs[i % len(environs)])
                    environ["wsgi.input"] = io.BytesIO()
                    status = _call_wsgi(app, environ)
                    if not status.startswith("200"):
                        raise SystemExit(f"{op}: {status}")
                samples[label].append((time.process_time() - started) * 1000 / per_round)
        medians = {label: statistics.median(v) for label, v in samples.items()}
        out[op] = {
            **{label: {"cpu_ms_per_request": m, "cpu_bound_req_per_s_on_2_cores": 2000 / m} for label, m in medians.items()},
            "privacy_overhead_cpu": medians["privacy on"] / medians["privacy off"],
        }
    for app in apps.values():
        app.extensions["healthledger.engine"].dispose()
    return out


def add_wrk_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every wrk-driven benchmark takes (data size, run length, load, server size)."""
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per operation and mode (best is kept)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (2 cores are shared with the server)")
    parser.add_argument("--workers", type=int, default=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_wrk_arguments(parser)
    parser.add_argument("--only", default="", help="run only operations whose name contains this text")
    parser.add_argument("--serve", nargs=3, metavar=("DATA_DIR", "PORT", "PRIVACY_OFF"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), args.serve[2] == "1", args.workers)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="hl-bench-http-") as tmp:
        workdir = Path(tmp)
        modes = {"privacy on": False, "privacy off": True}
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        prepared: dict[str, dict[str, Any]] = {}
        try:
            for label, privacy_off in modes.items():
                data_dir = workdir / label.replace(" ", "-")
                prepared[label] = prepare(data_dir, args.patients, privacy_off)
                port = free_port()
                proc = start_server(
                    [sys.executable, __file__, "--workers", str(args.workers), "--serve", str(data_dir), str(port),
                     "1" if privacy_off else "0"],
                    workdir / f"server-{label.replace(' ', '-')}.log",
                )
                servers[label] = (proc, port)
            for label, (_, port) in servers.items():
                wait_ready(port)
            ops = {op: paths for op, paths in operations(prepared["privacy on"]["by_type"]).items() if args.only in op}
            if "read Patient" not in ops:
                raise SystemExit("--only must keep 'read Patient' (the targets are about it)")
            results: dict[str, dict[str, Any]] = {}
            all_runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
            for op, paths in ops.items():
                for label, (_, port) in servers.items():
                    for path in paths[:3]:
                        check(port, path)  # fail early with a clear message, not a page of non-2xx
                    # A short warm-up fills each worker's key cache and SQLite page cache.
                    run_wrk(port, paths, duration=2, connections=args.connections, threads=args.threads,
                            workdir=workdir)
                # Modes alternate, several times: on a shared machine a burst of someone else's work hits
                # one run, not one mode; each mode keeps its best run (the least disturbed one).
                for _ in range(args.repeats):
                    for label, (_, port) in servers.items():
                        run = run_wrk(
                            port, paths, duration=args.duration, connections=args.connections,
                            threads=args.threads, workdir=workdir, master_pid=servers[label][0].pid,
                        )
                        runs = all_runs.setdefault(op, {}).setdefault(label, [])
                        runs.append(run)
                        results.setdefault(op, {})[label] = max(runs, key=lambda r: r["req_per_s"])
        except BaseException:
            show_server_logs(sorted(workdir.glob("server-*.log")))
            raise
        finally:
            stop_servers([proc for proc, _ in servers.values()], timeout=20)

        local = in_process({label: workdir / label.replace(" ", "-") for label in modes}, ops, privacy_off=modes)

    print(f"\nFHIR over HTTP: gunicorn {args.workers} workers, wrk {args.threads} thread(s) x {args.connections} "
          f"connections, best of {args.repeats} alternating {args.duration}s runs per mode, "
          f"{prepared['privacy on']['resources']} resources "
          f"({args.patients} patients)\n")
    load = os.getloadavg()[0]
    print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores (other work shares the machine)\n")
    header = (f"{'operation':34} {'mode':12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
              f"{'cpu ms/req':>10} {'cpu-bound req/s':>15}")
    print(header)
    print("-" * len(header))
    summary: dict[str, Any] = {}
    for op, by_mode in results.items():
        for label, r in by_mode.items():
            bound = r["cpu_bound_req_per_s_on_2_cores"] or 0.0
            print(f"{op:34} {label:12} {r['req_per_s']:8.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d} "
                  f"{r['server_cpu_ms_per_request']:10.2f} {bound:15.0f}")
        on, off = by_mode["privacy on"], by_mode["privacy off"]
        overhead = off["req_per_s"] / on["req_per_s"] if on["req_per_s"] else float("inf")
        cpu_overhead = (on["server_cpu_ms_per_request"] / off["server_cpu_ms_per_request"]
                        if off["server_cpu_ms_per_request"] else None)
        summary[op] = {**by_mode, "privacy_overhead_throughput": overhead,
                       "privacy_overhead_p50": on["p50_ms"] / off["p50_ms"] if off["p50_ms"] else None,
                       "privacy_overhead_cpu": cpu_overhead}
        print(f"{'':34} {'overhead':12} {overhead:7.2f}x throughput (off/on), "
              f"{cpu_overhead or 0:.2f}x server CPU per request (on/off)")
    print("\nIn process (WSGI, one thread, no sockets; median CPU per request over rounds, privacy on/off alternating)\n")
    header2 = f"{'operation':34} {'on ms':>8} {'off ms':>8} {'overhead':>9} {'2-core bound req/s (on)':>24}"
    print(header2)
    print("-" * len(header2))
    for op, r in local.items():
        print(f"{op:34} {r['privacy on']['cpu_ms_per_request']:8.3f} {r['privacy off']['cpu_ms_per_request']:8.3f} "
              f"{r['privacy_overhead_cpu']:8.2f}x {r['privacy on']['cpu_bound_req_per_s_on_2_cores']:24.0f}")
    read = summary["read Patient"]["privacy on"]["req_per_s"]
    read_bound = summary["read Patient"]["privacy on"]["cpu_bound_req_per_s_on_2_cores"] or 0.0
    read_overhead = summary["read Patient"]["privacy_overhead_throughput"]
    read_cpu_overhead = summary["read Patient"]["privacy_overhead_cpu"] or 0.0
    local_read = local["read Patient"]
    print(f"in process: read Patient {local_read['privacy on']['cpu_ms_per_request']:.3f} ms CPU "
          f"(~{local_read['privacy on']['cpu_bound_req_per_s_on_2_cores']:.0f} req/s on 2 cores before HTTP), "
          f"privacy overhead {local_read['privacy_overhead_cpu']:.2f}x")
    print(f"\nread target >= 800 req/s: measured {read:.0f} ({'met' if read >= 800 else 'NOT met'}), "
          f"CPU-bound estimate {read_bound:.0f}; privacy overhead on reads <= 1.3x: {read_overhead:.2f}x throughput, "
          f"{read_cpu_overhead:.2f}x CPU ({'met' if read_overhead <= 1.3 else 'NOT met'})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "fhir_http",
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": load},
        "config": {"patients": args.patients, "resources": prepared["privacy on"]["resources"],
                   "workers": args.workers, "wrk_threads": args.threads, "connections": args.connections,
                   "duration_s": args.duration},
        "import_seconds": {label: p["import_seconds"] for label, p in prepared.items()},
        "operations": summary,
        "all_runs": all_runs,
        "in_process": local,
        "targets": {"read_req_per_s": {"target": 800, "measured": read, "cpu_bound_estimate": read_bound},
                    "read_privacy_overhead": {"target": 1.3, "measured": read_overhead,
                                              "cpu_per_request_ratio": read_cpu_overhead}},
    }, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    errors = sum(r["errors"] for by_mode in results.values() for r in by_mode.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
