"""The authorisation matrix: every kind of caller × action × consent situation, through the real API.

For each cell the expected answer is written down here from the policy's rules (not computed by the
engine), and each attempt must leave exactly one access-log entry with that decision.

Situations are separate patients of the hospital, so their consents do not interfere:
- none: no consent; consented: a live grant to the clinic and the university (action `access`);
- revoked: that grant revoked; expired: that grant past its end;
- denied-by-provision: the grant, with a nested provision denying Observations.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from consent_world import CLINIC, HOSPITAL, UNIVERSITY, World, password_parameters, permit_consent

SITUATIONS = ("none", "consented", "revoked", "expired", "denied-by-provision")
CALLERS = ("patient-self", "patient-other", "treating", "outsider", "researcher", "auditor", "break-glass")
ACTIONS = ("read", "search", "update")
BREAK_GLASS = {"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": "patient unresponsive in the emergency room"}


def expected(caller: str, situation: str, action: str) -> bool:
    """Whether the policy permits it (docs/consent-semantics.md)."""
    if caller == "auditor":
        return False  # its token's scopes cover AuditEvent only
    if caller == "patient-self":
        return action != "update"  # patients read their whole record, and write only Consents
    if caller == "patient-other":
        return False  # patient scopes cover one's own record
    if caller == "treating":
        return True  # the patient's care organisation, for treatment; the consents name others
    if caller == "break-glass":
        return True  # a clinician with a stated reason, whatever the consents say (flagged)
    # outsider (clinic, TREAT) and researcher (university, HRESCH): only a live consent, only to read
    return situation == "consented" and action != "update"


ACCESS_ONLY = {"action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                      "code": "access"}]}]}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[World, dict[str, tuple[str, str]]]]:
    url = request.getfixturevalue("postgres_module_schema_url")[0] if request.param == "postgres" else ""
    world = World.build(tmp_path_factory.mktemp(f"matrix-{request.param}"), url)
    # One patient per situation, each with a user account and key, cared for by the hospital.
    from healthledger.auth.users import AccountNames, create_user
    from healthledger.keys import key_provider_for
    from healthledger.ledger.patient_keys import create_patient_key

    store = world.app.extensions["healthledger.store"]
    settings = world.app.config["SETTINGS"]
    provider = key_provider_for(settings.key_provider, settings.keys_dir)
    cells: dict[str, tuple[str, str]] = {}
    for situation in SITUATIONS:
        pid = world.dev_create({"resourceType": "Patient", "managingOrganization": {"reference": HOSPITAL}})
        obs = world.dev_create({"resourceType": "Observation", "status": "final", "code": {"text": "HbA1c"},
                                "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2025-01-02"})
        with world.sessions.begin() as s:
            create_user(s, AccountNames(store), username=f"p-{situation}", password="correct horse battery staple",
                        role="patient", now=datetime.now(UTC), patient_id=pid)
            create_patient_key(s, f"Patient/{pid}", "correct horse battery staple", provider, now=time.time())
        cells[situation] = (pid, obs)
    end = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for situation, (pid, obs) in list(cells.items()):
        if situation == "none":
            continue
        consent = permit_consent(pid, CLINIC, UNIVERSITY, period_end=end if situation == "expired" else None)
        consent["provision"].update(ACCESS_ONLY)
        if situation == "denied-by-provision":
            consent["provision"]["provision"] = [{"type": "deny", "class": [
                {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}]
        session = world.patient_session(f"p-{situation}")
        cid = orjson.loads(session.post("Consent", consent).data)["id"]
        assert session.post(f"Consent/{cid}/$sign", password_parameters()).status_code == 200
        cells[situation] = (pid, obs, cid)  # type: ignore[assignment]
    world.sync()
    revoker = world.patient_session("p-revoked")
    assert revoker.post(f"Consent/{cells['revoked'][2]}/$revoke", password_parameters()).status_code == 200  # type: ignore[misc]
    world.sync()
    # The matrix is decided ten minutes on: past the expired grant's end, within every other grant.
    policy = world.app.extensions["healthledger.store"].policy
    real_clock = policy.clock
    policy.clock = lambda: real_clock() + timedelta(minutes=10)
    yield world, {k: (v[0], v[1]) for k, v in cells.items()}
    policy.clock = real_clock
    world.close()


def attempt(world: World, caller: str, situation: str, action: str, pid: str, obs: str) -> int:
    """Make the request; return the HTTP status."""
    if caller in ("patient-self", "patient-other"):
        session = world.patient_session(f"p-{situation}" if caller == "patient-self" else "bob")
        get = session.get
        headers: dict[str, str] = {}

        def put(path: str, body: dict[str, Any]) -> Any:
            return session.put(path, body)
    else:
        client_id = {"treating": "ehr", "outsider": "clinic", "researcher": "research", "auditor": "auditor",
                     "break-glass": "clinic"}[caller]
        headers = world.headers(client_id, **(BREAK_GLASS if caller == "break-glass" else {}))

        def get(path: str) -> Any:
            return world.client.get(f"/fhir/{path}", headers=headers)

        def put(path: str, body: dict[str, Any]) -> Any:
            return world.client.put(f"/fhir/{path}", data=orjson.dumps(body),
                                    headers={**headers, "Content-Type": "application/fhir+json"})
    if action == "read":
        return int(get(f"Observation/{obs}").status_code)
    if action == "search":
        resp = get(f"Observation?patient=Patient/{pid}")
        if resp.status_code != 200:
            return int(resp.status_code)
        body = orjson.loads(resp.data)
        found = [e["resource"]["id"] for e in body.get("entry", [])]
        assert body["total"] == len(found)  # no count that reveals what was withheld
        if caller == "researcher" and found:
            assert found != [obs]  # de-identified for research: the id is a pseudonym
            return 200 if len(found) == 1 else 404
        return 200 if found == [obs] else 404
    body = {"resourceType": "Observation", "id": obs, "status": "final", "code": {"text": "HbA1c"},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2025-01-02"}
    return int(put(f"Observation/{obs}", body).status_code)


@pytest.mark.parametrize("situation", SITUATIONS)
@pytest.mark.parametrize("caller", CALLERS)
def test_authorization_matrix(matrix: tuple[World, dict[str, tuple[str, str]]], caller: str, situation: str) -> None:
    world, cells = matrix
    pid, obs = cells[situation]
    for action in ACTIONS:
        before = world.log_size()
        code = attempt(world, caller, situation, action, pid, obs)
        entries = world.log_since(before)
        permitted = expected(caller, situation, action)
        assert (code in (200, 201)) == permitted, (caller, situation, action, code, entries)
        if not permitted:
            scope_denied = caller == "auditor" or (caller == "researcher" and action == "update")
            assert code == (403 if scope_denied or action == "update" else 404), (caller, situation, action, code)
        assert len(entries) == 1, (caller, situation, action, entries)
        [entry] = entries
        assert entry.decision == ("permit" if permitted else "deny"), (caller, situation, action, entry)
        assert entry.break_glass == (caller == "break-glass"), entry
        assert entry.action == action
