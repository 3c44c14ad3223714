"""What the JSON-type check of primitives (fhir_adapters/json_types.py) adds to validating a resource.

    .venv/bin/python benchmarks/json_types.py [--resources 3000] [--rounds 5]

Validates bulk NDJSON resources from ../shared/fixtures/bulk-10-patients with `parse_resource`, with the check
and with it switched off, interleaved, best of `--rounds`, in CPU time (the machine may be shared). Prints the
figures and writes benchmarks/results/json_types.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fhir_adapters import validation
from fhir_adapters.json_types import check_json_types

BULK = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "bulk-10-patients"


def load(count: int) -> list[dict[str, Any]]:
    lines = [line for path in sorted(BULK.glob("*.ndjson")) for line in path.read_text().splitlines() if line.strip()]
    step = max(1, len(lines) // count)
    return [validation.loads_json(line) for line in lines[::step][:count]]


def cpu_seconds(resources: list[dict[str, Any]], run: Any) -> float:
    start = time.process_time()
    for resource in resources:
        run(resource)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    resources = load(args.resources)
    for resource in resources[:100]:
        validation.parse_resource(resource)  # warm: models imported, tables derived
    with_check, without, alone = [], [], []
    try:
        for _ in range(args.rounds):
            validation.check_json_types = check_json_types
            with_check.append(cpu_seconds(resources, validation.parse_resource))
            validation.check_json_types = lambda *_: None
            without.append(cpu_seconds(resources, validation.parse_resource))
            alone.append(cpu_seconds(resources, lambda r: check_json_types(r, r["resourceType"], r["resourceType"])))
    finally:
        validation.check_json_types = check_json_types
    n = len(resources)
    result = {
        "resources": n,
        "rounds": args.rounds,
        "validate_without_check_us": min(without) / n * 1e6,
        "validate_with_check_us": min(with_check) / n * 1e6,
        "check_alone_us": min(alone) / n * 1e6,
    }
    print(f"validation of {n} bulk resources, CPU per resource (best of {args.rounds}): "
          f"{result['validate_without_check_us']:.0f} µs without the JSON-type check, "
          f"{result['validate_with_check_us']:.0f} µs with it; the check alone {result['check_alone_us']:.1f} µs")
    out = Path(__file__).parent / "results" / "json_types.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
