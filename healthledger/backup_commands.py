"""`healthledger backup` and `healthledger restore`: the database and the key material, each to its own place."""

from __future__ import annotations

from pathlib import Path

import click

from healthledger.runtime import Runtime


@click.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--keys", "keys_dest", type=click.Path(path_type=Path), default=None,
              help="also copy the key material here (a different place, with its own custody)")
@click.pass_obj
def backup_command(runtime: Runtime, dest: Path, keys_dest: Path | None) -> None:
    """Back up the database (online: writes go on) and an embedded chain's state into the new folder DEST."""
    from healthledger.backup import backup

    report = backup(runtime.settings, dest, keys_dest=keys_dest)
    click.echo(f"backup of the {report.database} database in {report.path} ({len(report.files)} files, SHA-256 in "
               "manifest.json)")
    if report.keys_path is None:
        click.echo("keys not included: back them up apart (`--keys DIR`, or your KMS's own backup)")
    else:
        click.echo(f"key material in {report.keys_path}: keep it apart from the data backup")


@click.command("restore")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--keys", "keys_source", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a key backup made by `backup --keys`")
@click.option("--force", is_flag=True, help="replace an existing database, chain state or key files")
@click.pass_obj
def restore_command(runtime: Runtime, source: Path, keys_source: Path | None, force: bool) -> None:
    """Restore a backup made by `healthledger backup` into the configured database and data directory."""
    from healthledger.backup import restore

    kind = restore(runtime.settings, source, keys_source=keys_source, force=force)
    runtime.migrate()  # a backup of an older release is brought to this release's schema
    click.echo(f"restored the {kind} database from {source}; check it with `healthledger audit verify`")
