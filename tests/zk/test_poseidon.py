"""Poseidon against circomlibjs: committed vectors, fresh vectors from Node, and properties."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT, node_tool

from zk.errors import MalformedInput
from zk.field import R, to_field
from zk.poseidon import (
    CONSTANTS_FILE,
    CONSTANTS_SHA256,
    MAX_INPUTS,
    OPT_CONSTANTS_FILE,
    OPT_CONSTANTS_SHA256,
    _permutation_generic,
    _permutation_sparse,
    hash2,
    poseidon,
)

VECTORS = ROOT / "tests" / "vectors" / "zk"


def _check_cases(cases: list[dict[str, object]]) -> int:
    for case in cases:
        inputs = [int(x) for x in case["inputs"]]  # type: ignore[union-attr]
        assert poseidon(inputs) == int(case["output"]), f"arity {len(inputs)}"  # type: ignore[call-overload]
    return len(cases)


def test_known_value_from_circomlib() -> None:
    assert poseidon([1, 2]) == 7853200120776062878684798364095072458815029376092732009249414926327459813530
    assert hash2(1, 2) == poseidon([1, 2])


def test_committed_circomlibjs_vectors_every_arity() -> None:
    data = json.loads((VECTORS / "poseidon_circomlibjs.json").read_text())
    assert "circomlibjs" in data["source"]
    arities = {len(c["inputs"]) for c in data["cases"]}
    assert arities == set(range(1, MAX_INPUTS + 1))
    assert _check_cases(data["cases"]) >= 100


def test_embedded_constants_files_are_untouched() -> None:
    assert hashlib.sha256(CONSTANTS_FILE.read_bytes()).hexdigest() == CONSTANTS_SHA256
    assert hashlib.sha256(OPT_CONSTANTS_FILE.read_bytes()).hexdigest() == OPT_CONSTANTS_SHA256


@pytest.mark.node
def test_embedded_constants_equal_circomlibjs_package() -> None:
    node_tool("snarkjs")  # node_modules must be installed
    src = ROOT / "node_modules" / "circomlibjs" / "src"
    assert (src / "poseidon_constants.json").read_bytes() == CONSTANTS_FILE.read_bytes()
    assert (src / "poseidon_constants_opt.json").read_bytes() == OPT_CONSTANTS_FILE.read_bytes()


@pytest.mark.node
def test_fresh_random_vectors_from_circomlibjs() -> None:
    node_tool("snarkjs")
    out = subprocess.run(
        ["node", str(VECTORS / "gen_poseidon.mjs"), "1"], capture_output=True, text=True, timeout=120, check=True
    )
    cases = json.loads(out.stdout)["cases"]
    assert _check_cases(cases) == MAX_INPUTS * 4


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(), min_size=1, max_size=4))
def test_reduced_inputs_are_accepted_and_deterministic(raw: list[int]) -> None:
    inputs = [to_field(x) for x in raw]
    h = poseidon(inputs)
    assert 0 <= h < R
    assert poseidon(list(inputs)) == h


@settings(max_examples=15, deadline=None)
@given(st.integers(0, R - 1), st.integers(0, R - 1))
def test_order_and_arity_matter(a: int, b: int) -> None:
    if a != b:
        assert poseidon([a, b]) != poseidon([b, a])
    assert poseidon([a]) != poseidon([a, 0])


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, R - 1), min_size=1, max_size=3), st.integers(0, 2), st.integers(R, 2**256))
def test_out_of_range_input_is_rejected(inputs: list[int], pos: int, bad: int) -> None:
    pos %= len(inputs)
    inputs[pos] = bad
    with pytest.raises(MalformedInput, match=f"input {pos}"):
        poseidon(inputs)


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1", None])
def test_non_field_values_are_rejected(bad: object) -> None:
    with pytest.raises(MalformedInput, match="input 1"):
        poseidon([1, bad])  # type: ignore[list-item]


@pytest.mark.parametrize("n", [0, MAX_INPUTS + 1])
def test_arity_bounds(n: int) -> None:
    with pytest.raises(MalformedInput, match="1 to 16 inputs"):
        poseidon([0] * n)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, R - 1), st.integers(0, R - 1))
def test_unrolled_width3_equals_generic_permutation(a: int, b: int) -> None:
    assert poseidon([a, b]) == _permutation_generic([a, b])


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, R - 1), min_size=1, max_size=MAX_INPUTS))
def test_sparse_form_equals_generic_permutation(inputs: list[int]) -> None:
    assert _permutation_sparse(inputs) == _permutation_generic(inputs)
