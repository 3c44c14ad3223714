"""Build the eligibility circuit's artifacts: compile, Groth16 setup, one phase-2 contribution, exports, hashes.

    python -m zk.build [--ptau FILE] [--work-dir var/zkbuild] [--skip-verify]

Writes `zk/artifacts/eligibility/` (wasm, zkey, r1cs, verification_key.json, ceremony.json, SHA256SUMS,
BUILD.md) and the Solidity verifier straight into `healthledger/ledger/contracts/EligibilityVerifier.sol`
(one copy: the contract compile pipeline builds it from there).
Without --ptau it uses the committed LOCAL DEVELOPMENT ptau, or makes one if it is missing.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from zk import ceremony
from zk.ceremony import run_snarkjs, sha256_file

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / "node_modules"
CIRCUITS = REPO / "zk" / "circuits"
ARTIFACTS = REPO / "zk" / "artifacts"
LOCAL_PTAU_DIR = ARTIFACTS / "ptau"
CONTRACTS = REPO / "healthledger" / "ledger" / "contracts"
CIRCUIT = "eligibility"
VERIFIER_CONTRACT = "EligibilityVerifier"
MAX_COMMITTED_PTAU_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class CircuitInfo:
    constraints: int
    public_inputs: int
    private_inputs: int
    wires: int


def _log(message: str) -> None:
    print(f"[zk.build] {message}", file=sys.stderr, flush=True)


def compile_circuit(work: Path) -> Path:
    """circom2 -> work/eligibility.r1cs, .sym, eligibility_js/eligibility.wasm."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [str(NODE_MODULES / ".bin" / "circom2"), str(CIRCUITS / f"{CIRCUIT}.circom"), "--r1cs", "--wasm",
           "--sym", "--O2", "-o", str(work), "-l", str(NODE_MODULES / "circomlib" / "circuits")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0 or "Everything went okay" not in done.stdout + done.stderr:
        raise SystemExit(f"circom2 failed:\n{done.stdout}\n{done.stderr}")
    return work / f"{CIRCUIT}.r1cs"


def circuit_info(r1cs: Path) -> CircuitInfo:
    output = run_snarkjs(["r1cs", "info", str(r1cs)])

    def field(label: str) -> int:
        match = re.search(rf"# of {label}:\s*(\d+)", output)
        if not match:
            raise SystemExit(f"snarkjs r1cs info: no '{label}' in output")
        return int(match.group(1))

    return CircuitInfo(constraints=field("Constraints"), public_inputs=field("Public Inputs"),
                       private_inputs=field("Private Inputs"), wires=field("Wires"))


def required_power(info: CircuitInfo) -> int:
    # snarkjs groth16 setup needs 2^power >= constraints + public inputs + outputs + 1.
    return max(8, math.ceil(math.log2(info.constraints + info.public_inputs + 1)))


def local_dev_ptau(power: int, work: Path) -> Path:
    """A powers of tau made on this machine: fine for development, NOT for production."""
    existing = _ptau_at_least(work, power)
    if existing is not None:
        return existing
    final = work / f"pot{power}_local_dev.ptau"
    _log(f"making a LOCAL DEVELOPMENT ptau 2^{power} (prepare phase2 takes minutes)")
    new, contributed = work / f"pot{power}_0000.ptau", work / f"pot{power}_0001.ptau"
    run_snarkjs(["powersoftau", "new", "bn128", str(power), str(new)])
    run_snarkjs(["powersoftau", "contribute", str(new), str(contributed), "--name=HealthLedger local dev",
                 f"-e={os.urandom(64).hex()}"])
    run_snarkjs(["powersoftau", "prepare", "phase2", str(contributed), str(final)], timeout_s=3600)
    return final


def _ptau_at_least(folder: Path, power: int) -> Path | None:
    for candidate in sorted(folder.glob("pot*_local_dev.ptau")):
        match = re.match(r"pot(\d+)_", candidate.name)
        if match and int(match.group(1)) >= power:
            return candidate
    return None


def export_verifier(zkey: Path, out: Path) -> None:
    run_snarkjs(["zkey", "export", "solidityverifier", str(zkey), str(out)])
    source = out.read_text()
    if "contract Groth16Verifier" not in source:
        raise SystemExit("unexpected Solidity verifier template (no contract Groth16Verifier)")
    out.write_text(source.replace("contract Groth16Verifier", f"contract {VERIFIER_CONTRACT}", 1))


def write_sha256sums(folder: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.iterdir())
             if p.is_file() and p.name not in ("SHA256SUMS", "BUILD.md")]
    (folder / "SHA256SUMS").write_text("".join(lines))


def build(ptau: Path | None, work: Path, *, verify: bool = True) -> Path:
    out = ARTIFACTS / CIRCUIT
    _log("compiling the circuit")
    r1cs = compile_circuit(work)
    info = circuit_info(r1cs)
    power = required_power(info)
    _log(f"{info.constraints} constraints -> needs a ptau of at least 2^{power}")
    local_dev = ptau is None
    if ptau is None:
        ptau = _ptau_at_least(LOCAL_PTAU_DIR, power) or local_dev_ptau(power, work)
    _log(f"groth16 setup with {ptau.name}")
    zkey0, zkey = work / f"{CIRCUIT}_0000.zkey", work / f"{CIRCUIT}.zkey"
    run_snarkjs(["groth16", "setup", str(r1cs), str(ptau), str(zkey0)])
    contribution = ceremony.contribute(zkey0, zkey, name="HealthLedger dev build", entropy=os.urandom(64))
    _log(f"phase-2 contribution {contribution[:16]}...")

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    shutil.copy(work / f"{CIRCUIT}_js" / f"{CIRCUIT}.wasm", out / f"{CIRCUIT}.wasm")
    shutil.copy(zkey, out / f"{CIRCUIT}.zkey")
    shutil.copy(r1cs, out / f"{CIRCUIT}.r1cs")
    run_snarkjs(["zkey", "export", "verificationkey", str(zkey), str(out / "verification_key.json")])
    export_verifier(zkey, CONTRACTS / f"{VERIFIER_CONTRACT}.sol")

    if local_dev and ptau.parent != LOCAL_PTAU_DIR and ptau.stat().st_size <= MAX_COMMITTED_PTAU_BYTES:
        LOCAL_PTAU_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(ptau, LOCAL_PTAU_DIR / ptau.name)
    if verify:
        _log("verifying the zkey against r1cs and ptau (snarkjs zkey verify)")
        rec = ceremony.record(CIRCUIT, r1cs, ptau, zkey)
        (out / "ceremony.json").write_text(rec.to_json())
    write_sha256sums(out)
    (out / "BUILD.md").write_text(build_notes(info, power, ptau, local_dev, out))
    _log(f"artifacts written to {out.relative_to(REPO)}")
    return out


def build_notes(info: CircuitInfo, power: int, ptau: Path, local_dev: bool, out: Path) -> str:
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    size_lines = "\n".join(f"| `{name}` | {size:,} |" for name, size in sizes.items())
    ptau_note = (
        "**LOCAL DEVELOPMENT PTAU.** The powers of tau were generated on the build machine by one party "
        "(`snarkjs powersoftau new` + one `contribute` + `prepare phase2`). Whoever ran it could have kept "
        "tau and could forge proofs. These artifacts are for development and tests ONLY."
        if local_dev else
        f"Built with the supplied ptau `{ptau.name}`; check its SHA-256 against the published value."
    )
    return f"""# Eligibility circuit artifacts

{ptau_note}

Generated by `python -m zk.build` on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; do not edit by hand.

## Circuit
- Source: `zk/circuits/eligibility.circom` (+ `zk/circuits/lib/`), circomlib 2.0.5, compiled with
  circom2 0.2.23 (`circom2 eligibility.circom --r1cs --wasm --sym --O2 -l node_modules/circomlib/circuits`).
- Instance `Eligibility(depth=20, conditions=8, labs=3, inclusion=8, exclusion=8)`.
- Constraints: {info.constraints:,}; wires: {info.wires:,}; public inputs: {info.public_inputs}; private
  inputs: {info.private_inputs}.
- Public signals (order of `publicSignals` and of the Solidity verifier's `_pubSignals`):
  `[root, studyId, criteriaHash, enrollee, nullifier]` (no outputs).

## Keys
- ptau: `{ptau.name}` (the circuit needs at least 2^{power}; SHA-256 `{sha256_file(ptau)}`){', committed in `zk/artifacts/ptau/`' if (LOCAL_PTAU_DIR / ptau.name).exists() else ''}.
- `snarkjs groth16 setup eligibility.r1cs PTAU eligibility_0000.zkey`, then one phase-2 contribution
  (`snarkjs zkey contribute`, entropy from `os.urandom`, discarded), then
  `snarkjs zkey export verificationkey` and `snarkjs zkey export solidityverifier` (contract renamed
  `{VERIFIER_CONTRACT}`, written to `healthledger/ledger/contracts/`).
- `ceremony.json`: SHA-256 of r1cs, ptau and zkey and every contribution hash, as printed by
  `snarkjs zkey verify` (re-check with `healthledger zk ceremony verify`).

## Production
Do not use these keys in production. Instead:
1. Phase 1: a public ceremony's file, e.g. the perpetual powers of tau `powersOfTau28_hez_final_{power}.ptau`,
   checked against its published hash (`healthledger zk ceremony` takes any ptau).
2. Phase 2: `snarkjs groth16 setup` on it, then every consortium hospital adds a contribution in turn
   (`healthledger zk ceremony contribute --zkey IN --out OUT --name HOSPITAL`), publishing its
   contribution hash; finish with a random beacon if desired.
3. Anyone runs `healthledger zk ceremony verify --r1cs ... --ptau ... --zkey ...` and `record`, and compares
   the listed contribution hashes with the announced ones. Only then export the verification key and the
   Solidity verifier and deploy.

## Files (bytes)
| file | size |
|---|---|
{size_lines}

`SHA256SUMS` lists the SHA-256 of every file here except itself and this note
(`sha256sum -c SHA256SUMS`).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zk.build", description=__doc__.splitlines()[0])
    parser.add_argument("--ptau", type=Path, help="phase-1 file (default: the committed local dev ptau)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "zkbuild" / CIRCUIT)
    parser.add_argument("--skip-verify", action="store_true", help="skip `snarkjs zkey verify` (slow)")
    args = parser.parse_args(argv)
    if args.ptau is not None and not args.ptau.is_file():
        parser.error(f"ptau not found: {args.ptau}")
    build(args.ptau, args.work_dir, verify=not args.skip_verify)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
