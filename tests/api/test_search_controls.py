"""What standard FHIR clients send to a search: lenient/strict handling, `_total`, `_summary`, `_elements`, `_sort`,
`_include`, `_revinclude`, `_has` (R4 search.html), over raw HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fhir_api_support import AUTH, JSON_HEADERS
from flask.testing import FlaskClient

STRICT = {**AUTH, "Prefer": "handling=strict"}
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def _body(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.data[:400])
    return orjson.loads(resp.data)  # type: ignore[no-any-return]


def _create(client: FlaskClient, resource: dict[str, Any]) -> str:
    return str(_body(client.post(f"/fhir/{resource['resourceType']}", data=orjson.dumps(resource), headers=JSON_HEADERS), 201)["id"])


def _world(client: FlaskClient) -> dict[str, Any]:
    family = f"Sortable{uuid.uuid4().hex[:8]}"
    org = _create(client, {"resourceType": "Organization", "name": "General"})
    patients = [
        _create(client, {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "birthDate": born,
                         "gender": gender, "managingOrganization": {"reference": f"Organization/{org}"}})
        for given, born, gender in (("Carla", "1970-03-01", "female"), ("Adam", "1990-01-01", "male"),
                                    ("Bert", "1980-06-15", "other"))
    ]
    code = f"x-{uuid.uuid4().hex[:8]}"
    observations = [
        _create(client, {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                         "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": day,
                         "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                         "note": [{"text": "a note"}], "valueQuantity": {"value": 5, "unit": "mmol/L"}})
        for pid, day in ((patients[0], "2024-05-01"), (patients[1], "2023-01-01"), (patients[0], "2025-02-02"))
    ]
    return {"family": family, "org": org, "patients": patients, "code": code, "observations": observations}


def _entries(bundle: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def test_unknown_parameters_are_ignored_and_said_unless_strict(client: FlaskClient) -> None:
    w = _world(client)
    lenient = _body(client.get(f"/fhir/Patient?family={w['family']}&nickname=bob&_totalMethod=count", headers=AUTH))
    assert lenient["total"] == 3
    [outcome] = _entries(lenient, "outcome")
    assert outcome["resourceType"] == "OperationOutcome"
    assert "nickname" in outcome["issue"][0]["diagnostics"] and "_totalMethod" in outcome["issue"][0]["diagnostics"]
    assert "nickname" not in lenient["link"][0]["url"]  # the self link says what was applied
    refused = _body(client.get(f"/fhir/Patient?family={w['family']}&nickname=bob", headers=STRICT), 400)
    assert "nickname" in refused["issue"][0]["diagnostics"]
    assert refused["issue"][0]["code"] == "not-supported"  # a parameter this server does not have
    # Values that do not parse are errors either way: ignoring them would widen the search. The parameter is
    # supported; the value is wrong: `invalid`, not `not-supported`.
    for bad in ("/fhir/Observation?date=banana", "/fhir/Observation?value-quantity=lots",
                "/fhir/Observation?code=a|b|c", f"/fhir/Patient?family={w['family']}&_total=sometimes",
                f"/fhir/Patient?family={w['family']}&_summary=maybe"):
        for headers in (AUTH, STRICT):
            assert _body(client.get(bad, headers=headers), 400)["issue"][0]["code"] == "invalid", bad
    _body(client.get(f"/fhir/Patient?family={w['family']}&_sort=nickname", headers=STRICT), 400)
    ignored = _body(client.get(f"/fhir/Patient?family={w['family']}&_sort=nickname", headers=AUTH))
    assert "_sort=nickname" in _entries(ignored, "outcome")[0]["issue"][0]["diagnostics"]


def test_total(client: FlaskClient) -> None:
    w = _world(client)
    for mode in ("accurate", "estimate"):
        assert _body(client.get(f"/fhir/Patient?family={w['family']}&_total={mode}", headers=AUTH))["total"] == 3
    none = _body(client.get(f"/fhir/Patient?family={w['family']}&_total=none", headers=AUTH))
    assert "total" not in none and len(_entries(none)) == 3
    _body(client.get(f"/fhir/Patient?family={w['family']}&_total=sometimes", headers=AUTH), 400)


def test_summary_and_elements(client: FlaskClient) -> None:
    w = _world(client)
    url = f"/fhir/Observation?code={w['code']}"
    assert _body(client.get(url + "&_summary=count", headers=AUTH))["total"] == 3
    summary = _entries(_body(client.get(url + "&_summary=true", headers=AUTH)))
    assert summary and all("note" not in o and "text" not in o and o["status"] == "final" for o in summary)
    assert all(SUBSETTED in o["meta"]["tag"] and "valueQuantity" in o for o in summary)
    text = _entries(_body(client.get(url + "&_summary=text", headers=AUTH)))
    assert all(set(o) <= {"resourceType", "id", "meta", "text", "status", "code"} and "text" in o for o in text)
    data = _entries(_body(client.get(url + "&_summary=data", headers=AUTH)))
    assert all("text" not in o and "note" in o for o in data)
    elements = _entries(_body(client.get(url + "&_elements=subject,value", headers=AUTH)))
    assert all(set(o) == {"resourceType", "id", "meta", "status", "code", "subject", "valueQuantity"} for o in elements)
    read = _body(client.get(f"/fhir/Observation/{w['observations'][0]}?_summary=true", headers=AUTH))
    assert "note" not in read and SUBSETTED in read["meta"]["tag"]
    _body(client.get(url + "&_summary=true&_elements=subject", headers=AUTH), 400)


def test_summary_count_on_audit_events(client: FlaskClient) -> None:
    _world(client)  # (its records' reads are entries of the access log: the test does not lean on others')
    counted = _body(client.get("/fhir/AuditEvent?_summary=count", headers=AUTH))
    assert counted["total"] >= 1 and "entry" not in counted
    summary = _entries(_body(client.get("/fhir/AuditEvent?_summary=true&_count=2", headers=AUTH)))
    assert summary and all(SUBSETTED in e["meta"]["tag"] for e in summary)
    lenient = _body(client.get("/fhir/AuditEvent?_count=1&subtype=read", headers=AUTH))
    assert "subtype" in _entries(lenient, "outcome")[0]["issue"][0]["diagnostics"]
    _body(client.get("/fhir/AuditEvent?_count=1&subtype=read", headers=STRICT), 400)
    entry_id = summary[0]["id"]
    read = _body(client.get(f"/fhir/AuditEvent/{entry_id}?_elements=recorded", headers=AUTH))
    assert SUBSETTED in read["meta"]["tag"] and "recorded" in read and "entity" not in read


def test_sort(client: FlaskClient) -> None:
    w = _world(client)
    by = lambda sort: [p["name"][0]["given"][0] for p in _entries(_body(client.get(
        f"/fhir/Patient?family={w['family']}&_sort={sort}", headers=AUTH)))]
    assert by("given") == ["Adam", "Bert", "Carla"]
    assert by("-given") == ["Carla", "Bert", "Adam"]
    assert by("birthdate") == ["Carla", "Bert", "Adam"]
    assert by("-birthdate") == ["Adam", "Bert", "Carla"]
    assert by("gender") == ["Carla", "Adam", "Bert"]  # female, male, other
    assert by("_lastUpdated") == ["Carla", "Adam", "Bert"]
    assert by("-_lastUpdated") == ["Bert", "Adam", "Carla"]
    dates = [o["effectiveDateTime"] for o in _entries(_body(client.get(
        f"/fhir/Observation?code={w['code']}&_sort=-date&_count=2", headers=AUTH)))]
    assert dates == ["2025-02-02", "2024-05-01"]
    second = _body(client.get(f"/fhir/Observation?code={w['code']}&_sort=-date&_count=2", headers=AUTH))
    next_url = next(link["url"] for link in second["link"] if link["relation"] == "next")
    page2 = _body(client.get(next_url.replace("http://localhost", ""), headers=AUTH))
    assert [o["effectiveDateTime"] for o in _entries(page2)] == ["2023-01-01"]


def test_include_revinclude_and_has(client: FlaskClient) -> None:
    w = _world(client)
    included = _body(client.get(f"/fhir/Observation?code={w['code']}&_include=Observation:patient", headers=AUTH))
    assert included["total"] == 3 and len(_entries(included)) == 3
    assert sorted(p["id"] for p in _entries(included, "include")) == sorted(w["patients"][:2])
    rev = _body(client.get(f"/fhir/Patient?_id={w['patients'][0]}&_revinclude=Observation:patient", headers=AUTH))
    assert sorted(o["id"] for o in _entries(rev, "include")) == sorted([w["observations"][0], w["observations"][2]])
    org = _body(client.get(f"/fhir/Patient?family={w['family']}&_include=Patient:organization", headers=AUTH))
    assert [o["id"] for o in _entries(org, "include")] == [w["org"]]
    has = _body(client.get(f"/fhir/Patient?family={w['family']}&_has:Observation:patient:code={w['code']}", headers=AUTH))
    assert sorted(p["id"] for p in _entries(has)) == sorted(w["patients"][:2])
    dated = _body(client.get(
        f"/fhir/Patient?family={w['family']}&_has:Observation:patient:date=2023-01-01", headers=AUTH))
    assert [p["id"] for p in _entries(dated)] == [w["patients"][1]]
    none = _body(client.get("/fhir/Patient?_has:Observation:patient:code=nothing-has-this", headers=AUTH))
    assert none["total"] == 0
    _body(client.get(f"/fhir/Observation?code={w['code']}&_include=Patient:organization", headers=STRICT), 400)
    _body(client.get(f"/fhir/Observation?code={w['code']}&_include=Observation:nope", headers=STRICT), 400)
    _body(client.get("/fhir/Patient?_has:Observation:patient:nope=1", headers=STRICT), 400)


def test_batch_searches_take_sort_and_include(client: FlaskClient) -> None:
    w = _world(client)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation?code={w['code']}&_sort=-date&_include=Observation:patient"}},
        {"request": {"method": "GET", "url": f"Observation?code={w['code']}&nickname=x"}}]}
    reply = _body(client.post("/fhir", data=orjson.dumps(bundle), headers={**JSON_HEADERS, **STRICT}))
    found, strict = reply["entry"]
    inner = found["resource"]
    assert [o["effectiveDateTime"] for o in _entries(inner)] == ["2025-02-02", "2024-05-01", "2023-01-01"]
    assert sorted(p["id"] for p in _entries(inner, "include")) == sorted(w["patients"][:2])
    assert strict["response"]["status"].startswith("400")  # the batch's Prefer: handling=strict holds for its entries


def test_approximate_dates_reach_around_the_value(client: FlaskClient) -> None:
    """R4 3.1.1.4.2 `ap`: 10% of the gap between the date and now, and at least a day around a day."""
    family = f"Approx{uuid.uuid4().hex[:8]}"
    pid = _create(client, {"resourceType": "Patient", "name": [{"family": family}], "birthDate": "1946-06-20"})
    code = f"ap-{uuid.uuid4().hex[:8]}"
    _create(client, {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": code}]},
                     "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2025-12-16T09:00:00Z"})
    found = lambda url: _body(client.get(url, headers=STRICT))["total"]
    assert found(f"/fhir/Observation?code={code}&date=ap2025-12-17") == 1
    assert found(f"/fhir/Observation?code={code}&date=ap2025-12-16") == 1
    assert found(f"/fhir/Patient?family={family}&birthdate=ap1946-06-20") == 1
    assert found(f"/fhir/Patient?family={family}&birthdate=ap1950-01-01") == 1  # ~77 years ago: ±7.7 years
    assert found(f"/fhir/Patient?family={family}&birthdate=ap1960-01-01") == 0
    assert found(f"/fhir/Observation?code={code}&date=ap2020-01-01") == 0


def test_lenient_handling_is_consistent(client: FlaskClient) -> None:
    """What lenient handling leaves out is left out of the `self` link too; a malformed `_include` is `invalid` in
    either handling, a well-formed unsupported one `not-supported` (ignored unless strict); empty values are
    ignored (R4 3.1.1.4)."""
    w = _world(client)
    url = f"/fhir/Patient?family={w['family']}"
    sorted_by = _body(client.get(url + "&_sort=foo,-given", headers=AUTH))
    assert "_sort=foo" in _entries(sorted_by, "outcome")[0]["issue"][0]["diagnostics"]
    self_link = sorted_by["link"][0]["url"]
    assert "foo" not in self_link and "_sort=-given" in self_link
    assert [p["name"][0]["given"][0] for p in _entries(sorted_by)] == ["Carla", "Bert", "Adam"]
    only_foo = _body(client.get(url + "&_sort=foo", headers=AUTH))
    assert "_sort" not in only_foo["link"][0]["url"]
    for malformed in ("Observation", "Observation:patient:Patient:x", "a:b", "Observation::Patient", "Nope:patient"):
        for headers in (AUTH, STRICT):
            refused = _body(client.get(f"{url}&_include={malformed}", headers=headers), 400)
            assert refused["issue"][0]["code"] == "invalid", malformed
    for unsupported in ("Patient:nope", "Patient:*", "Organization:partof"):
        assert _body(client.get(f"{url}&_include={unsupported}", headers=STRICT), 400)["issue"][0]["code"] == "not-supported"
        lenient = _body(client.get(f"{url}&_include={unsupported}", headers=AUTH))
        assert lenient["total"] == 3 and "_include" in _entries(lenient, "outcome")[0]["issue"][0]["diagnostics"]
        assert "_include" not in lenient["link"][0]["url"]
    for empty in ("_include=", "_revinclude=", "_sort=", "_elements=", "_has:Observation:patient:code="):
        for headers in (AUTH, STRICT):
            answered = _body(client.get(f"{url}&{empty}", headers=headers))
            assert answered["total"] == 3 and not _entries(answered, "outcome"), empty


def test_result_controls_on_the_definitions(client: FlaskClient) -> None:
    """`_summary`, `_elements`, `_total` and `_sort` on OperationDefinition and StructureDefinition searches (public:
    no token), as on every other type; the stored ones follow ours, each in `_sort` order."""
    from fhir_adapters.extensions import EXTENSIONS
    from fhir_adapters.operation_definitions import OURS

    for resource_type, ours in (("OperationDefinition", OURS), ("StructureDefinition", EXTENSIONS)):
        url = f"/fhir/{resource_type}"
        counted = _body(client.get(f"{url}?_summary=count", headers={"Prefer": "handling=strict"}))
        assert counted["total"] == len(ours) and "entry" not in counted
        assert [link["relation"] for link in counted["link"]] == ["self"]
        names = [d["name"] for d in _entries(_body(client.get(f"{url}?_sort=-name", headers={"Prefer": "handling=strict"})))]
        assert names == sorted(names, key=str.casefold, reverse=True) and len(names) == len(ours)
        ids = [d["id"] for d in _entries(_body(client.get(f"{url}?_sort=-_id&_count=2")))]
        assert ids == sorted(ours, reverse=True)[:2]
        following = _body(client.get(f"{url}?_sort=-_id&_count=2"))
        next_url = next(link["url"] for link in following["link"] if link["relation"] == "next")
        assert "_sort=-_id" in next_url
        assert [d["id"] for d in _entries(_body(client.get(next_url.replace("http://localhost", ""))))] == \
            sorted(ours, reverse=True)[2:4]
        elements = _entries(_body(client.get(f"{url}?_elements=url&_count=3")))
        assert elements and all(SUBSETTED in d["meta"]["tag"] and "url" in d and "description" not in d for d in elements)
        summary = _entries(_body(client.get(f"{url}?_summary=true&_count=3")))
        assert summary and all(SUBSETTED in d["meta"]["tag"] for d in summary)
        untotalled = _body(client.get(f"{url}?_total=none", headers={"Prefer": "handling=strict"}))
        assert "total" not in untotalled and len(_entries(untotalled)) == len(ours)
        for bad in ("_total=maybe", "_summary=maybe", "_summary=true&_elements=url"):
            for headers in ({}, {"Prefer": "handling=strict"}):
                assert _body(client.get(f"{url}?{bad}", headers=headers), 400)["issue"][0]["code"] == "invalid"
        assert _body(client.get(f"{url}?_sort=publisher", headers={"Prefer": "handling=strict"}), 400)["issue"][0]["code"] \
            == "not-supported"
        lenient = _body(client.get(f"{url}?_sort=publisher,name"))
        assert "_sort=publisher" in _entries(lenient, "outcome")[0]["issue"][0]["diagnostics"]
        assert "publisher" not in lenient["link"][0]["url"]
    # A stored one, to the caller that may read it: after ours, sorted among the stored ones.
    prefix = f"Sorted{uuid.uuid4().hex[:6]}"
    made = [_create(client, {"resourceType": "StructureDefinition", "url": f"http://example.org/{prefix}{n}",
                             "name": f"{prefix}{n}", "status": "draft", "kind": "complex-type", "abstract": False,
                             "type": "Extension"}) for n in ("A", "B")]
    found = _entries(_body(client.get(f"/fhir/StructureDefinition?name={prefix}&_sort=-name", headers=AUTH)))
    assert [d["id"] for d in found] == made[::-1]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"StructureDefinition?name={prefix}&_sort=-name&_elements=name"}}]}
    [entry] = _body(client.post("/fhir", data=orjson.dumps(batch), headers=JSON_HEADERS))["entry"]
    assert [d["id"] for d in _entries(entry["resource"])] == made[::-1]
    assert all(SUBSETTED in d["meta"]["tag"] and "abstract" in d and "derivation" not in d for d in _entries(entry["resource"]))


def test_audit_events_sort_by_date_and_page_by_the_last_entry_shown(client: FlaskClient) -> None:
    """`_sort=-date` on the access log (newest first); every request adds entries, at the front of that order, yet
    following `next` neither repeats an entry nor skips one: the cursor is the last entry shown (a keyset)."""
    for _ in range(3):
        _world(client)
    strict = {**AUTH, "Prefer": "handling=strict"}
    first = _body(client.get("/fhir/AuditEvent?_sort=-date&_count=3", headers=strict))
    newest = _entries(first)
    assert [e["recorded"] for e in newest] == sorted((e["recorded"] for e in newest), reverse=True)
    seen = [e["id"] for e in newest]
    page = first
    for _ in range(3):  # each step writes to the log (this very request, and a create) before the next page
        _world(client)
        next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
        assert "_sort=-date" in next_url
        page = _body(client.get(next_url.replace("http://localhost", ""), headers=strict))
        ids = [e["id"] for e in _entries(page)]
        assert len(ids) == 3 and not set(ids) & set(seen), (ids, seen)
        seen += ids
    # Newest first throughout, ties by id: exactly the entries that were there when the first page was asked.
    assert [int(i) for i in seen] == sorted((int(i) for i in seen), reverse=True)
    everything: list[int] = []
    url: str | None = "/fhir/AuditEvent?_sort=-date&_count=50"
    while url is not None and (not everything or everything[-1] > int(seen[-1])):
        page = _body(client.get(url, headers=strict))
        everything += [int(e["id"]) for e in _entries(page)]
        url = next((link["url"].replace("http://localhost", "") for link in page["link"] if link["relation"] == "next"), None)
    assert [i for i in everything if int(seen[-1]) <= i <= int(seen[0])] == [int(i) for i in seen]
    ascending = _entries(_body(client.get("/fhir/AuditEvent?_sort=_id&_count=3", headers=strict)))
    assert [int(e["id"]) for e in ascending] == sorted(int(e["id"]) for e in ascending)
    # The cursor names an entry shown, nothing else; one the search does not select is refused.
    from healthledger.api.paging import encode_cursor

    forged = client.get(f"/fhir/AuditEvent?_sort=-date&_count=3&_cursor={encode_cursor(3, '999999999')}", headers=AUTH)
    assert forged.status_code == 400 and "cursor" in _body(forged, 400)["issue"][0]["diagnostics"]
    lenient = _body(client.get("/fhir/AuditEvent?_sort=-outcome,-date&_count=2", headers=AUTH))
    assert "_sort=outcome" in _entries(lenient, "outcome")[0]["issue"][0]["diagnostics"]
    assert "outcome" not in lenient["link"][0]["url"]


def test_pages_follow_the_last_match_shown_so_writes_between_pages_do_not_shift_them(client: FlaskClient) -> None:
    """A `next` link starts past the last match of its page (a keyset), not at an offset: a resource created
    before that point, or one deleted, between two pages neither puts a match on two pages nor hides one."""
    family = f"Paged{uuid.uuid4().hex[:8]}"

    def put(pid: str, given: str) -> None:
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}]}
        assert client.put(f"/fhir/Patient/{pid}", data=orjson.dumps(body), headers=JSON_HEADERS).status_code in (200, 201)

    ids = [f"{family.lower()}-{n}" for n in "bdfhj"]
    for pid, given in zip(ids, ("Bea", "Dan", "Fay", "Hal", "Jo")):
        put(pid, given)

    def following(page: dict[str, Any]) -> dict[str, Any]:
        url = next(link["url"] for link in page["link"] if link["relation"] == "next")
        return _body(client.get(url.replace("http://localhost", ""), headers=AUTH))

    for sort, first_id, first_given in (("", f"{family.lower()}-a", "Zed"), ("&_sort=given", f"{family.lower()}-z", "Al")):
        first = _body(client.get(f"/fhir/Patient?family={family}&_count=2{sort}", headers=AUTH))
        shown = [p["id"] for p in _entries(first)]
        assert shown == ids[:2]
        put(first_id, first_given)  # sorts before everything shown: an offset would show ids[1] again
        second = following(first)
        assert [p["id"] for p in _entries(second)] == ids[2:4]
        assert client.delete(f"/fhir/Patient/{ids[2]}", headers=AUTH).status_code == 204  # an offset would skip
        third = following(second)
        assert [p["id"] for p in _entries(third)] == ids[4:]
        assert not any(link["relation"] == "next" for link in third["link"])
        assert client.delete(f"/fhir/Patient/{first_id}", headers=AUTH).status_code == 204
        put(ids[2], "Fay")  # back, for the next round
    forged = client.get(f"/fhir/Patient?family={family}&_cursor=eyJ2IjoxLCJvIjowLCJhIjpbMV19", headers=AUTH)
    assert forged.status_code == 400  # {"v":1,"o":0,"a":[1]}: an id must end a position
