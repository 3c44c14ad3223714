"""Test helpers: curve points from py_ecc in the tuple form `zk` uses (module name unique across tests/)."""

from __future__ import annotations

from py_ecc.optimized_bn128.optimized_curve import G1, G2, multiply, normalize

from zk.field import Q
from zk.pairing import TWIST_B, G1Affine, G2Affine, fq2_mul, fq2_sq


def g1_point(k: int) -> G1Affine:
    x, y = normalize(multiply(G1, k))
    return int(x), int(y)


def g2_point(k: int) -> G2Affine:
    x, y = normalize(multiply(G2, k))
    return (int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1]))


def _fq_sqrt(a: int) -> int | None:
    r = pow(a, (Q + 1) // 4, Q)  # Q = 3 mod 4
    return r if r * r % Q == a % Q else None


def _fq2_sqrt(a: tuple[int, int]) -> tuple[int, int] | None:
    a0, a1 = a
    n = _fq_sqrt((a0 * a0 + a1 * a1) % Q)
    if n is None:
        return None
    for cand in ((a0 + n) * pow(2, -1, Q) % Q, (a0 - n) * pow(2, -1, Q) % Q):
        x0 = _fq_sqrt(cand)
        if x0:
            x1 = a1 * pow(2 * x0, -1, Q) % Q
            if fq2_sq((x0, x1)) == (a0 % Q, a1 % Q):
                return x0, x1
    return None


def twist_point_outside_g2(seed: int = 1) -> G2Affine:
    """A point on the twist y^2 = x^3 + 3/(9+i) that is not in the order-r subgroup (cofactor > 1)."""
    for x0 in range(seed, seed + 1000):
        x = (x0, 1)
        rhs = fq2_mul(fq2_sq(x), x)
        y = _fq2_sqrt(((rhs[0] + TWIST_B[0]) % Q, (rhs[1] + TWIST_B[1]) % Q))
        if y is not None:
            return x, y
    raise AssertionError("no twist point found")
