"""REST semantics under consent (docs/consent-semantics.md): a deleted resource is 410 to a caller that could read it
and the 404 of a missing one to anyone else; preconditions and conditional reads answer only after the decision;
a new Patient is created by POST and by PUT under the same rule."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from consent_world import CLINIC, FHIR, HOSPITAL, World

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = World.build(tmp_path_factory.mktemp("rest-consent"))
    yield built
    built.close()


def _call(world: World, client_id: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    extra = {"Content-Type": FHIR_JSON, **headers} if body is not None else headers
    data = orjson.dumps(body) if body is not None else None
    return world.client.open(f"/fhir/{path}", method=method, data=data, headers=world.headers(client_id, **extra))


def _observation(world: World, name: str) -> str:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "REST consent test"},
           "subject": {"reference": f"Patient/{world.patients[name]}"}}
    made = _call(world, "ehr", "POST", "Observation", obs)
    assert made.status_code == 201, made.data
    return str(orjson.loads(made.data)["id"])


def _same_miss(refused: Any, missing: Any, refused_id: str, missing_id: str) -> None:
    """The answer about a refused resource is the answer about one that never existed (status, body, headers)."""
    assert refused.status_code == missing.status_code == 404, (refused.status_code, refused.data, missing.data)
    assert refused.data.replace(refused_id.encode(), b"ID") == missing.data.replace(missing_id.encode(), b"ID")
    ignored = {"Content-Length", "X-Request-Id", "Date"}
    assert ({k: v for k, v in refused.headers.items() if k not in ignored}
            == {k: v for k, v in missing.headers.items() if k not in ignored})


def test_a_deleted_resource_is_gone_to_who_could_read_it_and_unknown_to_anyone_else(world: World) -> None:
    oid = _observation(world, "ann")
    never = uuid.uuid4().hex
    assert _call(world, "ehr", "DELETE", f"Observation/{oid}").status_code == 204
    # Ann's care organisation read it: 410 on read, on vread of the deletion; a repeat DELETE succeeds (R4 3.1.0.7).
    assert _call(world, "ehr", "GET", f"Observation/{oid}").status_code == 410
    assert _call(world, "ehr", "GET", f"Observation/{oid}/_history/2").status_code == 410
    assert _call(world, "ehr", "GET", f"Observation/{oid}/_history/1").status_code == 200
    again = _call(world, "ehr", "DELETE", f"Observation/{oid}")
    assert again.status_code == 204 and again.headers["ETag"] == 'W/"2"'
    assert _call(world, "ehr", "DELETE", f"Observation/{oid}", **{"If-Match": 'W/"1"'}).status_code == 412
    # The clinic could not: exactly the 404 of an id that never existed, for every interaction.
    for method, suffix in (("GET", ""), ("GET", "/_history/2"), ("DELETE", "")):
        refused = _call(world, "clinic", method, f"Observation/{oid}{suffix}")
        missing = _call(world, "clinic", method, f"Observation/{never}{suffix}")
        _same_miss(refused, missing, oid, never)
    # Bob's resource, deleted by the service: the hospital does not care for Bob, so it is unknown to it too.
    bob = _observation_by_dev(world, "bob")
    assert world.client.delete(f"/fhir/Observation/{bob}", headers={"Authorization": "Bearer api-test-token"}).status_code == 204
    _same_miss(_call(world, "ehr", "GET", f"Observation/{bob}"), _call(world, "ehr", "GET", f"Observation/{never}"),
               bob, never)


def _observation_by_dev(world: World, name: str) -> str:
    return world.dev_create({"resourceType": "Observation", "status": "final", "code": {"text": "dev"},
                             "subject": {"reference": f"Patient/{world.patients[name]}"}})


def test_preconditions_and_conditional_reads_answer_after_the_decision(world: World) -> None:
    oid = _observation(world, "ann")
    never = uuid.uuid4().hex
    stale = {"If-Match": 'W/"7"'}
    # The clinic may not see Ann's Observation: a wrong If-Match is not a 412 that would say it exists.
    _same_miss(_call(world, "clinic", "DELETE", f"Observation/{oid}", **stale),
               _call(world, "clinic", "DELETE", f"Observation/{never}", **stale), oid, never)
    fresh = {"If-None-Match": 'W/"1"'}
    _same_miss(_call(world, "clinic", "GET", f"Observation/{oid}", **fresh),
               _call(world, "clinic", "GET", f"Observation/{never}", **fresh), oid, never)
    conditional = _call(world, "clinic", "DELETE", f"Observation?_id={oid}", **stale)
    assert conditional.status_code == 204  # no visible match: nothing to delete, as for no match at all
    # Ann's care organisation may: 412, 304.
    assert _call(world, "ehr", "DELETE", f"Observation/{oid}", **stale).status_code == 412
    assert _call(world, "ehr", "DELETE", f"Observation?_id={oid}", **stale).status_code == 412
    not_modified = _call(world, "ehr", "GET", f"Observation/{oid}", **fresh)
    assert not_modified.status_code == 304 and not_modified.data == b"" and not_modified.headers["ETag"] == 'W/"1"'
    current = world.dev_read(f"Observation/{oid}")
    assert _call(world, "ehr", "PUT", f"Observation/{oid}", current, **{"If-None-Match": "*"}).status_code == 412
    # A writer refused the update is refused as before (403), whatever the precondition.
    assert _call(world, "clinic", "PUT", f"Observation/{oid}", current, **{"If-None-Match": "*"}).status_code == 403
    assert world.dev_read(f"Observation/{oid}")["meta"]["versionId"] == "1"


def _new_patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Newcomer"}], **extra}


def test_a_new_patient_is_created_by_post_and_put_under_one_rule(world: World) -> None:
    # An organisation creates only a Patient it will care for: one that names it (no home organisation here).
    for client_id, organisation in (("clinic", CLINIC), ("ehr", HOSPITAL)):
        pid = f"new-{uuid.uuid4().hex[:12]}"
        refused = [
            _call(world, client_id, "POST", "Patient", _new_patient()),
            _call(world, client_id, "PUT", f"Patient/{pid}", _new_patient(id=pid)),
            _call(world, client_id, "PUT", f"Patient?identifier=urn:new|{pid}",
                  _new_patient(identifier=[{"system": "urn:new", "value": pid}])),
            _call(world, client_id, "POST", "Patient", _new_patient(managingOrganization={"reference": "Organization/x"})),
        ]
        assert [r.status_code for r in refused] == [403] * 4, [r.data for r in refused]
        assert all("writing this Patient is not permitted" in r.get_json()["issue"][0]["diagnostics"] for r in refused)
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": _new_patient(id=pid + "b"), "request": {"method": "PUT", "url": f"Patient/{pid}b"}},
            {"resource": _new_patient(), "request": {"method": "POST", "url": "Patient"}}]}
        answered = _call(world, client_id, "POST", "", batch).get_json()
        assert [e["response"]["status"] for e in answered["entry"]] == ["403 Forbidden"] * 2
        # Naming itself, it creates by either path, and reads back what it created.
        cared = {"managingOrganization": {"reference": organisation}}
        posted = _call(world, client_id, "POST", "Patient", _new_patient(**cared))
        put = _call(world, client_id, "PUT", f"Patient/{pid}", _new_patient(id=pid, **cared))
        assert posted.status_code == put.status_code == 201, (posted.data, put.data)
        for made in (posted.get_json()["id"], pid):
            assert _call(world, client_id, "GET", f"Patient/{made}", Accept=FHIR).status_code == 200
