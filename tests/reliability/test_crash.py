"""Crash: kill -9 the whole service in the middle of a bulk import through the API (transaction Bundles of a Patient
and its Observations) and of a burst of consent grants that patients sign over HTTP (Consent, then `$sign` from
their web session); then, separately, the chain node in the middle of both. After the restarts every acknowledged
write reads back as it was sent, no import Bundle is half-written, every stored version opens, every acknowledged
grant is live, every queued chain write is confirmed exactly once on the chain, and `audit verify` passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from consent_world import PASSWORD, password_parameters, permit_consent
from serving import PatientBrowser, Served, wait_for
from support import ROOT

from healthledger.app import bootstrap
from healthledger.auth.users import AccountNames, create_user
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.keys import key_provider_for
from healthledger.ledger.chain import chain_for
from healthledger.ledger.deploy import attach_deployments
from healthledger.ledger.patient_keys import Argon2Params, create_patient_key
from healthledger.store.repository import store_for_settings
from tests.reliability.traffic import HOME, Client, observation, register_ehr, token

pytestmark = pytest.mark.slow
PATIENTS = 3  # each signs Consents on a thread of its own
BUNDLE = 12  # resources per import transaction: one Patient and its Observations
# $sign unlocks the patient's key with argon2id; what is crashed here is the write path, not the KDF's cost.
CHEAP_KDF = Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)
TRANSPORT = (OSError, requests.RequestException)


@dataclass
class Sent:
    """What was sent and what the API acknowledged (2xx), from every thread."""

    bundles: list[tuple[bool, dict[tuple[str, str], dict[str, Any]]]] = field(default_factory=list)
    consents: list[tuple[str, str]] = field(default_factory=list)  # (patient name, Consent id): `$sign` said 200
    refused: Counter[int] = field(default_factory=Counter)  # statuses other than the expected 2xx
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged(self) -> tuple[int, int]:
        with self.lock:
            return sum(1 for ack, _ in self.bundles if ack), len(self.consents)

    def answered(self, status: int, expected: int) -> bool:
        with self.lock:
            self.requests += 1
            if status != expected:
                self.refused[status] += 1
        return status == expected


def _import_bundle(prefix: str, n: int) -> dict[tuple[str, str], dict[str, Any]]:
    """One Patient of the home organisation and its Observations, with ids chosen by the importer (PUT)."""
    patient_id = f"{prefix}-{n}"
    resources = {("Patient", patient_id): {
        "resourceType": "Patient", "id": patient_id, "managingOrganization": {"reference": HOME},
        "identifier": [{"system": "urn:example:import", "value": patient_id}]}}
    for i in range(BUNDLE - 1):
        resources[("Observation", f"{patient_id}-{i}")] = observation(patient_id, 40 + i, f"{patient_id}-{i}")
    return resources


def _bulk_import(port: int, bearer: str, prefix: str, stop: threading.Event, sent: Sent) -> None:
    """Transaction Bundles one after another until `stop` (or until the service is gone)."""
    client = Client(port, bearer)
    n = 0
    while not stop.is_set():
        resources = _import_bundle(prefix, n)
        n += 1
        with sent.lock:
            sent.bundles.append((False, resources))
            slot = len(sent.bundles) - 1
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"{t}/{i}"}} for (t, i), r in resources.items()]
        try:
            status, _ = client.call("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
        except TRANSPORT:
            if stop.is_set():
                return
            time.sleep(0.05)
            continue
        if sent.answered(status, 200):
            with sent.lock:
                sent.bundles[slot] = (True, resources)


def _grant_burst(browser: PatientBrowser, name: str, patient_id: str, stop: threading.Event, sent: Sent) -> None:
    """The patient proposes a Consent for the home organisation and signs it, again and again, until `stop`."""
    while not stop.is_set():
        try:
            created = browser.post("Consent", permit_consent(patient_id, HOME, status="proposed"))
            if not sent.answered(created.status_code, 201):
                continue
            consent_id = str(created.json()["id"])
            signed = browser.post(f"Consent/{consent_id}/$sign", password_parameters())
        except TRANSPORT:
            if stop.is_set():
                return
            time.sleep(0.05)
            continue
        if sent.answered(signed.status_code, 200):
            with sent.lock:
                sent.consents.append((name, consent_id))


def _run(port: int, bearer: str, browsers: dict[str, tuple[PatientBrowser, str]], prefix: str, sent: Sent,
         stop: threading.Event) -> list[threading.Thread]:
    threads = [threading.Thread(target=_bulk_import, args=(port, bearer, prefix, stop, sent))]
    threads += [threading.Thread(target=_grant_burst, args=(browser, name, pid, stop, sent))
                for name, (browser, pid) in browsers.items()]
    for t in threads:
        t.start()
    return threads


def _until(sent: Sent, bundles: int, consents: int, what: str) -> None:
    """Wait until at least that many import Bundles and signed Consents are acknowledged in all."""
    assert wait_for(lambda: all(a >= b for a, b in zip(sent.acknowledged(), (bundles, consents), strict=True)),
                    60, poll=0.05), f"{what}: only {sent.acknowledged()} acknowledged, refused {sent.refused}"


def _patients(served: Served, bearer: str, settings: Settings, engine: sa.Engine) -> dict[str, str]:
    """Patients created through the API, each given a web account and a signing key (name -> Patient id)."""
    ehr = Client(served.port, bearer)
    store = store_for_settings(engine, key_provider_for("file", settings.keys_dir), settings)
    patients: dict[str, str] = {}
    for n in range(PATIENTS):
        status, body = ehr.call("POST", "/fhir/Patient", {"resourceType": "Patient",
                                                          "managingOrganization": {"reference": HOME}})
        assert status == 201, body
        patients[f"signer{n}"] = body["id"]
        with session_factory(engine).begin() as s:
            create_user(s, AccountNames(store), username=f"signer{n}", password=PASSWORD, role="patient",
                        now=datetime.now(UTC), patient_id=body["id"])
            create_patient_key(s, f"Patient/{body['id']}", PASSWORD, key_provider_for("file", settings.keys_dir),
                               now=time.time(), params=CHEAP_KDF)
    return patients


def _chain_grants(settings: Settings, engine: sa.Engine) -> Counter[str]:
    """grantId of every ConsentGranted event on the chain, counted (through the running node)."""
    chain = chain_for(settings, key_provider_for("file", settings.keys_dir))
    try:
        with session_factory(engine)() as s:
            records = attach_deployments(chain, s)
        events = chain.get_logs("ConsentRegistry", "ConsentGranted", from_block=min(r.deployment_block for r in records))
        return Counter("0x" + bytes(e["args"]["grantId"]).hex() for e in events)
    finally:
        chain.close()


def _audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")},
           "HEALTHLEDGER_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "healthledger.cli", "audit", "verify"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_kill_9_during_import_and_grants_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    settings = Settings(data_dir=data_dir, load_demo_data=False, home_organization=HOME)
    bootstrap(settings)
    engine = make_engine(settings.database_url)
    client_id, secret = register_ehr(session_factory(engine))
    env = {"HEALTHLEDGER_HOME_ORGANIZATION": HOME, "HEALTHLEDGER_LOGIN_RATE_LIMIT": "1000 per minute"}
    served = Served(data_dir, env=env, args=["--workers", "2"]).start(wait="/readyz")
    faults: list[str] = []
    sent = Sent()
    try:
        bearer = token(served.port, client_id, secret)
        patients = _patients(served, bearer, settings, engine)
        browsers = {name: (PatientBrowser(served.base, name, PASSWORD), pid) for name, pid in patients.items()}
        stop = threading.Event()
        threads = _run(served.port, bearer, browsers, "a", sent, stop)
        _until(sent, 4, 2 * PATIENTS, "before the kill")
        os.killpg(served.process.pid, signal.SIGKILL)  # type: ignore[union-attr]  # the host dies mid-burst
        served.process.wait(timeout=10)  # type: ignore[union-attr]
        faults.append("kill -9 serve (master, gunicorn workers, chain node, ledger worker)")
        at_kill = sent.acknowledged()
        stop.set()
        for t in threads:
            t.join(timeout=60)
        served._keep_log()

        # Second fault: the chain node alone, while the import and the grants go on.
        # On the same port: the EHR's token and the patients' web sessions from before the crash still work.
        served = Served(data_dir, port=served.port, env=env, args=["--workers", "2"]).start(wait="/readyz")
        stop = threading.Event()
        threads = _run(served.port, bearer, browsers, "b", sent, stop)
        before = sent.acknowledged()
        _until(sent, before[0] + 2, before[1] + PATIENTS, "before the node kill")
        node = served.node_pid()
        assert node is not None
        os.kill(node, signal.SIGKILL)
        faults.append("kill -9 chain node during the import and the grants")
        killed = sent.acknowledged()
        _until(sent, killed[0] + 2, killed[1] + PATIENTS, "after the node kill")  # both go on while it is down
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert wait_for(lambda: served.node_pid() not in (None, node), 30), "the chain node was not restarted"

        with engine.connect() as conn:
            bindings = dict(conn.execute(sa.text("select consent_id, grant_id from consent_bindings")).all())
            grants = conn.execute(sa.text("select id from chain_outbox where kind = 'grant'")).scalars().all()

        def states() -> Counter[str]:
            with engine.connect() as conn:
                return Counter(conn.execute(sa.text("select state from chain_outbox where kind = 'grant'")).scalars())

        assert wait_for(lambda: states() == {"confirmed": len(grants)}, 120), states()
        assert [c for _, c in sent.consents if c not in bindings] == []  # every acknowledged grant was queued
        on_chain = _chain_grants(settings, engine)
        assert len(bindings) == len(grants)  # one grant each (one grantee per Consent)
        assert on_chain == Counter(set(bindings.values())), "a queued grant is missing on the chain or is there twice"

        def not_live() -> list[str]:
            return [c for name, c in sent.consents if browsers[name][0].get(f"Consent/{c}").json()["status"] != "active"]


        assert wait_for(lambda: not not_live(), 30, poll=0.3), not_live()  # every acknowledged grant went live

        reader = Client(served.port, bearer)
        changed = []
        for acknowledged, resources in sent.bundles:
            for (resource_type, resource_id), resource in resources.items() if acknowledged else ():
                status, body = reader.call("GET", f"/fhir/{resource_type}/{resource_id}")
                if status != 200 or {k: body.get(k) for k in resource} != resource:
                    changed.append((resource_type, resource_id, status))
        assert changed == []  # every acknowledged write reads back as sent
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select resource_type, resource_id from store_resources")).all()
        stored = {tuple(r) for r in rows}
        half = [next(iter(resources)) for _, resources in sent.bundles if 0 < len(stored & resources.keys()) < BUNDLE]
        assert half == []  # each import Bundle is all there or not at all
        store = store_for_settings(engine, key_provider_for("file", settings.keys_dir), settings)
        unreadable = [r for r in rows if store.read(r[0], r[1]).resource["id"] != r[1]]
        assert unreadable == []  # every stored version opens, those in flight at the kill too
    finally:
        served.kill()
    verified = _audit_verify(data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    imported = sum(1 for ack, _ in sent.bundles if ack)
    in_flight = sum(1 for ack, resources in sent.bundles if not ack and resources.keys() <= stored)
    print(f"\ncrash: faults {len(faults)} ({'; '.join(faults)}); {sent.requests} requests answered, refused "
          f"{dict(sent.refused)}; import Bundles of {BUNDLE} acknowledged {imported} ({at_kill[0]} before the kill -9 of "
          f"serve), {in_flight} more stored whole though unacknowledged, half-written 0; Consents signed over HTTP and "
          f"acknowledged {len(sent.consents)} ({at_kill[1]} before the kill -9), all live; {len(grants)} grants queued, "
          f"confirmed once each on the chain, duplicates 0; {len(rows)} stored versions open, lost 0; audit verify intact")
    engine.dispose()
