"""Primitives must have their datatype's JSON type (R4 json.html): the tables derived from the R4B models, the
fast check against the reference (tests/fhir_adapters/reference_json_types.py), and real data still passing."""

from __future__ import annotations

import copy
import decimal
import json
import typing
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_json_types import first_wrong, json_type_ok, primitives

from fhir_adapters.errors import InvalidResource
from fhir_adapters.json_types import check_json_types, element_specs
from fhir_adapters.validation import R4B_MODELLED_TYPES, RESOURCE_TYPES, loads_json, parse_resource

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
EXAMPLES = sorted(p for p in (FIXTURES / "fhir-r4-examples").glob("*.json") if p.name != "bundle-questionnaire.json")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _models() -> set[str]:
    """Every model reachable from a resource model: datatypes, backbone elements, `_name` siblings."""
    seen: set[str] = set()
    todo = list(R4B_MODELLED_TYPES)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [t for kind, t in element_specs(name).values() if kind == "complex"]
    return seen


def _python_type(annotation: Any) -> type | None:
    """The Python type pydantic validates a primitive field into (bool, int, Decimal, str, date, ...)."""
    if isinstance(annotation, type) and getattr(annotation, "__module__", "") != "abc":
        return annotation
    for arg in typing.get_args(annotation):
        found = _python_type(arg)
        if found is not None:
            return found
    return None


def test_every_element_of_every_model_has_a_json_type_that_agrees_with_the_model() -> None:
    from fhir.resources.R4B import get_fhir_model_class

    models = _models()
    assert len(models) > 600
    expected: dict[type, str] = {bool: "boolean", int: "integer", decimal.Decimal: "number"}
    checked = 0
    for name in models:
        fields = {info.alias or field: info for field, info in get_fhir_model_class(name).model_fields.items()}
        for element, (kind, datatype) in element_specs(name).items():
            if kind in ("complex", "resource"):
                continue
            python = _python_type(fields[element].annotation)
            want = expected.get(python, "string") if python is not None else "string"
            assert kind == want, f"{name}.{element}: {datatype} is {python}"
            checked += 1
    assert checked > 3000


@pytest.mark.parametrize(("owner", "element", "spec"), [
    ("Patient", "active", ("boolean", "boolean")),
    ("Patient", "multipleBirthInteger", ("integer", "integer")),
    ("Patient", "deceasedDateTime", ("string", "dateTime")),
    ("Patient", "_birthDate", ("complex", "FHIRPrimitiveExtension")),
    ("Patient", "contained", ("resource", "Resource")),
    ("Quantity", "value", ("number", "decimal")),
    ("Attachment", "size", ("integer", "unsignedInt")),
    ("Attachment", "data", ("string", "base64Binary")),
    ("Narrative", "div", ("string", "xhtml")),
    ("Extension", "valuePositiveInt", ("integer", "positiveInt")),
    ("Extension", "valueUuid", ("string", "uuid")),
    ("Extension", "valueDecimal", ("number", "decimal")),
    ("BundleEntry", "resource", ("resource", "Resource")),
    ("ParametersParameter", "resource", ("resource", "Resource")),
])
def test_known_elements(owner: str, element: str, spec: tuple[str, str]) -> None:
    assert element_specs(owner)[element] == spec


@pytest.mark.parametrize(("resource", "expression", "words"), [
    ({"resourceType": "Patient", "active": "true"}, "Patient.active", "JSON boolean (true or false), not a string"),
    ({"resourceType": "Patient", "active": 1}, "Patient.active", "not an integer"),
    ({"resourceType": "Patient", "multipleBirthInteger": "2"}, "Patient.multipleBirthInteger", "without a fraction"),
    ({"resourceType": "Patient", "multipleBirthInteger": 2.0}, "Patient.multipleBirthInteger", "not a number with"),
    ({"resourceType": "Patient", "deceasedBoolean": "false"}, "Patient.deceasedBoolean", "JSON boolean"),
    ({"resourceType": "Patient", "gender": True}, "Patient.gender", "JSON string, not a boolean"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "w"}, "valueQuantity": {"value": "70.5"}},
     "Observation.valueQuantity.value", "a FHIR decimal must be a JSON number, not a string"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "w"}, "valueBoolean": 0},
     "Observation.valueBoolean", "JSON boolean"),
    ({"resourceType": "Patient", "name": [{"given": ["a", None, 3], "_given": [None, {"id": "g"}, None]}]},
     "Patient.name[0].given[2]", "JSON string"),
    ({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [{"id": 5}]}]},
     "Patient.name[0]._given[0].id", "JSON string"),
    ({"resourceType": "Patient", "modifierExtension": [{"url": "u", "extension": [{"url": "v", "valueInteger": True}]}]},
     "Patient.modifierExtension[0].extension[0].valueInteger", "not a boolean"),
    ({"resourceType": "Patient", "contained": [{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                                "valueInteger": "1"}]},
     "Patient.contained[0].valueInteger", "JSON number"),
    ({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "active": "no"}}]},
     "Bundle.entry[0].resource.active", "JSON boolean"),
    ({"resourceType": "Parameters", "parameter": [{"name": "p", "part": [{"name": "q", "valueUnsignedInt": "4"}]}]},
     "Parameters.parameter[0].part[0].valueUnsignedInt", "JSON number"),
])
def test_wrong_json_types_are_refused_naming_path_and_type(
    resource: dict[str, Any], expression: str, words: str
) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(resource)
    assert info.value.expression == expression and info.value.code == "structure" and info.value.status == 400
    assert words in info.value.message and expression in info.value.message
    assert first_wrong(resource) == expression


def test_the_offending_value_is_never_echoed() -> None:
    secret = "Sensitive-Value-4711"
    with pytest.raises(InvalidResource) as info:
        parse_resource({"resourceType": "Patient", "multipleBirthInteger": secret})
    assert secret not in info.value.message


def test_right_json_types_pass_including_integers_as_decimals_and_exact_decimals() -> None:
    for resource in ({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                      "valueQuantity": {"value": 70}},
                     {"resourceType": "Patient", "active": False, "multipleBirthInteger": 0}):
        assert parse_resource(resource) == resource
    text = '{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":1.50}}'
    assert parse_resource(text)["valueQuantity"]["value"].text == "1.50"  # FhirDecimal: a float, kept exact


# --- real data: nothing valid is refused ----------------------------------------------------------------------


def _real_resources() -> list[dict[str, Any]]:
    found = [loads_json(p.read_bytes()) for p in EXAMPLES]
    for bundle in sorted((FIXTURES / "synthea").glob("*.json")):
        found.append(loads_json(bundle.read_bytes()))
    for ndjson in sorted((FIXTURES / "bulk-10-patients").glob("*.ndjson")):
        found += [loads_json(line) for line in ndjson.read_text().splitlines()[:40] if line.strip()]
    return [r for r in found if r.get("resourceType") in RESOURCE_TYPES]


REAL = _real_resources()


def test_the_fixtures_have_no_primitive_of_the_wrong_json_type() -> None:
    assert len(REAL) > 300
    checked = 0
    for resource in REAL:
        check_json_types(resource, resource["resourceType"], resource["resourceType"])
        assert first_wrong(resource) is None
        checked += sum(1 for _ in primitives(resource, resource["resourceType"], resource["resourceType"]))
    assert checked > 20_000  # the walk reaches deep: Synthea Bundles' entries, extensions, contained


@pytest.mark.parametrize("path", sorted((FIXTURES / "synthea").glob("*.json")), ids=lambda p: p.name[:20])
def test_synthea_bundles_still_validate(path: Path) -> None:
    bundle = parse_resource(path.read_bytes())
    for entry in bundle["entry"]:
        parse_resource(entry["resource"])


# --- property: the fast check against the reference --------------------------------------------------------

JSON_VALUES = st.one_of(
    st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8), st.sampled_from(["true", "false", "1", "70.5", "2020-01-01", ""]),
)
_SMALL = [r for r in REAL if len(json.dumps(r)) < 20_000]


def _fast_verdict(resource: dict[str, Any]) -> str | None:
    try:
        check_json_types(resource, resource["resourceType"], resource["resourceType"])
    except InvalidResource as exc:
        return exc.expression
    return None


def _replace(resource: dict[str, Any], path: str, value: Any) -> None:
    """Set the element at `path` (`Type.a[0].b`) to `value`."""
    steps: list[str | int] = []
    for part in path.split(".")[1:]:
        name, _, index = part.partition("[")
        steps.append(name)
        if index:
            steps.append(int(index.rstrip("]")))
    target: Any = resource
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = value


@SETTINGS
@given(st.data())
def test_fast_check_answers_as_the_reference_when_one_primitive_changes(data: st.DataObject) -> None:
    resource = copy.deepcopy(data.draw(st.sampled_from(_SMALL)))
    leaves = list(primitives(resource, resource["resourceType"], resource["resourceType"]))
    assert leaves
    path, datatype, _ = data.draw(st.sampled_from(leaves))
    value = data.draw(JSON_VALUES)
    _replace(resource, path, value)
    expected = first_wrong(resource)
    assert expected == (None if json_type_ok(datatype, value) else path)
    assert _fast_verdict(resource) == expected
    if expected is not None:
        with pytest.raises(InvalidResource) as info:
            parse_resource(resource)
        assert info.value.expression == expected


@SETTINGS
@given(st.sampled_from(sorted(RESOURCE_TYPES)), st.data())
def test_any_top_level_primitive_of_any_type_is_checked(resource_type: str, data: st.DataObject) -> None:
    primitive = [(n, s) for n, s in element_specs(resource_type).items()
                 if s[0] not in ("complex", "resource") and not n.startswith("_")]
    name, (_, datatype) = data.draw(st.sampled_from(primitive))
    value = data.draw(JSON_VALUES)
    resource = {"resourceType": resource_type, name: value}
    expected = None if json_type_ok(datatype, value) else f"{resource_type}.{name}"
    assert first_wrong(resource) == expected == _fast_verdict(resource)


def test_uuid_module_is_what_the_models_use_for_value_uuid() -> None:
    # The one primitive typed outside fhir_core's annotations (Extension.valueUuid): json_types special-cases it.
    from fhir.resources.R4B import get_fhir_model_class

    assert _python_type(get_fhir_model_class("Extension").model_fields["valueUuid"].annotation) is uuid.UUID


# --- property: nulls and empties (R4 json.html) against a small reference ----------------------------------------


def _first_null_or_empty(value: dict[str, Any], model: str, path: str) -> str | None:
    """Reference: the path of the first element json.html does not allow, in JSON order, or None. A null, `{}` or
    `[]` is never a value; in the arrays of a repeating primitive (`given`) and of its `_given`, a null may stand
    only where the other array has an entry, and the two arrays are as long as each other."""
    for name, item in value.items():
        where = f"{path}.{name}"
        if item is None or item == [] or item == {}:
            return where
        spec = element_specs(model).get(name)
        if spec is None:
            continue
        kind, type_name = spec
        paired = kind not in ("complex", "resource") or name.startswith("_")
        other = value.get(name[1:] if name.startswith("_") else "_" + name) if paired else None
        items = item if isinstance(item, list) else [item]
        if isinstance(item, list) and isinstance(other, list) and len(other) != len(item):
            return where
        for index, element in enumerate(items):
            at = f"{where}[{index}]" if isinstance(item, list) else where
            if element is None:
                if not (isinstance(other, list) and other[index] is not None):
                    return at
            elif element == {}:
                return at
            elif isinstance(element, dict) and kind in ("complex", "resource"):
                inner = type_name if kind == "complex" else element.get("resourceType")
                if isinstance(inner, str):
                    found = _first_null_or_empty(element, inner, at)
                    if found is not None:
                        return found
    return None


_NULL_OR_EMPTY_ITEM = st.sampled_from([None, {}])  # in an array of objects (an array there is a structure error)
_EXTENSION = st.fixed_dictionaries({"url": st.just("http://example.org/x")},
                                   optional={"valueString": st.one_of(st.just("v"), st.none())})
_PRIMITIVE_EXT = st.one_of(st.none(), st.just({}), st.just({"id": "e"}),
                           st.builds(lambda e: {"extension": [e]}, _EXTENSION))
_ALIGNED_GIVEN = st.lists(st.tuples(st.one_of(st.just("g"), st.none()), st.one_of(st.none(), st.just({"id": "e"}))),
                          min_size=1, max_size=3).map(lambda pairs: {"given": [g for g, _ in pairs],
                                                                     "_given": [e for _, e in pairs]})
_HUMAN_NAME = st.one_of(_NULL_OR_EMPTY_ITEM, _ALIGNED_GIVEN, st.fixed_dictionaries({}, optional={
    "family": st.one_of(st.just("F"), st.none()),
    "given": st.lists(st.one_of(st.just("g"), st.none()), max_size=3),
    "_given": st.lists(_PRIMITIVE_EXT, max_size=3),
    "period": st.sampled_from([{}, {"start": "2020-01-01"}, None]),
    "extension": st.lists(_EXTENSION, max_size=2),
}))
_PATIENT_BODY = {
    "active": st.one_of(st.booleans(), st.none()),
    "_birthDate": _PRIMITIVE_EXT,
    "name": st.one_of(st.none(), st.lists(_HUMAN_NAME, max_size=3)),
    "extension": st.lists(_EXTENSION, max_size=2),
}
_PATIENT = st.fixed_dictionaries({"resourceType": st.just("Patient")}, optional={
    **_PATIENT_BODY,
    "contained": st.lists(st.one_of(_NULL_OR_EMPTY_ITEM, st.fixed_dictionaries(
        {"resourceType": st.just("Patient"), "id": st.just("c")}, optional=_PATIENT_BODY)), max_size=2),
})


@SETTINGS
@given(_PATIENT)
def test_fast_check_refuses_nulls_and_empties_as_the_reference_does(patient: dict[str, Any]) -> None:
    expected = _first_null_or_empty(patient, "Patient", "Patient")
    assert _fast_verdict(patient) == expected
    if expected is None:
        assert parse_resource(patient) == patient  # nothing dropped, aligning nulls kept
    else:
        with pytest.raises(InvalidResource) as info:
            parse_resource(patient)
        assert info.value.expression == expected and "R4 JSON" in info.value.message


@SETTINGS
@given(_ALIGNED_GIVEN)
def test_given_and_its_extensions_align_as_the_reference_says(name: dict[str, Any]) -> None:
    patient = {"resourceType": "Patient", "name": [name]}
    expected = _first_null_or_empty(patient, "Patient", "Patient")
    both_null = [i for i, (g, e) in enumerate(zip(name["given"], name["_given"], strict=True)) if g is None and e is None]
    assert expected == (f"Patient.name[0].given[{both_null[0]}]" if both_null else None)
    assert _fast_verdict(patient) == expected
    if expected is None:
        assert parse_resource(patient) == patient


def test_the_reference_of_nulls_and_empties_finds_the_tester_cases() -> None:
    for body, path in [({"active": None}, "Patient.active"), ({"name": []}, "Patient.name"),
                       ({"name": [{}]}, "Patient.name[0]"), ({"name": [{"given": ["a", None]}]}, "Patient.name[0].given[1]")]:
        assert _first_null_or_empty({"resourceType": "Patient", **body}, "Patient", "Patient") == path
    aligned = {"resourceType": "Patient", "name": [{"given": ["a", None], "_given": [None, {"id": "e"}]}]}
    assert _first_null_or_empty(aligned, "Patient", "Patient") is None


def test_the_fixtures_have_no_null_or_empty_element() -> None:
    for resource in REAL:
        assert _first_null_or_empty(resource, resource["resourceType"], resource["resourceType"]) is None
