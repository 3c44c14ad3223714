"""Run every benchmark in turn (`make bench`); each prints its figures and writes benchmarks/results/*.json,
then one summary table against issue 15's targets (the privacy tax, on SQLite and PostgreSQL, and gas).

    .venv/bin/python benchmarks/run_all.py [--skip NAME ...] [--only NAME ...] [--database-url URL]

The HTTP benchmarks need `wrk` (`make bench` installs it: scripts/system-deps.sh wrk); they are reported as
skipped without it. `consent_enforcement_postgres` runs the same benchmark on PostgreSQL (default URL: the
local test database; skipped when it does not answer). Run on an otherwise idle machine: every figure here
is wall-clock on 2 cores, and the summary says how loaded the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
POSTGRES_URL = os.environ.get("HEALTHLEDGER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BENCHMARKS = [
    ("consent_decision", []),
    ("denied_vs_missing", []),
    ("gas", []),
    ("zk_verify", []),
    ("zk_prove", ["--anvil"]),
    ("research", []),
    ("import_throughput", []),
    ("outbox_throughput", []),
    ("fhir_http", []),
    ("consent_enforcement", []),
    ("consent_enforcement_postgres", ["--database-url", "{postgres}"]),
    ("web_pages", []),
    ("research_export", []),
    ("federation", []),
]
NEEDS_WRK = frozenset({"fhir_http", "consent_enforcement", "consent_enforcement_postgres"})
GAS_TARGETS = {"anchor_first": 50_000}


def postgres_answers(url: str) -> bool:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine("postgresql+psycopg://" + url.removeprefix("postgresql://"))
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure: the PostgreSQL run is skipped, and says so
        return False


def summary_rows(results: Path = RESULTS) -> list[tuple[str, str, str, str]]:
    """(where, target, measured, met) for every target of issue 15 whose benchmark wrote its results."""
    rows: list[tuple[str, str, str, str]] = []
    for name, where in (("consent_enforcement", "sqlite"), ("consent_enforcement_postgres", "postgresql")):
        path = results / f"{name}.json"
        if not path.exists():
            rows.append((where, "privacy tax", "not run", "-"))
            continue
        document: dict[str, Any] = json.loads(path.read_text())
        load = document.get("machine", {}).get("load_average_1m_at_end")
        for check in document.get("targets", []):
            rows.append((f"{where} (load {load:.1f})" if load is not None else where, check["what"],
                         check["measured"], "met" if check["met"] else "NOT met"))
    gas_path = results / "gas.json"
    if gas_path.exists():
        gas = json.loads(gas_path.read_text())
        for operation, budget in GAS_TARGETS.items():
            if operation in gas:
                rows.append(("embedded chain", f"{operation} <= {budget:,} gas", f"{gas[operation]:,} gas",
                             "met" if gas[operation] <= budget else "NOT met"))
    else:
        rows.append(("embedded chain", "first anchor of a log <= 50,000 gas", "not run", "-"))
    return rows


def print_summary(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in [("where", "target", "measured", "met"), *rows]) for i in range(4)]
    header = ("where", "target", "measured", "met")
    print("\nSummary against issue 15's targets (ratios are enforced/unenforced within one run):")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], help="benchmark names to leave out")
    parser.add_argument("--only", nargs="*", default=[], help="run only these benchmarks (the summary is printed anyway)")
    parser.add_argument("--database-url", default=POSTGRES_URL, help="PostgreSQL for consent_enforcement_postgres")
    parser.add_argument("--summary-only", action="store_true", help="print the summary of the last results, run nothing")
    args = parser.parse_args()
    failures = []
    for name, extra in [] if args.summary_only else BENCHMARKS:
        if name in args.skip or (args.only and name not in args.only):
            continue
        if name in NEEDS_WRK and shutil.which("wrk") is None:
            print(f"== {name}: skipped (wrk not installed: apt-get install wrk, or `make bench`)")
            continue
        if "{postgres}" in extra and not postgres_answers(args.database_url):
            print(f"== {name}: skipped (no PostgreSQL answers at {args.database_url.split('@')[-1]})")
            continue
        script = name.removesuffix("_postgres")
        print(f"== {name}", flush=True)
        started = time.monotonic()
        argv = [a.replace("{postgres}", args.database_url) for a in extra]
        code = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *argv], cwd=HERE.parent, check=False).returncode
        print(f"== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failures.append(name)
    print_summary(summary_rows())
    if failures:
        print("failed: " + ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
