"""The access log as patients read it: actors and organisations by name, a break-the-glass reason shown to the
patient (and the auditors of their care organisations) only, and `$inclusion-proof`: an entry's bytes and its
RFC 6962 audit path to the tree head anchored on the chain, checked here with the reference verifier."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from consent_world import CLINIC, HOSPITAL, World
from sqlalchemy import select, update

from fhir_adapters.audit_event import BREAK_THE_GLASS_EXTENSION
from healthledger.audit.anchoring import anchor_batch, anchors_on_chain
from healthledger.audit.merkle import ProofError, leaf_hash, verify_inclusion
from healthledger.audit.models import AccessLogEntry
from healthledger.auth.tokens import register_client

REASON = "unconscious on arrival, no relatives reachable"
FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = World.build(tmp_path_factory.mktemp("log-proofs"))
    secrets = {}
    with built.sessions.begin() as s:
        for client_id, organization in (("auditor-home", HOSPITAL), ("auditor-clinic", CLINIC)):
            _, secrets[client_id] = register_client(
                s, client_id=client_id, name=f"Privacy office {client_id}", scopes="system/*.rs", role="auditor",
                organization=organization, with_secret=True, now=datetime.now(UTC))
    for client_id, secret in secrets.items():
        token = built.client.post("/auth/token", data={
            "grant_type": "client_credentials", "scope": "system/*.rs", "client_id": client_id,
            "client_secret": secret})
        assert token.status_code == 200, token.get_json()
        built.tokens[client_id] = token.get_json()["access_token"]  # world.headers() uses it from here
    emergency = built.client.get(f"/fhir/Observation/{built.observations['ann']}", headers=built.headers(
        "clinic", **{"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": REASON}))
    assert emergency.status_code == 200
    yield built
    built.close()


def ann_events(world: World, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    path = f"/fhir/AuditEvent?patient=Patient/{world.patients['ann']}&_count=50"
    response = (world.client.get(path, headers=headers) if headers is not None
                else world.patient_session("ann").get(path.removeprefix("/fhir/")))
    assert response.status_code == 200, response.get_data(as_text=True)
    return [e["resource"] for e in response.get_json().get("entry", [])]


def break_glass(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events
                if any(x.get("url") == BREAK_THE_GLASS_EXTENSION for x in e.get("extension", [])))


def test_actors_and_organisations_are_named(world: World) -> None:
    event = break_glass(ann_events(world))
    actor, organization = event["agent"]
    assert actor["who"]["display"] == "clinic" and actor["who"]["identifier"]["value"] == "client:clinic"
    assert organization["who"] == {"reference": CLINIC, "display": "city-clinic"}


def test_the_break_glass_reason_is_shown_to_the_patient_and_the_auditor_of_her_care(world: World) -> None:
    def reason_seen(events: list[dict[str, Any]]) -> str | None:
        btg = [p for p in break_glass(events)["purposeOfEvent"] if p["coding"][0]["code"] == "BTG"]
        return btg[0].get("text")

    assert reason_seen(ann_events(world)) == REASON
    assert reason_seen(ann_events(world, world.headers("auditor-home"))) == REASON
    assert reason_seen(ann_events(world, world.headers("auditor"))) is None  # a log feed (SIEM): not the free text
    assert ann_events(world, world.headers("auditor-clinic")) == []  # the clinic does not care for Ann


def proof_of(world: World, entry_id: str, who: str = "ann") -> dict[str, Any]:
    response = world.patient_session(who).get(f"AuditEvent/{entry_id}/$inclusion-proof")
    assert response.status_code == 200, response.get_data(as_text=True)
    params: dict[str, Any] = {}
    for p in response.get_json()["parameter"]:
        value = p.get("part") or next(v for k, v in p.items() if k.startswith("value"))
        params.setdefault(p["name"], []).append(value)
    return params


def check(params: dict[str, Any]) -> tuple[bytes, int]:
    body = base64.b64decode(params["entry"][0])
    anchor = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in params.get("anchor", [[]])[0]}
    size = anchor.get("treeSize", params["treeSize"][0])
    root = bytes.fromhex(anchor.get("rootHash", params["rootHash"][0]))
    path = [bytes.fromhex(h) for h in params.get("auditPath", [])]
    verify_inclusion(params["leafIndex"][0], size, leaf_hash(body), path, root)
    return body, size


def test_an_entry_proves_against_the_head_anchored_on_chain(world: World) -> None:
    entry_id = break_glass(ann_events(world))["id"]
    before = proof_of(world, entry_id)
    assert "anchor" not in before  # nothing anchored yet: proven against the current head
    check(before)
    with world.sessions.begin() as s:
        anchor_batch(s, datetime.now(UTC), tenant=world.app.config["SETTINGS"].tenant)
    world.sync()
    after = proof_of(world, entry_id)
    body, size = check(after)
    assert b'"break_glass":true' in body
    anchor = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in after["anchor"][0]}
    on_chain = {(a.size, a.root.hex()) for a in anchors_on_chain(world.chain, tenant=world.app.config["SETTINGS"].tenant)}
    assert (anchor["treeSize"], anchor["rootHash"]) in on_chain and size == anchor["treeSize"]
    receipt = world.chain.w3.eth.get_transaction_receipt(anchor["transaction"])
    assert receipt["blockNumber"] == anchor["blockNumber"]


def test_another_patients_entry_has_no_proof_for_bob(world: World) -> None:
    entry_id = break_glass(ann_events(world))["id"]
    response = world.patient_session("bob").get(f"AuditEvent/{entry_id}/$inclusion-proof")
    missing = world.patient_session("bob").get("AuditEvent/999999999/$inclusion-proof")
    assert response.status_code == missing.status_code == 404
    assert response.get_json() == missing.get_json()


def test_a_changed_entry_no_longer_proves(world: World) -> None:
    with world.sessions.begin() as s:
        anchor_batch(s, datetime.now(UTC), tenant=world.app.config["SETTINGS"].tenant)
    world.sync()
    entry_id = break_glass(ann_events(world))["id"]
    with world.sessions.begin() as s:
        body = s.scalar(select(AccessLogEntry.body).where(AccessLogEntry.id == int(entry_id)))
        assert body is not None
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == int(entry_id))
                  .values(body=body.replace(b'"decision":"permit"', b'"decision":"deny"')))
    with pytest.raises(ProofError):
        check(proof_of(world, entry_id))
