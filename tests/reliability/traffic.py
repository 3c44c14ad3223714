"""Bounded HTTP traffic on loopback for the reliability tests: keep-alive clients on threads, each request's status
and latency recorded, every acknowledged write remembered so it can be read back afterwards."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from healthledger.auth.tokens import register_client

HOME = "Organization/home-hospital"


def register_ehr(sessions: sessionmaker[Session]) -> tuple[str, str]:
    """A secret client of the home organisation (role system: reads under TREAT, writes)."""
    with sessions.begin() as s:
        client, secret = register_client(s, name="Load EHR", scopes="system/*.cruds", role="system", organization=HOME,
                                         with_secret=True, now=datetime.now(UTC))
    assert secret is not None
    return client.client_id, secret


def token(port: int, client_id: str, secret: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = (f"grant_type=client_credentials&scope=system/*.cruds&client_id={client_id}&client_secret={secret}")
    conn.request("POST", "/auth/token", body, {"Content-Type": "application/x-www-form-urlencoded"})
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return str(answer["access_token"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))  # kind -> statuses
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # (type, id, the fields sent) of every 2xx write: what a read of it must give back
    acknowledged: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    bundles: list[tuple[bool, list[str]]] = field(default_factory=list)  # (acknowledged, Observation ids)
    mismatched: Counter[str] = field(default_factory=Counter)  # 200 answers whose body was not what was written
    errors: Counter[str] = field(default_factory=Counter)  # transport errors (e.g. during a kill)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.by_kind[kind][status] += 1
            self.latency[kind].append(seconds)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    def success_share(self, kind: str) -> float:
        """Share of `kind`'s requests answered with its success status (201 for creates, else 200)."""
        statuses = self.by_kind[kind]
        return statuses[SUCCESS[kind]] / max(1, sum(statuses.values()))

    def summary(self) -> str:
        parts = []
        for kind, values in sorted(self.latency.items()):
            refused = sum(n for s, n in self.by_kind[kind].items() if 400 <= s < 500)
            parts.append(f"{kind} {len(values)} (4xx {refused}) p50 {percentile(values, 50) * 1000:.1f} ms p99 "
                         f"{percentile(values, 99) * 1000:.1f} ms")
        return "; ".join(parts)


SUCCESS = {"create-patient": 201, "create-observation": 201, "transaction": 200, "read": 200, "search": 200}


def differs(sent: dict[str, Any], body: Any) -> bool:
    """Whether a resource read back lacks or changed any field that was written."""
    return not isinstance(body, dict) or any(body.get(k) != v for k, v in sent.items())


class Client:
    """One keep-alive connection; reconnects after a transport error."""

    def __init__(self, port: int, bearer: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/fhir+json"}
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self.conn.request(method, path, json.dumps(body) if body is not None else None, self.headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        return response.status, (json.loads(raw) if raw else None)


def observation(patient: str, value: int, obs_id: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": value, "unit": "/min"},
    }
    if obs_id:
        resource["id"] = obs_id
    return resource


def mixed_traffic(port: int, bearer: str, seconds: float, threads: int, tally: Tally, *, seed: int = 7,
                  bundle_share: float = 0.0) -> None:
    """Patients and Observations created, read and searched by `threads` clients for `seconds` (bounded)."""
    deadline = time.monotonic() + seconds
    patients: list[str] = []
    patients_lock = threading.Lock()

    def work(n: int) -> None:
        rng = random.Random(seed + n)
        client = Client(port, bearer)
        while time.monotonic() < deadline:
            with patients_lock:
                known = list(patients)
            roll = rng.random()
            started = time.perf_counter()
            try:
                if not known or roll < 0.08:
                    kind = "create-patient"
                    patient = {"resourceType": "Patient", "managingOrganization": {"reference": HOME},
                               "identifier": [{"system": "urn:example:load", "value": f"{n}-{rng.getrandbits(48):x}"}]}
                    status, body = client.call("POST", "/fhir/Patient", patient)
                    if status == 201:
                        with patients_lock:
                            patients.append(body["id"])
                        with tally.lock:
                            tally.acknowledged.append(("Patient", body["id"], patient))
                elif roll < 0.08 + bundle_share:
                    kind = "transaction"
                    patient = rng.choice(known)
                    ids = [f"t{n}-{rng.getrandbits(48):012x}" for _ in range(4)]
                    entries = [{"resource": observation(patient, 60 + i, obs_id),
                                "request": {"method": "PUT", "url": f"Observation/{obs_id}"}}
                               for i, obs_id in enumerate(ids)]
                    sent = [entry["resource"] for entry in entries]
                    with tally.lock:
                        tally.bundles.append((False, ids))
                        slot = len(tally.bundles) - 1
                    status, _ = client.call("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction",
                                                             "entry": entries})
                    if status == 200:
                        with tally.lock:
                            tally.bundles[slot] = (True, ids)
                            tally.acknowledged.extend(("Observation", r["id"], r) for r in sent)
                elif roll < 0.35 + bundle_share:
                    kind = "create-observation"
                    created = observation(rng.choice(known), rng.randint(40, 180))
                    status, body = client.call("POST", "/fhir/Observation", created)
                    if status == 201:
                        with tally.lock:
                            tally.acknowledged.append(("Observation", body["id"], created))
                elif roll < 0.8:
                    kind = "read"
                    with tally.lock:
                        target = rng.choice(tally.acknowledged) if tally.acknowledged else ("Patient", known[0], {})
                    status, body = client.call("GET", f"/fhir/{target[0]}/{target[1]}")
                    if status == 200 and differs({**target[2], "id": target[1]}, body):
                        with tally.lock:
                            tally.mismatched[kind] += 1
                else:
                    kind = "search"
                    patient = rng.choice(known)
                    status, body = client.call("GET", f"/fhir/Observation?patient=Patient/{patient}&_count=10")
                    found = [e["resource"] for e in body.get("entry", []) if e["resource"]["resourceType"] == "Observation"] \
                        if status == 200 else []
                    if status == 200 and (body.get("type") != "searchset" or any(
                            r["subject"]["reference"] != f"Patient/{patient}" for r in found)):
                        with tally.lock:
                            tally.mismatched[kind] += 1
            except (OSError, http.client.HTTPException) as exc:
                with tally.lock:
                    tally.errors[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            tally.record(kind, status, time.perf_counter() - started)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 60)
