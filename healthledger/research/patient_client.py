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

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from healthledger.errors import HealthLedgerError
from healthledger.research.credentials import attributes_from_json
from healthledger.research.studies import PublishedCircuit, compiled_from_inputs
from zk.credential import eligibility_inputs
from zk.prover import NodeProver, ProofResult

FHIR_JSON = "application/fhir+json"
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
_CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')


class JoinError(HealthLedgerError):
    """A step of joining or leaving failed; the message says which and what the server answered."""


class NotEligible(JoinError):
    """The patient's credential does not meet the study's criteria (checked locally: nothing was sent)."""


class Transport(Protocol):
    """One HTTP exchange against the service: (status, headers, body). Cookies are the transport's business."""

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class UrllibTransport:
    """The standard library's HTTP client with a cookie jar (the session cookie), redirects not followed."""

    def __init__(self, base_url: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect())

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise JoinError(f"cannot reach {self.base_url}: {getattr(exc, 'reason', exc)}") from None


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


def _outcome_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics", "")) for i in data.get("issue") or [])
    return json.dumps(data)[:200]


def _parameters(params: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: next((v for k, v in p.items() if k.startswith("value")), None)
            for p in params.get("parameter") or []}


class PatientClient:
    """A signed-in patient's calls to the research API."""

    def __init__(self, transport: Transport, *, sleep: Callable[[float], None] = time.sleep,
                 anchor_wait_seconds: float = 120.0) -> None:
        self.transport = transport
        self.csrf = ""
        self.sleep = sleep
        self.anchor_wait_seconds = anchor_wait_seconds

    # -- HTTP -------------------------------------------------------------------------------------
    def _fhir(self, method: str, path: str, body: dict[str, Any] | None = None, *, ok: tuple[int, ...] = (200,),
              what: str) -> dict[str, Any]:
        headers = {"Accept": FHIR_JSON}
        raw = None
        if body is not None:
            raw = json.dumps(body).encode()
            headers["Content-Type"] = FHIR_JSON
        if method != "GET":
            headers["X-CSRFToken"] = self.csrf
        status, _, answer = self.transport.request(method, f"/fhir/{path}", raw, headers)
        if status not in ok:
            raise JoinError(f"{what}: the server answered {status}: {_outcome_text(answer)}")
        data: dict[str, Any] = json.loads(answer)
        return data

    def sign_in(self, username: str, password: str) -> None:
        status, _, page = self.transport.request("GET", "/app/login", None, {"Accept": "text/html"})
        token = _CSRF_INPUT.search(page.decode("utf-8", "replace"))
        if status != 200 or token is None:
            raise JoinError(f"sign-in page: unexpected answer {status}")
        form = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": token.group(1)})
        status, _, _ = self.transport.request("POST", "/app/login", form.encode(),
                                              {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 303:
            raise JoinError("sign-in refused: check the user name and password")
        status, _, page = self.transport.request("GET", "/app/account", None, {"Accept": "text/html"})
        meta = _CSRF_META.search(page.decode("utf-8", "replace")) or _CSRF_INPUT.search(page.decode("utf-8", "replace"))
        if status != 200 or meta is None:
            raise JoinError(f"after sign-in: unexpected answer {status} from /app/account")
        self.csrf = meta.group(1)

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
