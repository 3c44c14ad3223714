"""Scaling steps: the API with 1, 2, ... gunicorn workers (up to the core count), then two replicas, against
PostgreSQL and a JSON-RPC node (anvil); reads, searches, writes per second at each step, consent grants per
second with one and two ledger workers, and where the CPU went (API workers, PostgreSQL, the load client).

    python benchmarks/scaling.py [--seconds 6] [--clients 8]

Every request comes from a SMART client of the home organisation, so each one is authenticated, decided by the
consent engine and written to the access log, as in production. Needs PostgreSQL at 127.0.0.1:5432 (database
`test`; a schema of its own, dropped at the end) and anvil (node_modules). Prints a table and writes
benchmarks/results/scaling.json. On this 2-core machine the load client shares the cores with the servers:
the figures are a floor, and the CPU split says where the time goes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The project first: tests/fhir_adapters (a folder of tests) would otherwise stand in for the fhir_adapters package.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import sqlalchemy as sa

from healthledger.app import bootstrap
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.keys import key_provider_for
from healthledger.ledger import eip712, relayer
from healthledger.ledger.chain import chain_for
from healthledger.ledger.service import check_contracts
from tests.ledger.test_outbox import signed_grant
from tests.reliability.traffic import HOME, Client, observation, percentile, register_ehr, token

RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total / TICKS


def group_pids(pgid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
    env.update(HEALTHLEDGER_DATA_DIR=str(settings.data_dir), HEALTHLEDGER_DATABASE_URL=settings.database_url,
               HEALTHLEDGER_CHAIN_URL=settings.chain_url, HEALTHLEDGER_CHAIN_NETWORK="anvil",
               HEALTHLEDGER_HOME_ORGANIZATION=HOME, HEALTHLEDGER_LOAD_DEMO_DATA="false",
               HEALTHLEDGER_TENANT=settings.tenant, HEALTHLEDGER_LOG_FORMAT="json", HEALTHLEDGER_CHAIN_POLL_SECONDS="0.5",
               # One issuer for every replica: tokens name it, and a replica refuses tokens of another issuer.
               HEALTHLEDGER_BASE_URL="http://healthledger.bench")
    return env


def start_api(settings: Settings, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "healthledger.cli", "serve", "--no-ledger", "--workers", str(workers),
                             "--port", str(port)], cwd=ROOT, env=env_for(settings), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            return proc, port
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the API did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def phase(ports: list[int], bearer: str, kind: str, seconds: float, clients: int, patients: list[str],
          observations: list[str]) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def work(n: int) -> None:
        import random

        rng = random.Random(n)
        client = Client(ports[n % len(ports)], bearer)
        mine: list[float] = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            if kind == "read":
                status, _ = client.call("GET", f"/fhir/Observation/{rng.choice(observations)}")
            elif kind == "search":
                status, _ = client.call("GET", f"/fhir/Observation?patient=Patient/{rng.choice(patients)}&_count=10")
            else:
                status, _ = client.call("POST", "/fhir/Observation", observation(rng.choice(patients), rng.randint(40, 180)))
            if status >= 300:
                with lock:
                    failures[0] += 1
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"per_second": round(len(latencies) / seconds, 1), "p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1), "failures": failures[0]}


def grants_per_second(settings: Settings, engine: sa.Engine, workers: int, n: int, prefix: str) -> float:
    sessions = session_factory(engine)
    chain = chain_for(settings, key_provider_for("file", settings.keys_dir))
    with engine.connect() as conn:
        registry = conn.execute(sa.text("select address from chain_contracts where name='ConsentRegistry'")).scalar_one()
    chain.register("ConsentRegistry", registry)
    ids = []
    with sessions.begin() as s:
        for i in range(n):
            ids.append(relayer.submit_grant(s, eip712.Domain(chain.chain_id, registry), *signed_grant(chain, f"{prefix}:{i}"),
                                            now=time.time()))
    chain.close()
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "healthledger.cli", "relay", "work", "--interval", "0.1"], cwd=ROOT,
                              env=env_for(settings.model_copy(update={"data_dir": settings.data_dir.parent / f"w{k}"}))
                              | {"HEALTHLEDGER_DATA_DIR": str(settings.data_dir)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for k in range(workers)]
    try:
        while time.monotonic() - started < 300:
            with engine.connect() as conn:
                done = conn.execute(sa.text("select count(*) from chain_outbox where state='confirmed' and id = any(:ids)"),
                                    {"ids": ids}).scalar_one()
            if done == n:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            stop(p)
    return round(n / elapsed, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--grants", type=int, default=60)
    args = parser.parse_args()
    cores = multiprocessing.cpu_count()
    schema = f"bench_scaling_{secrets.token_hex(3)}"
    admin = make_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    work = Path(tempfile.mkdtemp(prefix="scaling-"))
    port = free_port()
    anvil = subprocess.Popen([str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--chain-id", "1337", "--hardfork",
                              "prague", "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, Any] = {"cores": cores, "clients": args.clients, "seconds_per_phase": args.seconds, "steps": []}
    relay: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(1.0)
        settings = Settings(data_dir=work / "var", database_url=f"{PG}?options=-csearch_path%3D{schema}",
                            chain_url=f"http://127.0.0.1:{port}", chain_network="anvil", home_organization=HOME,
                            load_demo_data=False, tenant="scaling")
        bootstrap(settings)
        chain = chain_for(settings, key_provider_for("file", settings.keys_dir))
        chain.w3.provider.make_request("anvil_setBalance", [chain.operator.address, hex(10**22)])  # type: ignore[arg-type]
        chain.close()
        check_contracts(settings, embedded=True)
        engine = make_engine(settings.database_url)
        client_id, secret = register_ehr(session_factory(engine))
        relay = subprocess.Popen([sys.executable, "-m", "healthledger.cli", "relay", "work"], cwd=ROOT, env=env_for(settings),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        steps = [(f"{w} worker{'s' if w > 1 else ''}", [w]) for w in range(1, cores + 1)] + [("2 replicas x 1 worker", [1, 1])]
        seeded: tuple[list[str], list[str]] | None = None
        for name, layout in steps:
            servers = [start_api(settings, w) for w in layout]
            ports = [p for _, p in servers]
            bearer = token(ports[0], client_id, secret)
            if seeded is None:
                seeder = Client(ports[0], bearer)
                patients = [seeder.call("POST", "/fhir/Patient", {"resourceType": "Patient",
                                                                  "managingOrganization": {"reference": HOME}})[1]["id"]
                            for _ in range(100)]
                observations = [seeder.call("POST", "/fhir/Observation", observation(patients[i % 100], 60 + i % 50))[1]["id"]
                                for i in range(1000)]
                seeded = (patients, observations)
            step: dict[str, Any] = {"step": name, "layout": layout}
            for kind in ("read", "search", "write"):
                server_pids = [p for proc, _ in servers for p in group_pids(proc.pid)]
                pg_pids = postgres_pids()
                before = (cpu_seconds(server_pids), cpu_seconds(pg_pids), time.process_time())
                step[kind] = phase(ports, bearer, kind, args.seconds, args.clients, *seeded)
                after = (cpu_seconds(server_pids), cpu_seconds(pg_pids), time.process_time())
                used = [round(a - b, 2) for a, b in zip(after, before, strict=True)]
                step[kind]["cpu_seconds"] = {"api": used[0], "postgres": used[1], "client": used[2]}
                step[kind]["cpu_ms_per_request"] = round(1000 * used[0] / max(1, step[kind]["per_second"] * args.seconds), 2)
            for proc, _ in servers:
                stop(proc)
            failed = sum(step[k]["failures"] for k in ("read", "search", "write"))
            if failed:
                print(f"  {failed} requests failed in this step: its figures are not comparable", flush=True)
            results["steps"].append(step)
            print(f"{name:<24} " + "  ".join(
                f"{k} {step[k]['per_second']:>6}/s p50 {step[k]['p50_ms']:>6} ms p99 {step[k]['p99_ms']:>7} ms "
                f"(cpu api {step[k]['cpu_seconds']['api']} s, pg {step[k]['cpu_seconds']['postgres']} s, "
                f"client {step[k]['cpu_seconds']['client']} s)" for k in ("read", "search", "write")), flush=True)
        stop(relay)
        relay = None
        results["grants"] = {}
        for workers in (1, 2):
            rate = grants_per_second(settings, engine, workers, args.grants, f"scale{workers}")
            results["grants"][f"{workers} ledger worker{'s' if workers > 1 else ''}"] = rate
            print(f"consent grants through the outbox, {workers} ledger worker(s): {rate}/s", flush=True)
        engine.dispose()
    finally:
        if relay is not None:
            stop(relay)
        anvil.terminate()
        anvil.wait(timeout=10)
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
