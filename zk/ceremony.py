"""Groth16 phase-2 ceremony steps over snarkjs: contribute to a zkey, verify it, record the contribution hashes.

A Groth16 key is sound if at least one phase-2 contributor destroyed their entropy and the powers of tau
(phase 1) are sound. Production: start from a public phase-1 file (the perpetual powers of tau,
`powersOfTau28_hez_final_NN.ptau`, whose hash is published) and have each consortium hospital run
`healthledger zk ceremony contribute` in turn, then anyone runs `verify` and compares the `record` with the
hashes each contributor announced. Development builds use a locally made ptau (see the artifacts' BUILD.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from zk.errors import MalformedInput, ZkError

DEFAULT_NODE_MODULES = Path(__file__).resolve().parent.parent / "node_modules"
SNARKJS_TIMEOUT_S = 900.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CeremonyError(ZkError):
    """A ceremony step failed (snarkjs refused the files, or verification failed)."""


@dataclass(frozen=True)
class Contribution:
    """One phase-2 contribution as listed by `snarkjs zkey verify` (hash: 64-byte Blake2b, hex)."""

    index: int
    name: str
    hash: str


@dataclass(frozen=True)
class CeremonyRecord:
    """What an auditor compares: the files' SHA-256 and every contribution hash, in order."""

    circuit: str
    r1cs_sha256: str
    ptau_sha256: str
    zkey_sha256: str
    contributions: tuple[Contribution, ...]
    verified: bool

    def to_json(self) -> str:
        data = asdict(self)
        data["contributions"] = [asdict(c) for c in self.contributions]
        return json.dumps(data, indent=2) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_snarkjs(args: Sequence[str], node_modules: Path = DEFAULT_NODE_MODULES,
                timeout_s: float = SNARKJS_TIMEOUT_S, stdin_text: str | None = None) -> str:
    """Run the pinned snarkjs CLI; returns its output without colour codes, raises CeremonyError on failure."""
    exe = node_modules / ".bin" / "snarkjs"
    if not exe.exists():
        raise CeremonyError(f"snarkjs not found at {exe} (run `npm ci`)")
    try:
        done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout_s, check=False,
                              input=stdin_text)
    except subprocess.TimeoutExpired:
        raise CeremonyError(f"snarkjs {args[0]} {args[1] if len(args) > 1 else ''} timed out") from None
    output = _ANSI.sub("", done.stdout + done.stderr)
    # snarkjs 0.7 prints "[ERROR]" and may still exit 0 for some failures.
    if done.returncode != 0 or "[ERROR]" in output:
        lines = [ln.strip() for ln in output.splitlines() if "ERROR" in ln or "Error" in ln]
        raise CeremonyError(f"snarkjs {' '.join(args[:2])} failed: {lines[0] if lines else 'exit ' + str(done.returncode)}")
    return output


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise MalformedInput(f"{what}: file not found: {path}")


def contribute(zkey_in: Path, zkey_out: Path, *, name: str, entropy: bytes,
               node_modules: Path = DEFAULT_NODE_MODULES) -> str:
    """Add one phase-2 contribution mixing `entropy` (>= 32 bytes, then forgotten); returns its hash."""
    _require_file(zkey_in, "zkey")
    if len(entropy) < 32:
        raise MalformedInput("entropy must be at least 32 bytes")
    if not name or len(name) > 64 or not name.isprintable() or '"' in name:
        raise MalformedInput("contribution name must be 1-64 printable characters without quotes")
    # The entropy goes to snarkjs' prompt on stdin, never on the command line (where `ps` would show it).
    output = run_snarkjs(["zkey", "contribute", str(zkey_in), str(zkey_out), f"--name={name}"], node_modules,
                         stdin_text=entropy.hex() + "\n")
    return _hash_after(output, "Contribution Hash")


def _hash_after(output: str, label: str) -> str:
    """The hex hash snarkjs prints on the 4 lines after `label`."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if label in line:
            words = " ".join(lines[i + 1 : i + 5]).split()
            digest = "".join(w for w in words if re.fullmatch(r"[0-9a-f]{8}", w))
            if len(digest) == 128:
                return digest
    raise CeremonyError(f"snarkjs output has no {label}")


def verify(r1cs: Path, ptau: Path, zkey: Path, *,
           node_modules: Path = DEFAULT_NODE_MODULES) -> tuple[Contribution, ...]:
    """`snarkjs zkey verify`: the zkey derives from this circuit and ptau through the listed contributions.

    Returns the contributions in order; raises CeremonyError if the zkey does not verify.
    """
    for path, what in ((r1cs, "r1cs"), (ptau, "ptau"), (zkey, "zkey")):
        _require_file(path, what)
    try:
        output = run_snarkjs(["zkey", "verify", str(r1cs), str(ptau), str(zkey)], node_modules)
    except CeremonyError as exc:
        raise CeremonyError(f"the zkey does not verify against this r1cs and ptau ({exc})") from None
    if "ZKey Ok!" not in output:
        raise CeremonyError("the zkey does not verify against this r1cs and ptau")
    return _contributions(output)


def _contributions(output: str) -> tuple[Contribution, ...]:
    # snarkjs lists "contribution #N NAME:" followed by the hash on 4 lines.
    found: list[Contribution] = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        match = re.search(r"contribution #(\d+) (.*):\s*$", line)
        if match:
            words = " ".join(lines[i + 1 : i + 5]).split()
            digest = "".join(w for w in words if re.fullmatch(r"[0-9a-f]{8}", w))
            if len(digest) == 128:
                found.append(Contribution(int(match.group(1)), match.group(2).strip(), digest))
    return tuple(sorted(found, key=lambda c: c.index))


def record(circuit: str, r1cs: Path, ptau: Path, zkey: Path, *,
           node_modules: Path = DEFAULT_NODE_MODULES) -> CeremonyRecord:
    """Verify the zkey and return the record of file hashes and contribution hashes."""
    contributions = verify(r1cs, ptau, zkey, node_modules=node_modules)
    return CeremonyRecord(
        circuit=circuit,
        r1cs_sha256=sha256_file(r1cs),
        ptau_sha256=sha256_file(ptau),
        zkey_sha256=sha256_file(zkey),
        contributions=contributions,
        verified=True,
    )

