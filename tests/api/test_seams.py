"""The API's seams: every operation reaches the store's AccessPolicy with the caller; failures stay opaque."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app, dispose
from flask import Flask

from healthledger.errors import Forbidden
from healthledger.store.access import DEV_CLIENT, DevelopmentPolicy, Principal

SECRET = "Zebediah Quuxworth"  # stands for PHI that must never reach a response


class RecordingPolicy(DevelopmentPolicy):
    filters_search_results = False

    def __init__(self) -> None:
        self.calls: list[tuple[Principal, str, str]] = []
        self.deny: set[str] = set()

    def check(
        self, principal: Principal, action: str, resource_type: str, resource: dict[str, Any] | None, **_: Any
    ) -> dict[str, Any] | None:
        self.calls.append((principal, action, resource_type))
        if action in self.deny:
            raise Forbidden(f"{action} on {resource_type} is not permitted for this client")
        return resource


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[Flask]:
    application = build_app(api_settings(tmp_path))
    yield application
    dispose(application)


def test_every_interaction_passes_the_caller_to_the_policy(app: Flask) -> None:
    policy = RecordingPolicy()
    app.extensions["healthledger.store"].policy = policy
    client = app.test_client()
    created = client.post("/fhir/Patient", data=orjson.dumps({"resourceType": "Patient"}), headers=JSON_HEADERS)
    pid = orjson.loads(created.data)["id"]
    client.get(f"/fhir/Patient/{pid}", headers=AUTH)
    client.get(f"/fhir/Patient/{pid}/_history/1", headers=AUTH)
    client.get("/fhir/Patient?gender=male", headers=AUTH)
    client.get(f"/fhir/Patient/{pid}/_history", headers=AUTH)
    client.put(f"/fhir/Patient/{pid}", data=orjson.dumps({"resourceType": "Patient", "id": pid}), headers=JSON_HEADERS)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS)
    client.delete(f"/fhir/Patient/{pid}", headers=AUTH)
    actions = [(action, rtype) for _, action, rtype in policy.calls]
    for expected in [("create", "Patient"), ("read", "Patient"), ("vread", "Patient"), ("search", "Patient"),
                     ("history", "Patient"), ("update", "Patient"), ("create", "Observation"),
                     ("delete", "Patient")]:
        assert expected in actions, (expected, actions)
    assert {principal for principal, _, _ in policy.calls} == {DEV_CLIENT}


def test_a_denying_policy_is_a_403_outcome_everywhere(app: Flask) -> None:
    client = app.test_client()
    created = client.post("/fhir/Patient", data=orjson.dumps({"resourceType": "Patient"}), headers=JSON_HEADERS)
    pid = orjson.loads(created.data)["id"]
    policy = RecordingPolicy()
    policy.deny = {"read", "search", "create"}
    app.extensions["healthledger.store"].policy = policy
    for resp in (
        client.get(f"/fhir/Patient/{pid}", headers=AUTH),
        client.get("/fhir/Patient", headers=AUTH),
        client.post("/fhir/Patient", data=orjson.dumps({"resourceType": "Patient"}), headers=JSON_HEADERS),
    ):
        assert resp.status_code == 403
        assert orjson.loads(resp.data)["issue"][0]["code"] == "forbidden"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]}
    resp = client.post("/fhir", data=orjson.dumps(bundle), headers=JSON_HEADERS)
    assert resp.status_code == 403


def test_unexpected_errors_are_a_generic_500_without_details(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    store = app.extensions["healthledger.store"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"database exploded while reading {SECRET}")

    monkeypatch.setattr(store, "read", broken)
    resp = app.test_client().get("/fhir/Patient/some-id", headers=AUTH)
    assert resp.status_code == 500
    text = resp.get_data(as_text=True)
    assert SECRET not in text and "Traceback" not in text and "RuntimeError" not in text
    outcome = orjson.loads(resp.data)
    assert outcome["issue"][0] == {"severity": "error", "code": "exception", "diagnostics": "internal server error"}


def test_non_fhir_paths_keep_plain_http_errors(app: Flask) -> None:
    resp = app.test_client().get("/no-such-page")
    assert resp.status_code == 404
    assert resp.content_type.startswith("text/html")
    assert app.test_client().get("/healthz").json == {"status": "ok"}


def test_an_unavailable_database_is_a_503_to_retry(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy.exc

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise sqlalchemy.exc.OperationalError("SELECT ... /* Patient " + SECRET + " */", {}, Exception("locked"))

    monkeypatch.setattr(app.extensions["healthledger.store"], "reading", locked)  # every read and search
    resp = app.test_client().get("/fhir/Patient", headers=AUTH)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert SECRET not in resp.get_data(as_text=True)
    assert orjson.loads(resp.data)["issue"][0]["code"] == "transient"
