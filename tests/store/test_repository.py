"""Repository behaviour (same suite on SQLite and PostgreSQL): CRUD, versions, tombstones, search, AAD binding."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from healthledger.errors import (
    BadRequest,
    DecryptionError,
    Forbidden,
    Gone,
    InvalidResource,
    NotFound,
    PreconditionFailed,
)
from healthledger.store.access import DevelopmentPolicy, Principal, Screened
from healthledger.store.models import resources_table
from healthledger.store.repository import ResourceStore


def patient(family: str = "Quarrington", given: str = "Wilhelmina", mrn: str = "MRN-77", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1961-04-17",
        **extra,
    }


def observation(patient_id: str, code: str = "8867-4", value: float = 72, when: str = "2024-03-05T10:00:00Z") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def strip_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "id")}


def test_create_then_read_round_trips(store: ResourceStore) -> None:
    stored, created = store.create(patient())
    assert created and stored.version_id == 1 and not stored.deleted
    back = store.read("Patient", stored.id)
    assert strip_meta(back.resource or {}) == patient()
    assert back.resource["id"] == stored.id  # type: ignore[index]
    assert back.resource["meta"]["versionId"] == "1"  # type: ignore[index]
    assert back.etag == 'W/"1"'
    assert back.last_updated == stored.last_updated


def test_decimal_text_survives(store: ResourceStore) -> None:
    from fhir_adapters.validation import loads_json

    obs = loads_json('{"resourceType":"Observation","status":"final","code":{"text":"x"},'
                     '"valueQuantity":{"value":1.50}}')
    stored, _ = store.create(obs)
    from fhir_adapters.validation import dumps_resource

    assert '"value":1.50' in dumps_resource(store.read("Observation", stored.id).resource or {})


def test_invalid_resource_names_the_path(store: ResourceStore) -> None:
    with pytest.raises(InvalidResource) as err:
        store.create({"resourceType": "Patient", "gender": 5})
    assert err.value.expression and "gender" in err.value.expression
    with pytest.raises(NotFound):
        store.update("NoSuchType", "x1", {"resourceType": "NoSuchType"})


def test_read_unknown_is_not_found(store: ResourceStore) -> None:
    with pytest.raises(NotFound):
        store.read("Patient", "does-not-exist")
    with pytest.raises(BadRequest):
        store.read("Patient", "bad id with spaces")


def test_update_versions_history_and_vread(store: ResourceStore) -> None:
    first, _ = store.create(patient())
    second, created = store.update("Patient", first.id, {**patient(family="Renamed"), "id": first.id})
    assert not created and second.version_id == 2
    assert store.read("Patient", first.id).resource["name"][0]["family"] == "Renamed"  # type: ignore[index]
    assert store.vread("Patient", first.id, 1).resource["name"][0]["family"] == "Quarrington"  # type: ignore[index]
    with pytest.raises(NotFound):
        store.vread("Patient", first.id, 3)
    page = store.history("Patient", first.id)
    assert [v.version_id for v in page.items] == [2, 1] and page.total == 2


def test_if_match_and_update_as_create(store: ResourceStore) -> None:
    made, created = store.update("Patient", "client-chosen-1", patient())
    assert created and made.version_id == 1 and made.id == "client-chosen-1"
    with pytest.raises(PreconditionFailed):
        store.update("Patient", "client-chosen-1", patient(), if_match=7)
    ok, _ = store.update("Patient", "client-chosen-1", patient(), if_match=1)
    assert ok.version_id == 2
    with pytest.raises(InvalidResource):
        store.update("Patient", "client-chosen-1", {**patient(), "id": "another-id"})
    with pytest.raises(InvalidResource):
        store.update("Observation", "client-chosen-1", patient())


def test_delete_is_a_tombstone(store: ResourceStore) -> None:
    made, _ = store.create(patient())
    gone = store.delete("Patient", made.id)
    assert gone is not None and gone.deleted and gone.version_id == 2
    with pytest.raises(Gone):
        store.read("Patient", made.id)
    assert store.vread("Patient", made.id, 1).resource is not None
    with pytest.raises(Gone):
        store.vread("Patient", made.id, 2)
    history = store.history("Patient", made.id)
    assert [(v.version_id, v.deleted) for v in history.items] == [(2, True), (1, False)]
    assert store.delete("Patient", made.id).deleted  # type: ignore[union-attr]  # idempotent
    assert store.delete("Patient", "never-existed") is None
    again, created = store.update("Patient", made.id, patient())
    assert created and again.version_id == 3
    assert store.search_params("Patient", [("identifier", "urn:test:mrn|MRN-77")]).total == 1


def test_type_history_newest_first_with_paging(store: ResourceStore) -> None:
    ids = [store.create(patient(mrn=f"M{i}"))[0].id for i in range(5)]
    store.update("Patient", ids[0], patient(mrn="M0b"))
    page1 = store.history("Patient", count=4)
    page2 = store.history("Patient", count=4, offset=4)
    assert page1.total == 6 and page1.next_offset == 4 and page2.next_offset is None
    seen = [(v.id, v.version_id) for v in page1.items + page2.items]
    assert seen[0] == (ids[0], 2)
    assert len(set(seen)) == 6
    stamps = [v.last_updated for v in page1.items + page2.items]
    assert stamps == sorted(stamps, reverse=True)


def test_search_tokens_strings_references_dates(store: ResourceStore) -> None:
    a, _ = store.create(patient())
    b, _ = store.create(patient(family="Ostrowski", given="Bartholomew", mrn="MRN-88", gender="male"))
    store.create(observation(a.id, when="2024-03-05T10:00:00Z"))
    store.create(observation(a.id, code="29463-7", when="2023-01-01T10:00:00Z"))
    store.create(observation(b.id, when="2024-07-01T10:00:00Z"))

    def ids(resource_type: str, params: list[tuple[str, str]]) -> set[str]:
        return {r.id for r in store.search_params(resource_type, params).items}

    assert ids("Patient", [("identifier", "urn:test:mrn|MRN-88")]) == {b.id}
    assert ids("Patient", [("identifier", "MRN-77")]) == {a.id}
    assert ids("Patient", [("family", "quarr")]) == {a.id}
    assert ids("Patient", [("gender", "male")]) == {b.id}
    assert ids("Patient", [("birthdate", "1961-04-17")]) == {a.id, b.id}
    assert ids("Patient", [("_id", a.id)]) == {a.id}
    assert len(ids("Observation", [("patient", f"Patient/{a.id}")])) == 2
    assert len(ids("Observation", [("subject", a.id)])) == 2
    assert len(ids("Observation", [("code", "http://loinc.org|8867-4")])) == 2
    assert len(ids("Observation", [("patient", a.id), ("code", "8867-4")])) == 1
    assert len(ids("Observation", [("date", "ge2024-01-01")])) == 2
    assert len(ids("Observation", [("date", "lt2024-01-01")])) == 1
    assert len(ids("Observation", [("date", "2024-03")])) == 1
    assert ids("Patient", [("identifier", "nobody")]) == set()


def test_search_paging_is_stable_and_total_exact(store: ResourceStore) -> None:
    for i in range(7):
        store.create(patient(mrn=f"P{i}", family="Pager"))
    store.create(patient(family="Other"))
    pages = [store.search_params("Patient", [("family", "pager")], count=3, offset=o) for o in (0, 3, 6)]
    assert [p.total for p in pages] == [7, 7, 7]
    assert [len(p.items) for p in pages] == [3, 3, 1]
    assert [p.next_offset for p in pages] == [3, 6, None]
    all_ids = [r.id for p in pages for r in p.items]
    assert len(set(all_ids)) == 7 and all_ids == sorted(all_ids)
    unfiltered = store.search_params("Patient", [], count=5)
    assert unfiltered.total == 8 and len(unfiltered.items) == 5 and unfiltered.next_offset == 5


def test_conditional_create(store: ResourceStore) -> None:
    cond = [("identifier", "urn:test:mrn|MRN-77")]
    first, created = store.create(patient(), if_none_exist=cond)
    assert created
    again, created = store.create(patient(), if_none_exist=cond)
    assert not created and again.id == first.id
    store.create(patient(mrn="MRN-77", family="Twin"))
    with pytest.raises(PreconditionFailed):
        store.create(patient(), if_none_exist=cond)


def test_unit_of_work_rolls_back_everything(store: ResourceStore) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        made, _ = uow.create(patient())
        uow.create(observation(made.id))
        raise RuntimeError("boom")
    assert store.search_params("Patient", []).total == 0
    assert store.search_params("Observation", []).total == 0


def test_ciphertext_moved_to_another_row_does_not_open(store: ResourceStore) -> None:
    a, _ = store.create(patient())
    b, _ = store.create(patient(family="Second"))
    with store.engine.begin() as conn:
        payload_a = conn.execute(
            sa.select(resources_table.c.payload).where(resources_table.c.resource_id == a.id)
        ).scalar_one()
        conn.execute(
            sa.update(resources_table).where(resources_table.c.resource_id == b.id).values(payload=payload_a)
        )
    with pytest.raises(DecryptionError):
        store.read("Patient", b.id)
    assert store.read("Patient", a.id).resource is not None


def test_version_ciphertext_cannot_replace_another_version(store: ResourceStore) -> None:
    a, _ = store.create(patient())
    store.update("Patient", a.id, patient(family="Later"))
    with store.engine.begin() as conn:
        v1 = conn.execute(
            sa.select(resources_table.c.payload).where(
                resources_table.c.resource_id == a.id, resources_table.c.version_id == 1
            )
        ).scalar_one()
        conn.execute(
            sa.update(resources_table)
            .where(resources_table.c.resource_id == a.id, resources_table.c.version_id == 2)
            .values(payload=v1)
        )
    with pytest.raises(DecryptionError):
        store.read("Patient", a.id)  # a rollback to an older version is detected


def test_no_plaintext_in_rows(store: ResourceStore) -> None:
    made, _ = store.create(patient())
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(resources_table)).all()
    blob = b"".join(bytes(r.payload or b"") + bytes(r.compartment or b"") for r in rows)
    for secret in (b"Quarrington", b"Wilhelmina", b"MRN-77", b"1961-04-17", made.id.encode()):
        assert secret not in blob


def test_access_policy_is_consulted(store: ResourceStore) -> None:
    made, _ = store.create(patient())
    stranger = Principal("stranger", role="researcher", scopes=())
    with pytest.raises(Forbidden):
        store.read("Patient", made.id, principal=stranger)
    with pytest.raises(Forbidden):
        store.create(patient(), principal=stranger)
    with pytest.raises(Forbidden):
        store.search_params("Patient", [], principal=stranger)

    calls: list[tuple[str, str, str]] = []

    class Recording(DevelopmentPolicy):
        def check(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Any:
            calls.append((principal.id, action, resource_type))
            return resource

    store.policy = Recording()
    store.read("Patient", made.id, principal=stranger)
    store.update("Patient", made.id, patient(), principal=stranger)
    assert calls == [("stranger", "read", "Patient"), ("stranger", "update", "Patient")]


def test_history_since_compares_in_utc(store: ResourceStore) -> None:
    from datetime import timedelta, timezone

    first, _ = store.create(patient())
    second, _ = store.update("Patient", first.id, patient(family="Later"))
    # the same instant as `second`, written in UTC+02:00
    since = second.last_updated.astimezone(timezone(timedelta(hours=2)))
    page = store.history("Patient", first.id, since=since)
    assert [v.version_id for v in page.items] == [2]


def test_a_filtering_policy_hides_denied_search_results(store: ResourceStore) -> None:
    keep, _ = store.create(patient(mrn="F-1", family="Visible"))
    store.create(patient(mrn="F-2", family="Hidden"))

    recorded: list[tuple[list[str], int]] = []

    class OnlyVisible(DevelopmentPolicy):
        filters_search_results = True

        def check(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Any:
            return resource

        def screen(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Any:
            hidden = resource["name"][0]["family"] == "Hidden"
            return Screened(resource_type, resource["id"], "", None if hidden else resource)

        def record_results(self, principal: Principal, action: str, resource_type: str, disclosed: Any,
                           withheld: Any, **_: Any) -> None:
            recorded.append(([s.resource_id for s in disclosed], len(withheld)))

    store.policy = OnlyVisible()
    stranger = Principal("stranger", role="researcher", scopes=())
    for params in ([], [("identifier", "urn:test:mrn|")]):
        page = store.search_params("Patient", params, principal=stranger)
        assert [r.id for r in page.items] == [keep.id] and page.total == 1
    assert recorded == [([keep.id], 1), ([keep.id], 1)]
