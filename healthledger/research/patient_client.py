"""The patient's side of joining a study, over HTTP, exactly as the browser does it (README: "Joining a study").

1. sign in at /app/login (session cookie, CSRF token from the page);
2. `GET /fhir/ResearchStudy/{id}`: the published study and its circuit inputs (`study-registration`);
3. `POST /fhir/Patient/{me}/$eligibility-credential` with the password and the study: the credential, the
   identity secret and the enrollee (the study pseudonym); wait until its root is anchored on-chain;
4. check eligibility locally (`CompiledCriteria.is_satisfied_by`): a patient who does not qualify sends nothing;
5. prove with snarkjs (`zk.prover.NodeProver`);
6. `POST /fhir/ResearchStudy/{id}/$enrol` with the proof, its public signals and the password (the server signs
   the study consent with the same pseudonym) -> ResearchSubject.
`leave` is `POST /fhir/ResearchStudy/{id}/$leave` with the password.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from healthledger.research.credentials import attributes_from_json
from healthledger.research.service_client import (
    ServiceClient,
    ServiceError,
    Transport,
    UrllibTransport,
)
from healthledger.research.service_client import parameters as _parameters
from healthledger.research.studies import PublishedCircuit, compiled_from_inputs
from zk.credential import eligibility_inputs
from zk.prover import NodeProver, ProofResult

__all__ = ["JoinError", "JoinTimings", "Joined", "NotEligible", "PatientClient", "Transport", "UrllibTransport"]


class JoinError(ServiceError):
    """A step of joining or leaving failed; the message says which and what the server answered."""


class NotEligible(JoinError):
    """The patient's credential does not meet the study's criteria (checked locally: nothing was sent)."""


@dataclass(frozen=True)
class JoinTimings:
    """Milliseconds of each step of a join."""

    sign_in_ms: float
    credential_ms: float
    prove_ms: float
    enrol_ms: float
    total_ms: float


@dataclass(frozen=True)
class Joined:
    subject: dict[str, Any]
    pseudonym: str
    timings: JoinTimings


class PatientClient(ServiceClient):
    """A signed-in patient's calls to the research API."""

    error = JoinError

    def __init__(self, transport: Transport, *, sleep: Callable[[float], None] = time.sleep,
                 anchor_wait_seconds: float = 120.0) -> None:
        super().__init__(transport, sleep=sleep)
        self.anchor_wait_seconds = anchor_wait_seconds

    def patient_id(self) -> str:
        bundle = self._fhir("GET", "Patient", what="finding your patient record")
        entries = bundle.get("entry") or []
        if len(entries) != 1:
            raise JoinError("this account is not linked to exactly one patient record")
        return str(entries[0]["resource"]["id"])

    # -- the flow ---------------------------------------------------------------------------------
    def credential(self, patient_id: str, password: str, study_id: str) -> dict[str, Any]:
        """The credential with its secret and the enrollee, once its root is anchored (polls until then)."""
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "password", "valueString": password},
            {"name": "study", "valueString": f"ResearchStudy/{study_id}"}]}
        first = _parameters(self._fhir("POST", f"Patient/{patient_id}/$eligibility-credential", body,
                                       what="fetching your eligibility credential"))
        current = first
        deadline = time.monotonic() + self.anchor_wait_seconds
        while not current.get("anchored"):
            if current.get("anchorState") == "failed":
                raise JoinError("your credential's root could not be anchored on-chain; ask the hospital")
            if time.monotonic() > deadline:
                raise JoinError("your credential's root is not anchored on-chain yet; try again later")
            self.sleep(1.0)
            current = _parameters(self._fhir("GET", f"Patient/{patient_id}/$eligibility-credential",
                                             what="waiting for your credential's root"))
        inputs = json.loads(current["circuitInputs"])
        inputs["secret"] = json.loads(first["circuitInputs"])["secret"]
        return {"inputs": inputs, "root": int(current["root"]), "enrollee": first["enrollee"]}

    def join(self, study_id: str, password: str, prover: NodeProver, *, patient_id: str | None = None,
             on_step: Callable[[str], None] = lambda _: None) -> Joined:
        started = time.perf_counter()
        patient_id = patient_id or self.patient_id()
        study = self._fhir("GET", f"ResearchStudy/{study_id}", what="reading the study")
        if study.get("status") != "active":
            raise JoinError(f"the study is not open for enrolment (status {study.get('status')})")
        circuit = PublishedCircuit.from_study(study)
        on_step("credential")
        t0 = time.perf_counter()
        cred = self.credential(patient_id, password, study_id)
        t1 = time.perf_counter()
        attrs = attributes_from_json(cred["inputs"])
        criteria = compiled_from_inputs(circuit.inputs)
        if criteria.criteria_hash != circuit.criteria_hash:
            raise JoinError("the study's published criteria do not match its criteria hash")
        if not criteria.is_satisfied_by(attrs):
            raise NotEligible("your credential does not meet this study's criteria; nothing was sent")
        on_step("prove")
        inputs = eligibility_inputs(
            secret=int(cred["inputs"]["secret"]), attrs=attrs,
            siblings=[int(s) for s in cred["inputs"]["siblings"]],
            path_bits=[int(b) for b in cred["inputs"]["pathBits"]], root=cred["root"],
            study_id=circuit.chain_study_id, criteria=criteria, enrollee=cred["enrollee"],
        )
        result: ProofResult = prover.prove(inputs)
        t2 = time.perf_counter()
        on_step("enrol")
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "proof", "valueString": json.dumps(result.proof)},
            {"name": "publicSignals", "valueString": json.dumps(result.public_json())},
            {"name": "password", "valueString": password}]}
        subject = self._fhir("POST", f"ResearchStudy/{study_id}/$enrol", body, ok=(201,), what="enrolling")
        t3 = time.perf_counter()
        timings = JoinTimings(sign_in_ms=0.0, credential_ms=(t1 - t0) * 1000, prove_ms=(t2 - t1) * 1000,
                              enrol_ms=(t3 - t2) * 1000, total_ms=(t3 - started) * 1000)
        return Joined(subject, str(subject["individual"]["identifier"]["value"]), timings)

    def leave(self, study_id: str, password: str) -> dict[str, Any]:
        body = {"resourceType": "Parameters", "parameter": [{"name": "password", "valueString": password}]}
        return self._fhir("POST", f"ResearchStudy/{study_id}/$leave", body, what="leaving the study")
