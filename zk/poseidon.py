"""Poseidon hash over the BN254 scalar field, bit-compatible with circomlib's `poseidon.circom`.

Reference: Grassi et al., "Poseidon: A New Hash Function for Zero-Knowledge Proof Systems"
(eprint 2019/458), HADES design; parameters as in circomlib / circomlibjs 0.1.7 (`poseidon_reference.js`):
width t = n_inputs + 1 (state[0] is the capacity, initialised to 0), 8 full rounds (4 before, 4 after
the partial rounds), partial rounds by t-2 below, S-box x^5, round constants C and MDS matrices M from
circomlibjs' `src/poseidon_constants.json`. That file is copied verbatim to `zk/poseidon_constants.json`
and its SHA-256 is checked when the constants are first loaded.

Widths other than 3 use the equivalent "optimized" form of the same permutation (Poseidon paper,
appendix B; circomlibjs `poseidon_opt.js` after filecoin's neptune): the partial rounds' MDS products
become sparse (2t - 1 products instead of t^2), with the pre-transformed constants C, S, M, P of
circomlibjs' `src/poseidon_constants_opt.json`, copied verbatim to `zk/poseidon_constants_opt.json`
and hash-checked the same way. Tests hold both forms equal to the plain permutation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from zk.errors import MalformedInput
from zk.field import R

FULL_ROUNDS = 8
PARTIAL_ROUNDS = (56, 57, 56, 60, 60, 63, 64, 63, 60, 66, 60, 65, 70, 60, 64, 68)  # by t - 2
MAX_INPUTS = len(PARTIAL_ROUNDS)  # 16 inputs, t = 17

CONSTANTS_FILE = Path(__file__).with_name("poseidon_constants.json")
# SHA-256 of circomlibjs 0.1.7 src/poseidon_constants.json (tests compare it with node_modules too).
CONSTANTS_SHA256 = "354f31bbed9d9a8b884d8f2181e339cb425b6e3e4cc7240bd3dd22f0070f3f2c"
OPT_CONSTANTS_FILE = Path(__file__).with_name("poseidon_constants_opt.json")
# SHA-256 of circomlibjs 0.1.7 src/poseidon_constants_opt.json.
OPT_CONSTANTS_SHA256 = "da1b82330e196f931d30dd304b3ec547fe041c2fac2226c7204e286a5db27ed0"


def _load_checked(path: Path, sha256: str) -> Any:
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise RuntimeError(f"{path.name} does not match circomlibjs 0.1.7 (SHA-256 mismatch)")
    return json.loads(raw)


@lru_cache(maxsize=1)
def _all_constants() -> tuple[list[list[int]], list[list[list[int]]]]:
    data = _load_checked(CONSTANTS_FILE, CONSTANTS_SHA256)
    c = [[int(x, 16) for x in row] for row in data["C"]]
    m = [[[int(x, 16) for x in row] for row in mat] for mat in data["M"]]
    if len(c) != MAX_INPUTS or len(m) != MAX_INPUTS:
        raise RuntimeError("Poseidon constants: expected parameters for t = 2..17")
    for t_minus_2, (ct, mt) in enumerate(zip(c, m, strict=True)):
        t = t_minus_2 + 2
        if len(ct) != t * (FULL_ROUNDS + PARTIAL_ROUNDS[t_minus_2]) or len(mt) != t:
            raise RuntimeError(f"Poseidon constants for t = {t} have the wrong shape")
        if any(x >= R for x in ct) or any(len(row) != t or any(x >= R for x in row) for row in mt):
            raise RuntimeError(f"Poseidon constants for t = {t} are not field elements")
    return c, m


@lru_cache(maxsize=MAX_INPUTS)
def _parameters(t: int) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """(round constants per round, MDS rows) for width t."""
    c, m = _all_constants()
    ct = c[t - 2]
    rounds = FULL_ROUNDS + PARTIAL_ROUNDS[t - 2]
    per_round = tuple(tuple(ct[r * t : (r + 1) * t]) for r in range(rounds))
    return per_round, tuple(tuple(row) for row in m[t - 2])


def poseidon(inputs: Sequence[int]) -> int:
    """Poseidon of 1..16 field elements, as circomlib's `Poseidon(n)` template / circomlibjs `poseidon`.

    Inputs must be canonical field elements (ints in [0, R)); reduce with `zk.field.to_field` first if
    needed. Raises MalformedInput otherwise or for an unsupported arity.
    """
    n = len(inputs)
    if not 1 <= n <= MAX_INPUTS:
        raise MalformedInput(f"poseidon: takes 1 to {MAX_INPUTS} inputs, got {n}")
    for i, x in enumerate(inputs):
        if type(x) is not int or not 0 <= x < R:
            raise MalformedInput(f"poseidon: input {i} is not a field element in [0, R)")
    if n == 2:
        return _width3()(inputs[0], inputs[1])
    return _permutation_sparse(list(inputs))


def _permutation_generic(inputs: list[int]) -> int:
    """The HADES permutation on [0, *inputs], first state element out (any width)."""
    t = len(inputs) + 1
    round_constants, mds = _parameters(t)
    half_full = FULL_ROUNDS // 2
    last_partial = half_full + PARTIAL_ROUNDS[t - 2]
    p = R
    state = [0, *inputs]
    for r, rc in enumerate(round_constants):
        state = [(s + c) % p for s, c in zip(state, rc, strict=True)]
        if r < half_full or r >= last_partial:
            state = [pow(s, 5, p) for s in state]
        else:
            state[0] = pow(state[0], 5, p)
        state = [sum(mij * s for mij, s in zip(row, state, strict=True)) % p for row in mds]
    return state[0]


OptParameters = tuple[
    tuple[int, ...],  # C: round constants, pre-transformed
    tuple[tuple[tuple[int, ...], tuple[int, ...]], ...],  # per partial round: (first row, column tail) of S
    tuple[tuple[int, ...], ...],  # M transposed (rows of the product)
    tuple[tuple[int, ...], ...],  # P transposed
]


@lru_cache(maxsize=1)
def _all_opt_constants() -> dict[str, Any]:
    data = _load_checked(OPT_CONSTANTS_FILE, OPT_CONSTANTS_SHA256)
    if not all(len(data[k]) == MAX_INPUTS for k in "CSMP"):
        raise RuntimeError("optimized Poseidon constants: expected parameters for t = 2..17")
    return data  # type: ignore[no-any-return]


@lru_cache(maxsize=MAX_INPUTS)
def _opt_parameters(t: int) -> OptParameters:
    data = _all_opt_constants()
    c = tuple(int(x, 16) for x in data["C"][t - 2])
    s = [int(x, 16) for x in data["S"][t - 2]]
    m = [[int(x, 16) for x in row] for row in data["M"][t - 2]]
    p = [[int(x, 16) for x in row] for row in data["P"][t - 2]]
    n_partial = PARTIAL_ROUNDS[t - 2]
    width = 2 * t - 1
    if len(c) != t * FULL_ROUNDS + n_partial or len(s) != width * n_partial or len(m) != t or len(p) != t:
        raise RuntimeError(f"optimized Poseidon constants for t = {t} have the wrong shape")
    sparse = tuple((tuple(s[width * r : width * r + t]), tuple(s[width * r + t : width * (r + 1)]))
                   for r in range(n_partial))
    m_t = tuple(tuple(m[j][i] for j in range(t)) for i in range(t))
    p_t = tuple(tuple(p[j][i] for j in range(t)) for i in range(t))
    return c, sparse, m_t, p_t


def _permutation_sparse(inputs: list[int]) -> int:
    """The permutation in its optimized form (same output as `_permutation_generic`)."""
    t = len(inputs) + 1
    c, sparse, m_t, p_t = _opt_parameters(t)
    p = R
    half = FULL_ROUNDS // 2
    state = [(x + c[i]) % p for i, x in enumerate([0, *inputs])]

    def full_round(state: list[int], offset: int | None, rows: tuple[tuple[int, ...], ...]) -> list[int]:
        boxed = []
        for i, x in enumerate(state):
            y = x * x % p
            y = y * y % p * x
            boxed.append(y if offset is None else y + c[offset + i])
        return [sum([a * b for a, b in zip(row, boxed)]) % p for row in rows]

    for r in range(half - 1):
        state = full_round(state, (r + 1) * t, m_t)
    state = full_round(state, half * t, p_t)
    base = (half + 1) * t
    # Partial rounds: only the first element goes through the S-box, so only it must be reduced each round.
    # The others take one product (< 2^508) per round unreduced and are reduced once after the last one
    # (70 rounds at most: under 2^515), which saves t - 1 reductions per round (a quarter of the time at t = 16).
    x, rest = state[0], state[1:]
    for r, (first_row, column) in enumerate(sparse):
        y = x * x % p
        s0 = (y * y % p * x + c[base + r]) % p
        x = (first_row[0] * s0 + sum([a * b for a, b in zip(first_row[1:], rest)])) % p
        rest = [sk + s0 * v for sk, v in zip(rest, column)]
    state = [x, *[sk % p for sk in rest]]
    base += len(sparse)
    for r in range(half - 1):
        state = full_round(state, base + r * t, m_t)
    return full_round(state, None, m_t)[0]


@lru_cache(maxsize=1)
def _width3() -> Callable[[int, int], int]:
    """`_permutation_sparse` unrolled for t = 3 (two inputs: Merkle nodes): the same optimized constants and
    sparse partial rounds, with the state in three locals (no lists). Held equal to the generic form by tests."""
    c, sparse, m_t, p_t = _opt_parameters(3)
    half = FULL_ROUNDS // 2
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = m_t
    (q00, q01, q02), (q10, q11, q12), (q20, q21, q22) = p_t
    first = [tuple(c[(r + 1) * 3 + i] for i in range(3)) for r in range(half - 1)]
    pre = tuple(c[half * 3 + i] for i in range(3))
    base = (half + 1) * 3
    partial = [(*row, *column, c[base + r]) for r, (row, column) in enumerate(sparse)]
    base += len(sparse)
    last = [tuple(c[base + r * 3 + i] for i in range(3)) for r in range(half - 1)]
    c0, c1, c2 = c[0], c[1], c[2]
    p = R

    def permute(a: int, b: int) -> int:
        s0, s1, s2 = c0 % p, (a + c1) % p, (b + c2) % p
        for k0, k1, k2 in first:
            t = s0 * s0 % p
            s0 = t * t % p * s0 + k0
            t = s1 * s1 % p
            s1 = t * t % p * s1 + k1
            t = s2 * s2 % p
            s2 = t * t % p * s2 + k2
            s0, s1, s2 = (m00 * s0 + m01 * s1 + m02 * s2) % p, (m10 * s0 + m11 * s1 + m12 * s2) % p, (
                m20 * s0 + m21 * s1 + m22 * s2) % p
        k0, k1, k2 = pre
        t = s0 * s0 % p
        s0 = t * t % p * s0 + k0
        t = s1 * s1 % p
        s1 = t * t % p * s1 + k1
        t = s2 * s2 % p
        s2 = t * t % p * s2 + k2
        s0, s1, s2 = (q00 * s0 + q01 * s1 + q02 * s2) % p, (q10 * s0 + q11 * s1 + q12 * s2) % p, (
            q20 * s0 + q21 * s1 + q22 * s2) % p
        for f0, f1, f2, v1, v2, k in partial:
            t = s0 * s0 % p
            s0 = (t * t % p * s0 + k) % p
            s0, s1, s2 = (f0 * s0 + f1 * s1 + f2 * s2) % p, (s1 + s0 * v1) % p, (s2 + s0 * v2) % p
        for k0, k1, k2 in last:
            t = s0 * s0 % p
            s0 = t * t % p * s0 + k0
            t = s1 * s1 % p
            s1 = t * t % p * s1 + k1
            t = s2 * s2 % p
            s2 = t * t % p * s2 + k2
            s0, s1, s2 = (m00 * s0 + m01 * s1 + m02 * s2) % p, (m10 * s0 + m11 * s1 + m12 * s2) % p, (
                m20 * s0 + m21 * s1 + m22 * s2) % p
        t = s0 * s0 % p
        s0 = t * t % p * s0
        t = s1 * s1 % p
        s1 = t * t % p * s1
        t = s2 * s2 % p
        s2 = t * t % p * s2
        return (m00 * s0 + m01 * s1 + m02 * s2) % p

    return permute


def hash2(left: int, right: int) -> int:
    """Poseidon of two field elements (the Merkle node hash)."""
    return poseidon((left, right))
