"""Run every benchmark in turn (`make bench`); each prints its figures and writes benchmarks/results/*.json.

    .venv/bin/python benchmarks/run_all.py [--skip NAME ...]

The HTTP benchmarks need `wrk` (Debian: apt-get install wrk); they are reported as skipped without it.
Run on an otherwise idle machine: every figure here is wall-clock on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
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
    ("web_pages", []),
    ("research_export", []),
]
NEEDS_WRK = frozenset({"fhir_http", "consent_enforcement"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], help="benchmark names to leave out")
    args = parser.parse_args()
    failures = []
    for name, extra in BENCHMARKS:
        if name in args.skip:
            continue
        if name in NEEDS_WRK and shutil.which("wrk") is None:
            print(f"== {name}: skipped (wrk not installed: apt-get install wrk)")
            continue
        print(f"== {name}", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], cwd=HERE.parent, check=False).returncode
        print(f"== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failures.append(name)
    if failures:
        print("failed: " + ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
