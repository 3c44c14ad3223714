"""`healthledger zk ceremony ...`: phase-2 contribution, verification and record of a circuit's zkey."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO

import click

from zk import ceremony
from zk.errors import ZkError

_FILE = click.Path(path_type=Path, dir_okay=False)


def _fail(exc: ZkError, code: int = 1) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(code)


@click.group("ceremony")
def ceremony_group() -> None:
    """Groth16 phase-2 ceremony steps (snarkjs under the hood)."""


@ceremony_group.command("contribute")
@click.option("--zkey", "zkey_in", type=_FILE, required=True, help="the current zkey (previous contribution)")
@click.option("--out", "zkey_out", type=_FILE, required=True, help="where to write the new zkey")
@click.option("--name", required=True, help="who contributes (e.g. the hospital's name)")
@click.option("--entropy-file", type=click.File("rb"), default=None,
              help="extra entropy (mixed with 64 bytes from the OS); never reuse or keep it")
def contribute_command(zkey_in: Path, zkey_out: Path, name: str, entropy_file: BinaryIO | None) -> None:
    """Add a phase-2 contribution and print its hash (publish it)."""
    entropy = os.urandom(64) + (entropy_file.read() if entropy_file is not None else b"")
    try:
        digest = ceremony.contribute(zkey_in, zkey_out, name=name, entropy=entropy)
    except ZkError as exc:
        _fail(exc, 2)
    click.echo(f"contribution hash: {digest}")


@ceremony_group.command("verify")
@click.option("--r1cs", type=_FILE, required=True)
@click.option("--ptau", type=_FILE, required=True)
@click.option("--zkey", type=_FILE, required=True)
def verify_command(r1cs: Path, ptau: Path, zkey: Path) -> None:
    """Check the zkey derives from the circuit and ptau; list its contributions. Exit 1 if it does not."""
    try:
        contributions = ceremony.verify(r1cs, ptau, zkey)
    except ceremony.CeremonyError as exc:
        _fail(exc, 1)
    except ZkError as exc:
        _fail(exc, 2)
    click.echo("zkey verified")
    for c in contributions:
        click.echo(f"#{c.index} {c.name}: {c.hash}")


@ceremony_group.command("record")
@click.option("--circuit", default="eligibility", show_default=True)
@click.option("--r1cs", type=_FILE, required=True)
@click.option("--ptau", type=_FILE, required=True)
@click.option("--zkey", type=_FILE, required=True)
@click.option("--out", type=_FILE, default=None, help="write the JSON record here (default: stdout)")
def record_command(circuit: str, r1cs: Path, ptau: Path, zkey: Path, out: Path | None) -> None:
    """Verify, then write a JSON record of the file hashes and every contribution hash."""
    try:
        rec = ceremony.record(circuit, r1cs, ptau, zkey)
    except ceremony.CeremonyError as exc:
        _fail(exc, 1)
    except ZkError as exc:
        _fail(exc, 2)
    if out is None:
        click.echo(rec.to_json(), nl=False)
    else:
        out.write_text(rec.to_json())
        click.echo(f"wrote {out}")
