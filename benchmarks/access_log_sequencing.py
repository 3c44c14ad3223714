"""CPU per entry of sequencing the access log (`integrate`), as the relay worker runs it beside the web workers.

    .venv/bin/python benchmarks/access_log_sequencing.py [--entries 20000] [--batch 250] [--profile]
        [--database-url postgresql://postgres@127.0.0.1:5432/test]

Appends `--entries` entries to a fresh log (SQLite file, or a fresh schema of `--database-url`), then sequences
them in transactions of `--batch` (the relay worker's SEQUENCE_BATCH) until caught up, timing only that. Prints
CPU and wall time per entry, the time each SQL statement took per entry, and a digest of the tree (root, stored
nodes, leaf indexes: a change that alters the tree shows as a different digest for the same arguments);
`--profile` adds cProfile's top functions. Writes benchmarks/results/access_log_sequencing.json.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import secrets
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "access_log_sequencing.json"
T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)  # fixed: the digest depends only on the arguments


def entries(n: int) -> list[Any]:
    from healthledger.audit.entries import AccessEntry

    return [AccessEntry(time=T0, actor="client-7", organization="Organization/h1", role="system", purpose="TREAT",
                        action="read", resource_type="Patient", resource_id=f"p{i}", patient_pseudonym=f"{i:064x}",
                        decision="permit", reason="organization-default") for i in range(n)]


def sequence_all(sessions: Any, batch: int) -> int:
    """What the relay worker's _sequence_log does: short transactions of `batch` entries until caught up."""
    from healthledger.audit.log import integrate, tree_head

    done = 0
    while True:
        with sessions.begin() as session:
            before = tree_head(session).size
            after = integrate(session, datetime.now(UTC), limit=batch).size
        done += after - before
        if after - before < batch:
            return done


def tree_digest(sessions: Any) -> dict[str, str]:
    from sqlalchemy import text

    from healthledger.audit.log import tree_head

    def digest(rows: Any) -> str:
        return hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()[:16]

    with sessions.begin() as s:
        return {
            "root": tree_head(s).root.hex(),
            "nodes": digest(s.execute(text("SELECT level, idx, hash FROM audit_nodes ORDER BY level, idx"))),
            "leaf_indexes": digest(s.execute(text("SELECT leaf_index FROM access_log ORDER BY id"))),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    import sqlalchemy as sa
    from sqlalchemy import event

    from healthledger.audit.log import record_accesses
    from healthledger.db import make_engine, session_factory, upgrade

    schema = ""
    with tempfile.TemporaryDirectory(prefix="hl-bench-sequencing-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'log.db'}"
        if args.database_url:
            schema = f"hl_bench_seq_{secrets.token_hex(4)}"
            admin = sa.create_engine("postgresql+psycopg://" + args.database_url.removeprefix("postgresql://"))
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            url = f"{args.database_url}{'&' if '?' in args.database_url else '?'}options=-csearch_path%3D{schema}"
        engine = make_engine(url)
        try:
            upgrade(engine)
            sessions = session_factory(engine)
            batch = entries(args.entries)
            with engine.begin() as conn:
                for start in range(0, len(batch), 1000):
                    record_accesses(conn, batch[start : start + 1000])

            statements: Counter[str] = Counter()
            started_at: dict[int, float] = {}

            @event.listens_for(engine, "before_cursor_execute")
            def _before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
                started_at[id(conn)] = time.perf_counter()

            @event.listens_for(engine, "after_cursor_execute")
            def _after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
                statements[" ".join(statement.split())[:60]] += time.perf_counter() - started_at.pop(id(conn))

            profiler = cProfile.Profile() if args.profile else None
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            done = sequence_all(sessions, args.batch)
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            event.remove(engine, "before_cursor_execute", _before)
            event.remove(engine, "after_cursor_execute", _after)
            digest = tree_digest(sessions)
        finally:
            engine.dispose()
            if schema:
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                admin.dispose()

    database = "postgresql" if args.database_url else "sqlite"
    print(f"{done} entries sequenced in transactions of {args.batch} ({database}): "
          f"{cpu / done * 1e6:.1f} µs CPU, {wall / done * 1e6:.1f} µs wall per entry")
    print("SQL, µs per entry (wall, driver included):")
    for statement, seconds in statements.most_common(8):
        print(f"  {seconds / done * 1e6:7.2f}  {statement}")
    print(f"tree: {digest}")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "access_log_sequencing", "database": database, "entries": done, "batch": args.batch,
        "cpu_us_per_entry": cpu / done * 1e6, "wall_us_per_entry": wall / done * 1e6,
        "sql_us_per_entry": {k: v / done * 1e6 for k, v in statements.most_common()}, "tree": digest,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
