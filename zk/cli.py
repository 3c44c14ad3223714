"""`zk` commands for auditors and operators: `healthledger zk ...` or `python -m zk ...`.

Subcommands defined in other modules are listed in LAZY_COMMANDS and imported only when used, so
importing this module stays cheap. The healthledger CLI mounts `zk_group` and builds its own command
table on `LazyGroup` (it lives here because zk never imports healthledger).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from zk.errors import ZkError

EXIT_VALID, EXIT_INVALID, EXIT_MALFORMED = 0, 1, 2

# Subcommands of `zk` defined in other modules: name -> "module:attribute" of a click command.
LAZY_COMMANDS: dict[str, str] = {
    "ceremony": "zk.ceremony_cli:ceremony_group",
}


class LazyGroup(click.Group):
    """A click group whose table of "module:attribute" commands is imported on first use."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = self.lazy_commands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
        self.add_command(command, cmd_name)
        return command


@click.group("zk", cls=LazyGroup, lazy_commands=LAZY_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    zk_group(prog_name="python -m zk")
