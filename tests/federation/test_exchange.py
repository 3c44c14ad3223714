"""Hospital A's token endpoint for another member: the directory, the key, the B2B extension, the live grant; and
every request decided again by the consent engine under that one Consent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from consent_world import CLINIC, World, password_parameters, permit_consent
from sqlalchemy import update

from healthledger.federation.client import client_assertion
from healthledger.federation.exchange import permitting_provisions, purpose_code, scopes_for
from healthledger.federation.keys import MemberKeys, new_key, thumbprint_bytes
from healthledger.federation.registry import admit, org_key, remove, request_join, rotate_key
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.members import REGISTRY, MemberIndexer
from healthledger.ledger.models import IndexerCursor

ISSUER = "http://127.0.0.1:8080"
TOKEN_ENDPOINT = ISSUER + "/auth/token"
B = "hospital-b"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Hospital:
    def __init__(self, world: World, keys_dir: Path) -> None:
        self.world = world
        self.keys = MemberKeys.load_or_create(keys_dir, LocalFileKeyProvider(keys_dir))
        chain = world.chain
        _, receipt = chain.deploy(REGISTRY, chain.operator.address)
        self.directory = MemberIndexer(world.sessions, chain, from_block=int(receipt["blockNumber"]))

    def sync(self) -> None:
        self.world.sync()
        self.directory.catch_up(time.time())

    def assertion(self, consent_id: str, *, org: str = B, purpose: str = "TREAT", key: Any = None,
                  user: str = "Practitioner/dr-b", **changes: Any) -> str:
        return client_assertion(key or self.keys.current, org, TOKEN_ENDPOINT, purpose=purpose, user=user,
                                consent_reference=f"{ISSUER}/fhir/Consent/{consent_id}", now=int(time.time()),
                                **changes)

    def token_response(self, assertion: str, scope: str = "system/*.rs") -> tuple[int, dict[str, Any]]:
        resp = self.world.client.post("/auth/token", data={
            "grant_type": "client_credentials", "scope": scope, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion})
        return resp.status_code, resp.get_json()

    def token(self, consent_id: str, **kw: Any) -> str:
        status, body = self.token_response(self.assertion(consent_id, **kw))
        assert status == 200, body
        return str(body["access_token"])


@pytest.fixture(scope="module")
def a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    world = World.build(tmp_path_factory.mktemp("hospital-a"))
    hospital = Hospital(world, tmp_path_factory.mktemp("hospital-b-keys"))
    request_join(world.chain, B, "Hospital B", "http://127.0.0.1:9/fhir", thumbprint_bytes(hospital.keys.current))
    admit(world.chain, B)
    request_join(world.chain, "hospital-c", "Hospital C", "http://127.0.0.1:10/fhir", thumbprint_bytes(new_key()))
    admit(world.chain, "hospital-c")
    hospital.sync()
    yield hospital
    world.close()


def granted(a: Hospital, *actors: str, classes: tuple[str, ...] = (), purposes: tuple[str, ...] = ()) -> str:
    ann = a.world.patient_session("ann")
    consent = permit_consent(a.world.patients["ann"], *actors, classes=classes)
    if purposes:
        consent["provision"]["purpose"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p} for p in purposes]
    created = ann.post("Consent", consent)
    assert created.status_code == 201, created.get_data(as_text=True)
    cid = str(orjson.loads(created.data)["id"])
    assert ann.post(f"Consent/{cid}/$sign", password_parameters()).status_code == 200
    a.sync()
    return cid


def read(a: Hospital, token: str, path: str, **headers: str) -> int:
    return int(a.world.client.get(f"/fhir/{path}", headers={"Authorization": f"Bearer {token}",
                                                          "Accept": "application/fhir+json", **headers}).status_code)


def test_a_member_reads_what_the_grant_allows_and_the_log_names_it(a: Hospital) -> None:
    cid = granted(a, f"Organization/{B}", classes=("Observation",))
    status, body = a.token_response(a.assertion(cid), scope="system/*.rs")
    assert status == 200, body
    assert body["scope"] == "system/Observation.rs" and body["expires_in"] <= 300
    token = body["access_token"]
    size = a.world.log_size()
    assert read(a, token, f"Observation/{a.world.observations['ann']}") == 200
    assert read(a, token, f"Observation/{a.world.observations['bob']}") == 404  # another patient: as missing
    assert read(a, token, f"Patient/{a.world.patients['ann']}") == 403  # not in the token's scopes
    entries = a.world.log_since(size)
    first = entries[0]
    assert (first.actor, first.organization, first.purpose, first.decision) == (
        f"member:{B}/Practitioner/dr-b", f"Organization/{B}", "TREAT", "permit")
    assert f"Consent/{cid}" in first.reason
    # A member's token reads nothing of the log, and cannot make A link or fetch in its name.
    log = a.world.client.get("/fhir/AuditEvent", headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
    assert log.status_code in (200, 403) and not (log.get_json() or {}).get("entry")
    for op in ("$federation-fetch", "$link-record"):
        resp = a.world.client.post(f"/fhir/Patient/{a.world.patients['ann']}/{op}", headers={
            "Authorization": f"Bearer {token}", "Accept": "application/fhir+json", "Content-Type": "application/fhir+json"},
            data=b'{"resourceType": "Parameters", "parameter": [{"name": "locator", "valueString": "HLRL1.e30"}]}')
        assert resp.status_code == 403, resp.get_data(as_text=True)
    # The purpose is the token's: a request may not state another.
    assert read(a, token, f"Observation/{a.world.observations['ann']}", **{"X-Purpose-Of-Use": "HRESCH"}) == 403


def test_refusals_are_clear_and_leak_nothing(a: Hospital) -> None:
    cid = granted(a, f"Organization/{B}", classes=("Observation",), purposes=("TREAT",))
    other = granted(a, CLINIC)  # a Consent to someone else

    def refused(assertion: str) -> dict[str, Any]:
        status, body = a.token_response(assertion)
        assert status in (400, 401), body
        return body

    size = a.world.log_size()
    missing = refused(a.assertion("no-such-consent"))
    to_other = refused(a.assertion(other))
    assert missing == to_other and missing["error"] == "invalid_grant"  # denied == missing
    assert a.world.log_size() == size  # and neither touches a patient's log (no oracle in the log either)
    assert "no Consent here that grants" in missing["error_description"]
    assert "not signed with the key the directory lists" in refused(a.assertion(cid, key=new_key()))[
        "error_description"]
    assert "not an active member" in refused(a.assertion(cid, org="hospital-z"))["error_description"]
    assert "does not permit" in refused(a.assertion(cid, purpose="HRESCH"))["error_description"]
    # A Consent that names B: the refusal is in the patient's log, as B's user and purpose.
    logged = [(e.actor, e.purpose, e.resource_id, e.decision, e.reason) for e in a.world.log_since(size)]
    assert logged == [("member:hospital-b/Practitioner/dr-b", "HRESCH", cid, "deny",
                       "federation-token:purpose-not-covered")]
    # The key of C is not B's: C cannot name B, nor rely on B's grant as itself.
    assert refused(a.assertion(cid, org="hospital-c"))["error"] == "invalid_client"
    # A directory copy that stopped following the chain refuses every member (fail closed).
    with a.world.sessions.begin() as s:
        s.execute(update(IndexerCursor).where(IndexerCursor.name == "members").values(updated_at=time.time() - 3600))
    status, body = a.token_response(a.assertion(cid))
    assert status == 503 and body["error"] == "temporarily_unavailable"
    a.sync()
    issued = a.token(cid)
    with a.world.sessions.begin() as s:  # ... and every request with a token issued before (each use re-checks)
        s.execute(update(IndexerCursor).where(IndexerCursor.name == "members").values(updated_at=time.time() - 3600))
    assert read(a, issued, f"Observation?patient=Patient/{a.world.patients['ann']}") == 503
    a.sync()
    assert read(a, issued, f"Observation?patient=Patient/{a.world.patients['ann']}") == 200
    # A consent index gone stale (the directory copy still fresh) is a 503 too, not a search with every record
    # withheld: from that a member would conclude there is nothing to copy any more.
    with a.world.sessions.begin() as s:
        s.execute(update(IndexerCursor).where(IndexerCursor.name != "members").values(updated_at=time.time() - 3600))
    assert read(a, issued, f"Observation?patient=Patient/{a.world.patients['ann']}") == 503
    a.sync()
    assert read(a, issued, f"Observation?patient=Patient/{a.world.patients['ann']}") == 200
    assertion = a.assertion(cid)
    assert a.token_response(assertion)[0] == 200
    assert "already used" in refused(assertion)["error_description"]  # jti replay


def test_an_expired_grant_is_refused_and_says_so(a: Hospital) -> None:
    from datetime import UTC, datetime, timedelta

    # From the chain's clock or the wall's, whichever is ahead: the embedded chain gives each block at least
    # one second, so after a burst of deployments its time runs ahead of the wall's, and a grant must still be
    # valid when its transaction is mined.
    chain_now = datetime.fromtimestamp(a.world.chain.w3.eth.get_block("latest")["timestamp"], UTC)
    end = (max(datetime.now(UTC), chain_now) + timedelta(seconds=12)).isoformat(timespec="seconds")
    ann = a.world.patient_session("ann")
    created = ann.post("Consent", permit_consent(a.world.patients["ann"], f"Organization/{B}", period_end=end))
    assert created.status_code == 201, created.get_data(as_text=True)
    cid = str(orjson.loads(created.data)["id"])
    assert ann.post(f"Consent/{cid}/$sign", password_parameters()).status_code == 200
    a.sync()
    token = a.token(cid)
    obs = f"Observation/{a.world.observations['ann']}"
    assert read(a, token, obs) == 200
    time.sleep(max(0.0, (datetime.fromisoformat(end) - datetime.now(UTC)).total_seconds()) + 1)
    a.sync()
    assert read(a, token, obs) == 404  # the token outlived the grant: the engine says no
    status, body = a.token_response(a.assertion(cid))
    assert status == 400 and "expired" in body["error_description"]


def test_revocation_rotation_and_removal_stop_the_member(a: Hospital, tmp_path: Path) -> None:
    cid = granted(a, f"Organization/{B}")
    token = a.token(cid)
    obs = f"Observation/{a.world.observations['ann']}"
    assert read(a, token, obs) == 200
    ann = a.world.patient_session("ann")
    assert ann.post(f"Consent/{cid}/$revoke", password_parameters()).status_code == 200
    assert read(a, token, obs) == 404  # at once off-chain; the chain follows
    a.sync()
    assert read(a, token, obs) == 404
    status, body = a.token_response(a.assertion(cid))
    assert status == 400 and "revoked" in body["error_description"]

    cid = granted(a, f"Organization/{B}")
    token = a.token(cid)
    old_key = a.keys.current
    a.keys = a.keys.with_new_key(tmp_path, LocalFileKeyProvider(tmp_path))
    rotate_key(a.world.chain, B, thumbprint_bytes(a.keys.current))
    a.sync()
    assert read(a, token, obs) == 401  # a token issued under the old key
    assert a.token_response(a.assertion(cid, key=old_key))[0] == 401
    token = a.token(cid)
    assert read(a, token, obs) == 200

    remove(a.world.chain, B)
    a.sync()
    assert read(a, token, obs) == 401
    status, body = a.token_response(a.assertion(cid))
    assert status == 401 and "removed" in body["error_description"]
    assert org_key(B) != org_key("hospital-c")


def test_pure_rules() -> None:
    assert purpose_code("urn:oid:2.16.840.1.113883.5.8#TREAT") == "TREAT"
    assert purpose_code("TREAT") == "TREAT" and purpose_code("urn:other#TREAT") is None
    assert purpose_code("NOPE") is None
    from datetime import UTC, datetime

    from fhir_adapters.consent import consent_rules

    rules = consent_rules({**permit_consent("p1", "Organization/x", classes=("Observation", "Condition")),
                           "id": "c1"})
    now = datetime.now(UTC)
    found = permitting_provisions(rules, "Organization/x", "TREAT", now)
    assert scopes_for(found) == "system/Condition.rs system/Observation.rs"
    assert permitting_provisions(rules, "Organization/y", "TREAT", now) == []

