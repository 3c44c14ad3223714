"""Optimal ate pairing product on BN254 over plain ints: a multi-Miller loop and one final exponentiation.

Representations follow py_ecc's `optimized_bn128` so results can be compared with it directly:
- F_q2 = F_q[i]/(i^2 + 1), elements as (c0, c1) = c0 + c1*i;
- F_q12 = F_q[w]/(w^12 - 18 w^6 + 82), elements as 12 coefficients of w^0..w^11. Since (w^6 - 9)^2 = -1,
  E(c0 + c1*i) = (c0 - 9 c1) + c1 w^6 embeds F_q2, and a G2 point (X, Y) on the twist
  y^2 = x^3 + 3/(9+i) maps to (E(X) w^2, E(Y) w^3) on y^2 = x^3 + 3 over F_q12 (py_ecc's `twist`).
Lines through twisted points evaluated at P = (xP, yP) in G1 have the sparse form
  l = -yP + xP E(lambda) w + E(Y - lambda X) w^3,
with lambda the slope computed in F_q2 (Vercauteren, "Optimal pairings", IEEE TIT 2010; the loop
parameter 6u+2 and final lines with pi(Q) and -pi^2(Q) as in py_ecc's `miller_loop`). Lines of a fixed
G2 point do not depend on P, so they are computed once (`prepare_g2`) and reused (verification keys).
The final exponentiation f^((q^12-1)/r) is split (Scott et al., "On the final exponentiation for
calculating pairings on ordinary elliptic curves", Pairing 2009): easy part f^((q^6-1)(q^2+1)) with a
conjugation, one inversion and a Frobenius map, then the hard part f^((q^4-q^2+1)/r) by
square-and-multiply. F_q12 products use Kronecker substitution: the 12 coefficients are packed into one
integer so that CPython's big-integer multiplication does the polynomial product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TypeVar

from zk.field import BN_U, Q, R

T = TypeVar("T")

Fq2 = tuple[int, int]
Fq12 = tuple[int, ...]  # 12 coefficients, each in [0, Q)
G1Affine = tuple[int, int]
G2Affine = tuple[Fq2, Fq2]
Line = tuple[Fq2, Fq2]  # (lambda, Y - lambda X)

FQ12_ONE: Fq12 = (1,) + (0,) * 11

# py_ecc's signed binary expansion of the optimal ate loop count 6u+2, least significant digit first.
ATE_LOOP_NAF = (
    0, 0, 0, 1, 0, 1, 0, -1, 0, 0, 1, -1, 0, 0, 1, 0, 0, 1, 1, 0, -1, 0, 0, 1, 0, -1, 0, 0, 0, 0, 1, 1,
    1, 0, 0, -1, 0, 0, 1, 0, 0, 0, 0, 0, -1, 0, 0, 1, 1, 0, 0, -1, 0, 0, 0, 1, 1, 0, -1, 0, 0, 1, 0, 1, 1,
)  # fmt: skip
ATE_LOOP_COUNT = 29793968203157093288  # 6u + 2
if sum(d << i for i, d in enumerate(ATE_LOOP_NAF)) != ATE_LOOP_COUNT:
    raise ValueError("ate loop expansion is inconsistent")
if (Q**4 - Q**2 + 1) % R != 0:
    raise ValueError("r should divide the 12th cyclotomic polynomial at q")
HARD_EXPONENT = (Q**4 - Q**2 + 1) // R

TWIST_B: Fq2  # 3 / (9 + i), set below


# -- F_q2 ------------------------------------------------------------------------------------------------
def fq2_mul(a: Fq2, b: Fq2) -> Fq2:
    a0, a1 = a
    b0, b1 = b
    return (a0 * b0 - a1 * b1) % Q, (a0 * b1 + a1 * b0) % Q


def fq2_sq(a: Fq2) -> Fq2:
    a0, a1 = a
    return (a0 + a1) * (a0 - a1) % Q, 2 * a0 * a1 % Q


def fq2_inv(a: Fq2) -> Fq2:
    a0, a1 = a
    d = pow(a0 * a0 + a1 * a1, -1, Q)
    return a0 * d % Q, -a1 * d % Q


def fq2_sub(a: Fq2, b: Fq2) -> Fq2:
    return (a[0] - b[0]) % Q, (a[1] - b[1]) % Q


def fq2_pow(a: Fq2, e: int) -> Fq2:
    result: Fq2 = (1, 0)
    while e:
        if e & 1:
            result = fq2_mul(result, a)
        a = fq2_sq(a)
        e >>= 1
    return result


TWIST_B = fq2_mul((3, 0), fq2_inv((9, 1)))
# Frobenius on the twist: pi(X, Y) = (conj(X) * g_x, conj(Y) * g_y) with g = (9+i)^((q-1)/3), ^((q-1)/2).
FROB_GX = fq2_pow((9, 1), (Q - 1) // 3)
FROB_GY = fq2_pow((9, 1), (Q - 1) // 2)


def g1_on_curve(p: G1Affine) -> bool:
    x, y = p
    return 0 <= x < Q and 0 <= y < Q and (y * y - x * x * x - 3) % Q == 0


def g2_on_curve(p: G2Affine) -> bool:
    x, y = p
    if not all(0 <= c < Q for c in (*x, *y)):
        return False
    rhs = fq2_mul(fq2_sq(x), x)
    return fq2_sq(y) == ((rhs[0] + TWIST_B[0]) % Q, (rhs[1] + TWIST_B[1]) % Q)


# -- F_q12 (py_ecc's polynomial basis) ---------------------------------------------------------------
_LIMB_BITS = 528  # a product coefficient is < 12 * Q^2 < 2^511 (inputs reduced, non-negative): no carries
_LIMB_BYTES = _LIMB_BITS // 8


def _pack(a: Sequence[int]) -> int:
    return int.from_bytes(b"".join(c.to_bytes(_LIMB_BYTES, "little") for c in a), "little")


def _reduce_product(prod: int) -> Fq12:
    raw = prod.to_bytes(23 * _LIMB_BYTES, "little")
    t = [int.from_bytes(raw[k * _LIMB_BYTES : (k + 1) * _LIMB_BYTES], "little") for k in range(23)]
    # w^12 = 18 w^6 - 82
    for k in range(22, 11, -1):
        c = t[k]
        if c:
            t[k - 6] += 18 * c
            t[k - 12] -= 82 * c
    return tuple(c % Q for c in t[:12])


def fq12_mul(a: Fq12, b: Fq12) -> Fq12:
    return _reduce_product(_pack(a) * _pack(b))


def fq12_sq(a: Fq12) -> Fq12:
    x = _pack(a)
    return _reduce_product(x * x)


def fq12_conj(a: Fq12) -> Fq12:
    """a^(q^6): w^(q^6) = -w, so odd coefficients change sign."""
    return tuple(c if i % 2 == 0 else (-c) % Q for i, c in enumerate(a))


def fq12_pow(a: Fq12, e: int) -> Fq12:
    result = FQ12_ONE
    for bit in bin(e)[2:]:
        result = fq12_sq(result)
        if bit == "1":
            result = fq12_mul(result, a)
    return result


def fq12_inv(a: Fq12) -> Fq12:
    """Inverse by the extended Euclidean algorithm on polynomials over F_q (as py_ecc's `FQP.inv`)."""
    if not any(a):
        raise ZeroDivisionError("inverse of zero in F_q12")
    modulus = [82, 0, 0, 0, 0, 0, Q - 18, 0, 0, 0, 0, 0, 1]
    lm, hm = [1] + [0] * 12, [0] * 13
    low, high = list(a) + [0], modulus
    while _deg(low):
        r = _poly_rounded_div(high, low)
        r += [0] * (13 - len(r))
        nm, new = list(hm), list(high)
        for i in range(13):
            li, lo = lm[i], low[i]
            if li or lo:
                for j in range(13 - i):
                    rj = r[j]
                    if rj:
                        nm[i + j] -= li * rj
                        new[i + j] -= lo * rj
        nm = [x % Q for x in nm]
        new = [x % Q for x in new]
        lm, low, hm, high = nm, new, lm, low
    inv0 = pow(low[0], -1, Q)
    return tuple(x * inv0 % Q for x in lm[:12])


def _deg(p: Sequence[int]) -> int:
    d = len(p) - 1
    while d and p[d] == 0:
        d -= 1
    return d


def _poly_rounded_div(a: Sequence[int], b: Sequence[int]) -> list[int]:
    dega, degb = _deg(a), _deg(b)
    temp = list(a)
    out = [0] * len(a)
    inv_lead = pow(b[degb], -1, Q)
    for i in range(dega - degb, -1, -1):
        out[i] = (out[i] + temp[degb + i] * inv_lead) % Q
        for c in range(degb + 1):
            temp[c + i] = (temp[c + i] - out[i] * b[c]) % Q
    return out[: _deg(out) + 1]


@lru_cache(maxsize=4)
def _frobenius_rows(power: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Rows i -> nonzero entries (j, m) of (w^i)^(q^power): the q^power-Frobenius is F_q-linear."""
    w = (0, 1) + (0,) * 10
    w_q = fq12_pow(w, Q**power)
    rows = []
    acc = FQ12_ONE
    for _ in range(12):
        rows.append(tuple((j, m) for j, m in enumerate(acc) if m))
        acc = fq12_mul(acc, w_q)
    return tuple(rows)


def fq12_frobenius(a: Fq12, power: int = 1) -> Fq12:
    """a^(q^power) as a linear map (coefficients lie in F_q, so only the basis moves)."""
    out = [0] * 12
    for c, row in zip(a, _frobenius_rows(power), strict=True):
        if c:
            for j, m in row:
                out[j] += c * m
    return tuple(x % Q for x in out)


def _hard_part_chain(
    t: T, mul: Callable[[T, T], T], sq: Callable[[T], T], conj: Callable[[T], T],
    frob: Callable[[T], T], frob2: Callable[[T], T], exp_u: Callable[[T], T],
) -> T:
    """t^((q^4 - q^2 + 1)/r) for t in the cyclotomic subgroup (where conj is the inverse).

    Scott et al. (Pairing 2009), section 6: with u the BN parameter the exponent is
    l3 q^3 + l2 q^2 + l1 q + l0, l3 = 1, l2 = 6u^2 + 1, l1 = -36u^3 - 18u^2 - 12u + 1,
    l0 = -36u^3 - 30u^2 - 18u - 2, evaluated as y0 * y1^2 * y2^6 * y3^12 * y4^18 * y5^30 * y6^36
    by a vectorial addition chain; only three exponentiations by u (63 bits) remain. Written over
    abstract operations so the same chain is checked on exponents at import.
    """
    fu = exp_u(t)
    fu2 = exp_u(fu)
    fu3 = exp_u(fu2)
    fp2 = frob2(t)
    y0 = mul(mul(frob(t), fp2), frob(fp2))  # t^(q + q^2 + q^3)
    y1 = conj(t)  # t^-1
    y2 = frob2(fu2)  # t^(u^2 q^2)
    y3 = conj(frob(fu))  # t^(-u q)
    y4 = conj(mul(fu, frob(fu2)))  # t^(-u - u^2 q)
    y5 = conj(fu2)  # t^(-u^2)
    y6 = conj(mul(fu3, frob(fu3)))  # t^(-u^3 - u^3 q)
    t0 = mul(mul(sq(y6), y4), y5)
    t1 = mul(mul(y3, y5), t0)
    t0 = mul(t0, y2)
    t1 = sq(mul(sq(t1), t0))
    t0 = mul(t1, y1)
    t1 = mul(t1, y0)
    return mul(sq(t0), t1)


_CYCLOTOMIC_ORDER = Q**4 - Q**2 + 1  # order of the group the easy part maps into
_chain_exponent = _hard_part_chain(
    1,
    lambda a, b: (a + b) % _CYCLOTOMIC_ORDER,
    lambda a: 2 * a % _CYCLOTOMIC_ORDER,
    lambda a: -a % _CYCLOTOMIC_ORDER,
    lambda a: a * Q % _CYCLOTOMIC_ORDER,
    lambda a: a * Q * Q % _CYCLOTOMIC_ORDER,
    lambda a: a * BN_U % _CYCLOTOMIC_ORDER,
)
if _chain_exponent != HARD_EXPONENT % _CYCLOTOMIC_ORDER:
    raise ValueError("final exponentiation addition chain does not compute (q^4 - q^2 + 1)/r")


def _exp_by_u(a: Fq12) -> Fq12:
    return fq12_pow(a, BN_U)


def final_exponentiation(f: Fq12) -> Fq12:
    """f^((q^12 - 1)/r), as easy part (q^6 - 1)(q^2 + 1) then hard part (q^4 - q^2 + 1)/r."""
    t = fq12_mul(fq12_conj(f), fq12_inv(f))  # f^(q^6 - 1)
    t = fq12_mul(fq12_frobenius(t, 2), t)  # ^(q^2 + 1): now in the cyclotomic subgroup
    return _hard_part_chain(
        t, fq12_mul, fq12_sq, fq12_conj, fq12_frobenius, lambda a: fq12_frobenius(a, 2), _exp_by_u
    )


def final_exponentiation_slow(f: Fq12) -> Fq12:
    """Same value with the hard part by plain square-and-multiply (tests compare the two)."""
    t = fq12_mul(fq12_conj(f), fq12_inv(f))
    t = fq12_mul(fq12_frobenius(t, 2), t)
    return fq12_pow(t, HARD_EXPONENT)


# -- Miller loop -------------------------------------------------------------------------------------------
def twist_frobenius(p: G2Affine) -> G2Affine:
    """psi: the q-power Frobenius carried to the twist (untwist, Frobenius, twist)."""
    (x0, x1), (y0, y1) = p
    return fq2_mul((x0, -x1 % Q), FROB_GX), fq2_mul((y0, -y1 % Q), FROB_GY)


def _line_through(r: G2Affine, q: G2Affine) -> tuple[Line, G2Affine]:
    """Chord through r and q (r != +-q), and r + q."""
    (xr, yr), (xq, yq) = r, q
    dx = fq2_sub(xq, xr)
    if dx == (0, 0):
        raise ValueError("degenerate addition in the Miller loop (G2 point not in the subgroup?)")
    lam = fq2_mul(fq2_sub(yq, yr), fq2_inv(dx))
    x3 = fq2_sub(fq2_sub(fq2_sq(lam), xr), xq)
    y3 = fq2_sub(fq2_mul(lam, fq2_sub(xr, x3)), yr)
    return (lam, fq2_sub(yr, fq2_mul(lam, xr))), (x3, y3)


def _tangent(r: G2Affine) -> tuple[Line, G2Affine]:
    """Tangent at r, and 2r."""
    xr, yr = r
    if yr == (0, 0):
        raise ValueError("degenerate doubling in the Miller loop")
    x_sq = fq2_sq(xr)
    lam = fq2_mul((3 * x_sq[0] % Q, 3 * x_sq[1] % Q), fq2_inv((2 * yr[0] % Q, 2 * yr[1] % Q)))
    x3 = fq2_sub(fq2_sq(lam), (2 * xr[0] % Q, 2 * xr[1] % Q))
    y3 = fq2_sub(fq2_mul(lam, fq2_sub(xr, x3)), yr)
    return (lam, fq2_sub(yr, fq2_mul(lam, xr))), (x3, y3)


PreparedG2 = tuple[Line, ...]


def prepare_g2(q: G2Affine) -> PreparedG2:
    """The lines of the Miller loop for q, in order: per digit a tangent then maybe a chord, then 2 chords.

    Requires q on the twist and in the order-r subgroup (check before calling).
    """
    lines: list[Line] = []
    neg_q = (q[0], ((-q[1][0]) % Q, (-q[1][1]) % Q))
    r = q
    for digit in ATE_LOOP_NAF[63::-1]:
        line, r = _tangent(r)
        lines.append(line)
        if digit:
            line, r = _line_through(r, q if digit == 1 else neg_q)
            lines.append(line)
    q1 = twist_frobenius(q)
    q2 = twist_frobenius(q1)
    neg_q2 = (q2[0], ((-q2[1][0]) % Q, (-q2[1][1]) % Q))
    line, r = _line_through(r, q1)
    lines.append(line)
    line, _ = _line_through(r, neg_q2)
    lines.append(line)
    return tuple(lines)


def _evaluate(line: Line, p: G1Affine) -> tuple[tuple[int, int], ...]:
    """The nonzero (position, coefficient) pairs of the F_q12 line value at p."""
    (l0, l1), (d0, d1) = line
    xp, yp = p
    return (
        (0, (-yp) % Q),
        (1, xp * (l0 - 9 * l1) % Q),
        (3, (d0 - 9 * d1) % Q),
        (7, xp * l1 % Q),
        (9, d1),
    )


def _mul_sparse(f: Fq12, line: tuple[tuple[int, int], ...]) -> Fq12:
    t = [0] * 23
    for j, lj in line:
        for i, fi in enumerate(f):
            t[i + j] += fi * lj
    for k in range(22, 11, -1):
        c = t[k]
        if c:
            t[k - 6] += 18 * c
            t[k - 12] -= 82 * c
    return tuple(c % Q for c in t[:12])


def miller_loop(pairs: Sequence[tuple[G1Affine | None, PreparedG2]]) -> Fq12:
    """Product of the Miller loops of (P, prepared Q) pairs, sharing the squarings. None is infinity."""
    active = [(p, lines) for p, lines in pairs if p is not None]
    f = FQ12_ONE
    if not active:
        return f
    cursor = 0
    for digit in ATE_LOOP_NAF[63::-1]:
        f = fq12_sq(f)
        step = 2 if digit else 1
        for p, lines in active:
            for line in lines[cursor : cursor + step]:
                f = _mul_sparse(f, _evaluate(line, p))
        cursor += step
    for p, lines in active:
        for line in lines[cursor : cursor + 2]:
            f = _mul_sparse(f, _evaluate(line, p))
    return f


def pairing_product_is_one(pairs: Sequence[tuple[G1Affine | None, PreparedG2]]) -> bool:
    """prod e(P_i, Q_i) == 1, with one shared Miller loop and a single final exponentiation."""
    return final_exponentiation(miller_loop(pairs)) == FQ12_ONE
