"""Cross-hospital reads: how long B waits for A, against reading the same data locally.

Two real `healthledger serve` instances on loopback (SQLite each, one anvil node with the consortium's
MemberRegistry), set up as tests/integration/test_federation_three_hospitals.py does: a patient at A with
OBSERVATIONS Observations grants B, makes a record locator, B links and fetches. Then:

- token: B's server asking A's `/auth/token` (assertion signed ES384, directory and grant checked), per request;
- remote search: `GET A/fhir/Observation?patient=...&_count=50` with B's member token (the consent engine decides
  each record under the named Consent, A logs each);
- local search: the same search at B over B's copies of those records (B's development token);
- full fetch: `$federation-fetch` at B end to end with every record new to B (token, eight searches, the
  encrypted writes, Provenance), repeated FETCHES times: before each, B's copies are deleted and the link's
  watermark cleared, so each run copies all OBSERVATIONS records again; records/s against a local read of the
  same records at B;
- refresh: `$federation-fetch` with nothing new (token, eight searches of what changed, eight id listings of what
  A still shows, nothing written);
- throughput of the remote and the local search with THREADS concurrent clients.

Usage: .venv/bin/python benchmarks/federation.py [--samples 200] [--observations 20] [--threads 4] [--fetches 20]
Writes benchmarks/results/federation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
# The project first: tests/fhir_adapters (a folder of tests) would otherwise stand in for the fhir_adapters package.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "federation.json"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def timed(call: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def throughput(call: Any, threads: int, seconds: float) -> float:
    done = [0] * threads
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            call()
            done[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return round(sum(done) / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--observations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument("--fetches", type=int, default=20, help="repeated full fetches")
    args = parser.parse_args()

    from sqlalchemy import text
    from support import node_tool

    from healthledger.db import make_engine
    from healthledger.federation.client import client_assertion
    from healthledger.federation.keys import MemberKeys
    from healthledger.keys import LocalFileKeyProvider
    from tests.integration.anvil import running_anvil
    from tests.integration.test_federation_three_hospitals import (
        ASSERTION_TYPE,
        DEV,
        Hospital,
        set_up_consortium,
        set_up_patient,
    )

    root = Path(tempfile.mkdtemp(prefix="federation-bench-"))
    with running_anvil(node_tool("anvil")) as anvil:
        a = Hospital("hospital-a", "Hospital A", root / "a", "", anvil)
        b = Hospital("hospital-b", "Hospital B", root / "b", "", anvil)
        try:
            set_up_consortium(anvil, [a, b])
            pid, cid, fay = set_up_patient(a, observations=args.observations)
            locator = fay.post(f"Consent/{cid}/$record-locator", {"resourceType": "Parameters"}).json()
            locator_text = locator["parameter"][0]["valueString"]
            b_pid = b.post("/fhir/Patient", {"resourceType": "Patient"}).json()["id"]
            assert b.post(f"/fhir/Patient/{b_pid}/$link-record", {"resourceType": "Parameters", "parameter": [
                {"name": "locator", "valueString": locator_text}]}).status_code == 200
            started = time.perf_counter()
            first = b.post(f"/fhir/Patient/{b_pid}/$federation-fetch")
            first_fetch = time.perf_counter() - started
            assert first.status_code == 200, first.text

            keys = MemberKeys.load_or_create(b.settings.keys_dir, LocalFileKeyProvider(b.settings.keys_dir))
            endpoint = f"{a.base}/auth/token"
            http = requests.Session()

            def token() -> str:
                assertion = client_assertion(keys.current, "hospital-b", endpoint, purpose="TREAT",
                                             user="Practitioner/bench", consent_reference=f"{a.base}/fhir/Consent/{cid}",
                                             now=int(time.time()))
                resp = http.post(endpoint, timeout=30, data={
                    "grant_type": "client_credentials", "scope": "system/*.rs",
                    "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})
                assert resp.status_code == 200, resp.text
                return str(resp.json()["access_token"])

            bearer = token()
            remote_url = f"{a.base}/fhir/Observation?patient=Patient/{pid}&_count=50"
            local_url = f"{b.base}/fhir/Observation?patient=Patient/{b_pid}&_count=50"

            def remote() -> None:
                resp = http.get(remote_url, timeout=30, headers={"Authorization": f"Bearer {bearer}", "Accept": "application/fhir+json"})
                assert resp.status_code == 200 and len(resp.json().get("entry", [])) == args.observations, resp.text[:300]

            def local() -> None:
                resp = http.get(local_url, timeout=30, headers=DEV)
                assert resp.status_code == 200 and len(resp.json().get("entry", [])) == args.observations, resp.text[:300]

            def refresh() -> None:
                assert b.post(f"/fhir/Patient/{b_pid}/$federation-fetch").status_code == 200

            b_engine = make_engine(b.settings.database_url)

            def full_fetch() -> float:
                """One fetch that copies every record again (the copies deleted, the watermark cleared first)."""
                copies = http.get(local_url, timeout=30, headers=DEV).json().get("entry", [])
                for entry in copies:
                    assert http.delete(f"{b.base}/fhir/Observation/{entry['resource']['id']}", headers=DEV,
                                       timeout=30).status_code in (200, 204)
                with b_engine.begin() as conn:
                    conn.execute(text("UPDATE federation_record_links SET last_fetch_at = NULL"))
                started = time.perf_counter()
                done = b.post(f"/fhir/Patient/{b_pid}/$federation-fetch")
                elapsed = time.perf_counter() - started
                fetched = {p["name"]: p for p in done.json()["parameter"][0]["part"]}
                assert "refused" not in fetched and fetched["fetched"]["valueInteger"] == args.observations, done.text
                return elapsed

            for call in (remote, local):
                for _ in range(20):
                    call()  # warm: tokens verified once per worker, index and key caches
            fetches = [full_fetch() for _ in range(args.fetches)]
            local_reads = timed(local, args.samples)
            results: dict[str, Any] = {
                "observations": args.observations,
                "first_fetch_s": round(first_fetch, 3),
                "full_fetch": percentiles(fetches),
                "full_fetch_records_per_s": round(args.observations / statistics.median(fetches), 1),
                "local_read_records_per_s": round(args.observations / statistics.median(local_reads), 1),
                "token_exchange": percentiles(timed(token, min(args.samples, 100))),
                "remote_search": percentiles(timed(remote, args.samples)),
                "local_search": percentiles(local_reads),
                "refresh_fetch": percentiles(timed(refresh, max(10, args.samples // 10))),
                "threads": args.threads,
                "remote_search_per_s": throughput(remote, args.threads, args.seconds),
                "local_search_per_s": throughput(local, args.threads, args.seconds),
            }
        finally:
            for h in (a, b):
                h.served.kill()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"first full fetch of {args.observations} Observations: {results['first_fetch_s']} s")
    print(f"{'':16} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
    for name in ("token_exchange", "remote_search", "local_search", "full_fetch", "refresh_fetch"):
        r = results[name]
        print(f"{name:16} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['n']:>5}")
    print(f"full fetch: {results['full_fetch_records_per_s']} records/s (p50); local read of the same records at B: "
          f"{results['local_read_records_per_s']} records/s")
    print(f"search throughput with {args.threads} clients: remote (B->A) {results['remote_search_per_s']}/s, "
          f"local (at B) {results['local_search_per_s']}/s")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
