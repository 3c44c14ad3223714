"""The `healthledger` command: every package's commands, each handed the runtime, their errors reported once."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from healthledger.config import Settings
from healthledger.errors import HealthLedgerError
from healthledger.runtime import Runtime

if TYPE_CHECKING:
    from collections.abc import Callable

    from healthledger.app import Bootstrapped
from zk.cli import LazyGroup

# Commands each package contributes, imported only when used (so `healthledger import` does not load web3,
# and a package's command module is the only place its commands are defined): "module:attribute".
# Each takes the invocation's Runtime with `click.pass_obj` and builds nothing itself.
LAZY_COMMANDS: dict[str, str] = {
    "import": "healthledger.store.commands:import_command",
    "rotate-keys": "healthledger.store.commands:rotate_keys_command",
    "erase-patient": "healthledger.store.commands:erase_patient_command",
    "zk": "zk.cli:zk_group",
    "clients": "healthledger.auth.commands:clients_group",
    "users": "healthledger.auth.commands:users_group",
    "chain": "healthledger.ledger.commands:chain_group",
    "relay": "healthledger.ledger.relay_commands:relay_group",
    "anchor": "healthledger.audit.commands:anchor_command",
    "audit": "healthledger.audit.commands:audit_group",
    "credentials": "healthledger.research.commands:credentials_group",
    "study": "healthledger.research.commands:study_group",
    "research": "healthledger.research.commands:research_group",
    "backup": "healthledger.backup_commands:backup_command",
    "restore": "healthledger.backup_commands:restore_command",
    "keys": "healthledger.backup_commands:keys_group",
    "research-data": "healthledger.research.data_commands:research_data_group",
    "federation": "healthledger.federation.commands:federation_group",
}


class _HealthLedgerGroup(LazyGroup):
    """The root group: any HealthLedgerError a command lets through is one `Error: <message>` line, exit 1
    (every such message is safe to show; the traceback is not)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HealthLedgerError as exc:
            raise click.ClickException(exc.message) from None


@click.group(cls=_HealthLedgerGroup, lazy_commands=LAZY_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """HealthLedger: encrypted FHIR store, on-chain consent ledger, zero-knowledge eligibility."""
    from healthledger.observability import configure_logging

    # Every command's log lines as the service's (JSON by default) and on stderr, stdout being the command's output;
    # before the command runs, so before the settings are read (a command may still override some).
    configure_logging(_log_format())
    if ctx.obj is None:  # tests may hand in a runtime of their own
        runtime = Runtime()
        ctx.call_on_close(runtime.close)
        ctx.obj = runtime


def _log_format() -> str:
    """HEALTHLEDGER_LOG_FORMAT as the settings would give it (the settings file, then the environment), without
    reading the rest of the settings: a bad value or file falls back to JSON, and the command that reads the
    settings reports it."""
    import json
    import os
    from pathlib import Path

    from healthledger.config import SETTINGS_FILE_ENV
    from healthledger.observability import LOG_FORMATS

    chosen = os.environ.get("HEALTHLEDGER_LOG_FORMAT")
    if chosen is None and os.environ.get(SETTINGS_FILE_ENV):
        try:
            chosen = json.loads(Path(os.environ[SETTINGS_FILE_ENV]).read_text()).get("log_format")
        except (OSError, ValueError, AttributeError):
            chosen = None
    return chosen if chosen in LOG_FORMATS else "json"


@cli.command()
@click.option("--organization", "organization", default=None, metavar="NAME",
              help="name of the hospital's own Organization (default: HealthLedger Hospital; renames it if given)")
@click.pass_obj
def init(runtime: Runtime, organization: str | None) -> None:
    """Create the data directory and keys, bring the database schema up to date, and make the hospital's
    own Organization the home organisation (unless HEALTHLEDGER_HOME_ORGANIZATION names one)."""
    done = runtime.bootstrap(organization=organization, ensure_home=True)
    click.echo(f"initialised: data in {runtime.settings.data_dir.resolve()}")
    if done is not None:
        _echo_home(done, runtime.settings)


def _echo_home(done: Bootstrapped, settings: Settings) -> None:
    if settings.home_organization:
        click.echo(f"home organisation: {settings.home_organization} (HEALTHLEDGER_HOME_ORGANIZATION)")
    elif done.home_organization:
        what = "made" if done.home_made else "kept"
        name = f" \"{done.home_name}\"" if done.home_name else ""
        click.echo(f"home organisation: {done.home_organization}{name} ({what}; it cares for every patient, and "
                   "clients and staff registered without --organization act for it)")


def _echo_start(done: Bootstrapped | None, settings: Settings) -> None:
    """Start-up notes: the home organisation, the demo data, and how to get a token."""
    if done is None:
        return
    _echo_home(done, settings)
    if done.demo_patients:
        state = f"loaded ({done.demo_loaded} resources)" if done.demo_loaded else "already loaded"
        click.echo(f"demo data: {done.demo_patients} generated patients {state}; HEALTHLEDGER_LOAD_DEMO_DATA=false "
                   "turns this off")
    base = f"http://{settings.host}:{settings.port}"
    exe = _command_name()
    click.echo(f"a token: {exe} clients add \"My EHR\" --scopes \"system/Patient.rs system/Observation.rs\" --secret   (prints an id and a secret), "
               f"then POST {base}/auth/token with grant_type=client_credentials, client_id, client_secret and "
               "scope (README: First ten minutes)")
    if settings.accepted_dev_token:
        click.echo("development token (loopback only): Authorization: Bearer " + settings.accepted_dev_token)


def _command_name() -> str:
    """How to type this command again: `healthledger` if that is on PATH, else the path that ran it."""
    import os
    import shutil

    argv0 = sys.argv[0] if sys.argv and sys.argv[0].endswith("healthledger") else ""
    if argv0 and shutil.which("healthledger") == os.path.abspath(argv0):
        return "healthledger"
    return os.path.relpath(argv0) if argv0 else "healthledger"


@cli.command()
@click.option("--host", default=None, help="interface to bind (default from settings: 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default from settings: 8080)")
@click.option("--workers", default=None, type=int, help="gunicorn workers")
@click.option("--dev", is_flag=True, help="Flask's development server instead of gunicorn")
@click.option("--ledger/--no-ledger", default=True, show_default=True,
              help="run the chain side too: embedded chain node, contract check, outbox/indexer/anchoring worker")
@click.pass_obj
def serve(runtime: Runtime, host: str | None, port: int | None, workers: int | None, dev: bool,
          ledger: bool) -> None:
    """Run the service (gunicorn; the Flask server only with --dev)."""
    runtime.override(**{k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None})
    settings = runtime.settings
    from healthledger.api.operations import mark_replica_started
    from healthledger.app import configure_logging
    from healthledger.observability import enable_multiprocess

    configure_logging(settings.log_format)
    # Files the service's processes make (gunicorn's metrics files among them) are private from the start, so
    # a command run beside the service does not find them loose and tighten them with a warning each.
    import os

    os.umask(os.umask(0o077) | 0o077)
    # Before any worker forks: every worker writes its metrics where any worker's /metrics reads them, and
    # knows when the replica started (/readyz's start-up gate, passed once per replica, not per worker).
    enable_multiprocess(settings.data_dir / "metrics")
    mark_replica_started()
    done = runtime.bootstrap()  # schema, keys, home organisation and demo data before any worker starts
    if not ledger:
        _echo_start(done, settings)
        _serve_http(settings, dev)
        return
    from healthledger.ledger.service import ledger_sidecars, shutting_down

    with ledger_sidecars(settings) as run_settings:
        chain = "embedded chain" if not settings.chain_url else "chain at the configured URL"
        click.echo(f"ledger: {chain} at {run_settings.chain_url}, contracts verified, worker running")
        _echo_start(done, settings)
        _serve_http(run_settings, dev, on_stop=shutting_down)


def _serve_http(settings: Settings, dev: bool, on_stop: Callable[[], None] | None = None) -> None:
    from healthledger.app import create_app

    click.echo(f"HealthLedger on http://{settings.host}:{settings.port}/  (data: {settings.data_dir.resolve()})")
    if dev:
        create_app(settings).run(host=settings.host, port=settings.port, debug=False,
                                 request_handler=_dev_request_handler())
        return
    from healthledger.server import run_gunicorn

    run_gunicorn(settings, on_stop=on_stop)


def _dev_request_handler() -> type:
    """werkzeug's handler, logging the path without its query string (search values are PHI)."""
    from werkzeug.serving import WSGIRequestHandler

    class _PathOnlyLog(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            self.log("info", '"%s %s" %s %s', self.command, self.path.split("?", 1)[0], code, size)

    return _PathOnlyLog


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
