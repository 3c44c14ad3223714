"""Bulk NDJSON import throughput (resources/s) on SQLite, privacy on vs off, with where the time goes.

Usage: .venv/bin/python benchmarks/import_throughput.py [--data DIR] [--runs N]
Writes benchmarks/results/import_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_adapters import bundles as fhir_bundles
from fhir_adapters import validation as fhir_validation
from healthledger.config import Settings
from healthledger.db import make_engine, upgrade
from healthledger.keys import LocalFileKeyProvider
from healthledger.store.importer import Importer, discover
from healthledger.store.repository import store_for_settings

DEFAULT_DATA = ROOT.parent / "shared" / "fixtures" / "bulk-10-patients"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_import(data: Path, *, privacy: bool, workers: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        settings = Settings(data_dir=data_dir, privacy_off_for_benchmark=not privacy, load_demo_data=False)
        engine = make_engine(settings.database_url)
        upgrade(engine)
        store = store_for_settings(engine, LocalFileKeyProvider(settings.keys_dir), settings)
        started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
        report = Importer(store, workers=workers).import_paths([data])
        elapsed = time.perf_counter() - started
        cpu, children = time.process_time() - cpu, _children_cpu() - children
        engine.dispose()
    if report.rejected:
        raise SystemExit(f"{report.rejected} resources were rejected; the benchmark needs clean input")
    n = report.imported
    return {
        "resources": n,
        "seconds": elapsed,
        "resources_per_second": n / elapsed,
        # CPU per resource is what the machine's load does not distort much: main process (seal, HMAC
        # if inline, SQL) and worker processes (parse, R4B validation, index terms, HMAC).
        "main_cpu_ms_per_resource": 1000 * cpu / n,
        "worker_cpu_ms_per_resource": 1000 * children / n,
    }


def validation_only(data: Path) -> dict[str, float]:
    """Parsing and R4B validation alone, the floor of any import that validates every resource."""
    lines = [line for f in discover([data]) for line in f.read_text().splitlines()]
    started = time.perf_counter()
    n = 0
    for _, item in fhir_bundles.read_ndjson(lines):
        if isinstance(item, dict):
            fhir_validation.parse_resource(item)
            n += 1
    elapsed = time.perf_counter() - started
    return {"resources": n, "seconds": elapsed, "resources_per_second": n / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="validation processes (default: CPU count)")
    args = parser.parse_args()
    fhir_validation.parse_resource({"resourceType": "Patient"})  # warm the model imports
    results: dict[str, object] = {"data": str(args.data), "backend": "sqlite", "runs": args.runs}
    results["load_average_before"] = os.getloadavg()
    results["cpus"] = os.cpu_count()
    for label, privacy, workers in (
        ("privacy_on", True, args.workers),
        ("privacy_off", False, args.workers),
        ("privacy_on_single_process", True, 0),
    ):
        runs = [run_import(args.data, privacy=privacy, workers=workers) for _ in range(args.runs)]
        best = max(runs, key=lambda r: r["resources_per_second"])
        results[label] = {**best, "median_resources_per_second": statistics.median(r["resources_per_second"] for r in runs)}
        print(f"{label:26s} {best['resources']:6d} resources  {best['resources_per_second']:7.0f} resources/s "
              f"(best of {args.runs}, {best['seconds']:.2f} s; CPU ms/resource: main "
              f"{best['main_cpu_ms_per_resource']:.2f}, workers {best['worker_cpu_ms_per_resource']:.2f})")
    results["load_average_after"] = os.getloadavg()
    results["validation_only"] = validation_only(args.data)
    on = results["privacy_on"]["resources_per_second"]  # type: ignore[index]
    off = results["privacy_off"]["resources_per_second"]  # type: ignore[index]
    results["privacy_overhead_ratio"] = off / on
    print(f"validation alone (one process): {results['validation_only']['resources_per_second']:.0f} resources/s")  # type: ignore[index]
    print(f"load average before/after: {results['load_average_before']} / {results['load_average_after']}")
    print(f"privacy overhead: {off / on:.2f}x (time with privacy / time without)")
    out = ROOT / "benchmarks" / "results" / "import_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
