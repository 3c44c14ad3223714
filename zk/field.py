"""BN254 (alt_bn128) fields: scalar field R (circuit values) and base field Q (curve coordinates)."""

from __future__ import annotations

from zk.errors import MalformedInput

# EIP-196/197: the alt_bn128 curve y^2 = x^3 + 3 over F_Q with a subgroup of prime order R.
R = 21888242871839275222246405745257275088548364400416034343698204186575808495617
Q = 21888242871839275222246405745257275088696311157297823662689037894645226208583

# The curve's BN parameter u: Q = 36u^4 + 36u^3 + 24u^2 + 6u + 1, R = 36u^4 + 36u^3 + 18u^2 + 6u + 1.
BN_U = 4965661367192848881


def _is_probable_prime(n: int) -> bool:
    # Miller-Rabin with fixed small bases: deterministic enough for a constant self-check.
    if n < 2:
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


# Constants checked at import (py_ecc style): a typo here would silently break every proof.
if Q != 36 * BN_U**4 + 36 * BN_U**3 + 24 * BN_U**2 + 6 * BN_U + 1:
    raise ValueError("base field modulus does not match the BN parameter")
if R != 36 * BN_U**4 + 36 * BN_U**3 + 18 * BN_U**2 + 6 * BN_U + 1:
    raise ValueError("scalar field modulus does not match the BN parameter")
if not (_is_probable_prime(R) and _is_probable_prime(Q)):
    raise ValueError("field moduli should be prime")


def to_field(x: int) -> int:
    """Reduce any integer (negative too) into the scalar field [0, R)."""
    return x % R


def is_field_element(x: object) -> bool:
    """True for a canonical scalar-field element: an int (not bool) in [0, R)."""
    return type(x) is int and 0 <= x < R


def require_field_element(x: object, name: str) -> int:
    """Return `x` if it is a canonical scalar-field element, else raise MalformedInput naming it."""
    if not is_field_element(x):
        if type(x) is not int:
            raise MalformedInput(f"{name}: expected an integer field element, got {type(x).__name__}")
        raise MalformedInput(f"{name}: not a canonical field element (must be 0 <= x < R)")
    return x  # type: ignore[return-value]


def parse_decimal(text: object, name: str, modulus: int) -> int:
    """Parse a snarkjs-style decimal string (or int) into a canonical element of [0, modulus)."""
    if type(text) is int:
        value = text
    elif isinstance(text, str):
        s = text.strip()
        if not s or not s.isdigit() or not s.isascii() or len(s) > 100:
            raise MalformedInput(f"{name}: expected a decimal integer string")
        value = int(s)
    else:
        raise MalformedInput(f"{name}: expected a decimal integer string, got {type(text).__name__}")
    if not 0 <= value < modulus:
        raise MalformedInput(f"{name}: value out of range for the field")
    return value
