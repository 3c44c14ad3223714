"""`healthledger backup` and `healthledger restore`: the database and the key material, each to its own place;
`healthledger keys`: which key-encryption keys the service holds, and whether a key backup holds retired ones."""

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
        from healthledger.keys import kek_file_ids

        click.echo(f"key material in {report.keys_path}: keep it apart from the data backup")
        held = kek_file_ids(report.keys_path) or []
        if len(held) > 1:
            click.echo(f"it holds {len(held)} key-encryption keys ({', '.join(held)}): the ones not yet retired open "
                       "older data backups too; `healthledger rotate-keys --retire-only` retires them")
    if report.kek_ids:
        click.echo(f"its data keys are wrapped by {', '.join(report.kek_ids)}: any copy of that key-encryption key (a "
                   "key backup, a replica's kek.json) opens this backup until the key is retired and the copies "
                   "destroyed (docs/operations.md, Backups)")


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
    _warn_if_older_than_the_last_anchor(runtime)


def _warn_if_older_than_the_last_anchor(runtime: Runtime) -> None:
    """A restored log shorter than what the chain has anchored of it: say so loudly, and what follows."""
    import sqlalchemy as sa

    from healthledger.audit.anchoring import RESTORE_DOCS, behind_chain_words, chain_anchor_size
    from healthledger.audit.log import DEFAULT_LOG
    from healthledger.audit.models import AccessLogEntry
    from healthledger.errors import HealthLedgerError
    from healthledger.ledger.deploy import attach_deployments

    try:
        with runtime.sessions() as session:
            attach_deployments(runtime.chain, session)
            local = int(session.scalar(sa.select(sa.func.count()).select_from(AccessLogEntry)
                                       .where(AccessLogEntry.log_id == DEFAULT_LOG)) or 0)
        anchored = chain_anchor_size(runtime.chain, tenant=runtime.settings.tenant)
    except (HealthLedgerError, sa.exc.SQLAlchemyError) as exc:
        message = exc.message if isinstance(exc, HealthLedgerError) else type(exc).__name__
        click.echo(f"could not compare the restored access log with the chain's last anchor ({message}): run "
                   f"`healthledger audit verify` before serving ({RESTORE_DOCS})", err=True)
        return
    if anchored > local:
        click.echo(f"WARNING: {behind_chain_words(anchored, local)}", err=True)


@click.group("keys")
def keys_group() -> None:
    """Key-encryption keys: which the service holds, and which a key backup holds."""


def _held_now(runtime: Runtime) -> list[str]:
    from healthledger.keys import LocalFileKeyProvider, kek_file_ids

    settings = runtime.settings
    if settings.key_provider == "file" and kek_file_ids(settings.keys_dir) is None:
        raise click.ClickException(f"{settings.keys_dir} holds no {LocalFileKeyProvider.FILE_NAME}: run this where the "
                                   "service's keys are (HEALTHLEDGER_DATA_DIR)")
    return runtime.key_provider.kek_ids()


@keys_group.command("list")
@click.pass_obj
def keys_list_command(runtime: Runtime) -> None:
    """The key-encryption keys the service's key provider holds (the active one marked)."""
    held = _held_now(runtime)
    active = runtime.key_provider.active_kek_id()
    for kek_id in held:
        click.echo(f"{kek_id}{'  (active)' if kek_id == active else ''}")


@keys_group.command("add")
@click.pass_obj
def keys_add_command(runtime: Runtime) -> None:
    """Add a key-encryption key and make it active in the key file here, moving no data key: the first step of a
    rotation when replicas mount the key files (a Kubernetes Secret, a compose volume). Hand the new kek.json to
    every replica, then run `healthledger rotate-keys --retire-only` (docs/operations.md, Rotation)."""
    _held_now(runtime)
    kek_id = runtime.key_provider.rotate()
    click.echo(f"new active key-encryption key: {kek_id} (the others kept: {', '.join(k for k in runtime.key_provider.kek_ids() if k != kek_id)})")
    click.echo(f"next: give {runtime.settings.keys_dir / 'kek.json'} to every replica and ledger worker, wait until "
               "each /readyz is ready, then run `healthledger rotate-keys --retire-only` here")


@keys_group.command("check-backup")
@click.argument("key_backups", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def keys_check_backup_command(runtime: Runtime, key_backups: tuple[Path, ...]) -> None:
    """Tell, for each key backup (`backup --keys`), which key-encryption keys it holds and whether any is retired
    (the service no longer holds it): such a backup still opens data backups made before the retirement, records of
    patients erased since included, and must be destroyed. Exits 1 if any holds a retired key."""
    import json

    from healthledger.backup import KEYS_MANIFEST
    from healthledger.keys import kek_file_ids

    held = set(_held_now(runtime))
    to_destroy = []
    for folder in key_backups:
        try:
            made = str(json.loads((folder / KEYS_MANIFEST).read_text()).get("created_at", "date unknown"))
        except (OSError, ValueError):
            made = f"no readable {KEYS_MANIFEST}"
        holds = kek_file_ids(folder)
        if holds is None:
            click.echo(f"{folder} ({made}): holds no key-encryption key (a KMS or HSM keeps them)")
            continue
        retired = [kek_id for kek_id in holds if kek_id not in held]
        click.echo(f"{folder} ({made}): holds {', '.join(holds) or 'no key'}")
        if retired:
            to_destroy.append(folder)
            click.echo(f"  retired: {', '.join(retired)}: DESTROY this key backup: it still opens data backups made "
                       "before the retirement, the records of patients erased since included")
        else:
            click.echo("  no retired key-encryption key")
    if to_destroy:
        raise click.ClickException(f"{len(to_destroy)} key backup(s) hold retired key-encryption keys: "
                                   + ", ".join(str(folder) for folder in to_destroy))
