"""Median consent decision time for a patient with 20 Consents (issue target: under 50 µs).

    .venv/bin/python benchmarks/consent_decision.py [--consents 20] [--rounds 20000]

Prints the figures and writes benchmarks/results/consent_decision.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from fhir_adapters.consent import consent_rules, instant_range
from healthledger.consent.engine import GrantStatus, PatientContext, Policy, Principal, ResourceFacts, decide

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
TYPES = ["Observation", "Condition", "MedicationRequest", "Encounter", "Procedure"]


def make_consents(n: int) -> list[dict]:
    """A realistic mix: per-organisation permits with nested denies, data periods and labels."""
    out = []
    for i in range(n):
        org = f"Organization/org-{i}"
        out.append({
            "resourceType": "Consent", "id": f"c{i}", "status": "active" if i % 7 else "inactive",
            "patient": {"reference": "Patient/p1"},
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "provision": {
                "type": "permit", "period": {"start": "2024-01-01", "end": "2027-12-31"},
                "actor": [{"reference": {"reference": org}}],
                "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
                "provision": [
                    {"type": "deny", "class": [{"code": TYPES[i % len(TYPES)]}]},
                    {"type": "deny", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]},
                    {"type": "deny", "dataPeriod": {"start": "2010", "end": "2015"}},
                ],
            },
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()

    rules = tuple(consent_rules(c) for c in make_consents(args.consents))
    grants = {r.consent_id: GrantStatus.LIVE for r in rules}
    ctx = PatientContext("p1", rules, grants, frozenset({"Organization/home"}), 1.0)
    policy = Policy()
    # The last organisation's consent decides: every consent is evaluated (the worst case for a permit).
    who = Principal("dr", "clinician", f"Organization/org-{args.consents - 1}", "TREAT")
    res = ResourceFacts("Observation", "o1", "p1", codes=frozenset({("http://loinc.org", "4548-4")}),
                        date_range=instant_range("2025-03-04"))
    assert decide(who, "read", res, ctx, policy, NOW).permitted

    samples = []
    for _ in range(args.rounds):
        t0 = time.perf_counter_ns()
        decide(who, "read", res, ctx, policy, NOW)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    result = {
        "consents": args.consents,
        "rounds": args.rounds,
        "median_us": statistics.median(samples) / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "target_median_us": 50,
    }
    print(f"consent decision, {args.consents} consents: median {result['median_us']:.1f} µs, "
          f"p99 {result['p99_us']:.1f} µs (target: median < 50 µs)")
    out = Path(__file__).parent / "results" / "consent_decision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
