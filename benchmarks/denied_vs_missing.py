"""Can a client tell a denied read from a missing one by its timing? (target: no difference beyond noise)

A denied read answers exactly like a missing one (same status, same body); this measures whether it also
takes as long. The world is tests/consent_world.py (the real app, SMART tokens, the consent engine, the
access log; SQLite): a clinic with no consent asks, alternately, for a patient's Observation it may not
read and for an id that does not exist, through the Flask test client (no network jitter: the server's
own difference, which is what a patient attacker over a network would have to find under more noise).

The search asks for every Observation of that patient (`patient=`, who has `--records` of them) and of a
patient who does not exist: the scan and decisions of a patient's records would take longer the more there
are, so a search pinned to a patient the caller may see nothing of is answered without them.

A second search asks as the hospital's EHR about a patient in its care whose Consent denies every Observation
("search, care"), against a patient who does not exist (whom the EHR would be shown).

For each kind of request (read, vread, instance history, search) it reports both medians, their difference, a
95% bootstrap interval of that difference, and the noise: the difference between two halves of the
*same* kind of request (missing vs missing). The target is a difference inside the noise. Because wall
time on a shared machine moves with everything else running, it also counts the Python function calls
each kind makes (cProfile, deterministic): the work done, whatever the load.

Usage: .venv/bin/python benchmarks/denied_vs_missing.py [--samples 3000] [--records 300]
Writes benchmarks/results/denied_vs_missing.json.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The project first: tests/fhir_adapters (a folder of tests) would otherwise stand in for the fhir_adapters package.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = ROOT / "benchmarks" / "results" / "denied_vs_missing.json"


def bootstrap_median_difference(a: list[float], b: list[float], rng: random.Random, rounds: int = 400) -> tuple[float, float]:
    diffs = []
    for _ in range(rounds):
        diffs.append(statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b))))
    diffs.sort()
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds)]


def calls_per_request(client: object, url: str, headers: dict[str, str], n: int = 50) -> float:
    """Python function calls one request makes (server and test client), averaged over `n`."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(n):
        client.get(url.format(missing=f"counted-{i}"), headers=headers)  # type: ignore[attr-defined]
    profiler.disable()
    return pstats.Stats(profiler).total_calls / n  # type: ignore[attr-defined, no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000, help="requests of each kind per case")
    parser.add_argument("--records", type=int, default=300, help="Observations of the denied patient (the search case)")
    args = parser.parse_args()

    from consent_world import World

    world = World.build(Path(tempfile.mkdtemp(prefix="denied-vs-missing-")))
    client, headers = world.client, world.headers("clinic")
    bob = world.observations["bob"]
    bob_id = world.patients["bob"]
    for i in range(args.records):  # a search's work would grow with them, were they looked at
        world.dev_create({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{bob_id}"},
                          "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                          "effectiveDateTime": f"2024-05-{1 + i % 28:02d}", "valueQuantity": {"value": 60 + i % 40}})
    # A patient of the hospital's own care whose Consent denies every Observation: the hospital's EHR may read
    # them (step 6) but for that; the search of a patient who does not exist is one it would be shown.
    from consent_world import HOSPITAL, deny_consent

    dee = world.add_patient("dee", HOSPITAL)
    world.dev_create(deny_consent(dee, classes=("Observation",)))
    for i in range(args.records):
        world.dev_create({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{dee}"},
                          "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                          "effectiveDateTime": f"2024-06-{1 + i % 28:02d}", "valueQuantity": {"value": 60 + i % 40}})
    world.sync()
    cases = {  # (denied, missing, the status both answer[, the caller's headers])
        "read": (f"/fhir/Observation/{bob}", "/fhir/Observation/{missing}", 404),
        "vread": (f"/fhir/Observation/{bob}/_history/1", "/fhir/Observation/{missing}/_history/1", 404),
        "history": (f"/fhir/Observation/{bob}/_history", "/fhir/Observation/{missing}/_history", 404),
        # One patient id that does not exist, asked again and again as an attacker would (a new id each time
        # would also be a new patient for the consent index to look up, which a known one asked again is not).
        "search": (f"/fhir/Observation?patient={bob_id}", "/fhir/Observation?patient=no-such-patient", 200),
        "search, care": (
            f"/fhir/Observation?patient={dee}", "/fhir/Observation?patient=no-such-patient", 200, world.headers("ehr")),
    }
    rng = random.Random(7)
    results = {}
    print(f"{'request':14} {'denied µs':>10} {'missing µs':>11} {'diff µs':>8} {'95% CI':>18} {'noise µs':>9}"
          f" {'calls d/m':>12}")
    clinic = headers
    for name, (denied_url, missing_url, answer, *caller) in cases.items():
        headers = caller[0] if caller else clinic
        for _ in range(200):  # warm caches (token, index, keys, SQLite pages) for both paths
            client.get(denied_url, headers=headers)
            client.get(missing_url.format(missing="warm-up"), headers=headers)
        denied: list[float] = []
        missing: list[float] = []
        for i in range(args.samples):
            pair = [("d", denied_url), ("m", missing_url.format(missing=f"no-such-{i}"))]
            rng.shuffle(pair)  # neither kind always goes first
            for kind, url in pair:
                start = time.perf_counter()
                resp = client.get(url, headers=headers)
                elapsed = (time.perf_counter() - start) * 1e6
                assert resp.status_code == answer, (url, resp.status_code)
                (denied if kind == "d" else missing).append(elapsed)
        d_med, m_med = statistics.median(denied), statistics.median(missing)
        low, high = bootstrap_median_difference(denied, missing, rng)
        half = len(missing) // 2
        noise = abs(statistics.median(missing[:half]) - statistics.median(missing[half:]))
        calls_denied = calls_per_request(client, denied_url, headers)
        calls_missing = calls_per_request(client, missing_url, headers)
        results[name] = {
            "python_calls_denied": round(calls_denied), "python_calls_missing": round(calls_missing),
            "denied_median_us": round(d_med, 1), "missing_median_us": round(m_med, 1),
            "difference_us": round(d_med - m_med, 1), "difference_ci95_us": [round(low, 1), round(high, 1)],
            "noise_us": round(noise, 1), "relative_difference": round((d_med - m_med) / m_med, 4),
            "samples": args.samples,
        }
        print(f"{name:14} {d_med:10.1f} {m_med:11.1f} {d_med - m_med:8.1f} {f'[{low:.1f}, {high:.1f}]':>18} {noise:9.1f}"
              f" {f'{calls_denied:.0f}/{calls_missing:.0f}':>12}")
    world.close()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": results}, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
