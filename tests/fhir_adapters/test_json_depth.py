"""The nesting scan of JSON text (no parsing, no recursion) against a byte-by-byte reference and the parser."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapters.errors import MalformedJson
from fhir_adapters.validation import MAX_JSON_DEPTH, check_json_text_nesting, json_text_depth, loads_json


def reference_depth(text: bytes) -> int:
    """RFC 8259 read one byte at a time: quotes delimit strings, a backslash in a string takes the next byte.

    A backslash outside a string is not JSON: a parser stops there, and so does the reference.
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte == ord("\\"):
            break
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def value_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(value_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(value_depth, value), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\ab/é\n'), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TRICKY_TEXT, children, max_size=3),
    max_leaves=30,
)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"", 0), (b"1", 0), (b"[]", 1), (b"{}", 1), (b'{"a":[{"b":[]}]}', 4),
        (b'"[[[{{{"', 0),                        # brackets inside a string
        (b'["\\"[", [1]]', 2),                    # an escaped quote does not end the string
        (b'["\\\\", [1]]', 2),                    # an escaped backslash does not escape the quote
        (b'["\\\\\\"[", []]', 2),                 # three backslashes: backslash, then an escaped quote
        (b'["abc[[[[', 1),                        # an unterminated string runs to the end
        (b'"abc\\', 0),                           # ... even when it ends in a lone backslash
        ('["é[", {"ü": ["{"]}]'.encode(), 3),     # UTF-8 bytes never look like brackets or quotes
        (b'{"a":"]]]]]]"}' * 3, 1),
    ],
)
def test_depth_of_known_texts(text: bytes, depth: int) -> None:
    assert json_text_depth(text) == depth == reference_depth(text)
    assert json_text_depth(text.decode("utf-8", "surrogateescape")) == depth


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
def test_valid_json_matches_the_reference_and_the_parsed_value(value: Any, indent: int | None, ascii_only: bool) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    assert json_text_depth(text) == reference_depth(text) == value_depth(value)


@settings(max_examples=400, deadline=None)
@given(text=st.binary(max_size=40) | st.text(alphabet=st.sampled_from('[]{}"\\a,:'), max_size=40).map(str.encode))
def test_any_text_reads_at_least_as_deep_as_a_parser_gets(text: bytes) -> None:
    """Garbage gets a depth too; never less than the reference, which stops where a parser must stop."""
    assert json_text_depth(text) >= reference_depth(text)
    if b"\\" not in text:
        assert json_text_depth(text) == reference_depth(text)


@pytest.mark.parametrize("levels", [10**5, 10**6])
@pytest.mark.parametrize("shape", ["arrays", "objects", "unbalanced"])
def test_deep_text_is_refused_before_parsing(levels: int, shape: str) -> None:
    text = {
        "arrays": b"[" * levels + b"]" * levels,
        "objects": b'{"a":' * levels + b"1" + b"}" * levels,
        "unbalanced": b"[" * levels,
    }[shape]
    started = time.perf_counter()
    with pytest.raises(MalformedJson, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        loads_json(text)
    with pytest.raises(MalformedJson):
        loads_json(text.decode())
    assert time.perf_counter() - started < 5  # linear C-speed scans (about 0.1 s here)
    assert json_text_depth(text) == levels


@pytest.mark.parametrize("levels", [10**5, 10**6])
def test_brackets_in_a_string_are_not_nesting(levels: int) -> None:
    text = b'{"family": "' + b"[{" * levels + b'\\"]}' + b'", "given": ["\\\\"]}'
    assert json_text_depth(text) == 2
    parsed = loads_json(text)
    assert parsed["family"].startswith("[{[{") and parsed["given"] == ["\\"]


def test_the_limit_is_inclusive() -> None:
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    check_json_text_nesting(at_limit)
    assert value_depth(loads_json(at_limit)) == MAX_JSON_DEPTH
    with pytest.raises(MalformedJson):
        check_json_text_nesting(b"[" + at_limit + b"]")
    # Many brackets side by side are not deep.
    check_json_text_nesting(b"[" + b"[]," * 10**5 + b"[]]")
