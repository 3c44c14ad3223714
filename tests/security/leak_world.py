"""The deployment the leak properties run against: one consent_world per database, its callers, and the
sub-worlds each hypothesis example adds to it, with the reference model's cumulative state beside it.

Data follows reality, decisions follow the policy: after every write the model re-reads that resource's
history with the development token, so a write the service should have refused (a finding) does not
make later predictions wrong; what each caller may see is only ever decided by `reference_policy`.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import reference_policy as ref
from consent_world import (
    CLIENTS,
    CLINIC,
    FHIR,
    HOSPITAL,
    MRN_SYSTEM,
    ORG_SYSTEM,
    OTHER_HOSPITAL,
    PASSWORD,
    UNIVERSITY,
    PatientSession,
    World,
    password_parameters,
)
from fhir_api_support import AUTH

from healthledger.audit.entries import AccessEntry
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.auth.tokens import register_client
from healthledger.auth.users import AccountNames, create_user
from healthledger.keys import key_provider_for
from healthledger.ledger.patient_keys import Argon2Params, create_patient_key

BASE = "http://localhost/fhir"  # the Flask test client's host: absolute references to this server
LOINC = "http://loinc.org"
BREAK_GLASS = {"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": "patient unresponsive in the emergency room"}
# The patients' keys at the lowest argon2id cost: the KDF is tested in tests/ledger, not here.
CHEAP_KDF = Argon2Params(time_cost=1, memory_kib=8, parallelism=1)
# Clients beyond consent_world's: (role, organisation, registered scopes, default purpose).
EXTRA_CLIENTS = {
    "other-ehr": ("system", OTHER_HOSPITAL, "system/*.cruds", "TREAT"),
    "hospital-doc": ("clinician", HOSPITAL, "system/*.cruds", "TREAT"),
}
POOL_ORGANIZATIONS = (HOSPITAL, OTHER_HOSPITAL, CLINIC, UNIVERSITY)
_ID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _client_caller(name: str, client_id: str, **changes: str) -> tuple[ref.Caller, str]:
    role, org, scopes, purpose = (CLIENTS | EXTRA_CLIENTS)[client_id]
    fields = {"role": role, "organization": org, "purpose": purpose, "scopes": tuple(scopes.split()),
              "actor_id": f"client:{client_id}"} | changes
    return ref.Caller(name, **fields), client_id  # type: ignore[arg-type]


# name -> (the model's caller, the client whose token it uses); `dev` is the development token.
TOKEN_CALLERS: dict[str, tuple[ref.Caller, str]] = {
    "dev": (ref.Caller("dev", "internal", scopes=None), ""),
    "ehr": _client_caller("ehr", "ehr"),
    "other-ehr": _client_caller("other-ehr", "other-ehr"),
    "hospital-doc": _client_caller("hospital-doc", "hospital-doc"),
    "clinic": _client_caller("clinic", "clinic"),
    "clinic-bg": _client_caller("clinic-bg", "clinic", purpose="ETREAT", break_glass_reason=BREAK_GLASS[
        "X-Break-Glass-Reason"]),
    "ehr-bg": _client_caller("ehr-bg", "ehr", purpose="ETREAT", break_glass_reason=BREAK_GLASS[
        "X-Break-Glass-Reason"]),
    "research": _client_caller("research", "research"),
    "narrow": _client_caller("narrow", "narrow"),
    "auditor": _client_caller("auditor", "auditor"),
}


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or None
    headers: dict[str, str]

    def summary(self) -> str:
        if isinstance(self.body, dict) and self.body.get("resourceType") == "OperationOutcome":
            issue = (self.body.get("issue") or [{}])[0]
            return f"{self.status} {issue.get('code')}: {issue.get('diagnostics')}"
        if isinstance(self.body, dict) and self.body.get("resourceType") == "Bundle":
            return f"{self.status} Bundle total={self.body.get('total')} entries={len(self.body.get('entry', []))}"
        if isinstance(self.body, dict) and "resourceType" in self.body:
            version = self.body.get("meta", {}).get("versionId")
            return f"{self.status} {self.body['resourceType']}/{self.body.get('id')}" + (f" v{version}" if version else "")
        return f"{self.status} {str(self.body)[:120]}"


@dataclass
class Deployment:
    """One World, its callers, the model's state, and a local mirror of the access log."""

    world: World
    state: ref.State = field(default_factory=ref.State)
    callers: dict[str, ref.Caller] = field(default_factory=dict)
    sessions: dict[str, PatientSession] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    log: list[AccessEntry] = field(default_factory=list)
    mrns: dict[str, str] = field(default_factory=dict)  # patient id -> MRN
    accounts: dict[str, str] = field(default_factory=dict)  # patient id -> username
    synced: float = 0.0  # time.monotonic() of the last sync

    @classmethod
    def open(cls, world: World) -> Deployment:
        deployment = cls(world)
        with world.sessions.begin() as s:
            for client_id, (role, org, scopes, purpose) in EXTRA_CLIENTS.items():
                _, secret = register_client(s, client_id=client_id, name=client_id, scopes=scopes, role=role,
                                            organization=org, with_secret=True, default_purpose=purpose,
                                            now=datetime.now(UTC))
                assert secret is not None
                world.secrets[client_id] = secret
        for name, (caller, _) in TOKEN_CALLERS.items():
            deployment.callers[name] = caller
        # What consent_world built (organisations, Ann and Bob) enters the model like everything else.
        for org in POOL_ORGANIZATIONS:
            deployment.refresh("Organization", org.removeprefix("Organization/"))
        for name, pid in world.patients.items():
            deployment.refresh("Patient", pid)
            deployment.refresh("Observation", world.observations[name])
        deployment.sync()
        # A break-the-glass read first, as in any running service. (On a fresh SQLite deployment the first
        # break-the-glass *write* creates the access-log key in a transaction of its own while the write
        # holds the lock: it waits out the 30 s busy timeout and fails with 503, unlogged. Reported.)
        bg = deployment.call("clinic-bg", "GET", f"/fhir/Observation/{world.observations['ann']}")
        assert bg.status == 200, bg.summary()
        deployment.new_entries()
        return deployment

    # -- the chain and the log -----------------------------------------------------------------------------
    def sync(self) -> None:
        """Mine what the outbox holds and index it (the ledger worker's poll)."""
        self.world.sync()
        self.synced = time.monotonic()

    def keep_index_fresh(self) -> None:
        """Reads fail closed once the index is older than max_index_age_seconds (60 s): poll well before."""
        if time.monotonic() - self.synced > 20:
            self.sync()

    def new_entries(self) -> list[AccessEntry]:
        """Access-log entries appended since the last call (the local mirror follows the log)."""
        entries = self.world.log_since(len(self.log))
        self.log.extend(entries)
        return entries

    def pseudonym(self, patient: str) -> str:
        return patient_pseudonym(self.world.app.extensions["healthledger.store"].indexer, patient)

    def deidentified_id(self, caller: ref.Caller, rtype: str, rid: str) -> str:
        """The id a research caller is shown for `rtype/rid` (pseudonyms keyed per recipient)."""
        indexer = self.world.app.extensions["healthledger.store"].indexer
        actor = f"client:{TOKEN_CALLERS[caller.name][1]}"
        return indexer.term(indexer.key("Deidentified", actor), f"{rtype}/{rid}").hex()

    # -- HTTP ------------------------------------------------------------------------------------------------
    def call(self, who: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             *, content_type: str = FHIR) -> Reply:
        """One request as `who` (a TOKEN_CALLERS name or a patient caller's name)."""
        extra = dict(headers or {})
        data = orjson.dumps(body) if body is not None else None
        if data is not None:
            extra["Content-Type"] = content_type
        if who in self.sessions:
            session = self.sessions[who]
            if method not in ("GET", "HEAD"):
                extra["X-CSRFToken"] = session.csrf
            resp = session.browser.open(path, method=method, data=data, headers={"Accept": FHIR, **extra})
        else:
            resp = self.world.client.open(path, method=method, data=data, headers={**self._auth(who), **extra})
        try:
            decoded = orjson.loads(resp.data) if resp.data else None
        except orjson.JSONDecodeError:
            decoded = resp.get_data(as_text=True)[:300]
        return Reply(resp.status_code, decoded, dict(resp.headers))

    def _auth(self, who: str) -> dict[str, str]:
        if who == "dev":
            return {**AUTH, "Accept": FHIR}
        client_id = TOKEN_CALLERS[who][1]
        if client_id not in self.tokens:
            resp = self.world.client.post("/auth/token", data={
                "grant_type": "client_credentials", "scope": (CLIENTS | EXTRA_CLIENTS)[client_id][2],
                "client_id": client_id, "client_secret": self.world.secrets[client_id]})
            assert resp.status_code == 200, resp.get_data(as_text=True)
            self.tokens[client_id] = resp.get_json()["access_token"]
        headers = {"Authorization": f"Bearer {self.tokens[client_id]}", "Accept": FHIR}
        if self.callers[who].purpose == "ETREAT":
            headers |= BREAK_GLASS
        return headers

    # -- the model's data follows what is stored -----------------------------------------------------------
    def refresh(self, rtype: str, rid: str) -> None:
        """Re-read one resource's every version with the development token into the model's state."""
        reply = self.call("dev", "GET", f"/fhir/{rtype}/{rid}/_history?_count=50")
        if reply.status == 404:
            self.state.versions.pop((rtype, rid), None)
            return
        assert reply.status == 200, (rtype, rid, reply.summary())
        for entry in reply.body.get("entry", []):
            number = int(entry["response"]["etag"].removeprefix("W/").strip('"'))
            resource = entry.get("resource")
            last = resource["meta"]["lastUpdated"] if resource else entry["response"]["lastModified"]
            self.state.record(rtype, rid, number, resource, last)

    def dev_create(self, resource: dict[str, Any]) -> str:
        reply = self.call("dev", "POST", f"/fhir/{resource['resourceType']}", resource)
        assert reply.status == 201, reply.summary()
        rid = str(reply.body["id"])
        self.refresh(resource["resourceType"], rid)
        return rid

    def dev_put(self, resource: dict[str, Any]) -> None:
        reply = self.call("dev", "PUT", f"/fhir/{resource['resourceType']}/{resource['id']}", resource)
        assert reply.status in (200, 201), reply.summary()
        self.refresh(resource["resourceType"], resource["id"])

    def dev_delete(self, rtype: str, rid: str) -> None:
        reply = self.call("dev", "DELETE", f"/fhir/{rtype}/{rid}")
        assert reply.status == 204, reply.summary()
        self.refresh(rtype, rid)

    # -- people ------------------------------------------------------------------------------------------
    def add_patient(self, resource: dict[str, Any]) -> str:
        """A Patient with a user account and a signing key (password PASSWORD), not yet signed in."""
        pid = self.dev_create(resource)
        self.mrns[pid] = next((i["value"] for i in resource.get("identifier", []) if i["system"] == MRN_SYSTEM), "")
        store = self.world.app.extensions["healthledger.store"]
        settings = self.world.app.config["SETTINGS"]
        provider = key_provider_for(settings.key_provider, settings.keys_dir)
        username = f"p-{pid}"
        with self.world.sessions.begin() as s:
            create_user(s, AccountNames(store), username=username, password=PASSWORD, role="patient",
                        now=datetime.now(UTC), patient_id=pid)
            create_patient_key(s, f"Patient/{pid}", PASSWORD, provider, now=time.time(), params=CHEAP_KDF)
        self.accounts[pid] = username
        return pid

    def patient_caller(self, pid: str) -> str:
        """The name of the patient's signed-in web session (signing in on first use)."""
        name = f"patient-{pid[:8]}"
        if name not in self.sessions:
            self.world.signed_in.pop(self.accounts[pid], None)
            self.sessions[name] = self.world.patient_session(self.accounts[pid])
            self.callers[name] = ref.Caller(name, "patient", patient_id=pid, scopes=("patient/*.cruds",))
        return name

    def sign(self, pid: str, cid: str) -> None:
        reply = self.call(self.patient_caller(pid), "POST", f"/fhir/Consent/{cid}/$sign", password_parameters())
        assert reply.status == 200, reply.summary()

    def revoke(self, pid: str, cid: str) -> None:
        reply = self.call(self.patient_caller(pid), "POST", f"/fhir/Consent/{cid}/$revoke", password_parameters())
        assert reply.status == 200, reply.summary()
        self.state.grants[cid] = "revoked"
        self.refresh("Consent", cid)


def fresh_id() -> str:
    return str(uuid.uuid4())


def fresh_code() -> str:
    return f"x-{uuid.uuid4().hex[:10]}"


def substitute_ids(value: Any, mapping: dict[str, str]) -> Any:
    """`value` (decoded JSON) with each id text in `mapping` replaced (to compare answers about two ids)."""
    text = orjson.dumps(value).decode()
    for old, new in mapping.items():
        text = text.replace(old, new)
    return orjson.loads(text)


def org_resource(org_id: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": org_id, "name": f"Org {org_id[:8]}",
            "identifier": [{"system": ORG_SYSTEM, "value": org_id}]}


__all__ = [
    "BASE", "BREAK_GLASS", "LOINC", "MRN_SYSTEM", "ORG_SYSTEM", "POOL_ORGANIZATIONS", "TOKEN_CALLERS", "Deployment",
    "Reply", "fresh_code", "fresh_id", "org_resource", "substitute_ids",
]
