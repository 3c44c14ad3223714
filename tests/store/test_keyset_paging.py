"""A search's pages follow the last match shown (UnitOfWork.search `after`, a keyset) on each of the store's paths:
the unscreened one (SQL), the one that decides per resource, the sorted one; and page by offset where the caller
is shown pseudonyms (their real ids' order must not be told by an anchor)."""

from __future__ import annotations

import hashlib
from typing import Any

from fhir_adapters.deidentify import deidentify
from fhir_adapters.search import ResourceMeta, parse_search
from fhir_adapters.search.controls import parse_controls
from fhir_adapters.search.sorting import sort_position
from healthledger.store.access import DevelopmentPolicy, Principal, Screened
from healthledger.store.repository import ResourceStore

STRANGER = Principal("stranger", role="researcher", scopes=())


def _patient(pid: str, given: str, family: str = "Keyset") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}]}


class _HidesSome(DevelopmentPolicy):
    """Decides per resource (as consent does): a `Hidden` patient is withheld; records what each search showed."""

    filters_search_results = True

    def __init__(self) -> None:
        self.shown: list[list[str]] = []

    def check(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Any:
        return resource

    def screen(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Any:
        hidden = resource["name"][0]["given"][0] == "Hidden"
        return Screened(resource_type, resource["id"], "", None if hidden else resource)

    def record_results(self, principal: Principal, action: str, resource_type: str, disclosed: Any, withheld: Any,
                       **_: Any) -> None:
        self.shown.append([s.resource_id for s in disclosed])


class _Pseudonymises(_HidesSome):
    def screen(self, principal: Principal, action: str, resource_type: str, resource: Any, **_: Any) -> Any:
        shown = deidentify(resource, pseudonym=lambda raw: "ps-" + hashlib.sha256(raw.encode()).hexdigest()[:12],
                           now_year=2026)
        return Screened(resource_type, str(resource["id"]), "", shown)


def _pages(store: ResourceStore, principal: Principal | None, sort: str = "") -> list[list[str]]:
    """Two pages of 2, a patient created before the first page's end and one of its matches deleted between them."""
    query = parse_search("Patient", [("family", "Keyset")])
    keys = parse_controls("Patient", [("_sort", sort)] if sort else [], strict=True).sort
    with store.reading(principal) as uow:
        first = uow.search("Patient", query, count=2, sort=keys)
    last = first.items[-1]
    anchor = sort_position(last.resource or {}, ResourceMeta(last.id, last.last_updated), keys)
    store.update("Patient", "k-a", _patient("k-a", "Aaron"))
    store.delete("Patient", "k-b")
    with store.reading(principal) as uow:
        second = uow.search("Patient", query, count=2, offset=first.next_offset or 0, sort=keys, after=anchor)
    return [[p.id for p in first.items], [p.id for p in second.items], [str(second.next_offset)]]


def _world(store: ResourceStore) -> None:
    for pid, given in (("k-b", "Bea"), ("k-c", "Hidden"), ("k-d", "Dan"), ("k-f", "Fay"), ("k-h", "Hal")):
        store.update("Patient", pid, _patient(pid, given))


def test_unscreened_pages_follow_the_last_id(store: ResourceStore) -> None:
    _world(store)
    assert _pages(store, None) == [["k-b", "k-c"], ["k-d", "k-f"], ["4"]]


def test_pages_decided_per_resource_follow_the_last_id_and_record_only_what_they_show(store: ResourceStore) -> None:
    _world(store)
    policy = _HidesSome()
    store.policy = policy
    assert _pages(store, STRANGER) == [["k-b", "k-d"], ["k-f", "k-h"], ["None"]]
    assert policy.shown == [["k-b", "k-d"], ["k-f", "k-h"]]


def test_sorted_pages_follow_the_last_sort_values(store: ResourceStore) -> None:
    _world(store)
    store.policy = _HidesSome()
    assert _pages(store, STRANGER, "-given") == [["k-h", "k-f"], ["k-d", "k-a"], ["None"]]


def test_pseudonymised_pages_go_by_offset(store: ResourceStore) -> None:
    _world(store)
    store.policy = _Pseudonymises()
    first, second, _ = _pages(store, STRANGER)
    assert all(i.startswith("ps-") for i in first + second)
    assert len(second) == 2  # the offset's page (positions 2 and 3 of the order as it is now), not the anchor's
