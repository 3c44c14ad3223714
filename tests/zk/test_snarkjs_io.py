"""snarkjs JSON readers/writers: round trips, malformed files, calldata order."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT
from zk_points import g1_point, g2_point

from zk.errors import MalformedInput
from zk.field import Q, R
from zk.snarkjs_io import (
    Proof,
    VerificationKey,
    load_proof,
    load_public_signals,
    load_verification_key,
    proof_to_json,
    public_signals_to_json,
    solidity_calldata,
    verification_key_to_json,
    write_json,
)

INTEROP = ROOT / "tests" / "vectors" / "zk" / "interop"
VK_JSON: dict[str, Any] = json.loads((INTEROP / "verification_key.json").read_text())
PROOF_JSON: dict[str, Any] = json.loads((INTEROP / "proof.json").read_text())


def test_snarkjs_files_round_trip_exactly(tmp_path: Path) -> None:
    vk = load_verification_key(INTEROP / "verification_key.json")
    assert verification_key_to_json(vk) == VK_JSON
    assert list(verification_key_to_json(vk)) == list(VK_JSON)  # same field order as snarkjs
    assert proof_to_json(load_proof(INTEROP / "proof.json")) == PROOF_JSON
    public = json.loads((INTEROP / "public.json").read_text())
    assert public_signals_to_json(load_public_signals(INTEROP / "public.json")) == public
    write_json(tmp_path / "vk.json", verification_key_to_json(vk))
    assert load_verification_key(tmp_path / "vk.json") == vk


@settings(max_examples=10, deadline=None)
@given(st.integers(1, R - 1), st.integers(1, R - 1), st.integers(1, R - 1),
       st.lists(st.integers(0, R - 1), max_size=5))
def test_generated_objects_round_trip(a: int, b: int, c: int, signals: list[int]) -> None:
    proof = Proof(a=g1_point(a), b=g2_point(b), c=g1_point(c))
    assert load_proof(json.loads(json.dumps(proof_to_json(proof)))) == proof
    assert load_public_signals(json.loads(json.dumps(public_signals_to_json(signals)))) == signals


def test_points_at_infinity_round_trip() -> None:
    proof = Proof(a=None, b=None, c=g1_point(3))
    assert proof_to_json(proof)["pi_a"] == ["0", "1", "0"]
    assert load_proof(proof_to_json(proof)) == proof
    vk = VerificationKey(1, g1_point(1), g2_point(2), g2_point(3), None, (g1_point(4), None))
    assert load_verification_key(verification_key_to_json(vk)) == vk


def test_calldata_orders_g2_as_c1_c0() -> None:
    b = g2_point(5)
    proof = Proof(a=g1_point(2), b=b, c=g1_point(3))
    a, cb, c, inputs = solidity_calldata(proof, [7, 8])
    assert b is not None
    assert cb == ((b[0][1], b[0][0]), (b[1][1], b[1][0]))
    assert a == g1_point(2) and c == g1_point(3) and inputs == (7, 8)
    with pytest.raises(MalformedInput, match="public signal 0"):
        solidity_calldata(proof, [R])


def _vk(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(VK_JSON)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_vk(protocol="plonk"), "protocol must be groth16"),
        (_vk(curve="bls12381"), "curve must be bn128"),
        (_vk(IC=None), "missing field IC"),
        (_vk(nPublic=2), "IC must hold nPublic"),
        (_vk(nPublic="3"), "nPublic"),
        (_vk(vk_alpha_1=["1", "2"]), "vk_alpha_1: expected a G1 point"),
        (_vk(vk_alpha_1=["1", "3", "1"]), "vk_alpha_1: point is not on the BN254 curve"),
        (_vk(vk_alpha_1=["0x01", "2", "1"]), "vk_alpha_1: expected a decimal"),
        (_vk(vk_alpha_1=[str(Q + 1), "2", "1"]), "vk_alpha_1: value out of range"),
        (_vk(vk_alpha_1=["1", "2", "2"]), "vk_alpha_1: expected affine"),
        (_vk(vk_alpha_1=["5", "1", "0"]), "vk_alpha_1: malformed point at infinity"),
        (_vk(vk_beta_2=[["1", "2"], ["3", "4"], ["1", "0"]]), "vk_beta_2: point is not on the BN254 twist"),
        (_vk(vk_gamma_2=[["1"], ["3", "4"], ["1", "0"]]), "vk_gamma_2: expected an F_q2"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_verification_keys(data: Any, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        load_verification_key(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pi_a": None}, "missing field pi_a"),
        ({"pi_b": [["1", "2"], ["3", "4"]]}, "pi_b: expected a G2 point"),
        ({"pi_c": ["1", "3", "1"]}, "pi_c: point is not on the BN254 curve"),
        ({"pi_c": [1.5, "2", "1"]}, "pi_c: expected a decimal"),
        ({"protocol": "fflonk"}, "protocol must be groth16"),
    ],
)
def test_malformed_proofs(change: dict[str, Any], message: str) -> None:
    data = copy.deepcopy(PROOF_JSON)
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(MalformedInput, match=message):
        load_proof(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": 1}, "expected a JSON list"),
        (["1", "-2"], "public signal 1: expected a decimal"),
        (["1", str(R)], "public signal 1: value out of range"),
        ([None], "public signal 0"),
    ],
)
def test_malformed_public_signals(data: Any, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        load_public_signals(data)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MalformedInput, match="cannot read missing.json"):
        load_proof(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MalformedInput, match="bad.json is not valid JSON"):
        load_verification_key(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MalformedInput, match="not valid JSON"):
        load_public_signals(binary)
