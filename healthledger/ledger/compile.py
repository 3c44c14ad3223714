"""Compile the Solidity contracts with pinned solcjs and read the committed artifacts.

`python -m healthledger.ledger.compile` rewrites `artifacts/<Name>.json` for every deployable contract
in `contracts/`; `--check` exits non-zero when the committed artifacts differ from a fresh build. The
service itself only reads artifacts, so it runs without Node.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from healthledger.errors import ConfigurationError

LEDGER_DIR = Path(__file__).resolve().parent
CONTRACTS_DIR = LEDGER_DIR / "contracts"
ARTIFACTS_DIR = LEDGER_DIR / "artifacts"
REPO_ROOT = LEDGER_DIR.parent.parent
SOLCJS = REPO_ROOT / "node_modules" / ".bin" / "solcjs"
SOLC_VERSION = "0.8.37"

# Pinned compiler settings. evmVersion: py-evm (the embedded chain) runs up to Prague; solc's default
# (osaka) emits code it cannot run. Metadata hash and CBOR are off so builds are byte-for-byte
# reproducible (the metadata embeds source paths). Many optimizer runs: calls matter, deployment is once.
COMPILER_SETTINGS: dict[str, Any] = {
    "evmVersion": "prague",
    "optimizer": {"enabled": True, "runs": 1_000_000},
    "metadata": {"bytecodeHash": "none", "appendCBOR": False},
    "outputSelection": {
        "*": {
            "*": [
                "abi",
                "evm.bytecode.object",
                "evm.deployedBytecode.object",
                "evm.deployedBytecode.immutableReferences",
            ]
        }
    },
}
COMPILE_TIMEOUT_SECONDS = 300


class CompileError(ConfigurationError):
    """solcjs is missing or rejected the sources."""


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: what the service needs to deploy it and to talk to it."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    deployed_bytecode: bytes
    immutable_ranges: tuple[tuple[int, int], ...] = ()

    def matches_runtime_code(self, code: bytes) -> bool:
        """True if on-chain runtime code is this contract's, whatever its constructor wrote into
        the immutable slots (solc leaves those bytes zero in deployedBytecode)."""
        if len(code) != len(self.deployed_bytecode):
            return False
        masked = bytearray(code)
        for start, length in self.immutable_ranges:
            masked[start : start + length] = bytes(length)
        return bytes(masked) == self.deployed_bytecode


def settings_hash() -> str:
    return hashlib.sha256(json.dumps(COMPILER_SETTINGS, sort_keys=True).encode()).hexdigest()


def standard_json_input(contracts_dir: Path = CONTRACTS_DIR) -> dict[str, Any]:
    """solc standard-JSON input with every .sol file of the folder, named by file name so that
    `import "./X.sol"` resolves within the input (no import callback needed)."""
    sources = {p.name: {"content": p.read_text()} for p in sorted(contracts_dir.glob("*.sol"))}
    if not sources:
        raise CompileError(f"no .sol files in {contracts_dir}")
    return {"language": "Solidity", "sources": sources, "settings": COMPILER_SETTINGS}


def compile_contracts(
    contracts_dir: Path = CONTRACTS_DIR, solcjs: Path = SOLCJS
) -> dict[str, dict[str, Any]]:
    """Artifact documents (as written to disk) for every contract with bytecode, by contract name."""
    if not solcjs.exists():
        raise CompileError(f"solcjs not found at {solcjs}: run `npm ci`")
    version = subprocess.run(
        [str(solcjs), "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout.strip()
    if not version.startswith(SOLC_VERSION):
        raise CompileError(f"solcjs {SOLC_VERSION} expected, found {version or 'nothing'}")
    # stdout goes to a file, not a pipe: solcjs calls process.exit(), which cuts piped output at 64 KiB.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            [str(solcjs), "--standard-json"],
            input=json.dumps(standard_json_input(contracts_dir)),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=COMPILE_TIMEOUT_SECONDS,
            check=False,
            env={**os.environ, "NODE_OPTIONS": "--max-old-space-size=1024"},
        )
        out.seek(0)
        stdout = out.read()
    # solcjs may print notices (e.g. about SMT solvers) on stdout before the JSON document.
    start = stdout.find("{")
    try:
        output = json.loads(stdout[start:] if start >= 0 else stdout)
    except ValueError as exc:
        raise CompileError(
            f"solcjs (exit {proc.returncode}) produced no JSON output: {(proc.stderr or stdout).strip()[:500]}"
        ) from exc
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError(
            "solc: " + "\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors)
        )
    documents: dict[str, dict[str, Any]] = {}
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        for name, out in sorted(contracts.items()):
            bytecode = out["evm"]["bytecode"]["object"]
            if not bytecode:  # abstract contracts and interfaces
                continue
            if name in documents:
                raise CompileError(f"contract name {name} defined twice")
            documents[name] = {
                "contractName": name,
                "sourceName": source_name,
                "abi": out["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + out["evm"]["deployedBytecode"]["object"],
                # Byte ranges of the runtime code that the constructor fills (Solidity immutables).
                "immutableRanges": sorted(
                    [ref["start"], ref["length"]]
                    for refs in out["evm"]["deployedBytecode"].get("immutableReferences", {}).values()
                    for ref in refs
                ),
                "compiler": {"name": "solcjs", "version": version},
                "settings": COMPILER_SETTINGS,
                "settingsHash": settings_hash(),
            }
    return documents


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_artifacts(documents: dict[str, dict[str, Any]], artifacts_dir: Path = ARTIFACTS_DIR) -> list[Path]:
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, document in documents.items():
        path = artifacts_dir / f"{name}.json"
        path.write_text(render(document))
        paths.append(path)
    return paths


def artifact_differences(
    documents: dict[str, dict[str, Any]], artifacts_dir: Path = ARTIFACTS_DIR
) -> list[str]:
    """Names of contracts whose committed artifact is missing, stale or extra (empty = all match)."""
    problems = []
    for name, document in documents.items():
        path = artifacts_dir / f"{name}.json"
        if not path.exists():
            problems.append(f"{name}: no committed artifact")
            continue
        committed = json.loads(path.read_text())
        for key in ("abi", "bytecode", "deployedBytecode", "immutableRanges", "settingsHash"):
            if committed.get(key) != document[key]:
                problems.append(f"{name}: {key} differs")
    for path in sorted(artifacts_dir.glob("*.json")):
        if path.stem not in documents:
            problems.append(f"{path.stem}: artifact without a source contract")
    return problems


@cache
def load_artifact(name: str) -> Artifact:
    """The committed artifact of a contract (no Node needed)."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"contract artifact {name} is missing or unreadable") from exc
    return Artifact(
        name=name,
        abi=document["abi"],
        bytecode=bytes.fromhex(document["bytecode"].removeprefix("0x")),
        deployed_bytecode=bytes.fromhex(document["deployedBytecode"].removeprefix("0x")),
        immutable_ranges=tuple(
            (int(start), int(length)) for start, length in document.get("immutableRanges", [])
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare with the committed artifacts")
    args = parser.parse_args(argv)
    try:
        documents = compile_contracts()
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        problems = artifact_differences(documents)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for path in write_artifacts(documents):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
