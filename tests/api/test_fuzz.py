"""Hostile and malformed input never gets a 500 or a traceback: always a clean OperationOutcome (hypothesis)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from fhir_api_support import AUTH, JSON_HEADERS
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

RESOURCE_TYPES = ["Patient", "Observation", "Condition", "Encounter", "Bundle", "Consent", "Nope", "patient", ""]
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    ["id", "meta", "name", "birthDate", "gender", "identifier", "subject", "code", "status", "entry", "type",
     "request", "resource", "extension", "contained", "text", "valueQuantity", "effectiveDateTime"]
) | st.text(max_size=10)


def dumps(value: Any) -> bytes:
    # The stdlib encoder: big integers (beyond 64 bits) are hostile input too, and orjson refuses them.
    return json.dumps(value).encode()


def resources() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda rtype, fields: {"resourceType": rtype, **fields},
        st.sampled_from(RESOURCE_TYPES),
        st.dictionaries(FIELD_NAMES, JSON, max_size=5),
    )


def assert_clean(resp: TestResponse, allowed: tuple[int, ...] = ()) -> None:
    text = resp.get_data(as_text=True)
    assert resp.status_code < 500, (resp.status_code, text[:500])
    assert "Traceback" not in text and "File \"" not in text
    if resp.status_code >= 400:
        assert resp.content_type == "application/fhir+json; charset=utf-8"
        outcome = orjson.loads(resp.data)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"]
    elif allowed:
        assert resp.status_code in allowed


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_as_a_resource(sqlite_client: FlaskClient, raw: bytes) -> None:
    resp = sqlite_client.post("/fhir/Patient", data=raw, headers=JSON_HEADERS)
    assert_clean(resp, allowed=(201,))


@FUZZ
@given(resource=resources(), rtype=st.sampled_from(["Patient", "Observation", "Condition"]))
def test_arbitrary_json_resources(sqlite_client: FlaskClient, resource: dict[str, Any], rtype: str) -> None:
    resp = sqlite_client.post(f"/fhir/{rtype}", data=dumps(resource), headers=JSON_HEADERS)
    assert_clean(resp, allowed=(201,))
    resp = sqlite_client.put(f"/fhir/{rtype}/fz-1", data=dumps({**resource, "id": "fz-1"}), headers=JSON_HEADERS)
    assert_clean(resp, allowed=(200, 201))


@FUZZ
@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "fullUrl": st.sampled_from(["urn:uuid:1", "urn:uuid:1", "Patient/1", "", "x"]) | st.text(max_size=8),
                "resource": resources(),
                "request": st.fixed_dictionaries(
                    {},
                    optional={
                        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "", "get"]),
                        "url": st.sampled_from(["Patient", "Patient/1", "Patient?name=x", "Nope/1", "", "/", "?"])
                        | st.text(max_size=15),
                        "ifMatch": st.text(max_size=6),
                        "ifNoneExist": st.text(max_size=12),
                    },
                ),
            },
        ),
        max_size=4,
    ),
    kind=st.sampled_from(["batch", "transaction", "collection", "searchset", "nope"]) | st.none(),
)
def test_arbitrary_bundles(sqlite_client: FlaskClient, entries: list[dict[str, Any]], kind: str | None) -> None:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": entries}
    if kind is not None:
        bundle["type"] = kind
    resp = sqlite_client.post("/fhir", data=dumps(bundle), headers=JSON_HEADERS)
    assert_clean(resp, allowed=(200,))


@FUZZ
@given(
    rtype=st.sampled_from(["Patient", "Observation", "Condition", "Encounter", "MedicationRequest", "AuditEvent"]),
    params=st.lists(
        st.tuples(
            st.sampled_from(["name", "family", "given", "birthdate", "gender", "identifier", "patient", "subject",
                             "code", "date", "category", "status", "_id", "_lastUpdated", "_count", "_cursor",
                             "_summary", "_format", "_sort", "name:exact", "name:contains", "code:text",
                             "birthdate:missing", "nope", "_elements"]) | st.text(max_size=10),
            st.sampled_from(["", "|", "a|b", "|x", "x|", "ge2020", "eq2020-01-01", "lt", "ap2020-13-45",
                             "Patient/1", "http://x/Patient/1", "1,2,3", "count", "json", "xml", "-1", "0",
                             "99999999999", "true"]) | st.text(max_size=20),
        ),
        max_size=5,
    ),
)
def test_arbitrary_search_queries(sqlite_client: FlaskClient, rtype: str, params: list[tuple[str, str]]) -> None:
    query = "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in params)
    resp = sqlite_client.get(f"/fhir/{rtype}?{query}", headers=AUTH)
    assert_clean(resp, allowed=(200,))
    form = sqlite_client.post(f"/fhir/{rtype}/_search", data=query.encode(),
                              headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert_clean(form, allowed=(200,))


HEADER_VALUES = st.sampled_from(['W/"1"', '"1"', "W/", "*", "", "1", 'W/"99999999999999999999"',
                                 "return=minimal", "return=OperationOutcome", "identifier=a|b", "name=",
                                 "application/fhir+xml", "application/json; charset=latin-1", "text/html",
                                 "Bearer x", "\t"]) | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@FUZZ
@given(
    if_match=HEADER_VALUES, if_none_exist=HEADER_VALUES, prefer=HEADER_VALUES, accept=HEADER_VALUES,
    content_type=HEADER_VALUES, method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(["/fhir/Patient", "/fhir/Patient/fz-2", "/fhir/Patient/fz-2/_history",
                          "/fhir/Patient/fz-2/_history/1", "/fhir/Patient/_history", "/fhir", "/fhir/metadata",
                          "/fhir/Patient/_search", "/fhir/%00", "/fhir/Patient/..", "/fhir/Patient/a/b/c/d"]),
)
def test_arbitrary_headers_and_paths(sqlite_client: FlaskClient, if_match: str, if_none_exist: str, prefer: str,
                                     accept: str, content_type: str, method: str, path: str) -> None:
    headers = {**AUTH, "If-Match": if_match, "If-None-Exist": if_none_exist, "Prefer": prefer,
               "Accept": accept, "Content-Type": content_type}
    data = orjson.dumps({"resourceType": "Patient", "id": "fz-2", "gender": "other"})
    resp = sqlite_client.open(path, method=method, data=data, headers=headers)
    assert_clean(resp)


@FUZZ
@given(
    rtype=st.text(max_size=12), rid=st.text(max_size=70), vid=st.text(max_size=12),
)
def test_arbitrary_url_segments(sqlite_client: FlaskClient, rtype: str, rid: str, vid: str) -> None:
    path = f"/fhir/{quote(rtype, safe='')}/{quote(rid, safe='')}/_history/{quote(vid, safe='')}"
    assert_clean(sqlite_client.get(path, headers=AUTH))
    assert_clean(sqlite_client.delete(f"/fhir/{quote(rtype, safe='')}/{quote(rid, safe='')}", headers=AUTH))


@pytest.mark.parametrize("depth", [60, 400, 990, 5000, 200_000])
@pytest.mark.parametrize("shape", ["arrays", "extensions", "bundle"])
def test_deeply_nested_bodies_are_refused_cleanly(sqlite_client: FlaskClient, depth: int, shape: str) -> None:
    if shape == "arrays":
        path, raw = "/fhir/Patient", '{"resourceType":"Patient","extension":' + "[" * depth + "]" * depth + "}"
    elif shape == "extensions":
        path = "/fhir/Patient"
        raw = '{"resourceType":"Patient","extension":[' + '{"url":"x","extension":[' * depth + "]}" * depth + "]}"
    else:
        path = "/fhir"
        raw = ('{"resourceType":"Bundle","type":"batch","entry":[{"resource":'
               + '{"resourceType":"Patient","contained":[' * depth + "]}" * depth
               + ',"request":{"method":"POST","url":"Patient"}}]}')
    resp = sqlite_client.post(path, data=raw.encode(), headers={**JSON_HEADERS, "Content-Length": str(len(raw))})
    assert_clean(resp, allowed=(200, 201))  # 60 levels of empty arrays is a valid (emptied) Patient
    if depth >= 400:
        assert resp.status_code in (400, 413)
