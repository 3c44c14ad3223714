"""parse_resource: R4B validation, safe errors with FHIRPath-ish locations, and round-trip fidelity."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fhir_adapters.errors import FhirInputError, InvalidResource, MalformedJson, UnknownResourceType
from fhir_adapters.validation import (
    R4_RESOURCE_TYPES,
    R4B_MODELLED_TYPES,
    RESHAPED_IN_R4B,
    RESOURCE_TYPES,
    dumps_resource,
    is_resource_type,
    parse_resource,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
EXAMPLES = FIXTURES / "fhir-r4-examples"
KNOWN_R4B_FAILURES = {"bundle-questionnaire.json"}  # fixtures/README.md: fails R4B validation


def fhir_equal(a: Any, b: Any) -> bool:
    """Equal as FHIR: numbers by decimal value (1.50 == 1.5), objects ignoring empty properties."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return Decimal(repr(a)) == Decimal(repr(b))
    if isinstance(a, dict) and isinstance(b, dict):
        a = {k: v for k, v in a.items() if v not in (None, [], {})}
        b = {k: v for k, v in b.items() if v not in (None, [], {})}
        return a.keys() == b.keys() and all(fhir_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(fhir_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.json") if p.name not in KNOWN_R4B_FAILURES)


def test_examples_folder_is_present() -> None:
    assert len(example_files()) == 71


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_official_r4_example_parses_and_round_trips(path: Path) -> None:
    raw = path.read_bytes()
    sent = json.loads(raw)
    parsed = parse_resource(raw)
    assert fhir_equal(parsed, sent)
    assert list(parsed) == [k for k in sent if sent[k] not in (None, [], {})]  # order kept
    # The exact serialisation parses back to the same resource, and re-validates.
    again = parse_resource(dumps_resource(parsed))
    assert fhir_equal(again, sent)


def test_known_failure_still_fails_r4b() -> None:
    """If this starts passing, the fixture note (and KNOWN_R4B_FAILURES) is stale."""
    with pytest.raises(InvalidResource) as info:
        parse_resource((EXAMPLES / "bundle-questionnaire.json").read_bytes())
    assert info.value.expression is not None
    assert info.value.expression == "Questionnaire.item[0].item[0].linkId"  # a required element is missing


def test_decimal_text_is_kept_exactly() -> None:
    raw = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}'
    )
    parsed = parse_resource(raw)
    assert dumps_resource(parsed) == raw.decode()
    assert parsed["valueQuantity"]["value"] == 1.5  # still a number for arithmetic
    assert json.loads(json.dumps(parsed))["valueQuantity"]["value"] == 1.5  # stock json keeps working


def test_large_and_exponent_decimals_round_trip() -> None:
    body = '{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":%s}}'
    for text in ["1e3", "0.1000000000000000000001", "-0.0", "123456789012345678901234567890", "3.14"]:
        assert dumps_resource(parse_resource(body % text)) == body % text


def test_array_nulls_aligning_a_primitive_with_its_extensions_are_kept() -> None:
    raw = {
        "resourceType": "Patient",
        "name": [
            {
                "given": ["Ann", None],
                "_given": [None, {"extension": [{"url": "http://x", "valueCode": "IN"}]}],
            }
        ],
    }
    parsed = parse_resource(raw)
    assert parsed == raw
    only_values = {"resourceType": "Patient", "name": [{"given": ["Ann", "Bo"], "_given": [None, None]}]}
    assert parse_resource(only_values) == only_values  # json.html: `_name` may hold nulls where values exist
    falsy = parse_resource({"resourceType": "Patient", "active": False, "multipleBirthInteger": 0})
    assert falsy == {"resourceType": "Patient", "active": False, "multipleBirthInteger": 0}


_EXT = {"extension": [{"url": "http://example.org/why", "valueCode": "masked"}]}
_OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


@pytest.mark.parametrize(
    ("raw", "expression", "words"),
    [
        # R4 json.html: null is not a value, and empty objects and arrays are not allowed, at any depth.
        ({"resourceType": "Patient", "active": None}, "Patient.active", "null is not allowed"),
        ({"resourceType": "Patient", "name": []}, "Patient.name", "an empty array is not allowed"),
        ({"resourceType": "Patient", "name": [{}]}, "Patient.name[0]", "an empty object is not allowed"),
        ({"resourceType": "Patient", "name": [{"given": ["a", None]}]}, "Patient.name[0].given[1]",
         "null is allowed in given only where _given has an entry"),
        ({"resourceType": "Patient", "maritalStatus": {}}, "Patient.maritalStatus", "an empty object"),
        ({"resourceType": "Patient", "name": [{"family": "F", "period": {}}]}, "Patient.name[0].period",
         "an empty object"),
        ({"resourceType": "Patient", "contact": [{"name": {"given": []}}]}, "Patient.contact[0].name.given",
         "an empty array"),
        ({"resourceType": "Patient", "name": [{"family": "F"}, None]}, "Patient.name[1]", "null is not allowed"),
        ({"resourceType": "Patient", "_birthDate": None}, "Patient._birthDate", "null is not allowed"),
        ({"resourceType": "Patient", "_birthDate": {}}, "Patient._birthDate", "an empty object"),
        ({"resourceType": "Patient", "extension": [{"url": "http://x", "valueString": None}]},
         "Patient.extension[0].valueString", "null is not allowed"),
        ({"resourceType": "Patient", "extension": [{"url": "http://x", "extension": []}]},
         "Patient.extension[0].extension", "an empty array"),
        ({"resourceType": "Patient", "contained": [{}]}, "Patient.contained[0]", "an empty object"),
        ({"resourceType": "Patient", "contained": [{"resourceType": "Patient", "id": "c", "gender": None}]},
         "Patient.contained[0].gender", "null is not allowed"),
        ({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {**_OBS, "note": [{}]}}]},
         "Bundle.entry[0].resource.note[0]", "an empty object"),
        ({"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {}}]},
         "Parameters.parameter[0].resource", "an empty object"),
        ({"resourceType": "Patient", "unknownElement": None}, "Patient.unknownElement", "null is not allowed"),
        # The `_name` array: nulls only where the value array has a value; the two arrays as long as each other.
        ({"resourceType": "Patient", "name": [{"given": ["a", None], "_given": [None, None]}]},
         "Patient.name[0].given[1]", "null is allowed in given only where _given has an entry"),
        ({"resourceType": "Patient", "name": [{"_given": [None, _EXT]}]}, "Patient.name[0]._given[0]",
         "null is allowed in _given only where given has an entry"),
        ({"resourceType": "Patient", "name": [{"given": ["a", None], "_given": [_EXT, None]}]},
         "Patient.name[0].given[1]", "null is allowed in given only where _given has an entry"),
        ({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [None, _EXT, _EXT]}]},
         "Patient.name[0].given", "given and _given must have the same number of entries"),
        ({"resourceType": "Patient", "name": [{"_given": [_EXT], "given": ["a", "b"]}]},
         "Patient.name[0]._given", "given and _given must have the same number of entries"),
        ({"resourceType": "Patient", "name": [{"given": ["a", None], "_given": [None, {}]}]},
         "Patient.name[0]._given[1]", "an empty object"),
    ],
)
def test_null_and_empty_elements_are_refused_naming_the_path(raw: dict[str, Any], expression: str, words: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(raw)
    assert info.value.status == 400 and info.value.code == "structure"
    assert info.value.expression == expression
    assert f"at {expression}: " in info.value.message and words in info.value.message
    assert "R4 JSON" in info.value.message  # says what R4 allows


def test_null_and_empty_refusals_never_echo_a_value() -> None:
    secret = "Sensitive-Name-4711"
    for raw in ({"resourceType": "Patient", "name": [{"given": [secret, None]}]},
                {"resourceType": "Patient", "name": [{"given": [secret], "_given": [_EXT, _EXT]}]}):
        with pytest.raises(InvalidResource) as info:
            parse_resource(raw)
        assert secret not in info.value.message


@pytest.mark.parametrize(
    ("raw", "error", "expression"),
    [
        (b"{", MalformedJson, None),
        (b"[]", MalformedJson, None),
        (b'"Patient"', MalformedJson, None),
        (b"\xff\xfe{", MalformedJson, None),
        (b'{"resourceType":"Patient","active":NaN}', MalformedJson, None),
        (b'{"resourceType":"Patient","gender":"male","gender":"female"}', MalformedJson, None),
        (b"[" * 50_000, MalformedJson, None),
        (b"{}", InvalidResource, "resourceType"),
        (b'{"resourceType":7}', InvalidResource, "resourceType"),
        (b'{"resourceType":"Nope"}', UnknownResourceType, "resourceType"),
        (b'{"resourceType":"patient"}', UnknownResourceType, "resourceType"),
        (
            b'{"resourceType":"Patient","name":[{"given":["A",1]}]}',
            InvalidResource,
            "Patient.name[0].given[1]",
        ),
        (b'{"resourceType":"Patient","birthDate":"1970-13-01"}', InvalidResource, "Patient.birthDate"),
        (b'{"resourceType":"Patient","nickname":"x"}', InvalidResource, "Patient.nickname"),
        (b'{"resourceType":"Patient","id":"has space"}', InvalidResource, "Patient.id"),
        (
            b'{"resourceType":"Patient","_gender":{"extension":[{"url":1}]}}',
            InvalidResource,
            "Patient._gender",
        ),
        (b'{"resourceType":"Encounter","class":{"code":"x"}}', InvalidResource, "Encounter.status"),
        (
            b'{"resourceType":"Patient","contained":[{"resourceType":"Nope"}]}',
            InvalidResource,
            "Patient.contained[0].resourceType",
        ),
        (
            b'{"resourceType":"Patient","contained":[{"resourceType":"Patient","birthDate":"x"}]}',
            InvalidResource,
            "Patient.contained[0].birthDate",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(
    raw: bytes, error: type[FhirInputError], expression: str | None
) -> None:
    with pytest.raises(error) as info:
        parse_resource(raw)
    assert type(info.value) is error
    if expression is not None:
        assert info.value.expression is not None
        assert info.value.expression.startswith(expression)
    assert info.value.message and str(info.value) == info.value.message


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (
            {"resourceType": "Encounter", "status": "finished", "class_fhir": {"code": "x"}},
            "Encounter.class_fhir",
        ),
        ({"resourceType": "Patient", "name": [{"family__ext": {"id": "a"}}]}, "Patient.name[0].family__ext"),
        ({"resourceType": "Patient", "resource_type": "Patient"}, "Patient.resource_type"),
        ({"resourceType": "Patient", "fhir_comments": ["x"]}, "Patient.fhir_comments"),
        ({"resourceType": "Patient", "Zoë Smith": 1}, "Patient"),
    ],
)
def test_python_aliases_of_the_models_are_not_fhir(body: dict[str, Any], expression: str) -> None:
    """pydantic would accept the models' Python field names; FHIR JSON does not have them."""
    with pytest.raises(InvalidResource) as info:
        parse_resource(body)
    assert info.value.expression == expression
    assert "Zoë" not in info.value.message


def test_statuses() -> None:
    with pytest.raises(UnknownResourceType) as url_type:
        parse_resource(b'{"resourceType":"Patient"}', expected_type="Nope")
    assert url_type.value.status == 404
    with pytest.raises(UnknownResourceType) as body_type:
        parse_resource(b'{"resourceType":"Nope"}')
    assert body_type.value.status == 400
    with pytest.raises(MalformedJson) as malformed:
        parse_resource(b"{")
    assert malformed.value.status == 400


def test_expected_type_mismatch() -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(b'{"resourceType":"Patient"}', expected_type="Observation")
    assert info.value.expression == "resourceType"
    assert parse_resource(b'{"resourceType":"Patient"}', expected_type="Patient") == {
        "resourceType": "Patient"
    }


def test_error_messages_never_echo_the_value() -> None:
    secret = "Zaphod Beeblebrox 1970"
    for raw in [
        {"resourceType": "Patient", "birthDate": secret},
        {"resourceType": "Patient", "gender": 12345678},
        {"resourceType": "Patient", "id": secret},
        {"resourceType": "Patient", "name": [{"family": {"text": secret}}]},
        {"resourceType": "Patient", "telecom": [{"system": secret, "value": 5}]},
    ]:
        with pytest.raises(InvalidResource) as info:
            parse_resource(raw)
        assert secret not in info.value.message and "12345678" not in info.value.message


def test_resource_type_list_matches_the_r4b_models() -> None:
    import importlib
    import pkgutil

    import fhir.resources.R4B as r4b
    from fhir.resources.R4B.resource import Resource

    found = set()
    for module in pkgutil.iter_modules(r4b.__path__):
        if module.name.startswith("_") or module.name in {"fhirtypes", "fhirtypesvalidators", "tests"}:
            continue
        mod = importlib.import_module(f"fhir.resources.R4B.{module.name}")
        for name, cls in vars(mod).items():
            concrete = isinstance(cls, type) and issubclass(cls, Resource) and cls.__module__ == mod.__name__
            if concrete and cls.get_resource_type() == name and name not in {"Resource", "DomainResource"}:
                found.add(name)
    assert found == R4B_MODELLED_TYPES
    assert is_resource_type("Patient") and not is_resource_type("DomainResource")


# R4B history.html: what 4.3.0 added (the regulated-product, evidence and subscription modules) and removed.
R4B_ADDED = {"AdministrableProductDefinition", "Citation", "ClinicalUseDefinition", "EvidenceReport", "Ingredient",
             "ManufacturedItemDefinition", "MedicinalProductDefinition", "NutritionProduct",
             "PackagedProductDefinition", "RegulatedAuthorization", "SubscriptionStatus", "SubscriptionTopic",
             "SubstanceDefinition"}


def test_served_types_are_r4_types_the_models_check_as_r4() -> None:
    assert len(R4_RESOURCE_TYPES) == 146  # R4 resourcelist.html
    assert R4B_MODELLED_TYPES - R4_RESOURCE_TYPES == R4B_ADDED
    assert RESOURCE_TYPES == (R4_RESOURCE_TYPES & R4B_MODELLED_TYPES) - RESHAPED_IN_R4B
    assert len(RESOURCE_TYPES) == 126
    for r4b_only in sorted(R4B_ADDED | RESHAPED_IN_R4B):
        assert not is_resource_type(r4b_only), r4b_only
        with pytest.raises(UnknownResourceType) as info:
            parse_resource({"resourceType": r4b_only})
        assert info.value.status == 400 and info.value.expression == "resourceType"
        with pytest.raises(UnknownResourceType) as info:
            parse_resource({"resourceType": r4b_only}, expected_type=r4b_only)
        assert info.value.status == 404
    assert not is_resource_type("MedicinalProduct")  # R4-only: no model to check it with


def test_an_r4b_only_resource_inside_a_bundle_or_contained_is_unknown() -> None:
    for outer in ({"resourceType": "Patient", "contained": [{"resourceType": "Ingredient", "id": "i",
                                                              "status": "active"}]},
                  {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
                      "resourceType": "SubscriptionTopic", "url": "http://x", "status": "active"}}]}):
        with pytest.raises(InvalidResource) as info:
            parse_resource(outer)
        assert str(info.value.expression).endswith(".resourceType")


def test_nan_cannot_be_dumped() -> None:
    with pytest.raises(ValueError):
        dumps_resource({"resourceType": "Observation", "valueQuantity": {"value": math.nan}})


def test_graphql_outputs_beside_the_examples_are_not_resources() -> None:
    """The `*.json.out` files are FHIR GraphQL results (no resourceType); they are refused, cleanly."""
    outputs = sorted(EXAMPLES.glob("*.json.out"))
    assert len(outputs) >= 10
    for path in outputs:
        with pytest.raises((InvalidResource, MalformedJson)):
            parse_resource(path.read_bytes())


def test_deep_nesting_is_refused_before_any_recursion() -> None:
    """Every path into validation (API, NDJSON import, bundles) refuses absurd nesting with a clean error."""
    from fhir_adapters.errors import MalformedJson
    from fhir_adapters.validation import MAX_JSON_DEPTH, parse_resource

    deep: dict = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(5000):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    with pytest.raises(MalformedJson, match=str(MAX_JSON_DEPTH)):
        parse_resource({"resourceType": "Patient", "extension": [deep]})
