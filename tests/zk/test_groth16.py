"""Groth16 verifier: snarkjs CLI interop, tampering, malformed input, fast pairing vs py_ecc reference."""

from __future__ import annotations

import json
import random
import secrets
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.fields import optimized_bn128_FQ12 as FQ12
from py_ecc.optimized_bn128.optimized_curve import G1, G2, add, multiply, normalize
from py_ecc.optimized_bn128.optimized_pairing import final_exponentiate, pairing
from support import ROOT, node_tool
from zk_points import g1_point, g2_point, twist_point_outside_g2

from zk.errors import MalformedInput
from zk.field import Q, R
from zk.groth16 import (
    g1_linear_combination,
    g2_in_subgroup,
    g2_in_subgroup_by_order,
    verify,
    verify_reference,
)
from zk.pairing import (
    FQ12_ONE,
    final_exponentiation,
    final_exponentiation_slow,
    fq12_frobenius,
    fq12_inv,
    fq12_mul,
    miller_loop,
    pairing_product_is_one,
    prepare_g2,
)
from zk.poseidon import poseidon
from zk.snarkjs_io import (
    Proof,
    VerificationKey,
    format_solidity_calldata,
    load_proof,
    load_public_signals,
    load_verification_key,
    solidity_calldata,
)

INTEROP = ROOT / "tests" / "vectors" / "zk" / "interop"


@pytest.fixture(scope="module")
def interop() -> tuple[VerificationKey, Proof, list[int]]:
    return (
        load_verification_key(INTEROP / "verification_key.json"),
        load_proof(INTEROP / "proof.json"),
        load_public_signals(INTEROP / "public.json"),
    )


def _fq12(f: tuple[int, ...]) -> FQ12:
    return FQ12(list(f))


def _ints(f: FQ12) -> tuple[int, ...]:
    return tuple(int(c) % Q for c in f.coeffs)


def _neg(p: tuple[int, int]) -> tuple[int, int]:
    return p[0], (-p[1]) % Q


# -- snarkjs CLI interop --------------------------------------------------------------------------------------
def test_snarkjs_cli_proof_verifies(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    vk, proof, public = interop
    assert vk.n_public == 3 and len(public) == 3
    assert verify(vk, proof, public)


def test_committed_public_commitment_is_our_poseidon(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    inputs = json.loads((INTEROP / "input.json").read_text())
    _, _, public = interop
    assert public[0] == poseidon([int(inputs["secret"]), int(inputs["value"]), int(inputs["salt"])])
    assert public[1:] == [int(inputs["salt"]), int(inputs["max_value"])]


def test_reference_verifier_agrees_on_interop(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    vk, proof, public = interop
    assert verify_reference(vk, proof, public)
    bad = [public[0], public[1], (public[2] + 1) % R]
    assert not verify_reference(vk, proof, bad)
    assert not verify(vk, proof, bad)


@pytest.mark.parametrize("i", range(3))
def test_every_public_signal_changed_is_rejected(interop: tuple[VerificationKey, Proof, list[int]], i: int) -> None:
    vk, proof, public = interop
    for delta in (1, R - 1):
        changed = list(public)
        changed[i] = (changed[i] + delta) % R
        assert not verify(vk, proof, changed)


def test_changed_proof_points_are_rejected(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    vk, proof, public = interop
    assert proof.a is not None and proof.b is not None and proof.c is not None
    g = g1_point(1)
    a_plus_g = g1_linear_combination([proof.a, g], [1, 1])
    c_plus_g = g1_linear_combination([proof.c, g], [1, 1])
    variants = {
        "A + G": replace(proof, a=a_plus_g),
        "-A": replace(proof, a=_neg(proof.a)),
        "C + G": replace(proof, c=c_plus_g),
        "A <-> C": replace(proof, a=proof.c, c=proof.a),
        "B = G2": replace(proof, b=g2_point(1)),
        "B = delta": replace(proof, b=vk.delta2),
        "A = G": replace(proof, a=g),
        "A at infinity": replace(proof, a=None),
        "C at infinity": replace(proof, c=None),
    }
    for name, tampered in variants.items():
        assert not verify(vk, tampered, public), name


@pytest.mark.parametrize("field", ["a", "b", "c"])
@pytest.mark.parametrize("coord", [0, 1])
def test_each_coordinate_changed_is_malformed(
    interop: tuple[VerificationKey, Proof, list[int]], field: str, coord: int
) -> None:
    vk, proof, public = interop
    point = getattr(proof, field)
    if field == "b":
        fq2 = list(point[coord])
        fq2[coord] = (fq2[coord] + 1) % Q
        moved = tuple(tuple(fq2) if k == coord else point[k] for k in range(2))
    else:
        moved = tuple((v + 1) % Q if k == coord else v for k, v in enumerate(point))
    with pytest.raises(MalformedInput, match=f"proof.pi_{field}: point is not on"):
        verify(vk, replace(proof, **{field: moved}), public)
    # the same change in the JSON file is caught by the parser
    data = json.loads((INTEROP / "proof.json").read_text())
    entry = data[f"pi_{field}"][coord]
    if field == "b":
        entry[coord] = str((int(entry[coord]) + 1) % Q)
    else:
        data[f"pi_{field}"][coord] = str((int(entry) + 1) % Q)
    with pytest.raises(MalformedInput, match=f"proof.pi_{field}"):
        load_proof(data)


def test_b_outside_g2_subgroup_is_malformed(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    vk, proof, public = interop
    outside = twist_point_outside_g2()
    assert not g2_in_subgroup(outside)
    with pytest.raises(MalformedInput, match="proof.pi_b: point is not in the G2 subgroup"):
        verify(vk, replace(proof, b=outside), public)
    with pytest.raises(MalformedInput, match="vk_delta_2: point is not in the G2 subgroup"):
        verify(replace(vk, delta2=outside), proof, public)
    with pytest.raises(MalformedInput, match="G2 subgroup"):
        verify_reference(vk, replace(proof, b=outside), public)


def test_wrong_verification_key_is_rejected(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    vk, proof, public = interop
    assert vk.ic[1] is not None
    wrong_ic = g1_linear_combination([vk.ic[1], g1_point(1)], [1, 1])
    variants = {
        "gamma <-> delta": replace(vk, gamma2=vk.delta2, delta2=vk.gamma2),
        "IC[1] moved": replace(vk, ic=(vk.ic[0], wrong_ic, *vk.ic[2:])),
        "alpha = G": replace(vk, alpha1=g1_point(1)),
        "beta = G2": replace(vk, beta2=g2_point(1)),
    }
    for name, wrong in variants.items():
        assert not verify(wrong, proof, public), name


def test_public_signal_count_and_range(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    vk, proof, public = interop
    with pytest.raises(MalformedInput, match="expects 3, got 2"):
        verify(vk, proof, public[:2])
    with pytest.raises(MalformedInput, match="expects 3, got 4"):
        verify(vk, proof, [*public, 0])
    with pytest.raises(MalformedInput, match="public signal 1"):
        verify(vk, proof, [public[0], public[1] + R, public[2]])
    with pytest.raises(MalformedInput, match="public signal 2"):
        load_public_signals([str(s) for s in public[:2]] + [str(R)])


def test_calldata_matches_snarkjs_export(interop: tuple[VerificationKey, Proof, list[int]]) -> None:
    _, proof, public = interop
    text = format_solidity_calldata(solidity_calldata(proof, public))
    assert text == (INTEROP / "soliditycalldata.txt").read_text().strip()


# -- fresh proofs from the snarkjs CLI ----------------------------------------------------------------------------
@pytest.mark.node
def test_fresh_snarkjs_proof_verifies_and_calldata_matches(tmp_path: Path) -> None:
    snarkjs = node_tool("snarkjs")
    secret, value, salt, max_value = secrets.randbelow(R), secrets.randbelow(1000), secrets.randbelow(R), 1000
    (tmp_path / "input.json").write_text(json.dumps(
        {"secret": str(secret), "value": str(value), "salt": str(salt), "max_value": str(max_value)}
    ))
    subprocess.run(
        [str(snarkjs), "groth16", "fullprove", "input.json", str(INTEROP / "preimage_range.wasm"),
         str(INTEROP / "preimage_range_final.zkey"), "proof.json", "public.json"],
        cwd=tmp_path, check=True, capture_output=True, timeout=120,
    )
    vk = load_verification_key(INTEROP / "verification_key.json")
    proof, public = load_proof(tmp_path / "proof.json"), load_public_signals(tmp_path / "public.json")
    assert public == [poseidon([secret, value, salt]), salt, max_value]
    assert verify(vk, proof, public)
    assert not verify(vk, proof, [public[0], public[1], max_value + 1])
    exported = subprocess.run(
        [str(snarkjs), "zkey", "export", "soliditycalldata", "public.json", "proof.json"],
        cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120,
    ).stdout.strip()
    assert format_solidity_calldata(solidity_calldata(proof, public)) == exported


@pytest.mark.node
def test_committed_vkey_matches_committed_zkey(tmp_path: Path) -> None:
    snarkjs = node_tool("snarkjs")
    subprocess.run(
        [str(snarkjs), "zkey", "export", "verificationkey", str(INTEROP / "preimage_range_final.zkey"), "vk.json"],
        cwd=tmp_path, check=True, capture_output=True, timeout=120,
    )
    assert json.loads((tmp_path / "vk.json").read_text()) == json.loads(
        (INTEROP / "verification_key.json").read_text()
    )


# -- the fast pairing against py_ecc -------------------------------------------------------------------------------
def test_fq12_arithmetic_matches_py_ecc() -> None:
    rng = random.Random(5)
    for _ in range(5):
        a = tuple(rng.randrange(Q) for _ in range(12))
        b = tuple(rng.randrange(Q) for _ in range(12))
        assert fq12_mul(a, b) == _ints(_fq12(a) * _fq12(b))
        assert fq12_mul(fq12_inv(a), a) == FQ12_ONE
    a = tuple(rng.randrange(Q) for _ in range(12))
    assert fq12_frobenius(a) == _ints(_fq12(a) ** Q)
    assert fq12_frobenius(a, 2) == fq12_frobenius(fq12_frobenius(a))


@settings(max_examples=3, deadline=None)
@given(st.lists(st.integers(0, Q - 1), min_size=12, max_size=12))
def test_final_exponentiation_matches_py_ecc(coeffs: list[int]) -> None:
    f = tuple(coeffs)
    if not any(f):
        return
    expected = _ints(final_exponentiate(_fq12(f)))
    assert final_exponentiation(f) == expected
    assert final_exponentiation_slow(f) == expected


@settings(max_examples=3, deadline=None)
@given(st.integers(1, R - 1), st.integers(1, R - 1))
def test_pairing_matches_py_ecc_on_random_points(a: int, b: int) -> None:
    ours = final_exponentiation(miller_loop([(g1_point(a), prepare_g2(g2_point(b)))]))
    py_ml = pairing(multiply(G2, b), multiply(G1, a), final_exponentiate=False)
    assert ours == _ints(final_exponentiate(py_ml))


def test_pairing_matches_py_ecc_pairing() -> None:
    p, q = g1_point(123456789), g2_point(987654321)
    ours = final_exponentiation(miller_loop([(p, prepare_g2(q))]))
    ref = pairing(multiply(G2, 987654321), multiply(G1, 123456789))
    assert ours == _ints(ref)
    assert ours != FQ12_ONE
    # the Miller loop of a product of pairs equals the product of single loops
    q2 = g2_point(5)
    both = miller_loop([(p, prepare_g2(q)), (g1_point(7), prepare_g2(q2))])
    apart = fq12_mul(miller_loop([(p, prepare_g2(q))]), miller_loop([(g1_point(7), prepare_g2(q2))]))
    assert final_exponentiation(both) == final_exponentiation(apart)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, R - 1), st.integers(1, R - 1))
def test_bilinearity(a: int, b: int) -> None:
    # e(aP, bQ) * e(-abP, Q) == 1, and a wrong exponent breaks it
    ab = a * b % R
    q, bq = g2_point(1), g2_point(b)
    assert pairing_product_is_one([(g1_point(a), prepare_g2(bq)), (_neg(g1_point(ab)), prepare_g2(q))])
    assert not pairing_product_is_one(
        [(g1_point(a), prepare_g2(bq)), (_neg(g1_point((ab + 1) % R or 1)), prepare_g2(q))]
    )


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**64), st.integers(0, R - 1)), min_size=1, max_size=4))
def test_g1_linear_combination_matches_py_ecc(terms: list[tuple[int, int]]) -> None:
    points = [g1_point(k) for k, _ in terms]
    scalars = [s for _, s in terms]
    expected = None
    for (k, s) in terms:
        expected = add(expected, multiply(G1, k * s % R)) if expected is not None else multiply(G1, k * s % R)
    assert expected is not None
    norm = normalize(expected) if expected[2] != expected[2].zero() else None
    ours = g1_linear_combination(points, scalars)
    assert ours == (None if norm is None else (int(norm[0]), int(norm[1])))


def test_g2_subgroup_check() -> None:
    assert g2_in_subgroup(g2_point(1)) and g2_in_subgroup(g2_point(R - 5))
    assert not g2_in_subgroup(twist_point_outside_g2(7))


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, R - 1))
def test_endomorphism_subgroup_check_equals_order_check(seed: int, k: int) -> None:
    outside = twist_point_outside_g2(seed)
    assert g2_in_subgroup(outside) == g2_in_subgroup_by_order(outside) is False
    inside = g2_point(k)
    assert g2_in_subgroup(inside) == g2_in_subgroup_by_order(inside) is True
