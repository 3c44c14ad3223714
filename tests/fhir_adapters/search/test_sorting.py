"""`comes_after` (a keyset page cursor's comparison) says the order `sort_matches` makes, for every sort."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_strategies import SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from fhir_adapters.search.controls import parse_controls
from fhir_adapters.search.matching import ResourceMeta
from fhir_adapters.search.sorting import comes_after, sort_matches, sort_position

_KEYS = ["given", "-given", "birthdate", "-birthdate", "gender", "-gender", "_lastUpdated", "-_lastUpdated", "_id",
         "-_id"]


@st.composite
def _patients(draw: st.DrawFn) -> list[tuple[dict[str, Any], ResourceMeta]]:
    ids = draw(st.lists(st.text("abcXY-.9", min_size=1, max_size=4), min_size=1, max_size=8, unique=True))
    found = []
    for pid in ids:
        resource: dict[str, Any] = {"resourceType": "Patient", "id": pid}
        if draw(st.booleans()):
            resource["name"] = [{"given": draw(st.lists(st.sampled_from(["Ann", "ann", "Bo", "Émile", "Zed"]),
                                                         min_size=1, max_size=2))}]
        if draw(st.booleans()):
            resource["birthDate"] = draw(st.sampled_from(["1970", "1970-03", "1970-03-04", "1980-01-01"]))
        if draw(st.booleans()):
            resource["gender"] = draw(st.sampled_from(["female", "male", "other"]))
        moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 3)))
        found.append((resource, ResourceMeta(pid, moment)))
    return found


@SETTINGS
@given(_patients(), st.lists(st.sampled_from(_KEYS), min_size=0, max_size=3, unique_by=lambda k: k.lstrip("-")))
def test_comes_after_is_the_order_sort_matches_makes(patients: list[tuple[dict[str, Any], ResourceMeta]],
                                                     sort: list[str]) -> None:
    keys = parse_controls("Patient", [("_sort", ",".join(sort))] if sort else [], strict=True).sort
    ordered = sort_matches(sorted(patients, key=lambda p: p[1].id), keys, lambda p: p)
    positions = [sort_position(resource, meta, keys) for resource, meta in ordered]
    for i, anchor in enumerate(positions):
        assert [j for j, position in enumerate(positions) if comes_after(position, anchor, keys)] == \
            list(range(i + 1, len(positions)))
