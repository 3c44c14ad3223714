"""searched_patients: the patients a search pins must hold every match (checked against the matcher itself)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapters.compartment import patient_compartment, searched_patients
from fhir_adapters.search import ResourceMeta, matches, parse_search

PATIENTS = ["p1", "p2", "g1"]


def _ref(kind: str, rid: str) -> dict:
    return {"reference": f"{kind}/{rid}"}


observation_st = st.builds(
    lambda subject, performer, pid: {
        "resourceType": "Observation", "id": pid, "status": "final", "code": {"text": "x"},
        **({"subject": _ref(*subject)} if subject else {}),
        **({"performer": [_ref(*performer)]} if performer else {}),
    },
    subject=st.one_of(st.none(), st.tuples(st.sampled_from(["Patient", "Group"]), st.sampled_from(PATIENTS))),
    performer=st.one_of(st.none(), st.tuples(st.sampled_from(["Practitioner", "Patient"]), st.sampled_from(PATIENTS))),
    pid=st.sampled_from(["o1", "p1", "g1"]),
)
value_st = st.one_of(
    st.sampled_from(PATIENTS), st.sampled_from(PATIENTS).map(lambda p: f"Patient/{p}"),
    st.sampled_from(PATIENTS).map(lambda p: f"Group/{p}"),
)
criterion_st = st.tuples(
    st.sampled_from(["patient", "subject", "subject:Patient", "subject:missing", "_id", "code"]),
    st.lists(value_st, min_size=1, max_size=2).map(",".join),
)


def _params(criteria: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for name, value in criteria:
        if name == "subject:missing":
            value = "false"
        elif name == "code":
            value = "x"
        elif name == "subject:Patient" or name == "patient":
            value = ",".join(v.removeprefix("Patient/") for v in value.split(",") if not v.startswith("Group/")) or "p1"
        elif name == "_id":
            value = value.split("/")[-1]
        out.append((name, value))
    return out


@settings(max_examples=400, deadline=None)
@given(resources=st.lists(observation_st, min_size=1, max_size=4), criteria=st.lists(criterion_st, min_size=1, max_size=3))
def test_every_match_of_a_pinned_search_is_in_a_pinned_patients_compartment(resources, criteria) -> None:
    params = _params(criteria)
    query = parse_search("Observation", params, strict=True)
    pinned = searched_patients("Observation", query.criteria)
    if pinned is None:
        return
    for resource in resources:
        if matches(resource, query, ResourceMeta(id=resource["id"], last_updated=None)):
            try:
                compartment = patient_compartment(resource)
            except ValueError:
                continue  # two patients: refused at write, never stored
            assert compartment in pinned, (params, resource)


def test_what_pins_and_what_does_not() -> None:
    def pinned(resource_type: str, query: str) -> frozenset[str] | None:
        params = [tuple(p.split("=", 1)) for p in query.split("&")]
        return searched_patients(resource_type, parse_search(resource_type, params, strict=True).criteria)

    assert pinned("Observation", "patient=p1") == {"p1"}
    assert pinned("Observation", "subject=Patient/p1,Patient/p2") == {"p1", "p2"}
    assert pinned("Observation", "subject:Patient=p1&patient=p1,p2") == {"p1"}
    assert pinned("Patient", "_id=p1,p2") == {"p1", "p2"}
    for loose in ("subject=p1", "subject=Patient/p1,Group/g1", "subject:missing=false", "code=x"):
        assert pinned("Observation", loose) is None, loose
    assert pinned("Patient", "general-practitioner=Practitioner/d1") is None  # a Patient is pinned by its id only
