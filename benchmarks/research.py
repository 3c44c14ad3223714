"""The research workflow's costs: the credential tree for N synthetic patients, re-issuing one patient,
`study join` end to end (warm), and gas per enrolment with its nullifier and the study consent's grant.

    .venv/bin/python benchmarks/research.py [--patients 100000] [--leaf-workers 2] [--leaf-sample 500] [--joins 2] [--reissues 20]

- tree: the first issue for N activated synthetic patients, the path `credentials issue` takes
  (`CredentialIssuer.issue`, SQLite, one transaction): each patient's synthetic facts (`synthetic_facts`)
  encoded, their real leaf (Poseidon of 15 inputs, in `--leaf-workers` processes), attributes sealed under a
  per-patient data key, the leaves written into the tenant's Poseidon tree (zk.merkle.set_leaves over
  research.tree.SqlNodeStore, node hashes by circomlibjs in Node (zk/bulk_poseidon.py), or in Python with
  --python-tree), the credential rows and the root's anchoring write. The identity commitments (made when
  each patient activated) are random field elements. The cost of one leaf alone in one process is measured
  on `--leaf-sample` synthetic patients and reported per leaf, separately.
- re-issue: `CredentialIssuer.issue` for one patient whose facts changed, on that 100k tree: encode, leaf,
  20 node hashes, sealed attributes, database writes and the anchoring write queued (median of --reissues).
- join: the patient's side over real HTTP against the app on loopback (sign-in, credential, local check,
  snarkjs proof in a warm Node worker, $enrol with Python verification and the signed study consent),
  median of --joins patients after one warm-up join; the embedded chain mines the writes afterwards.
- gas: receipts of StudyRegistry.enrolFor (proof, nullifier, counter) and ConsentRegistry.grantBySig (the study
  consent's grant by the pseudonym) on the embedded chain.

Prints a table and writes benchmarks/results/research.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fhir_adapters.eligibility import EligibilityFacts
from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    MAX_PARTICIPANTS_URL,
)
from zk.credential import PatientAttributes, condition_hasher, encode, identity_commitment, leaf
from zk.field import R

PASSWORD = "benchmark password 1"


def leaf_cost(sample: int) -> float:
    """Milliseconds per real leaf (encode + Poseidon of 15 inputs) over `sample` synthetic patients."""
    rng = random.Random(3)
    hasher = condition_hasher(b"benchmark condition key........")
    codes = [f"icd10|{c}" for c in ("E11", "I10", "E66", "J45", "N18.3", "F32")]
    commitment = identity_commitment(12345)
    started = time.perf_counter()
    for _ in range(sample):
        patient = PatientAttributes(date(1930, 1, 1) + timedelta(days=rng.randrange(30000)), rng.choice(["female", "male"]),
                                    tuple(rng.sample(codes, rng.randrange(0, 4))),
                                    {"bmi": Decimal(rng.randrange(1800, 4000)) / 100}, 1)
        leaf(commitment, encode(patient, hasher))
    return (time.perf_counter() - started) * 1000 / sample


def setup_service(folder: Path) -> Any:
    from healthledger.app import bootstrap
    from healthledger.config import Settings

    settings = Settings(data_dir=folder, tenant="bench", load_demo_data=False, dev_token="bench-dev-token",
                        login_rate_limit="100000 per minute")
    bootstrap(settings)
    return settings


CONDITION_CODES = tuple(f"icd10|{c}" for c in ("E11", "I10", "E66", "J45", "N18.3", "F32", "E78.5", "K21.9"))


def synthetic_facts(patient_id: str) -> EligibilityFacts:
    """One synthetic patient's eligibility facts, a function of their id (so the same on every run)."""
    rng = random.Random(patient_id)
    labs = {name: (Decimal(rng.randrange(low, high)) / 10 if rng.random() < 0.7 else None)
            for name, low, high in (("hba1c", 40, 120), ("bmi", 160, 450), ("egfr", 150, 1200))}
    return EligibilityFacts(patient_id, date(1925, 1, 1) + timedelta(days=rng.randrange(36_000)),
                            rng.choice(("female", "male")), tuple(rng.sample(CONDITION_CODES, rng.randrange(0, 5))),
                            labs)


def tree_and_reissue(settings: Any, patients: int, reissues: int, *, python_only: bool = False,
                     leaf_workers: int = 1) -> dict[str, Any]:
    from healthledger.db import make_engine
    from healthledger.keys import key_provider_for
    from healthledger.research.credentials import CredentialIssuer, identity_secret
    from healthledger.research.models import IdentityCommitment
    from healthledger.research.worker import bulk_pair_hasher
    from healthledger.store.repository import store_for_settings

    engine = make_engine(settings.database_url or f"sqlite:///{settings.data_dir / 'healthledger.db'}")
    store = store_for_settings(engine, key_provider_for(settings.key_provider, settings.keys_dir), settings)
    # N activated patients. Their identity commitments were stored when each activated (one Poseidon each, then,
    # not now): random field elements stand in for them; everything after is what `credentials issue` does.
    rng = random.Random(7)
    rows = [{"tenant": store.tenant, "patient_ref": f"Patient/synthetic-{i:06d}", "commitment": str(rng.randrange(1, R)),
             "created_at": time.time()} for i in range(patients)]
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(IdentityCommitment.__table__.insert(), rows[start:start + 5000])
    issuer = CredentialIssuer(store)
    started = time.perf_counter()
    with bulk_pair_hasher() as hasher, engine.begin() as conn:
        report = issuer.issue(conn, None, facts_of=lambda _conn, pid: synthetic_facts(pid),
                              hash_pairs=None if python_only else hasher, leaf_workers=leaf_workers)
        hashed_by = "python" if python_only else "node (circomlibjs)"
    tree_s = time.perf_counter() - started
    assert report.issued == patients, report
    print(f"credentials for {patients:,} synthetic patients (facts encoded, leaves in {leaf_workers} process(es), "
          f"attributes sealed, tree with node hashes by {hashed_by}, root queued): {tree_s:.1f} s", flush=True)

    issuer = CredentialIssuer(store)
    ref = "Patient/bench-patient"
    with engine.begin() as conn:
        conn.execute(IdentityCommitment.__table__.insert().values(
            tenant=store.tenant, patient_ref=ref, commitment=str(identity_commitment(identity_secret(b"k" * 32))),
            created_at=time.time()))

    def facts(bmi: int) -> Any:
        return lambda _conn, pid: EligibilityFacts(pid, date(1970, 1, 2), "female", ("icd10|E11",),
                                                   {"hba1c": None, "bmi": Decimal(bmi) / 10, "egfr": None})

    with engine.begin() as conn:
        issuer.issue(conn, [ref], facts_of=facts(300))  # appended after the N leaves
    times = []
    for k in range(reissues):
        t0 = time.perf_counter()
        with engine.begin() as conn:
            report = issuer.issue(conn, [ref], facts_of=facts(301 + k))
        times.append((time.perf_counter() - t0) * 1000)
        assert report.reissued == 1
    engine.dispose()
    return {"tree_seconds": round(tree_s, 2), "tree_hashes_by": hashed_by, "leaf_workers": leaf_workers,
            "reissue_ms_median": round(statistics.median(times), 2),
            "reissue_ms_max": round(max(times), 2)}


def join_and_gas(settings: Any, joins: int) -> dict[str, float]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session
    from werkzeug.serving import make_server

    from healthledger.app import create_app
    from healthledger.auth.users import AccountNames, create_user
    from healthledger.db import session_factory
    from healthledger.keys import key_provider_for
    from healthledger.ledger import outbox
    from healthledger.ledger.chain import embedded_chain
    from healthledger.ledger.deploy import ensure_deployment
    from healthledger.ledger.models import OutboxItem
    from healthledger.ledger.patient_keys import create_patient_key
    from healthledger.principal import Principal
    from healthledger.research.patient_client import PatientClient, UrllibTransport
    from healthledger.research.studies import ETHICS_APPROVAL_URL, Studies
    from healthledger.store.access import SYSTEM
    from zk.prover import CircuitFiles, NodeProver

    app = create_app(settings)
    store = app.extensions["healthledger.store"]
    engine = store.engine
    sessions = session_factory(engine)
    provider = key_provider_for(settings.key_provider, settings.keys_dir)
    chain = embedded_chain(settings.data_dir, provider)
    with Session(engine) as s:
        ensure_deployment(chain, s, embedded=True, now=datetime.now(UTC))

    def sync() -> None:
        outbox.drain(sessions, chain, time.time)

    names = [f"joiner{i}" for i in range(joins + 1)]
    for name in names:
        stored, _ = store.create({"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-06"},
                                 principal=SYSTEM)
        store.create({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{stored.id}"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]},
                      "effectiveDateTime": "2025-01-02", "valueQuantity": {"value": 32.5, "unit": "kg/m2"}},
                     principal=SYSTEM)
        with sessions.begin() as s:
            create_user(s, AccountNames(store), username=name, password=PASSWORD, role="patient",
                        now=datetime.now(UTC), patient_id=stored.id)
            create_patient_key(s, f"Patient/{stored.id}", PASSWORD, provider, now=time.time())
    researcher = Principal("bench-researcher", role="researcher", organization="Organization/university", scopes=None)
    studies = Studies(store)
    study, _ = studies.create({
        "resourceType": "ResearchStudy", "title": "Benchmark study", "sponsor": {"reference": "Organization/university"},
        "principalInvestigator": {"reference": "Practitioner/pi"}, "period": {"end": "2099-01-01"},
        "extension": [
            {"url": CRITERIA_URL, "valueString": json.dumps({"age": {"$gte": 18}, "bmi": {"$gte": 30}})},
            {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": "Observation"}]},
            {"url": DATA_PERIOD_URL, "valuePeriod": {"start": "2010-01-01"}},
            {"url": MAX_PARTICIPANTS_URL, "valuePositiveInt": 1000},
            {"url": ETHICS_APPROVAL_URL, "valueIdentifier": {"value": "IRB-bench"}},
        ]}, researcher)
    studies.publish(study.id, researcher)
    sync()
    studies.settle()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    # Credentials activated and anchored beforehand (the first visit to the study page does that).
    for name in names:
        client = PatientClient(UrllibTransport(base))
        client.sign_in(name, PASSWORD)
        pid = client.patient_id()
        client._fhir("POST", f"Patient/{pid}/$eligibility-credential", {"resourceType": "Parameters", "parameter": [
            {"name": "password", "valueString": PASSWORD}]}, what="activation")
        sync()
    totals, sign_ins, steps = [], [], []
    with NodeProver(CircuitFiles.committed()) as prover:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            client = PatientClient(UrllibTransport(base))
            client.sign_in(name, PASSWORD)
            signed_in = time.perf_counter()
            joined = client.join(study.id, PASSWORD, prover)
            done = time.perf_counter()
            if i == 0:
                continue  # warm-up: Node worker start, caches
            sign_ins.append((signed_in - t0) * 1000)
            totals.append((done - t0) * 1000)
            steps.append(joined.timings)
    sync()
    with Session(engine) as s:
        items = {kind: s.scalars(select(OutboxItem.tx_hash).where(OutboxItem.kind == kind)).all()
                 for kind in ("study-enrol", "grant")}
    enrol_gas = [int(chain.receipt(h)["gasUsed"]) for h in items["study-enrol"] if h]
    grant_gas = [int(chain.receipt(h)["gasUsed"]) for h in items["grant"] if h]
    server.shutdown()
    chain.close()
    engine.dispose()
    return {
        "join_ms_median": round(statistics.median(totals), 1),
        "join_sign_in_ms_median": round(statistics.median(sign_ins), 1),
        "join_credential_ms_median": round(statistics.median(t.credential_ms for t in steps), 1),
        "join_prove_ms_median": round(statistics.median(t.prove_ms for t in steps), 1),
        "join_enrol_ms_median": round(statistics.median(t.enrol_ms for t in steps), 1),
        "enrol_gas": max(enrol_gas), "study_grant_gas": max(grant_gas),
        "enrolment_total_gas": max(enrol_gas) + max(grant_gas),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--leaf-sample", type=int, default=500)
    parser.add_argument("--joins", type=int, default=2)
    parser.add_argument("--reissues", type=int, default=20)
    parser.add_argument("--python-tree", action="store_true", help="hash the tree in Python (no Node worker)")
    parser.add_argument("--leaf-workers", type=int, default=os.cpu_count() or 1,
                        help="processes computing the leaves (default: one per CPU)")
    args = parser.parse_args()
    results: dict[str, Any] = {"patients": args.patients}
    with tempfile.TemporaryDirectory(prefix="hl-research-bench-") as tmp:
        settings = setup_service(Path(tmp) / "var")
        results["leaf_ms"] = round(leaf_cost(args.leaf_sample), 2)
        print(f"leaf (encode + Poseidon-15): {results['leaf_ms']} ms each over {args.leaf_sample}", flush=True)
        results.update(tree_and_reissue(settings, args.patients, args.reissues, python_only=args.python_tree,
                                        leaf_workers=args.leaf_workers))
        print(f"re-issue one patient: {results['reissue_ms_median']} ms median", flush=True)
        results.update(join_and_gas(settings, args.joins))
    rows = [
        ("credential tree", f"{args.patients:,} patients", f"{results['tree_seconds']} s", "<= 30 s"),
        ("leaf hashing", "per patient", f"{results['leaf_ms']} ms", ""),
        ("re-issue one patient", "median", f"{results['reissue_ms_median']} ms", "<= 20 ms"),
        ("study join, warm", "median", f"{results['join_ms_median']} ms", "<= 3,000 ms"),
        ("  sign-in", "", f"{results['join_sign_in_ms_median']} ms", ""),
        ("  credential", "", f"{results['join_credential_ms_median']} ms", ""),
        ("  proof (Node worker)", "", f"{results['join_prove_ms_median']} ms", ""),
        ("  $enrol", "", f"{results['join_enrol_ms_median']} ms", ""),
        ("gas: enrolFor", "", f"{results['enrol_gas']:,}", ""),
        ("gas: study grant", "", f"{results['study_grant_gas']:,}", ""),
        ("gas: enrolment total", "", f"{results['enrolment_total_gas']:,}", ""),
    ]
    for row in rows:
        print(f"{row[0]:<24} {row[1]:<16} {row[2]:>14} {row[3]:>12}")
    out = REPO / "benchmarks" / "results" / "research.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
