"""Grant and revoke throughput through the durable outbox (enqueue N, one worker drains) per chain backend.

    python benchmarks/outbox_throughput.py                 # embedded and anvil, 100 grants + 100 revokes
    python benchmarks/outbox_throughput.py --ops 400 --backends anvil

Each write is enqueued in its own database transaction (as an API request would), then a worker drains
the outbox: estimate gas, allocate a nonce, sign, record, broadcast, wait for the receipt, mark confirmed.
Patients' EIP-712 signatures are made beforehand and timed separately. SQLite database (WAL), one
worker process; prints a table and writes benchmarks/results/outbox_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_account import Account
from eth_utils import keccak

from healthledger.db import Base, make_engine, session_factory
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import eip712, models, outbox, relayer
from healthledger.ledger.chain import Chain, embedded_chain, rpc_chain
from healthledger.ledger.deploy import deploy_contracts
from healthledger.ledger.patient_keys import pseudonym_for

RESULTS = ROOT / "benchmarks" / "results" / "outbox_throughput.json"
TABLES = [m.__table__ for m in (models.OutboxItem, models.SenderNonce)]
POLICY = outbox.OutboxPolicy(batch_size=50, base_backoff_seconds=0.0, receipt_poll_seconds=0.0)


def run(chain: Chain, work: Path, pairs: int) -> dict[str, Any]:
    deploy_contracts(chain)
    engine = make_engine(f"sqlite:///{work / 'bench.db'}")
    Base.metadata.create_all(engine, tables=TABLES)
    db = session_factory(engine)
    domain = eip712.Domain(chain.chain_id, chain.address_of("ConsentRegistry"))
    grantee = Account.from_key(keccak(b"bench-grantee")).address
    now = int(time.time())

    t = time.perf_counter()
    grants, revokes = [], []
    for i in range(pairs):
        patient = pseudonym_for(keccak(f"bench-master-{i}".encode()), "org:bench")
        scope = keccak(f"scope-{i}".encode())
        g = eip712.GrantMessage(patient.address, grantee, scope, now - 60, now + 86_400, 0, now + 3_600)
        r = eip712.RevokeMessage(patient.address, grantee, scope, 1, now + 3_600)
        grants.append((g, eip712.sign(bytes(patient.key), domain, g)))
        revokes.append((r, eip712.sign(bytes(patient.key), domain, r)))
    sign_seconds = time.perf_counter() - t

    def enqueue_all(items: list[Any], submit: Any) -> float:
        start = time.perf_counter()
        for message, signature in items:
            with db.begin() as session:
                submit(session, domain, message, signature, now=time.time())
        return time.perf_counter() - start

    def drain() -> tuple[float, outbox.WorkerReport]:
        start = time.perf_counter()
        report = outbox.drain(db, chain, time.time, policy=POLICY, max_passes=10_000)
        return time.perf_counter() - start, report

    enqueue_grants = enqueue_all(grants, relayer.submit_grant)
    drain_grants, grant_report = drain()
    enqueue_revokes = enqueue_all(revokes, relayer.submit_revoke)
    drain_revokes, revoke_report = drain()
    with db() as session:
        states = outbox.counts(session)
    engine.dispose()
    ok = states["confirmed"] == 2 * pairs and states["failed"] == 0
    return {
        "ops": 2 * pairs,
        "all_confirmed": ok,
        "sign_per_s": round(2 * pairs / sign_seconds, 1),
        "enqueue_per_s": round(2 * pairs / (enqueue_grants + enqueue_revokes), 1),
        "grants_per_s": round(pairs / drain_grants, 1),
        "revokes_per_s": round(pairs / drain_revokes, 1),
        "ops_per_s_end_to_end": round(
            2 * pairs / (enqueue_grants + drain_grants + enqueue_revokes + drain_revokes), 1
        ),
        "ms_per_op_worker": round(1000 * (drain_grants + drain_revokes) / (2 * pairs), 2),
        "worker_passes_failed": grant_report.failed + revoke_report.failed,
    }


def bench_embedded(pairs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chain = embedded_chain(work / "var", LocalFileKeyProvider(work / "keys"), keys_dir=work / "keys")
        try:
            return run(chain, work, pairs)
        finally:
            chain.close()


def bench_anvil(pairs: int) -> dict[str, Any]:
    from tests.integration.anvil import rpc, running_anvil

    anvil = ROOT / "node_modules" / ".bin" / "anvil"
    with tempfile.TemporaryDirectory() as tmp, running_anvil(anvil) as url:
        work = Path(tmp)
        chain = rpc_chain(url, LocalFileKeyProvider(work / "keys"), keys_dir=work / "keys", poll_seconds=0.02)
        rpc(url, "anvil_setBalance", [chain.operator.address, hex(10**22)])
        try:
            return run(chain, work, pairs)
        finally:
            chain.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200, help="grants + revokes (half each)")
    parser.add_argument("--backends", default="embedded,anvil")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    pairs = max(1, args.ops // 2)
    results: dict[str, Any] = {}
    for backend in args.backends.split(","):
        results[backend] = {"embedded": bench_embedded, "anvil": bench_anvil}[backend](pairs)
    columns = [
        "ops",
        "enqueue_per_s",
        "grants_per_s",
        "revokes_per_s",
        "ops_per_s_end_to_end",
        "ms_per_op_worker",
        "all_confirmed",
    ]
    print(f"{'backend':<10}" + "".join(f"{c:>22}" for c in columns))
    for backend, row in results.items():
        print(f"{backend:<10}" + "".join(f"{row[c]!s:>22}" for c in columns))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
