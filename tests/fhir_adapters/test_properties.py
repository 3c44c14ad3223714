"""Property tests: the parsers of resources, NDJSON and Bundles only ever raise FhirInputError.

The search properties are in tests/fhir_adapters/search/ (test_invariant.py, test_query.py, test_dates.py).
"""

from __future__ import annotations

import json
from typing import Any

from fhir_strategies import FIELD_NAMES, SETTINGS, fhirish, json_values
from hypothesis import given
from hypothesis import strategies as st

from fhir_adapters.bundles import BundlePlan, plan_bundle, read_ndjson
from fhir_adapters.errors import FhirInputError
from fhir_adapters.validation import parse_resource


@SETTINGS
@given(json_values | fhirish | st.dictionaries(st.sampled_from(FIELD_NAMES), fhirish, max_size=6))
def test_parse_resource_on_hostile_json(value: Any) -> None:
    for raw in (value, json.dumps(value)):
        try:
            result = parse_resource(raw)
        except FhirInputError as exc:
            assert exc.message and 400 <= exc.status < 500
        else:
            assert isinstance(result, dict)


@SETTINGS
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_parse_resource_on_hostile_bytes(raw: bytes) -> None:
    try:
        parse_resource(raw)
    except FhirInputError as exc:
        assert exc.message


@SETTINGS
@given(st.lists(st.binary(max_size=30) | st.text(max_size=30) | json_values.map(json.dumps), max_size=6))
def test_read_ndjson_yields_a_result_per_non_blank_line(lines: list[Any]) -> None:
    results = list(read_ndjson(lines))
    for line_no, item in results:
        assert 1 <= line_no <= len(lines)
        assert isinstance(item, dict | FhirInputError)
    assert [n for n, _ in results] == sorted({n for n, _ in results})


@SETTINGS
@given(
    st.fixed_dictionaries(
        {"resourceType": st.just("Bundle"), "type": st.sampled_from(["batch", "transaction", "collection"])},
        optional={
            "entry": st.lists(
                st.dictionaries(
                    st.sampled_from(["fullUrl", "resource", "request", "search"]),
                    fhirish
                    | st.fixed_dictionaries(
                        {
                            "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "X"]),
                            "url": st.sampled_from(
                                ["Patient", "Patient/1", "Patient?x=1", "Nope/1", "", "Patient/$op"]
                            ),
                        }
                    ),
                    max_size=3,
                ),
                max_size=4,
            )
        },
    )
)
def test_plan_bundle_on_hostile_bundles(bundle: dict[str, Any]) -> None:
    try:
        plan = plan_bundle(bundle)
    except FhirInputError as exc:
        assert exc.message and exc.status == 400
    else:
        assert isinstance(plan, BundlePlan)
        assert sorted(e.index for e in plan.entries) == list(range(len(bundle.get("entry", []))))
