"""The `healthledger` command. Each package contributes its own commands; this module only wires them."""

from __future__ import annotations

import sys

import click

from healthledger.config import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """HealthLedger: encrypted FHIR store, on-chain consent ledger, zero-knowledge eligibility."""
    ctx.ensure_object(dict)


def load_settings(**overrides: object) -> Settings:
    return Settings.load(**overrides)


@cli.command()
def init() -> None:
    """Create the data directory and keys, and bring the database schema up to date."""
    from healthledger.app import bootstrap

    settings = load_settings()
    bootstrap(settings)
    click.echo(f"initialised: data in {settings.data_dir.resolve()}")


@cli.command()
@click.option("--host", default=None, help="interface to bind (default from settings: 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default from settings: 8080)")
@click.option("--workers", default=None, type=int, help="gunicorn workers")
@click.option("--dev", is_flag=True, help="Flask's development server instead of gunicorn")
def serve(host: str | None, port: int | None, workers: int | None, dev: bool) -> None:
    """Run the service (gunicorn; the Flask server only with --dev)."""
    from healthledger.app import bootstrap, create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    settings = load_settings(**overrides)
    bootstrap(settings)  # schema, keys and demo data before any worker starts
    click.echo(f"HealthLedger on http://{settings.host}:{settings.port}/  (data: {settings.data_dir.resolve()})")
    if dev:
        create_app(settings).run(host=settings.host, port=settings.port, debug=False)
        return
    from healthledger.server import run_gunicorn

    run_gunicorn(settings)


def _register() -> None:
    # Each package owns its commands; add one line here per package.
    from healthledger.store import commands as store_commands

    for command in (store_commands.import_command, store_commands.rotate_keys_command,
                    store_commands.erase_patient_command):
        cli.add_command(command)
    from zk.cli import build_zk_group

    cli.add_command(build_zk_group(), "zk")
    from healthledger.auth.commands import clients_group

    cli.add_command(clients_group)
    from healthledger.ledger.commands import chain_group

    cli.add_command(chain_group)


# Registered when this module is imported, so `cli` is complete for `main()` and for CliRunner tests alike.
_register()


def main() -> None:
    try:
        cli(obj={})
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
