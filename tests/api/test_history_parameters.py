"""History takes the parameters R4 gives every interaction (`_summary`, `_elements`, `_format`, `_pretty`;
http.html#general) besides its own (`_since`, `_count`), and handles the others as a search does: ignored and
said under lenient handling, refused (400 not-supported) under `Prefer: handling=strict` (R4 3.1.1.4)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fhir_api_support import AUTH, JSON_HEADERS
from flask.testing import FlaskClient

from fhir_adapters.subsetting import SUBSETTED
from fhir_adapters.validation import parse_resource

STRICT = {**AUTH, "Prefer": "handling=strict"}


def _body(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.data[:400])
    return orjson.loads(resp.data)  # type: ignore[no-any-return]


def _patient_with_two_versions(client: FlaskClient) -> str:
    patient = {"resourceType": "Patient", "name": [{"family": f"Hist{uuid.uuid4().hex[:8]}"}], "gender": "female",
               "birthDate": "1970-01-01", "text": {"status": "generated",
                                                   "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}}
    pid = str(_body(client.post("/fhir/Patient", data=orjson.dumps(patient), headers=JSON_HEADERS), 201)["id"])
    _body(client.put(f"/fhir/Patient/{pid}", data=orjson.dumps({**patient, "id": pid, "gender": "other"}),
                     headers=JSON_HEADERS))
    return pid


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]


def test_summary_count_gives_the_total_only(client: FlaskClient) -> None:
    pid = _patient_with_two_versions(client)
    for headers in (AUTH, STRICT):
        counted = _body(client.get(f"/fhir/Patient/{pid}/_history?_summary=count", headers=headers))
        assert counted["type"] == "history" and counted["total"] == 2 and "entry" not in counted
        assert [link["relation"] for link in counted["link"]] == ["self"]
    typed = _body(client.get("/fhir/Patient/_history?_summary=count", headers=STRICT))
    assert typed["total"] >= 2 and "entry" not in typed


def test_summary_and_elements_subset_each_version(client: FlaskClient) -> None:
    pid = _patient_with_two_versions(client)
    elements = _body(client.get(f"/fhir/Patient/{pid}/_history?_elements=gender", headers=STRICT))
    versions = _resources(elements)
    assert [v["gender"] for v in versions] == ["other", "female"]
    assert all("name" not in v and "birthDate" not in v and SUBSETTED in v["meta"]["tag"] for v in versions)
    assert "_elements=gender" in elements["link"][0]["url"]
    summary = _resources(_body(client.get(f"/fhir/Patient/{pid}/_history?_summary=true", headers=STRICT)))
    assert summary and all("text" not in v and "name" in v and SUBSETTED in v["meta"]["tag"] for v in summary)
    data = _resources(_body(client.get(f"/fhir/Patient/{pid}/_history?_summary=data", headers=STRICT)))
    assert data and all("text" not in v and "birthDate" in v for v in data)
    whole = _resources(_body(client.get(f"/fhir/Patient/{pid}/_history?_summary=false", headers=STRICT)))
    assert whole and all("text" in v for v in whole)
    for bad in ("_summary=maybe", "_elements=a.b", "_summary=true&_elements=gender", "_count=x"):
        for headers in (AUTH, STRICT):
            assert _body(client.get(f"/fhir/Patient/{pid}/_history?{bad}", headers=headers), 400)["resourceType"] \
                == "OperationOutcome"


def test_format_and_pretty_are_accepted(client: FlaskClient) -> None:
    pid = _patient_with_two_versions(client)
    for query in ("_pretty=true", "_format=json", "_pretty=false&_format=application/fhir%2Bjson"):
        assert _body(client.get(f"/fhir/Patient/_history?_count=1&{query}", headers=STRICT))["type"] == "history"
        assert len(_resources(_body(client.get(f"/fhir/Patient/{pid}/_history?{query}", headers=STRICT)))) == 2


def test_unsupported_parameters_are_ignored_and_said_unless_strict(client: FlaskClient) -> None:
    pid = _patient_with_two_versions(client)
    for query in ("_at=2024", "_list=abc", "nickname=x"):
        name = query.partition("=")[0]
        refused = _body(client.get(f"/fhir/Patient/{pid}/_history?{query}", headers=STRICT), 400)
        assert refused["issue"][0]["code"] == "not-supported" and name in refused["issue"][0]["diagnostics"]
        # Refused before the store is asked: the same for a resource that does not exist.
        assert _body(client.get(f"/fhir/Patient/no-such-{uuid.uuid4().hex[:6]}/_history?{query}", headers=STRICT),
                     400) == refused
        lenient = _body(client.get(f"/fhir/Patient/{pid}/_history?{query}", headers=AUTH))
        assert lenient["total"] == 2 and len(_resources(lenient)) == 2
        said = lenient["entry"][-1]
        assert "resource" not in said and said["request"]["method"] == "GET"
        assert said["request"]["url"].startswith(f"Patient/{pid}/_history")
        assert said["response"]["outcome"]["issue"][0]["severity"] == "warning"
        assert name in said["response"]["outcome"]["issue"][0]["diagnostics"]
        assert "such a history refused" in said["response"]["outcome"]["issue"][0]["diagnostics"]
        assert name not in lenient["link"][0]["url"]
        parse_resource(lenient)  # still a valid R4 history Bundle (bdl-3, bdl-4)
    missing = client.get(f"/fhir/Patient/no-such-{uuid.uuid4().hex[:6]}/_history?_summary=count&_at=2024", headers=AUTH)
    assert missing.status_code == 404
