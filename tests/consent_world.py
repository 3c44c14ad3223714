"""A small hospital for consent-enforcement tests: the real app, the embedded chain, clients, people, records.

Importable by name from tests (`from consent_world import World`). Everything is real: SMART tokens
from the token endpoint, a patient's web session with CSRF, the consent engine over the in-process
index, grants signed by the patient's key and mined on the embedded chain through the outbox, and
the indexer that makes them live.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from healthledger.audit.entries import AccessEntry, decode_entry
from healthledger.audit.models import AccessLogEntry
from healthledger.audit.spool import ingest
from healthledger.auth.tokens import register_client
from healthledger.auth.users import AccountNames, create_user
from healthledger.db import session_factory
from healthledger.ledger import outbox
from healthledger.ledger.chain import Chain, embedded_chain
from healthledger.ledger.deploy import ensure_deployment
from healthledger.ledger.indexer import Indexer
from healthledger.ledger.models import IndexerCursor
from healthledger.ledger.patient_keys import create_patient_key

HOSPITAL = "Organization/general-hospital"
OTHER_HOSPITAL = "Organization/other-hospital"
CLINIC = "Organization/city-clinic"
UNIVERSITY = "Organization/university"
PASSWORD = "correct horse battery staple"
MRN_SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
ORG_SYSTEM = "urn:ietf:rfc:3986"
FHIR = "application/fhir+json"

# client id -> (role, organisation, registered scopes, default purpose)
CLIENTS = {
    "ehr": ("system", HOSPITAL, "system/*.cruds", "TREAT"),
    "clinic": ("clinician", CLINIC, "system/*.cruds", "TREAT"),
    "research": ("researcher", UNIVERSITY, "system/*.rs", "HRESCH"),
    "auditor": ("auditor", "", "system/AuditEvent.rs", "HOPERAT"),
    "narrow": ("system", HOSPITAL, "system/Patient.rs", "TREAT"),
}


@dataclass
class World:
    app: Flask
    client: FlaskClient
    chain: Chain
    indexer: Indexer
    sessions: Any
    secrets: dict[str, str]
    patients: dict[str, str] = field(default_factory=dict)  # name -> Patient id
    observations: dict[str, str] = field(default_factory=dict)  # patient name -> Observation id
    tokens: dict[str, str] = field(default_factory=dict)
    signed_in: dict[str, PatientSession] = field(default_factory=dict)

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, data_dir: Path, database_url: str = "", *, anvil_url: str = "", **settings_overrides: Any) -> World:
        """`anvil_url`: the chain is that node (contracts deployed by this world) instead of the embedded one."""
        # Many sign-ins from one test address: the per-address limit is tested in tests/web.
        settings = api_settings(data_dir, database_url, login_rate_limit="10000 per minute", **settings_overrides)
        app = build_app(settings)
        engine = app.extensions["healthledger.engine"]
        sessions = session_factory(engine)
        from healthledger.keys import key_provider_for

        provider = key_provider_for(settings.key_provider, settings.keys_dir)
        if anvil_url:
            from healthledger.ledger.chain import rpc_chain
            from healthledger.ledger.deploy import deploy_contracts, save_deployments

            chain = rpc_chain(anvil_url, provider, keys_dir=data_dir / "keys", poll_seconds=0.02)
            chain.w3.provider.make_request(  # type: ignore[arg-type]
                "anvil_setBalance", [chain.operator.address, hex(10**24)])
            with Session(engine) as s:
                save_deployments(s, deploy_contracts(chain), now=datetime.now(UTC))
                s.commit()
        else:
            chain = embedded_chain(data_dir, provider)
        with Session(engine) as s:
            records = ensure_deployment(chain, s, embedded=not anvil_url, now=datetime.now(UTC))
        indexer = Indexer(sessions, chain, from_block=min(r.deployment_block for r in records))
        secrets: dict[str, str] = {}
        with sessions.begin() as s:
            for client_id, (role, org, scopes, purpose) in CLIENTS.items():
                _, secret = register_client(
                    s, client_id=client_id, name=client_id, scopes=scopes, role=role, organization=org,
                    with_secret=True, default_purpose=purpose, now=datetime.now(UTC),
                )
                assert secret is not None
                secrets[client_id] = secret
        world = cls(app, app.test_client(), chain, indexer, sessions, secrets)
        for org in (HOSPITAL, OTHER_HOSPITAL, CLINIC, UNIVERSITY):
            org_id = org.removeprefix("Organization/")
            world.dev_put({"resourceType": "Organization", "id": org_id, "name": org_id,
                           "identifier": [{"system": ORG_SYSTEM, "value": org_id}]})
        world.add_patient("ann", HOSPITAL)
        world.add_patient("bob", OTHER_HOSPITAL)
        world.sync()
        return world

    def add_patient(self, name: str, organization: str) -> str:
        """A Patient (MRN `MRN-{name}`) with one Observation, a user account `name` and a signing key."""
        pid = self.dev_create({"resourceType": "Patient", "managingOrganization": {"reference": organization},
                               "identifier": [{"system": MRN_SYSTEM, "value": f"MRN-{name}"}],
                               "name": [{"family": f"Testperson-{name}", "given": [name.title()]}],
                               "birthDate": "1970-03-04"})
        self.patients[name] = pid
        self.observations[name] = self.dev_create({
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "effectiveDateTime": "2024-05-01", "valueQuantity": {"value": 6.1, "unit": "%"},
        })
        store = self.app.extensions["healthledger.store"]
        settings = self.app.config["SETTINGS"]
        from healthledger.keys import key_provider_for

        provider = key_provider_for(settings.key_provider, settings.keys_dir)
        with self.sessions.begin() as s:
            create_user(s, AccountNames(store), username=name, password=PASSWORD, role="patient",
                        now=datetime.now(UTC), patient_id=pid)
            create_patient_key(s, f"Patient/{pid}", PASSWORD, provider, now=time.time())
        return pid

    def close(self) -> None:
        self.chain.close()
        self.app.extensions["healthledger.engine"].dispose()

    # -- the chain side -----------------------------------------------------------------------------
    def sync(self) -> None:
        """Mine what the outbox holds, then one indexer pass (what the ledger worker does every poll)."""
        outbox.drain(self.sessions, self.chain, time.time)
        self.indexer.catch_up(time.time())

    def make_index_stale(self, seconds: float = 3600) -> None:
        with self.sessions.begin() as s:
            s.execute(update(IndexerCursor).values(updated_at=time.time() - seconds))

    # -- callers ------------------------------------------------------------------------------------
    def token(self, client_id: str) -> str:
        if client_id not in self.tokens:
            resp = self.client.post("/auth/token", data={
                "grant_type": "client_credentials", "scope": CLIENTS[client_id][2],
                "client_id": client_id, "client_secret": self.secrets[client_id]})
            assert resp.status_code == 200, resp.get_json()
            self.tokens[client_id] = resp.get_json()["access_token"]
        return self.tokens[client_id]

    def headers(self, client_id: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(client_id)}", "Accept": FHIR, **extra}

    def patient_session(self, name: str) -> PatientSession:
        if name not in self.signed_in:
            self.signed_in[name] = self._sign_in(name)
        return self.signed_in[name]

    def _sign_in(self, name: str) -> PatientSession:
        browser = self.app.test_client()
        page = browser.get("/app/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        resp = browser.post("/app/login", data={"username": name, "password": PASSWORD, "csrf_token": csrf.group(1)})
        assert resp.status_code == 303, resp.get_data(as_text=True)
        # The account page: the home page reads the patient's data through the API, which would leave entries.
        home = browser.get("/app/account").get_data(as_text=True)
        token = re.search(r'name="csrf-token" content="([^"]+)"', home) or re.search(
            r'name="csrf_token" value="([^"]+)"', home)
        assert token is not None, home
        return PatientSession(browser, token.group(1))

    def dev_create(self, resource: dict[str, Any]) -> str:
        resp = self.client.post(f"/fhir/{resource['resourceType']}", data=orjson.dumps(resource), headers=JSON_HEADERS)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return str(orjson.loads(resp.data)["id"])

    def dev_put(self, resource: dict[str, Any]) -> None:
        resp = self.client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=orjson.dumps(resource),
                               headers=JSON_HEADERS)
        assert resp.status_code in (200, 201), resp.get_data(as_text=True)

    def dev_read(self, path: str) -> dict[str, Any]:
        resp = self.client.get(f"/fhir/{path}", headers=AUTH)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return orjson.loads(resp.data)  # type: ignore[no-any-return]

    # -- the access log ------------------------------------------------------------------------------
    def log_size(self) -> int:
        ingest(self.sessions.kw["bind"])  # (SQLite) reads' entries still in the spool
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(AccessLogEntry)) or 0)

    def log_since(self, size: int) -> list[AccessEntry]:
        ingest(self.sessions.kw["bind"])
        with self.sessions() as s:
            rows = s.scalars(select(AccessLogEntry.body).order_by(AccessLogEntry.id).offset(size)).all()
        # In the order they were made: a read's entry reaches the table from the spool, after entries of writes
        # and refusals made later (healthledger.audit.spool).
        return sorted((decode_entry(body) for body in rows), key=lambda e: e.time)


@dataclass
class PatientSession:
    browser: FlaskClient
    csrf: str

    def get(self, path: str) -> Any:
        return self.browser.get(f"/fhir/{path}", headers={"Accept": FHIR})

    def post(self, path: str, body: dict[str, Any], *, csrf: bool = True) -> Any:
        headers = {"Content-Type": FHIR, "Accept": FHIR}
        if csrf:
            headers["X-CSRFToken"] = self.csrf
        return self.browser.post(f"/fhir/{path}", data=orjson.dumps(body), headers=headers)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": FHIR, "Accept": FHIR, "X-CSRFToken": self.csrf}
        return self.browser.put(f"/fhir/{path}", data=orjson.dumps(body), headers=headers)


def password_parameters(password: str = PASSWORD) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "password", "valueString": password}]}


def permit_consent(patient_id: str, *actors: str, classes: tuple[str, ...] = (), status: str = "active",
                   period_end: str | None = None) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "permit", **_actors(actors)}
    if classes:
        provision["class"] = [{"system": "http://hl7.org/fhir/resource-types", "code": c} for c in classes]
    if period_end:
        provision["period"] = {"start": "2020-01-01", "end": period_end}
    return _consent(patient_id, provision, status)


def deny_consent(patient_id: str, *actors: str, classes: tuple[str, ...] = ()) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "deny", **_actors(actors)}
    if classes:
        provision["class"] = [{"system": "http://hl7.org/fhir/resource-types", "code": c} for c in classes]
    return _consent(patient_id, provision, "active")


def _actors(actors: tuple[str, ...]) -> dict[str, Any]:
    """`provision.actor` naming `actors`; none at all (no element: R4 JSON has no empty array) names no one."""
    if not actors:
        return {}
    return {"actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP"}]}, "reference": {"reference": a}} for a in actors]}


def _consent(patient_id: str, provision: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-11-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    }


def world_per_database(request: Any, tmp_path_factory: Any, label: str) -> Iterator[World]:
    """A World for a fixture parametrised by database ("sqlite", or "postgres": a schema of the test module's own,
    so a deployment with its contracts, grants and access log per world); closed afterwards."""
    url = request.getfixturevalue("postgres_module_schema_url")[0] if request.param == "postgres" else ""
    built = World.build(tmp_path_factory.mktemp(f"{label}-{request.param}"), url)
    yield built
    built.close()
