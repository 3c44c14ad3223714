"""`healthledger chain`: deploy the contracts, serve the embedded chain over JSON-RPC, show status."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from healthledger.errors import ChainError, HealthLedgerError
from healthledger.runtime import Runtime

if TYPE_CHECKING:
    from healthledger.ledger.chain import Chain


@click.group("chain")
def chain_group() -> None:
    """The on-chain consent ledger: contracts and the chain they live on."""


def _bootstrapped_chain(runtime: Runtime) -> Chain:
    """The runtime's chain, after the service's one-time setup (schema, keys)."""
    runtime.bootstrap()
    return runtime.chain


def wait_for_chain(open_chain: Callable[[], Chain], *, timeout: float, on_wait: Callable[[str, float], None],
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Chain:
    """`open_chain()` once the node answers, trying again (1 s, doubling, at most 5 s apart) for `timeout` seconds:
    at a first deployment the node may start after the job (compose, a Kubernetes Job beside new validators).
    `on_wait(reason, seconds_left)` hears of each failed try; the last failure is raised as it came."""
    deadline = clock() + timeout
    pause = 1.0
    while True:
        try:
            return open_chain()
        except ChainError as exc:
            left = deadline - clock()
            if left <= 0:
                raise
            on_wait(exc.message, left)
            sleep(min(pause, left))
            pause = min(pause * 2, 5.0)


@chain_group.command("deploy")
@click.option("--admin", default=None, help="hand the admin role to this address (it must call acceptAdmin)")
@click.option("--force", is_flag=True, help="deploy new instances even if verified ones are recorded")
@click.option("--wait-for-node", "wait_seconds", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="seconds to keep trying a chain node that does not answer yet")
@click.pass_obj
def deploy_command(runtime: Runtime, admin: str | None, force: bool, wait_seconds: float) -> None:
    """Deploy the service's contracts (consent, access-log anchors, credentials, studies and the eligibility
    verifier) and record them in the database; on a chain with some of them recorded, only the missing ones."""
    from healthledger.ledger.deploy import (
        deploy_contracts,
        load_deployments,
        missing_contracts,
        save_deployments,
        verify_deployment,
    )

    runtime.bootstrap()

    def waiting(reason: str, left: float) -> None:
        click.echo(f"waiting for the chain: {reason} ({left:.0f} s left)", err=True)

    try:
        chain = wait_for_chain(lambda: runtime.chain, timeout=wait_seconds, on_wait=waiting)
    except ChainError as exc:
        raise ChainError(f"{exc.message} after {wait_seconds:.0f} s of trying: is the node running, and does "
                         "HEALTHLEDGER_CHAIN_URL name it?") from exc
    with runtime.sessions() as session:
        existing = load_deployments(session, chain.chain_id)
        missing = missing_contracts(existing, chain.chain_id)
        if existing and not force and not missing:
            verify_deployment(chain, existing)
            click.echo(f"already deployed on chain {chain.chain_id} (use --force to deploy again):")
            _print_records(existing)
            return
        if existing and not force:
            for record in existing:
                chain.register(record.name, record.address)
            records = deploy_contracts(chain, names=missing, admin=admin)
        else:
            records = deploy_contracts(chain, admin=admin)
        save_deployments(session, records, now=datetime.now(UTC))
        session.commit()
    click.echo(f"deployed on chain {chain.chain_id} by operator {chain.operator.address}:")
    _print_records(records)
    if admin:
        click.echo(f"admin transfer to {admin} started: it must call acceptAdmin() on each contract")


@chain_group.command("operator")
@click.pass_obj
def operator_command(runtime: Runtime) -> None:
    """The address that signs the service's chain transactions, its key made (wrapped, under the keys dir) if
    absent. Needs no chain and no database: run it where the key material is made, then fund the address."""
    from healthledger.data_dir import private_dir
    from healthledger.ledger.chain import load_or_create_operator

    keys_dir = private_dir(runtime.settings.keys_dir)
    click.echo(load_or_create_operator(keys_dir, runtime.key_provider).address)


@chain_group.command("status")
@click.pass_obj
def status_command(runtime: Runtime) -> None:
    """Chain id, head, operator balance, and whether the recorded contracts match the shipped code."""
    from healthledger.ledger.deploy import load_deployments, verify_deployment

    chain = _bootstrapped_chain(runtime)
    balance = chain.w3.eth.get_balance(chain.operator.address)
    click.echo(f"chain id {chain.chain_id}, head block {chain.head()}")
    click.echo(f"operator {chain.operator.address}, balance {balance / 10**18:.6f} ether")
    with runtime.sessions() as session:
        records = load_deployments(session, chain.chain_id)
    _print_records(records)
    try:
        verify_deployment(chain, records)
        click.echo("contracts: verified")
    except HealthLedgerError as exc:  # a status to report, not a failure of the command
        click.echo(f"contracts: NOT usable: {exc.message}")


# Which contract a role is granted on, when the command line does not say.
# (StudyRegistry's RELAYER, which relays enrolments, needs --contract StudyRegistry.)
_ROLE_HOME = {"RELAYER": "ConsentRegistry", "LOG_ANCHORER": "AccessLogAnchor", "ISSUER": "CredentialRegistry",
              "STUDY_REGISTRAR": "StudyRegistry"}


@chain_group.command("role")
@click.argument("action", type=click.Choice(["grant", "revoke"]))
@click.argument("role")
@click.argument("account")
@click.option(
    "--contract",
    "contract_name",
    default=None,
    help="contract (default: RELAYER -> ConsentRegistry, LOG_ANCHORER -> AccessLogAnchor, ISSUER -> "
    "CredentialRegistry, STUDY_REGISTRAR -> StudyRegistry)",
)
@click.pass_obj
def role_command(runtime: Runtime, action: str, role: str, account: str, contract_name: str | None) -> None:
    """Grant or revoke an operator role (e.g. another hospital's RELAYER) as the contract admin."""
    from eth_utils import is_address, keccak, to_checksum_address

    role = role.upper()
    contract_name = contract_name or _ROLE_HOME.get(role)
    if contract_name is None:
        raise click.BadParameter(f"say which contract {role} is for with --contract")
    if not is_address(account):
        raise click.BadParameter("ACCOUNT must be a 0x-prefixed 20-byte address")

    def act(chain: Any) -> str:
        contract = chain.contract(contract_name)
        function = contract.functions.grantRole if action == "grant" else contract.functions.revokeRole
        receipt = chain.send(function(keccak(text=role), to_checksum_address(account)))
        return f"{action} {role} for {to_checksum_address(account)} on {contract_name}: block {receipt['blockNumber']}"

    _as_admin(runtime, act)


@chain_group.command("pause")
@click.option("--contract", "contract_name", default=None, help="one contract (default: all with roles)")
@click.option("--resume", is_flag=True, help="unpause instead")
@click.pass_obj
def pause_command(runtime: Runtime, contract_name: str | None, resume: bool) -> None:
    """Emergency stop of new grants and anchors (revocation keeps working), or --resume."""
    from healthledger.ledger.deploy import SERVICE_CONTRACTS

    def act(chain: Any) -> str:
        lines = []
        for name in [contract_name] if contract_name else list(SERVICE_CONTRACTS):
            contract = chain.contract(name)
            if bool(chain.call(contract.functions.paused())) != resume:
                lines.append(f"{name}: already {'running' if resume else 'paused'}")
                continue
            chain.send(contract.functions.unpause() if resume else contract.functions.pause())
            lines.append(f"{name}: {'running' if resume else 'paused'}")
        return "\n".join(lines)

    _as_admin(runtime, act)


def _as_admin(runtime: Runtime, act: Callable[[Chain], str]) -> None:
    """Run an admin action with the operator key on the verified, recorded contracts."""
    from healthledger.ledger.chain import ContractRevert
    from healthledger.ledger.deploy import attach_deployments

    chain = _bootstrapped_chain(runtime)
    try:
        with runtime.sessions() as session:
            attach_deployments(chain, session)
        click.echo(act(chain))
    except ContractRevert as exc:
        if exc.error_name == "NotAdmin":
            raise click.ClickException(
                f"the operator {chain.operator.address} is not the admin: use the admin's own wallet or multisig"
            ) from None
        raise


@chain_group.command("node")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface (keep it loopback)")
@click.option(
    "--port", default=8545, show_default=True, type=int, help="0 = any free port (see chain/node.json)"
)
@click.pass_obj
def node_command(runtime: Runtime, host: str, port: int) -> None:
    """Serve the embedded chain over JSON-RPC so several processes (gunicorn workers) can share it.

    Then run the service with HEALTHLEDGER_CHAIN_URL=http://127.0.0.1:PORT.
    """
    from healthledger.data_dir import private_file, secure_data_dir
    from healthledger.ledger.backends.embedded import NODE_FILE
    from healthledger.ledger.backends.rpc_server import EmbeddedRPC, make_server
    from healthledger.ledger.backends.sidecar import die_with_parent
    from healthledger.ledger.chain import embedded_chain

    die_with_parent()
    settings = runtime.settings
    secure_data_dir(settings.data_dir)
    # The embedded chain itself, never the configured one: that could be this very node.
    chain = embedded_chain(settings.data_dir, runtime.key_provider)
    server = make_server(EmbeddedRPC(chain.w3.provider), host, port)  # type: ignore[arg-type]
    url = f"http://{host}:{server.server_address[1]}"
    # Other processes on this data dir find the node here (chain_for falls back to it).
    node_file = private_file(settings.data_dir / "chain" / NODE_FILE)
    node_file.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    # SIGTERM ends serve_forever like Ctrl-C; the chain state is already committed block by block.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    click.echo(f"embedded chain {chain.chain_id} (head {chain.head()}) on {url}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        node_file.unlink(missing_ok=True)
        server.server_close()
        chain.close()


@chain_group.command("besu-network")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--validators", "count", default=4, show_default=True, type=int)
@click.option("--chain-id", default=2026, show_default=True, type=int)
@click.option("--block-period", default=2, show_default=True, type=int, help="seconds between blocks")
@click.option("--hosts", default="172.28.0.11,172.28.0.12,172.28.0.13,172.28.0.14", show_default=True,
              help="comma-separated validator IPs (Besu's enode URLs name IPs; deploy/compose.yaml uses these)")
@click.option("--fund", multiple=True, help="another address to fund at genesis")
@click.option("--fund-operator/--no-fund-operator", default=True, show_default=True,
              help="fund this service's chain operator account (created under the data dir if it does not exist)")
@click.pass_obj
def besu_network_command(runtime: Runtime, out: Path, count: int, chain_id: int, block_period: int, hosts: str,
                         fund: tuple[str, ...], fund_operator: bool) -> None:
    """Generate a Besu QBFT network into OUT: genesis.json, and per validator a new node key (0600), its address and
    config.toml. The keys are secrets: never commit them (deploy/besu/network/ is ignored by git)."""
    from healthledger.ledger.besu import new_validators, write_network
    from healthledger.ledger.chain import load_or_create_operator

    if fund_operator:
        fund = (*fund, load_or_create_operator(runtime.settings.keys_dir, runtime.key_provider).address)

    validators = new_validators(count, [h.strip() for h in hosts.split(",") if h.strip()])
    write_network(out, validators, chain_id=chain_id, fund=fund, block_period_seconds=block_period)
    click.echo(f"QBFT network of {count} validators (tolerates {(count - 1) // 3} faulty) in {out}:")
    for v in validators:
        click.echo(f"  {v.name}  {v.address}  {v.host}")


def _stop_on_signal(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _print_records(records: Any) -> None:
    for r in records:
        click.echo(f"  {r.name:<16} {r.address}  block {r.deployment_block}  code {r.code_hash[:18]}…")
