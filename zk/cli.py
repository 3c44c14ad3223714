"""`zk` commands for auditors and operators: `healthledger zk ...` or `python -m zk ...`.

Other `zk` modules add subcommands by defining `register(group: click.Group) -> None` and being listed
in EXTENSION_MODULES (loaded when the group is built, so importing this module stays cheap).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from zk.errors import ZkError

EXTENSION_MODULES = ("zk.ceremony",)

EXIT_VALID, EXIT_INVALID, EXIT_MALFORMED = 0, 1, 2


@click.group("zk", context_settings={"help_option_names": ["-h", "--help"]})
def zk_group() -> None:
    """Zero-knowledge eligibility proofs: verify snarkjs Groth16 proofs, calldata, ceremonies."""


@zk_group.command("verify")
@click.option("--vkey", "vkey_path", required=True, type=click.Path(path_type=Path), help="verification_key.json")
@click.option("--proof", "proof_path", required=True, type=click.Path(path_type=Path), help="proof.json")
@click.option("--public", "public_path", required=True, type=click.Path(path_type=Path), help="public.json")
def verify_command(vkey_path: Path, proof_path: Path, public_path: Path) -> None:
    """Verify a Groth16 proof in snarkjs format. Exit 0 valid, 1 invalid, 2 malformed input."""
    from zk.groth16 import verify
    from zk.snarkjs_io import load_proof, load_public_signals, load_verification_key

    try:
        ok = verify(load_verification_key(vkey_path), load_proof(proof_path), load_public_signals(public_path))
    except ZkError as exc:
        click.echo(f"malformed input: {exc}", err=True)
        sys.exit(EXIT_MALFORMED)
    if ok:
        click.echo("valid proof")
        sys.exit(EXIT_VALID)
    click.echo("invalid proof", err=True)
    sys.exit(EXIT_INVALID)


@zk_group.command("calldata")
@click.option("--proof", "proof_path", required=True, type=click.Path(path_type=Path), help="proof.json")
@click.option("--public", "public_path", required=True, type=click.Path(path_type=Path), help="public.json")
def calldata_command(proof_path: Path, public_path: Path) -> None:
    """Print verifyProof(a, b, c, input) arguments, as `snarkjs zkey export soliditycalldata`."""
    from zk.snarkjs_io import format_solidity_calldata, load_proof, load_public_signals, solidity_calldata

    try:
        text = format_solidity_calldata(solidity_calldata(load_proof(proof_path), load_public_signals(public_path)))
    except ZkError as exc:
        click.echo(f"malformed input: {exc}", err=True)
        sys.exit(EXIT_MALFORMED)
    click.echo(text)


def _load_extensions(group: click.Group) -> None:
    for name in EXTENSION_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # optional extension not present
            raise
        register = getattr(module, "register", None)
        if callable(register):
            register(group)


_extensions_loaded = False


def build_zk_group() -> click.Group:
    """The `zk` group with every extension's subcommands attached (idempotent)."""
    global _extensions_loaded
    if not _extensions_loaded:
        _extensions_loaded = True
        _load_extensions(zk_group)
    return zk_group


def main() -> None:
    build_zk_group()(prog_name="python -m zk")
