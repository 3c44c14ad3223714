"""CLI commands of the store: `import`, `rotate-keys`, `erase-patient`."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from healthledger.runtime import Runtime
from healthledger.store import maintenance


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--show", "show", default=20, show_default=True, help="skipped/rejected entries listed per file")
@click.pass_obj
def import_command(runtime: Runtime, paths: tuple[Path, ...], show: int) -> None:
    """Import FHIR Bundle (.json) and Bulk Data NDJSON (.ndjson) files, or folders of them."""
    from healthledger.store.importer import Importer, discover

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise click.ClickException(f"no such file or folder: {', '.join(missing)}")
    files = discover(paths)
    if not files:
        raise click.ClickException("no .json or .ndjson files found")
    importer = Importer(runtime.store)
    console = Console(stderr=True)
    reports = []
    total = sum(f.stat().st_size for f in files if f.is_file())
    started = time.monotonic()
    if not console.is_terminal:
        # Output to a file or a pipe (CI, a log): one plain line per file, no bar redrawn in place.
        for n, path in enumerate(files, start=1):
            size = path.stat().st_size if path.is_file() else 0
            click.echo(f"importing {path.name} ({n}/{len(files)}, {size / 1e6:.1f} MB)", err=True)
            done = importer.import_file(path)
            reports.append(done)
            click.echo(f"  {path.name}: {done.imported} imported, {done.skipped} skipped, {done.rejected} rejected"
                       + (" (unreadable)" if done.unreadable else ""), err=True)
    else:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) as progress:
            task = progress.add_task("importing", total=total)
            for path in files:
                progress.update(task, description=f"importing {path.name}")
                before = progress.tasks[0].completed
                reports.append(importer.import_file(path, lambda n: progress.advance(task, n)))
                progress.update(task, completed=before + (path.stat().st_size if path.is_file() else 0))
    from healthledger.store.importer import ImportReport

    report = ImportReport(reports)
    elapsed = time.monotonic() - started
    _print_import_summary(Console(), report, show)
    if report.imported:
        click.echo(f"{report.imported} resources imported in {elapsed:.1f} s ({report.imported / elapsed:.0f}/s)")
    if report.failed:
        raise click.ClickException("nothing was imported" if not any(f.unreadable for f in reports)
                                   else "some files could not be read")


def _print_import_summary(console: Console, report, show: int) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="Import summary")
    table.add_column("file")
    table.add_column("imported", justify="right")
    table.add_column("skipped", justify="right")
    table.add_column("rejected", justify="right")
    for f in report.files:
        name = Path(f.path).name
        if f.unreadable:
            table.add_row(name, "-", "-", "-", style="red")
            continue
        table.add_row(name, str(f.imported), str(f.skipped), str(f.rejected))
    table.add_row("total", str(report.imported), str(report.skipped), str(report.rejected), style="bold")
    console.print(table)
    for f in report.files:
        name = Path(f.path).name
        if f.unreadable:
            console.print(f"[red]{name}: {f.unreadable}[/red]")
        for where, kind, reason in f.problems[:show]:
            console.print(f"{name} {where}: {kind}: {reason}", markup=False, highlight=False)
        if len(f.problems) > show:
            console.print(f"{name}: ... and {len(f.problems) - show} more")


@click.command("rotate-keys")
@click.option("--retire-old", is_flag=True, help="remove old key-encryption keys once nothing depends on them")
@click.option("--retire-only", is_flag=True, help="no new key: rewrap to the active one and retire the old ones")
@click.pass_obj
def rotate_keys_command(runtime: Runtime, retire_old: bool, retire_only: bool) -> None:
    """Create a new key-encryption key and rewrap every data key with it (no re-encryption, no downtime)."""
    from healthledger.key_rotation import rewrap_outside_store

    store = runtime.store
    report = maintenance.rotate_keys(store, rotate=not retire_only)
    # Keys of other packages (chain operator, token signing, patients' recovery wraps) move too,
    # so the old KEKs can then be retired in the same run.
    for moved in rewrap_outside_store(runtime.settings, runtime.key_provider, runtime.sessions):
        click.echo(f"rewrapped: {moved}")
    if retire_old or retire_only:
        retired = maintenance.rotate_keys(store, retire_old=True, rotate=False)
        report = replace(retired, new_kek_id=report.new_kek_id, rewrapped=report.rewrapped + retired.rewrapped)
    click.echo(f"{'active' if retire_only else 'new'} key-encryption key: {report.new_kek_id}")
    click.echo(f"data keys rewrapped: {report.rewrapped}")
    if report.remaining_on_old:
        click.echo(f"keys still under an old key-encryption key: {report.remaining_on_old} (run again)")
    if retire_old or retire_only:
        if report.retired:
            from healthledger.key_custody import retirement_notice

            click.echo(f"retired: {', '.join(report.retired)}")
            click.echo("\n".join(retirement_notice(report.retired)))
        elif report.blocked_by:
            click.echo("old key-encryption keys NOT retired: still used outside the store by")
            for user in report.blocked_by:
                click.echo(f"  {user}")
            click.echo("rewrap those with their own commands, then run: healthledger rotate-keys --retire-only")
        else:
            click.echo("nothing retired")


@click.command("erase-patient")
@click.argument("patient_id")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.pass_obj
def erase_patient_command(runtime: Runtime, patient_id: str, yes: bool) -> None:
    """Crypto-shred every record of a patient: their data key is destroyed; reads then say gone."""
    from healthledger.store.repository import check_id

    check_id(patient_id)
    if not yes:
        click.confirm(
            f"Destroy the data key of Patient/{patient_id}? Their records become unreadable for good.", abort=True
        )
    report = maintenance.erase_patient(runtime.store, patient_id)
    click.echo(f"erased Patient/{patient_id}: data key {'destroyed' if report.key_destroyed else 'already destroyed'}")
    for resource_type, n in report.resources.items():
        click.echo(f"  {resource_type}: {n}")
    click.echo(f"  versions made unreadable (history included): {report.versions}")
    from healthledger.key_custody import erasure_notice

    click.echo("\n".join(erasure_notice(runtime.key_provider.kek_ids())))
