"""Third-party FHIR clients (fhirpy and SMART's fhirclient, pinned as dev dependencies) against the API over real
HTTP, as an integrator would use them: create, conditional update and delete, search with count(), paging, sort,
elements, include, revinclude, has; fhirclient's strict R4 models parse what the server sends; raw HTTP for what
fhirpy sends its own way (its patch() is a JSON merge patch, not FHIR)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir_api_support import TOKEN, api_settings, build_app, dispose
from fhirpy import SyncFHIRClient
from serving import free_port
from werkzeug.serving import make_server

MRN = "urn:oid:1.2.36.146.595.217.0.1"
APPS: dict[int, Any] = {}  # port -> the app serving it (to register OAuth clients in its database)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    app = build_app(api_settings(Path(tmp_path_factory.mktemp("fhirpy")), default_page_size=2,
                                 base_url=f"http://127.0.0.1:{port}"))
    APPS[port] = app
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        dispose(app)


@pytest.fixture(scope="module")
def fhir(base: str) -> SyncFHIRClient:
    return SyncFHIRClient(base, authorization=f"Bearer {TOKEN}")


def _patients(fhir: SyncFHIRClient, family: str) -> list[Any]:
    made = []
    for given, born in (("Cleo", "1971-02-03"), ("Abe", "1990-01-01"), ("Bo", "1985-05-05")):
        patient = fhir.resource("Patient", name=[{"family": family, "given": [given]}], birthDate=born,
                                identifier=[{"system": MRN, "value": uuid.uuid4().hex}])
        patient.save()
        made.append(patient)
    return made


def test_fhirpy_searches(fhir: SyncFHIRClient) -> None:
    family = f"Client{uuid.uuid4().hex[:8]}"
    cleo, abe, _ = _patients(fhir, family)
    patients = fhir.resources("Patient").search(family=family)
    assert patients.count() == 3  # sends _totalMethod=count: ignored (lenient), as FHIR's default says
    assert len(patients.fetch_all()) == 3  # follows `next` links (page size 2)
    assert [p["name"][0]["given"][0] for p in patients.sort("birthdate").fetch_all()] == ["Cleo", "Bo", "Abe"]
    assert [p["name"][0]["given"][0] for p in patients.sort("-given").fetch_all()] == ["Cleo", "Bo", "Abe"]
    slim = patients.elements("name").fetch()
    assert slim and all("birthDate" not in p for p in slim)
    code = f"c-{uuid.uuid4().hex[:8]}"
    obs = fhir.resource("Observation", status="final", subject=cleo.to_reference(),
                        code={"coding": [{"system": "http://loinc.org", "code": code}]})
    obs.save()
    with_patient = fhir.resources("Observation").search(code=code).include("Observation", "patient").fetch_raw()
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in with_patient["entry"])
    assert modes == [("include", "Patient"), ("match", "Observation")]
    rev = fhir.resources("Patient").search(_id=cleo.id).revinclude("Observation", "patient").fetch_raw()
    assert {e["resource"]["id"] for e in rev["entry"]} == {cleo.id, obs.id}
    has = fhir.resources("Patient").search(family=family).has("Observation", "patient", code=code).fetch_all()
    assert [p.id for p in has] == [cleo.id]
    assert fhir.resources("Patient").search(family=family, given="Abe").get().id == abe.id


def test_fhirpy_conditional_update_and_delete(fhir: SyncFHIRClient) -> None:
    mrn = uuid.uuid4().hex
    search = fhir.resources("Patient").search(identifier=f"{MRN}|{mrn}")
    body = fhir.resource("Patient", name=[{"family": "Conditional"}], identifier=[{"system": MRN, "value": mrn}])
    created, was_created = search.update(body)
    assert was_created
    updated, was_created = search.update(fhir.resource("Patient", **{**body.serialize(), "gender": "other"}))
    assert not was_created and updated["id"] == created["id"] and updated["gender"] == "other"
    search.delete()
    assert search.count() == 0


def test_patch_over_raw_http(base: str, fhir: SyncFHIRClient) -> None:
    patient = fhir.resource("Patient", name=[{"family": "Patchy"}])
    patient.save()
    url, auth = f"{base}/Patient/{patient.id}", {"Authorization": f"Bearer {TOKEN}"}
    ops = [{"op": "add", "path": "/gender", "value": "female"}]
    stale = requests.patch(url, json=ops, headers={**auth, "Content-Type": "application/json-patch+json",
                                                   "If-Match": 'W/"7"'}, timeout=10)
    assert stale.status_code == 412
    done = requests.patch(url, json=ops, headers={**auth, "Content-Type": "application/json-patch+json",
                                                  "If-Match": 'W/"1"'}, timeout=10)
    assert done.status_code == 200 and done.json()["gender"] == "female" and done.headers["ETag"] == 'W/"2"'
    # fhirpy's patch() sends a JSON merge patch as application/json, which FHIR R4 does not define: refused, saying so.
    merge = requests.patch(url, json={"gender": "male"}, headers=auth, timeout=10)
    assert merge.status_code == 415 and "json-patch+json" in merge.json()["issue"][0]["diagnostics"]


def test_fhirclient_parses_what_the_server_sends(base: str, fhir: SyncFHIRClient) -> None:
    """SMART's fhirclient parses responses into its strict R4 (4.0.1) models: the CapabilityStatement, reads,
    searchsets (with included resources and the outcome entry of an ignored parameter), Consents with their
    chain-state extension, AuditEvents and our StructureDefinitions all parse."""
    from fhirclient.models.auditevent import AuditEvent
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.consent import Consent
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    from fhirclient.models.structuredefinition import StructureDefinition
    from fhirclient.server import FHIRServer

    server = FHIRServer(None, base_uri=base)
    server.session.headers["Authorization"] = f"Bearer {TOKEN}"
    server.get_capability()
    assert server.capabilityStatement.fhirVersion == "4.0.1"
    made = _patients(fhir, f"Strict{uuid.uuid4().hex[:8]}")[0]
    patient = Patient.read(made.id, server)
    assert patient.name[0].given == ["Cleo"]
    obs = fhir.resource("Observation", status="final", subject=made.to_reference(),
                        code={"coding": [{"system": "http://loinc.org", "code": "4548-4"}]})
    obs.save()
    bundle = Bundle(server.request_json(f"Observation?_id={obs.id}&_include=Observation:patient&nickname=x"))
    assert sorted(e.search.mode for e in bundle.entry) == ["include", "match", "outcome"]
    assert isinstance(bundle.entry[0].resource, Observation)
    found = list(Patient.where(struct={"_id": made.id}).perform_resources_iter(server))
    assert [p.id for p in found] == [made.id]
    consent = fhir.resource("Consent", status="active", scope={"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        category=[{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}], patient=made.to_reference(),
        policyRule={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        provision={"type": "deny"})
    consent.save()
    read = Consent.read(consent.id, server)
    assert read.extension[0].url.endswith("/consent-chain-state")
    events = Bundle(server.request_json("AuditEvent?_count=3"))
    assert events.entry and all(isinstance(e.resource, AuditEvent) for e in events.entry)
    definition = StructureDefinition(server.request_json("StructureDefinition/consent-chain-state"))
    assert definition.url == "https://healthledger.dev/fhir/StructureDefinition/consent-chain-state"


def test_authlib_backend_services_client(base: str) -> None:
    """An OAuth library nobody here wrote (authlib's private_key_jwt): as configured by default it leaves out
    `kid` and asks for an hour, and each is refused naming the header or claim; configured as SMART says, it
    gets a token that reads the API."""
    from datetime import UTC, datetime

    from authlib.integrations.base_client.errors import OAuthError as AuthlibError
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oauth2.rfc7523 import PrivateKeyJWT
    from joserfc.jwk import ECKey

    from healthledger.auth.tokens import register_client

    port = int(base.split(":")[2].split("/")[0])
    key = ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, auto_kid=True)
    with APPS[port].extensions["healthledger.tokens"]._sessions.begin() as session:
        register_client(session, client_id="authlib-ehr", name="authlib EHR", scopes="system/Patient.rs",
                        role="system", jwks={"keys": [key.as_dict(private=False)]}, now=datetime.now(UTC))
    token_url = base.removesuffix("/fhir") + "/auth/token"

    def fetch(**auth: Any) -> Any:
        client = OAuth2Session("authlib-ehr", key, token_endpoint_auth_method=PrivateKeyJWT(token_url, alg="ES384",
                                                                                             **auth))
        return client.fetch_token(token_url, grant_type="client_credentials", scope="system/Patient.rs")

    with pytest.raises(AuthlibError) as refused:
        fetch()  # no kid, exp an hour ahead: the kid is checked first
    assert "kid" in str(refused.value.description)
    with pytest.raises(AuthlibError) as refused:
        fetch(headers={"kid": key.kid})
    assert "exp is" in str(refused.value.description) and "300 s" in str(refused.value.description)
    import time

    token = fetch(headers={"kid": key.kid}, claims={"exp": int(time.time()) + 120})
    read = requests.get(f"{base}/Patient?_count=1", headers={"Authorization": f"Bearer {token['access_token']}"},
                        timeout=10)
    assert read.status_code == 200 and read.json()["resourceType"] == "Bundle"
