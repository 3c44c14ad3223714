"""Groth16 verification on BN254, independent of snarkjs (Groth, "On the Size of Pairing-based
Non-interactive Arguments", EUROCRYPT 2016, section 3.2).

Accept iff e(A, B) = e(alpha, beta) * e(vk_x, gamma) * e(C, delta) with vk_x = IC[0] + sum s_i IC[i+1],
checked as one product e(-A, B) e(alpha, beta) e(vk_x, gamma) e(C, delta) = 1: a shared Miller loop
(`zk.pairing`) and a single final exponentiation. The verification key's G2 lines and the Miller value
of (alpha, beta) are computed once per key. Malformed input (points off the curve or outside the
subgroup, signals >= R, wrong signal count) raises MalformedInput; a well-formed wrong proof returns False.
`verify_reference` is the plain py_ecc computation, kept for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from zk.errors import MalformedInput
from zk.field import BN_U, Q, R
from zk.pairing import (
    FQ12_ONE,
    Fq2,
    Fq12,
    G1Affine,
    G2Affine,
    PreparedG2,
    final_exponentiation,
    fq2_inv,
    fq2_mul,
    fq2_sq,
    fq2_sub,
    fq12_mul,
    g1_on_curve,
    g2_on_curve,
    miller_loop,
    prepare_g2,
    twist_frobenius,
)
from zk.snarkjs_io import G1Point, G2Point, Proof, VerificationKey

# -- G1 in Jacobian coordinates (X/Z^2, Y/Z^3) over F_q; y^2 = x^3 + 3, a = 0 ------------------------------
Jacobian = tuple[int, int, int]  # Z == 0 is infinity
_INF: Jacobian = (1, 1, 0)


def _jac_double(p: Jacobian) -> Jacobian:
    # EFD "dbl-2009-l" for a = 0.
    x, y, z = p
    if z == 0 or y == 0:
        return _INF
    a = x * x % Q
    b = y * y % Q
    c = b * b % Q
    d = 2 * ((x + b) ** 2 - a - c) % Q
    e = 3 * a
    f = e * e % Q
    x3 = (f - 2 * d) % Q
    return x3, (e * (d - x3) - 8 * c) % Q, 2 * y * z % Q


def _jac_add_affine(p: Jacobian, q: G1Affine) -> Jacobian:
    # EFD "madd-2007-bl" (mixed addition, q has Z = 1).
    x1, y1, z1 = p
    if z1 == 0:
        return q[0], q[1], 1
    x2, y2 = q
    z1z1 = z1 * z1 % Q
    u2 = x2 * z1z1 % Q
    s2 = y2 * z1 * z1z1 % Q
    h = (u2 - x1) % Q
    rr = 2 * (s2 - y1) % Q
    if h == 0:
        return _jac_double(p) if rr == 0 else _INF
    hh = h * h % Q
    i = 4 * hh
    j = h * i
    v = x1 * i
    x3 = (rr * rr - j - 2 * v) % Q
    y3 = (rr * (v - x3) - 2 * y1 * j) % Q
    z3 = ((z1 + h) ** 2 - z1z1 - hh) % Q
    return x3, y3, z3


def _to_affine(p: Jacobian) -> G1Point:
    x, y, z = p
    if z == 0:
        return None
    zi = pow(z, -1, Q)
    zi2 = zi * zi % Q
    return x * zi2 % Q, y * zi2 * zi % Q


def g1_linear_combination(points: Sequence[G1Point], scalars: Sequence[int]) -> G1Point:
    """sum scalars[i] * points[i] by interleaved double-and-add (Straus), sharing the doublings."""
    terms = [(p, s) for p, s in zip(points, scalars, strict=True) if p is not None and s]
    acc = _INF
    for bit in range(max((s.bit_length() for _, s in terms), default=0) - 1, -1, -1):
        acc = _jac_double(acc)
        for p, s in terms:
            if (s >> bit) & 1:
                acc = _jac_add_affine(acc, p)
    return _to_affine(acc)


# -- G2 subgroup check: [r]Q = O, affine double-and-add over F_q2 -------------------------------------------
def _g2_add(p: G2Point, q: G2Point) -> G2Point:
    if p is None:
        return q
    if q is None:
        return p
    (x1, y1), (x2, y2) = p, q
    if x1 == x2:
        if y1 != y2 or y1 == (0, 0):
            return None
        x_sq = fq2_sq(x1)
        lam: Fq2 = fq2_mul((3 * x_sq[0] % Q, 3 * x_sq[1] % Q), fq2_inv((2 * y1[0] % Q, 2 * y1[1] % Q)))
    else:
        lam = fq2_mul(fq2_sub(y2, y1), fq2_inv(fq2_sub(x2, x1)))
    x3 = fq2_sub(fq2_sub(fq2_sq(lam), x1), x2)
    return x3, fq2_sub(fq2_mul(lam, fq2_sub(x1, x3)), y1)


def g2_multiply(p: G2Point, k: int) -> G2Point:
    result: G2Point = None
    for bit in bin(k)[2:]:
        result = _g2_add(result, result)
        if bit == "1":
            result = _g2_add(result, p)
    return result


def g2_in_subgroup_by_order(p: G2Affine) -> bool:
    """Q in the order-r subgroup of the twist (which has a large cofactor): [r]Q is the point at infinity."""
    return g2_multiply(p, R) is None


# On G2 the untwist-Frobenius-twist endomorphism psi acts as [q] = [6u^2] (q - r = 6u^2), and for BN curves
# psi(Q) = [6u^2]Q holds only on G2 (El Housni, Guillevic, Piellard, "Co-factor clearing and subgroup
# membership testing on pairing-friendly curves", AFRICACRYPT 2022, section 4.2; Scott, eprint 2021/1130).
# A 128-bit scalar instead of the 254-bit r; tests hold it equal to the [r]Q check.
PSI_EIGENVALUE = 6 * BN_U * BN_U
if Q - R != PSI_EIGENVALUE:
    raise ValueError("q - r should equal 6u^2")


def g2_in_subgroup(p: G2Affine) -> bool:
    """Q (on the twist) is in G2: psi(Q) == [6u^2]Q."""
    return twist_frobenius(p) == g2_multiply(p, PSI_EIGENVALUE)


# -- verification --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedVerificationKey:
    """A checked verification key with its pairing precomputation."""

    vk: VerificationKey
    alpha_beta_miller: Fq12  # Miller loop value of e(alpha, beta)
    gamma_lines: PreparedG2 | None
    delta_lines: PreparedG2 | None


def _check_g1(p: G1Point, name: str) -> None:
    if p is not None and not g1_on_curve(p):  # cofactor 1: on the curve means in G1
        raise MalformedInput(f"{name}: point is not on the BN254 curve")


def _check_g2(p: G2Point, name: str) -> None:
    if p is None:
        return
    if not g2_on_curve(p):
        raise MalformedInput(f"{name}: point is not on the BN254 twist curve")
    if not g2_in_subgroup(p):
        raise MalformedInput(f"{name}: point is not in the G2 subgroup")


@lru_cache(maxsize=16)
def prepare_verification_key(vk: VerificationKey) -> PreparedVerificationKey:
    """Check every point of `vk` (curve, G2 subgroup) and precompute its pairing lines (cached per key)."""
    if len(vk.ic) != vk.n_public + 1:
        raise MalformedInput("verification key: IC must hold nPublic + 1 points")
    _check_g1(vk.alpha1, "verification key.vk_alpha_1")
    for i, p in enumerate(vk.ic):
        _check_g1(p, f"verification key.IC[{i}]")
    for name, p2 in (("vk_beta_2", vk.beta2), ("vk_gamma_2", vk.gamma2), ("vk_delta_2", vk.delta2)):
        _check_g2(p2, f"verification key.{name}")
    alpha_beta = FQ12_ONE
    if vk.alpha1 is not None and vk.beta2 is not None:
        alpha_beta = miller_loop([(vk.alpha1, prepare_g2(vk.beta2))])
    return PreparedVerificationKey(
        vk=vk,
        alpha_beta_miller=alpha_beta,
        gamma_lines=None if vk.gamma2 is None else prepare_g2(vk.gamma2),
        delta_lines=None if vk.delta2 is None else prepare_g2(vk.delta2),
    )


def _check_public_signals(vk: VerificationKey, public_signals: Sequence[int]) -> None:
    if len(public_signals) != vk.n_public:
        raise MalformedInput(
            f"public signals: the verification key expects {vk.n_public}, got {len(public_signals)}"
        )
    for i, s in enumerate(public_signals):
        if type(s) is not int or not 0 <= s < R:
            raise MalformedInput(f"public signal {i}: not a field element in [0, R)")


def _neg_g1(p: G1Point) -> G1Point:
    return None if p is None else (p[0], (-p[1]) % Q)


def verify(vk: VerificationKey | PreparedVerificationKey, proof: Proof, public_signals: Sequence[int]) -> bool:
    """True iff `proof` is a valid Groth16 proof for `public_signals` under `vk`.

    Raises MalformedInput for a malformed key, proof or signals; returns False for a wrong proof.
    """
    prepared = vk if isinstance(vk, PreparedVerificationKey) else prepare_verification_key(vk)
    key = prepared.vk
    _check_public_signals(key, public_signals)
    _check_g1(proof.a, "proof.pi_a")
    _check_g1(proof.c, "proof.pi_c")
    _check_g2(proof.b, "proof.pi_b")
    vk_x = g1_linear_combination(key.ic, [1, *public_signals])
    pairs: list[tuple[G1Point, PreparedG2]] = []
    if proof.b is not None:
        try:
            lines_b = prepare_g2(proof.b)
        except ValueError:  # unreachable for a point of G2 (checked above); never let it escape as a crash
            raise MalformedInput("proof.pi_b: degenerate point") from None
        pairs.append((_neg_g1(proof.a), lines_b))
    if prepared.gamma_lines is not None:
        pairs.append((vk_x, prepared.gamma_lines))
    if prepared.delta_lines is not None:
        pairs.append((proof.c, prepared.delta_lines))
    f = fq12_mul(miller_loop(pairs), prepared.alpha_beta_miller)
    return final_exponentiation(f) == FQ12_ONE


def verify_reference(vk: VerificationKey, proof: Proof, public_signals: Sequence[int]) -> bool:
    """Slow reference: py_ecc's own pairings (four Miller loops, one final exponentiation). Tests only."""
    import zk.recursion_limit  # noqa: F401  -- first: puts back the recursion limit py_ecc's import raises

    # isort: split
    from py_ecc.fields import optimized_bn128_FQ as FQ
    from py_ecc.fields import optimized_bn128_FQ2 as FQ2
    from py_ecc.fields import optimized_bn128_FQ12 as FQ12
    from py_ecc.optimized_bn128.optimized_curve import add, curve_order, multiply, neg
    from py_ecc.optimized_bn128.optimized_pairing import final_exponentiate, pairing

    _check_public_signals(vk, public_signals)

    def g1(p: G1Point) -> tuple[FQ, FQ, FQ]:
        return (FQ(1), FQ(1), FQ(0)) if p is None else (FQ(p[0]), FQ(p[1]), FQ(1))

    def g2(p: G2Point, name: str) -> tuple[FQ2, FQ2, FQ2]:
        if p is None:
            return (FQ2([1, 0]), FQ2([1, 0]), FQ2([0, 0]))
        point = (FQ2(list(p[0])), FQ2(list(p[1])), FQ2([1, 0]))
        if multiply(point, curve_order)[2] != FQ2([0, 0]):
            raise MalformedInput(f"{name}: point is not in the G2 subgroup")
        return point

    try:
        vk_x = g1(vk.ic[0])
        for s, p in zip(public_signals, vk.ic[1:], strict=True):
            vk_x = add(vk_x, multiply(g1(p), s))
        f = (
            pairing(g2(proof.b, "proof.pi_b"), neg(g1(proof.a)), final_exponentiate=False)
            * pairing(g2(vk.beta2, "vk_beta_2"), g1(vk.alpha1), final_exponentiate=False)
            * pairing(g2(vk.gamma2, "vk_gamma_2"), vk_x, final_exponentiate=False)
            * pairing(g2(vk.delta2, "vk_delta_2"), g1(proof.c), final_exponentiate=False)
        )
    except ValueError as exc:  # py_ecc raises ValueError for points off the curve
        if isinstance(exc, MalformedInput):
            raise
        raise MalformedInput("point is not on the curve") from None
    return bool(final_exponentiate(f) == FQ12.one())
