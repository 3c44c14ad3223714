"""Patient compartments: every element of the R4 Patient CompartmentDefinition, and what cannot be resolved."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_adapters.compartment import (
    COMPARTMENT_PARAMS,
    EXTRA_SUBJECT_PATHS,
    PatientReferenceError,
    patient_compartment,
    patient_elements,
)
from fhir_adapters.validation import is_resource_type

ELEMENTS = [
    (resource_type, path, names_subject)
    for resource_type in sorted(set(COMPARTMENT_PARAMS) | set(EXTRA_SUBJECT_PATHS))
    for path, names_subject in patient_elements(resource_type)
    if not (resource_type == "Patient" and path == "link.other")
]
SUBJECT_ELEMENTS = [(t, p) for t, p, subject in ELEMENTS if subject]
PARTICIPANT_ELEMENTS = [(t, p) for t, p, subject in ELEMENTS if not subject]


def at(resource_type: str, path: str, reference: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A resource with `reference` at the dotted element `path` (nested objects; arrays are not needed here)."""
    resource: dict[str, Any] = {"resourceType": resource_type, **extra}
    node = resource
    *parents, last = path.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = reference
    return resource


def _reference_element_type(resource_type: str, path: str) -> str:
    """The R4B type of the element at `path` (from the fhir.resources R4B models)."""
    from fhir.resources.R4B import get_fhir_model_class

    model = get_fhir_model_class(resource_type)
    type_name = resource_type
    for name in path.split("."):
        fields = {f.alias: f for f in model.model_fields.values()}
        assert name in fields, f"{resource_type}.{path}: no element {name!r} in {type_name}"
        found = re.search(r"abc\.(\w+)Type", str(fields[name].annotation))
        assert found, f"{resource_type}.{path}: {name} is a primitive"
        type_name = found.group(1)
        model = get_fhir_model_class(type_name)
    return type_name


@pytest.mark.parametrize(("resource_type", "path", "names_subject"), ELEMENTS)
def test_every_compartment_element_is_a_reference_of_r4(resource_type: str, path: str, names_subject: bool) -> None:
    assert is_resource_type(resource_type)
    assert _reference_element_type(resource_type, path) == "Reference"


@pytest.mark.parametrize(("resource_type", "path", "names_subject"), ELEMENTS)
@pytest.mark.parametrize("spelling", ["Patient/p-1", "https://fhir.example.org/r4/Patient/p-1/_history/3"])
def test_a_patient_at_any_compartment_element_is_its_compartment(
    resource_type: str, path: str, names_subject: bool, spelling: str
) -> None:
    assert patient_compartment(at(resource_type, path, {"reference": spelling})) == "p-1"


@pytest.mark.parametrize(("resource_type", "path"), SUBJECT_ELEMENTS)
@pytest.mark.parametrize(
    "reference",
    [
        {"identifier": {"system": "urn:mrn", "value": "123"}},
        {"identifier": {"value": "123"}, "type": "Patient"},
        {"display": "Jane Doe"},
        {"reference": "#p"},
        {"reference": "urn:uuid:0f0a0f0a-0000-4000-8000-000000000001"},
        {"reference": "p-1"},
        {"reference": "patient/p-1"},
        {"reference": "PATIENT/p-1"},
        {"reference": " Patient/p-1"},
        {"reference": "Patient/p-1 "},
        {"reference": "Patient / p-1"},
        {"reference": "Patient?identifier=urn:mrn|123"},
        {},
    ],
    ids=repr,
)
def test_a_subject_that_does_not_say_which_patient_is_refused_naming_the_element(
    resource_type: str, path: str, reference: dict[str, Any]
) -> None:
    with pytest.raises(PatientReferenceError) as info:
        patient_compartment(at(resource_type, path, reference))
    assert info.value.status == 400
    assert info.value.expression == f"{resource_type}.{path}"
    assert "123" not in info.value.message and "Jane" not in info.value.message  # never the value


@pytest.mark.parametrize(("resource_type", "path"), SUBJECT_ELEMENTS)
@pytest.mark.parametrize(
    "reference",
    [
        {"reference": "Group/g1"},
        {"reference": "Device/d1"},
        {"identifier": {"value": "loc-7"}, "type": "Location"},
        {"reference": "#dev", "type": "Device"},
    ],
    ids=repr,
)
def test_a_subject_that_is_not_a_patient_is_no_compartment(
    resource_type: str, path: str, reference: dict[str, Any]
) -> None:
    assert patient_compartment(at(resource_type, path, reference)) is None


@pytest.mark.parametrize(("resource_type", "path"), PARTICIPANT_ELEMENTS)
def test_participants_may_be_named_by_identifier_unless_typed_patient(resource_type: str, path: str) -> None:
    practitioner = {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "999"}}
    assert patient_compartment(at(resource_type, path, practitioner)) is None
    assert patient_compartment(at(resource_type, path, {"display": "Dr Who"})) is None
    with pytest.raises(PatientReferenceError) as info:
        patient_compartment(at(resource_type, path, {**practitioner, "type": "Patient"}))
    assert info.value.expression == f"{resource_type}.{path}"


def test_references_outside_the_definition_count_too() -> None:
    task = {"resourceType": "Task", "status": "ready", "intent": "order", "for": {"reference": "Patient/t"}}
    assert patient_compartment(task) == "t"
    extension = {
        "resourceType": "Organization",
        "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "Patient/o"}}],
    }
    assert patient_compartment(extension) == "o"
    contained = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Observation", "id": "c", "subject": {"reference": "Patient/c"}}],
    }
    assert patient_compartment(contained) == "c"
    with pytest.raises(PatientReferenceError):
        patient_compartment({"resourceType": "Task", "for": {"identifier": {"value": "MRN-1"}}})


def test_two_patients_in_one_resource_are_refused() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/a"},
        "performer": [{"reference": "Patient/b"}],
    }
    with pytest.raises(PatientReferenceError) as info:
        patient_compartment(obs)
    assert info.value.expression == "Observation.subject"  # the first, in document order
    group = {"resourceType": "Group", "member": [{"entity": {"reference": f"Patient/{p}"}} for p in "ab"]}
    with pytest.raises(PatientReferenceError):
        patient_compartment(group)
    same = {**obs, "performer": [{"reference": "https://h.example/fhir/Patient/a"}]}
    assert patient_compartment(same) == "a"


def test_a_contained_patient_is_refused() -> None:
    obs = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "subject": {"reference": "#p"},
    }
    with pytest.raises(PatientReferenceError) as info:
        patient_compartment(obs)
    assert info.value.expression == "Observation.subject"
    del obs["subject"]
    with pytest.raises(PatientReferenceError) as info:
        patient_compartment(obs)
    assert info.value.expression == "Observation.contained[0]"


def test_a_patient_is_its_own_compartment_whatever_it_links() -> None:
    patient = {"resourceType": "Patient", "id": "a", "link": [{"other": {"reference": "Patient/b"}, "type": "seealso"}]}
    assert patient_compartment(patient) == "a"
    assert patient_compartment({"resourceType": "Patient"}) is None  # a new one: its id is not assigned yet
    with pytest.raises(PatientReferenceError):
        patient_compartment({**patient, "extension": [{"url": "x", "valueReference": {"reference": "Patient/c"}}]})


def test_things_about_nobody_have_no_compartment() -> None:
    assert patient_compartment({"resourceType": "Organization", "id": "o", "name": "General"}) is None
    assert patient_compartment({"resourceType": "Questionnaire", "url": "http://x/Questionnaire/patient-intake"}) is None
    assert patient_compartment({}) is None


# -- property: one patient anywhere, however deep, is the compartment (reference model: find the strings) ------
_KEYS = st.sampled_from(["subject", "focus", "extension", "valueReference", "item", "basedOn", "x"])
_ID = st.from_regex(r"[A-Za-z0-9\-.]{1,20}", fullmatch=True)


def _model(resource: Any) -> set[str]:
    """The reference model: the ids of every `"reference": "Patient/<id>"` string in the JSON."""
    import json

    return set(re.findall(r'"reference": "Patient/([A-Za-z0-9\-.]{1,64})"', json.dumps(resource)))


@given(path=st.lists(_KEYS, min_size=1, max_size=6), patient=_ID, other=st.one_of(st.none(), _ID),
       wrap=st.lists(st.booleans(), min_size=6, max_size=6))
def test_any_patient_reference_anywhere_places_it(path: list[str], patient: str, other: str | None, wrap: list[bool]) -> None:
    resource: dict[str, Any] = {"resourceType": "Questionnaire", "status": "active"}  # no compartment elements
    node: Any = resource
    for key, as_list in zip(path, wrap):
        child: dict[str, Any] = {}
        node[key] = [child] if as_list else child
        node = child
    node["reference"] = f"Patient/{patient}"
    if other is not None:
        resource["author"] = {"reference": f"Patient/{other}"}
    expected = _model(resource)
    if len(expected) > 1:
        with pytest.raises(PatientReferenceError):
            patient_compartment(resource)
    else:
        assert {patient_compartment(resource)} == expected


# -- the fast path (`_one_patient`: no element paths) beside the full rules it stands in for -------------------
_REFERENCES = st.sampled_from([
    "Patient/a", "Patient/b", "patient/a", "Patient/a ", "#c", "#", "urn:uuid:5f1c", "Encounter/e",
    "http://other.example/fhir/Patient/a", "Patient?identifier=x", "Patient/a/_history/2", "Group/g", "",
])


def _full_rules(resource: dict[str, Any]) -> tuple[str, Any]:
    from unittest import mock

    from fhir_adapters import compartment

    with mock.patch.object(compartment, "_one_patient", lambda *_: compartment._UNSETTLED):
        return _outcome(resource)


def _outcome(resource: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "patient", patient_compartment(resource)
    except PatientReferenceError as error:
        return "error", (str(error), error.expression)


@given(resource_type=st.sampled_from(["Observation", "Encounter", "Questionnaire", "Patient", "Basic"]),
       placed=st.lists(st.tuples(st.lists(_KEYS, min_size=1, max_size=4), _REFERENCES, st.booleans()), max_size=4),
       contained=st.booleans())
def test_the_fast_path_answers_as_the_full_rules(resource_type: str, placed: list[tuple[list[str], str, bool]],
                                                 contained: bool) -> None:
    resource: dict[str, Any] = {"resourceType": resource_type, "id": "p"}
    for path, reference, as_list in placed:
        node: Any = resource
        for key in path:
            child = node.get(key) if isinstance(node.get(key), dict) else {}
            node[key] = [child] if as_list else child
            node = child
        node["reference"] = reference
    if contained:
        resource["contained"] = [{"resourceType": "Patient", "id": "c"}]
    assert _outcome(resource) == _full_rules(resource)


def test_the_fast_path_answers_as_the_full_rules_on_the_shared_fixtures() -> None:
    import json

    from support import FIXTURES

    checked = 0
    for path in sorted((FIXTURES / "bulk-10-patients").glob("*.ndjson")):
        for line in path.read_text().splitlines()[:300]:
            resource = json.loads(line)
            assert _outcome(resource) == _full_rules(resource), (path.name, resource.get("id"))
            checked += 1
    assert checked > 1000
