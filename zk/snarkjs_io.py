"""snarkjs JSON formats (`verification_key.json`, `proof.json`, public signals) and Solidity calldata.

Formats as written by snarkjs 0.7 for Groth16 on bn128: every number is a decimal string; a G1 point is
[x, y, "1"] and a G2 point [[x.c0, x.c1], [y.c0, y.c1], ["1", "0"]] (projective with z = 1, or z = 0
for the point at infinity, written [0, 1, 0]). Public signals list the circuit outputs first, then the
public inputs in declaration order. The Solidity verifier exported by snarkjs takes G2 coordinates as
(c1, c0), the EIP-197 encoding. Parsing checks ranges and that points lie on the curve; the (costly)
G2 subgroup check is done by `zk.groth16`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zk.errors import MalformedInput
from zk.field import Q, R, parse_decimal
from zk.pairing import G1Affine, G2Affine, g1_on_curve, g2_on_curve

G1Point = G1Affine | None  # None is the point at infinity
G2Point = G2Affine | None
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_PUBLIC_SIGNALS = 10_000


@dataclass(frozen=True)
class VerificationKey:
    """A Groth16 verification key (snarkjs `verification_key.json`).

    alpha1, beta2, gamma2, delta2: the setup's fixed points; ic: n_public + 1 G1 points, ic[0] + sum
    s_i * ic[i + 1] commits to the public signals s. `extra` keeps fields we do not interpret
    (e.g. `vk_alphabeta_12`) so writing the key back reproduces the snarkjs file.
    """

    n_public: int
    alpha1: G1Point
    beta2: G2Point
    gamma2: G2Point
    delta2: G2Point
    ic: tuple[G1Point, ...]
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (key, JSON text)


@dataclass(frozen=True)
class Proof:
    """A Groth16 proof (snarkjs `proof.json`): A in G1, B in G2, C in G1."""

    a: G1Point
    b: G2Point
    c: G1Point


# -- reading -----------------------------------------------------------------------------------------------
def _read_json(source: str | Path | Any, what: str) -> Any:
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise MalformedInput(f"{what}: cannot read {path.name} ({exc.strerror or 'I/O error'})") from None
        if len(raw) > MAX_FILE_BYTES:
            raise MalformedInput(f"{what}: file larger than {MAX_FILE_BYTES} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise MalformedInput(f"{what}: {path.name} is not valid JSON") from None
        except RecursionError:  # snarkjs files are four levels deep; the interpreter's limit is restored
            raise MalformedInput(f"{what}: {path.name} is nested too deeply to be a snarkjs file") from None
    return source


def _g1(value: Any, name: str) -> G1Point:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 3:
        raise MalformedInput(f"{name}: expected a G1 point [x, y, z]")
    x, y, z = (parse_decimal(v, name, Q) for v in value)
    if z == 0:
        if (x, y) != (0, 1):
            raise MalformedInput(f"{name}: malformed point at infinity")
        return None
    if z != 1:
        raise MalformedInput(f"{name}: expected affine coordinates (z = 1)")
    if not g1_on_curve((x, y)):
        raise MalformedInput(f"{name}: point is not on the BN254 curve")
    return (x, y)


def _fq2(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 2:
        raise MalformedInput(f"{name}: expected an F_q2 element [c0, c1]")
    return parse_decimal(value[0], name, Q), parse_decimal(value[1], name, Q)


def _g2(value: Any, name: str) -> G2Point:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 3:
        raise MalformedInput(f"{name}: expected a G2 point [[x0, x1], [y0, y1], [z0, z1]]")
    x, y, z = (_fq2(v, name) for v in value)
    if z == (0, 0):
        if (x, y) != ((0, 0), (1, 0)):
            raise MalformedInput(f"{name}: malformed point at infinity")
        return None
    if z != (1, 0):
        raise MalformedInput(f"{name}: expected affine coordinates (z = [1, 0])")
    if not g2_on_curve((x, y)):
        raise MalformedInput(f"{name}: point is not on the BN254 twist curve")
    return (x, y)


def _require_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MalformedInput(f"{what}: expected a JSON object")
    return data


def _require_groth16(data: Mapping[str, Any], what: str) -> None:
    if data.get("protocol", "groth16") != "groth16":
        raise MalformedInput(f"{what}: protocol must be groth16")
    if data.get("curve", "bn128") not in ("bn128", "bn254"):
        raise MalformedInput(f"{what}: curve must be bn128")


_VK_FIELDS = ("protocol", "curve", "nPublic", "vk_alpha_1", "vk_beta_2", "vk_gamma_2", "vk_delta_2", "IC")


def load_verification_key(source: str | Path | Mapping[str, Any]) -> VerificationKey:
    """Parse a snarkjs Groth16 `verification_key.json` (a path or the decoded object)."""
    what = "verification key"
    data = _require_object(_read_json(source, what), what)
    _require_groth16(data, what)
    missing = [k for k in _VK_FIELDS[2:] if k not in data]
    if missing:
        raise MalformedInput(f"{what}: missing field {missing[0]}")
    n_public = data["nPublic"]
    if type(n_public) is not int or not 0 <= n_public <= MAX_PUBLIC_SIGNALS:
        raise MalformedInput(f"{what}: nPublic must be a non-negative integer")
    ic_raw = data["IC"]
    if not isinstance(ic_raw, list) or len(ic_raw) != n_public + 1:
        raise MalformedInput(f"{what}: IC must hold nPublic + 1 = {n_public + 1} points")
    extra = tuple((k, json.dumps(v)) for k, v in data.items() if k not in _VK_FIELDS)
    return VerificationKey(
        n_public=n_public,
        alpha1=_g1(data["vk_alpha_1"], f"{what}.vk_alpha_1"),
        beta2=_g2(data["vk_beta_2"], f"{what}.vk_beta_2"),
        gamma2=_g2(data["vk_gamma_2"], f"{what}.vk_gamma_2"),
        delta2=_g2(data["vk_delta_2"], f"{what}.vk_delta_2"),
        ic=tuple(_g1(p, f"{what}.IC[{i}]") for i, p in enumerate(ic_raw)),
        extra=extra,
    )


def load_proof(source: str | Path | Mapping[str, Any]) -> Proof:
    """Parse a snarkjs Groth16 `proof.json` (a path or the decoded object)."""
    what = "proof"
    data = _require_object(_read_json(source, what), what)
    _require_groth16(data, what)
    for k in ("pi_a", "pi_b", "pi_c"):
        if k not in data:
            raise MalformedInput(f"{what}: missing field {k}")
    return Proof(
        a=_g1(data["pi_a"], "proof.pi_a"), b=_g2(data["pi_b"], "proof.pi_b"), c=_g1(data["pi_c"], "proof.pi_c")
    )


def load_public_signals(source: str | Path | Sequence[Any]) -> list[int]:
    """Parse snarkjs `public.json`: a list of decimal strings, each a field element < R."""
    what = "public signals"
    data = _read_json(source, what)
    if not isinstance(data, list):
        raise MalformedInput(f"{what}: expected a JSON list of decimal strings")
    if len(data) > MAX_PUBLIC_SIGNALS:
        raise MalformedInput(f"{what}: too many signals")
    return [parse_decimal(v, f"public signal {i}", R) for i, v in enumerate(data)]


# -- writing -----------------------------------------------------------------------------------------------
def _g1_json(p: G1Point) -> list[str]:
    return ["0", "1", "0"] if p is None else [str(p[0]), str(p[1]), "1"]


def _g2_json(p: G2Point) -> list[list[str]]:
    if p is None:
        return [["0", "0"], ["1", "0"], ["0", "0"]]
    (x0, x1), (y0, y1) = p
    return [[str(x0), str(x1)], [str(y0), str(y1)], ["1", "0"]]


def verification_key_to_json(vk: VerificationKey) -> dict[str, Any]:
    """The snarkjs `verification_key.json` object (fields in snarkjs' order)."""
    out: dict[str, Any] = {
        "protocol": "groth16",
        "curve": "bn128",
        "nPublic": vk.n_public,
        "vk_alpha_1": _g1_json(vk.alpha1),
        "vk_beta_2": _g2_json(vk.beta2),
        "vk_gamma_2": _g2_json(vk.gamma2),
        "vk_delta_2": _g2_json(vk.delta2),
    }
    for key, text in vk.extra:
        out[key] = json.loads(text)
    out["IC"] = [_g1_json(p) for p in vk.ic]
    return out


def proof_to_json(proof: Proof) -> dict[str, Any]:
    """The snarkjs `proof.json` object."""
    return {
        "pi_a": _g1_json(proof.a),
        "pi_b": _g2_json(proof.b),
        "pi_c": _g1_json(proof.c),
        "protocol": "groth16",
        "curve": "bn128",
    }


def public_signals_to_json(signals: Sequence[int]) -> list[str]:
    for i, s in enumerate(signals):
        if type(s) is not int or not 0 <= s < R:
            raise MalformedInput(f"public signal {i}: not a field element in [0, R)")
    return [str(s) for s in signals]


def write_json(path: str | Path, obj: Any) -> None:
    """Write an object as snarkjs does (indented JSON)."""
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")


# -- Solidity calldata ---------------------------------------------------------------------------------------
SolidityCalldata = tuple[
    tuple[int, int], tuple[tuple[int, int], tuple[int, int]], tuple[int, int], tuple[int, ...]
]


def solidity_calldata(proof: Proof, public_signals: Sequence[int]) -> SolidityCalldata:
    """Arguments of the snarkjs verifier's `verifyProof(uint[2] a, uint[2][2] b, uint[2] c, uint[N] input)`.

    EIP-197 orders an F_q2 element as (c1, c0), so B is ((x.c1, x.c0), (y.c1, y.c0)); infinity is (0, 0).
    """
    public_signals_to_json(public_signals)  # range check
    a = proof.a if proof.a is not None else (0, 0)
    c = proof.c if proof.c is not None else (0, 0)
    if proof.b is None:
        b: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    else:
        (x0, x1), (y0, y1) = proof.b
        b = ((x1, x0), (y1, y0))
    return a, b, c, tuple(public_signals)


def format_solidity_calldata(calldata: SolidityCalldata) -> str:
    """The text `snarkjs zkey export soliditycalldata` prints (32-byte 0x-hex words)."""

    def h(v: int) -> str:
        return f'"0x{v:064x}"'

    a, b, c, inputs = calldata
    return (
        f"[{h(a[0])}, {h(a[1])}],"
        f"[[{h(b[0][0])}, {h(b[0][1])}],[{h(b[1][0])}, {h(b[1][1])}]],"
        f"[{h(c[0])}, {h(c[1])}],"
        f"[{','.join(h(x) for x in inputs)}]"
    )
