"""Three hospitals as one network, each a real `healthledger serve` on loopback with its own database (A and B on
PostgreSQL schemas of their own, C on SQLite), one shared anvil node holding the consortium's MemberRegistry.

The patient at A grants B; B links the patient by the locator the patient made and fetches; C, with no grant,
gets nothing and cannot tell whether the patient exists; B's key is rotated and the old key stops working; the
patient revokes and B's next fetch is refused; A's `audit verify` passes and the patient's history at A shows
B's reads."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc.jwk import ECKey
from serving import PatientBrowser, Served, wait_for
from sqlalchemy import select
from support import ROOT, node_tool

from healthledger.audit.entries import decode_entry
from healthledger.audit.merkle import leaf_hash, verify_inclusion
from healthledger.audit.models import AccessLogEntry
from healthledger.auth.users import AccountNames, create_user
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.federation.client import client_assertion
from healthledger.federation.keys import MemberKeys
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.chain import load_or_create_operator
from healthledger.ledger.patient_keys import create_patient_key
from healthledger.store.repository import store_for_settings
from tests.integration.anvil import rpc, running_anvil

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.anvil]

PASSWORD = "correct horse battery staple"
FHIR = "application/fhir+json"
DEV = {"Authorization": "Bearer dev-token", "Accept": FHIR, "Content-Type": FHIR}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Hospital:
    org: str
    name: str
    data_dir: Path
    database_url: str
    chain_url: str
    served: Served = field(init=False)

    def __post_init__(self) -> None:
        self.served = Served(self.data_dir, env=self.env())

    def env(self) -> dict[str, str]:
        env = {"HEALTHLEDGER_DATA_DIR": str(self.data_dir), "HEALTHLEDGER_CHAIN_URL": self.chain_url,
               "HEALTHLEDGER_FEDERATION_ORG_ID": self.org, "HEALTHLEDGER_LOAD_DEMO_DATA": "false",
               "HEALTHLEDGER_WORKERS": "1", "HEALTHLEDGER_CHAIN_POLL_SECONDS": "0.3"}
        if self.database_url:
            env["HEALTHLEDGER_DATABASE_URL"] = self.database_url
        return env

    @property
    def base(self) -> str:
        return self.served.base

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, database_url=self.database_url, load_demo_data=False)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
        env.update(self.env(), HEALTHLEDGER_PORT=str(self.served.port))
        done = subprocess.run([sys.executable, "-m", "healthledger.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240, check=False)
        if check:
            assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr[-3000:]}"
        return done

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(self.base + path, json=body, headers=headers or DEV, timeout=60)


def parameters(**values: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in values.items()]}


def value(body: dict[str, Any], name: str) -> Any:
    for p in body.get("parameter", []):
        if p["name"] == name:
            return p.get("valueString") or p.get("valueReference", {}).get("reference")
    return None


def set_up_consortium(anvil: str, hospitals: list[Hospital]) -> None:
    """Each hospital's own contracts, one MemberRegistry deployed by the first, every member served and admitted."""
    first = hospitals[0]
    for h in hospitals:
        h.cli("init")
        operator = load_or_create_operator(h.settings.keys_dir, LocalFileKeyProvider(h.settings.keys_dir))
        rpc(anvil, "anvil_setBalance", [operator.address, hex(10**22)])
        h.cli("chain", "deploy")
    deployed = first.cli("federation", "deploy").stdout
    registry = re.search(r"MemberRegistry deployed at (0x[0-9a-fA-F]{40})", deployed)
    assert registry, deployed
    for h in hospitals[1:]:
        h.cli("federation", "attach", registry.group(1))
    for h in hospitals:
        h.served.start(wait="/readyz", timeout=120)
        h.cli("federation", "join", "--name", h.name, "--fhir-base-url", f"{h.base}/fhir")
        first.cli("federation", "admit", h.org)


def set_up_patient(a: Hospital, *, observations: int) -> tuple[str, str, PatientBrowser]:
    """A patient at A with `observations` records, an account and a key, who granted hospital-b (live)."""
    pid = a.post("/fhir/Patient", {"resourceType": "Patient", "name": [{"family": "Federated", "given": ["Fay"]}],
                                   "birthDate": "1961-02-03"}).json()["id"]
    for i in range(observations):
        assert a.post("/fhir/Observation", {
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "effectiveDateTime": "2026-10-01", "valueQuantity": {"value": 5 + i / 10, "unit": "%"}}).status_code == 201
    settings = a.settings
    engine = make_engine(settings.database_url)
    provider = LocalFileKeyProvider(settings.keys_dir)
    try:
        store = store_for_settings(engine, provider, settings)
        with session_factory(engine).begin() as s:
            create_user(s, AccountNames(store), username="fay", password=PASSWORD, role="patient",
                        now=datetime.now(UTC), patient_id=pid)
            create_patient_key(s, f"Patient/{pid}", PASSWORD, provider, now=time.time())
    finally:
        engine.dispose()
    fay = PatientBrowser(a.base, "fay", PASSWORD)
    consent = {
        "resourceType": "Consent", "status": "proposed",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"}, "dateTime": "2026-11-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"reference": "Organization/hospital-b"}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]},
    }
    created = fay.post("Consent", consent)
    assert created.status_code == 201, created.text
    cid = str(created.json()["id"])
    assert fay.post(f"Consent/{cid}/$sign", parameters(password=PASSWORD)).status_code == 200
    assert wait_for(lambda: fay.get(f"Consent/{cid}").json()["status"] == "active", 60), "grant never went live"
    return pid, cid, fay


@pytest.fixture(scope="module")
def anvil() -> Iterator[str]:
    with running_anvil(node_tool("anvil")) as url:
        yield url


def test_three_hospitals_one_chain(
    anvil: str, postgres_own_schema_url: tuple[str, str], postgres_module_schema_url: tuple[str, str], tmp_path: Path
) -> None:
    a = Hospital("hospital-a", "Hospital A", tmp_path / "a", postgres_own_schema_url[0], anvil)
    b = Hospital("hospital-b", "Hospital B", tmp_path / "b", postgres_module_schema_url[0], anvil)
    c = Hospital("hospital-c", "Hospital C", tmp_path / "c", "", anvil)  # SQLite under its data dir
    hospitals = (a, b, c)
    try:
        set_up_consortium(anvil, list(hospitals))
        assert [line.split()[:2] for line in b.cli("federation", "members").stdout.splitlines()] == [
            ["hospital-a", "active"], ["hospital-b", "active"], ["hospital-c", "active"]]
        pid, cid, fay = set_up_patient(a, observations=2)
        made = fay.post(f"Consent/{cid}/$record-locator", parameters())
        assert made.status_code == 200, made.text
        locator = value(made.json(), "locator")

        # -- B: intake links its own patient, then fetches (API and CLI) -------------------------------------------
        b_pid = b.post("/fhir/Patient", {"resourceType": "Patient", "name": [{"family": "Local", "given": ["B"]}]}).json()["id"]
        linked = b.post(f"/fhir/Patient/{b_pid}/$link-record", parameters(locator=locator))
        assert linked.status_code == 200, linked.text
        assert value(linked.json(), "patient-at-source") == f"Patient/{pid}"
        fetched = b.post(f"/fhir/Patient/{b_pid}/$federation-fetch")
        assert fetched.status_code == 200, fetched.text
        parts = {p["name"]: p for p in fetched.json()["parameter"][0]["part"]}
        assert "refused" not in parts and parts["fetched"]["valueInteger"] == 2, fetched.text
        with make_engine(b.database_url).connect() as conn:  # B's own log has the fetch, as the caller's
            b_log = [decode_entry(body) for body in conn.execute(select(AccessLogEntry.body)).scalars()]
        assert [e.reason for e in b_log if e.reason.startswith("federation-fetch:")] == [
            f"federation-fetch:hospital-a:Consent/{cid}:2"]
        provenance = requests.get(f"{b.base}/fhir/{parts['provenance']['valueReference']['reference']}",
                                  headers=DEV, timeout=30).json()
        assert provenance["policy"] == [f"{a.base}/fhir/Consent/{cid}"]
        assert provenance["agent"][0]["who"]["display"] == "Hospital A"
        copies = requests.get(f"{b.base}/fhir/Observation", params={"patient": f"Patient/{b_pid}"}, headers=DEV,
                              timeout=30).json()
        assert copies["total"] == 2 if "total" in copies else len(copies["entry"]) == 2
        assert "nothing new" in b.cli("federation", "fetch", b_pid, "--user", "Practitioner/ward-7").stdout

        # -- C: no grant. Its token request under the patient's real Consent and under an invented one get the same
        # answer, so C cannot tell whether the patient (or the Consent) exists; the used locator leads nowhere.
        c_keys = MemberKeys.load_or_create(c.settings.keys_dir, LocalFileKeyProvider(c.settings.keys_dir))
        endpoint = f"{a.base}/auth/token"

        def ask_a(key: ECKey, org: str, consent_url: str) -> requests.Response:
            assertion = client_assertion(key, org, endpoint, purpose="TREAT", user="Practitioner/c-1",
                                         consent_reference=consent_url, now=int(time.time()))
            return requests.post(endpoint, timeout=30, data={
                "grant_type": "client_credentials", "scope": "system/*.rs",
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})

        real = ask_a(c_keys.current, "hospital-c", f"{a.base}/fhir/Consent/{cid}")
        invented = ask_a(c_keys.current, "hospital-c", f"{a.base}/fhir/Consent/00000000-0000-4000-8000-000000000000")
        assert (real.status_code, real.json()) == (invented.status_code, invented.json())
        assert real.json()["error"] == "invalid_grant"
        c_pid = c.post("/fhir/Patient", {"resourceType": "Patient", "name": [{"family": "Local", "given": ["C"]}]}).json()["id"]
        stolen = c.post(f"/fhir/Patient/{c_pid}/$link-record", parameters(locator=locator))
        assert stolen.status_code == 400 and "names no Consent here that grants 'hospital-c'" in stolen.text

        # -- B's key is rotated: the old key stops working at A within a poll; the new one works -------------------
        b_keys = MemberKeys.load_or_create(b.settings.keys_dir, LocalFileKeyProvider(b.settings.keys_dir))
        old_key = b_keys.current
        assert ask_a(old_key, "hospital-b", f"{a.base}/fhir/Consent/{cid}").status_code == 200
        b.cli("federation", "rotate-key")
        assert wait_for(lambda: ask_a(old_key, "hospital-b", f"{a.base}/fhir/Consent/{cid}").status_code == 401, 30)
        refused = ask_a(old_key, "hospital-b", f"{a.base}/fhir/Consent/{cid}").json()
        assert "not signed with the key the directory lists" in refused["error_description"]
        def refreshed() -> bool:
            found = {p["name"]: p for p in b.post(f"/fhir/Patient/{b_pid}/$federation-fetch").json()["parameter"][0]["part"]}
            return "refused" not in found and found["fetched"]["valueInteger"] == 0

        assert wait_for(refreshed, 30)  # B's own directory caught up: it signs with the new key

        # -- the patient revokes: B's next fetch is refused -----------------------------------------------------------
        revoked_at = time.monotonic()
        assert fay.post(f"Consent/{cid}/$revoke", parameters(password=PASSWORD)).status_code == 200
        after = b.post(f"/fhir/Patient/{b_pid}/$federation-fetch").json()["parameter"][0]["part"]
        refusal = next(p["valueString"] for p in after if p["name"] == "refused")
        assert "revoked" in refusal or "not active" in refusal, refusal
        assert time.monotonic() - revoked_at < 10
        done = b.cli("federation", "fetch", b_pid, "--user", "Practitioner/ward-7", check=False)
        assert done.returncode == 1 and "hospital-a: refused" in done.stdout

        # -- A's log: verified, and the patient's history names Hospital B's reads ---------------------------------
        assert wait_for(lambda: a.cli("audit", "verify", check=False).returncode == 0, 60), a.cli(
            "audit", "verify", check=False).stdout
        history = fay.get(f"AuditEvent?patient=Patient/{pid}&_count=100")
        assert history.status_code == 200, history.text
        by_b = [e["resource"] for e in history.json().get("entry", [])
                if any(agent.get("who", {}).get("display") == "Hospital B" for agent in e["resource"]["agent"])]
        reads = [e for e in by_b if e.get("outcome") == "0"]
        assert len(reads) >= 2, history.text[:2000]
        # The patient's page sums them up (the Patient the locator disclosed, the two Observations) with the refused
        # attempts after the revocation; each entry proves against A's log.
        page = fay.http.get(f"{a.base}/app/history", timeout=60).text
        summed = re.search(r"Hospital B read 3 records for [^;<]*; (\d+) attempts were refused", page)
        assert summed is not None and int(summed.group(1)) >= 2, re.findall(r"Hospital B[^<]*", page)
        answer = fay.get(f"AuditEvent/{reads[0]['id']}/$inclusion-proof").json()["parameter"]
        proof = {p["name"]: p for p in answer}
        body = base64.b64decode(proof["entry"]["valueBase64Binary"])
        verify_inclusion(proof["leafIndex"]["valueInteger"], proof["treeSize"]["valueInteger"], leaf_hash(body),
                         [bytes.fromhex(p["valueString"]) for p in answer if p["name"] == "auditPath"],
                         bytes.fromhex(proof["rootHash"]["valueString"]))
        assert b'"actor":"member:hospital-b/' in body
        assert all(e["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT" for e in by_b)
        for h in hospitals:
            assert h.served.stop() == 0
    finally:
        for h in hospitals:
            h.served.kill()
