"""`healthledger federation`: the consortium's member directory, for an operator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from healthledger.runtime import Runtime

if TYPE_CHECKING:
    from healthledger.ledger.chain import Chain, ContractRevert

# MemberRegistry.Status, in the order the contract declares it.
_STATUS = ("not in the directory", "waiting to be admitted", "an active member", "removed for good")
_LISTED = "`healthledger federation members` lists the directory"


def registry_refusal(error: ContractRevert, org_id: str, action: str) -> str:
    """MemberRegistry's refusal of `action` on `org_id`, in words that say what to do (the contract's error kept)."""
    name, args = error.error_name, error.error_args
    if name == "WrongStatus" and len(args) == 2:
        status = int(args[1])
        if status == 0:
            said = f"{org_id} has not asked to join: there is no such member ({_LISTED}); its server runs " \
                   "`healthledger federation join` first"
        elif action == "admit" and status == 2:
            said = f"{org_id} is already an active member: nothing to admit"
        elif status == 3:
            said = f"{org_id} was removed for good; an organisation that rejoins does so under a new id"
        else:
            state = _STATUS[status] if status < len(_STATUS) else f"in status {status}"
            said = f"{org_id} is {state}: `federation {action}` does not apply to it"
    elif name == "UnknownMember":
        said = f"{org_id} is not in the directory: no such member ({_LISTED})"
    elif name == "NotAdmin":
        said = f"this server's operator account ({args[0] if args else '?'}) is not the registry's admin: the " \
               f"consortium's admin (who deployed the registry, or was handed the role) runs `federation {action}`"
    elif name == "NotController":
        said = f"{org_id} is controlled by another account: only its own server can do this"
    elif name == "MemberExists":
        said = f"{org_id} has already asked to join or is a member ({_LISTED})"
    elif name == "InvalidMember":
        said = "the organisation id, name or FHIR base URL was refused (empty, or longer than 256 characters)"
    elif name == "ContractPaused":
        said = "the member registry is paused: joining and admitting wait until its admin resumes it"
    else:
        return error.message
    return f"{said} ({error.message.removeprefix('contract refused the call: ')})"


@contextmanager
def _explained(org_id: str, action: str) -> Iterator[None]:
    from healthledger.ledger.chain import ContractRevert

    try:
        yield
    except ContractRevert as exc:
        raise click.ClickException(registry_refusal(exc, org_id, action)) from None


@click.group("federation")
def federation_group() -> None:
    """Hospitals as one network: the on-chain member directory and cross-hospital reads."""


def _chain(runtime: Runtime) -> Chain:
    runtime.bootstrap()
    return runtime.chain


def _attached_chain(runtime: Runtime) -> Chain:
    """The chain, once this service has attached the consortium's MemberRegistry (a clear error otherwise)."""
    from healthledger.federation.registry import attached_registry

    chain = _chain(runtime)
    with runtime.sessions() as session:
        attached_registry(session, chain)
    return chain


def _org_id(runtime: Runtime, org_id: str | None) -> str:
    from healthledger.federation.registry import check_org_id

    value = org_id or runtime.settings.federation_org_id
    if not value:
        raise click.UsageError("name the organisation with --org-id or HEALTHLEDGER_FEDERATION_ORG_ID")
    return check_org_id(value)


@federation_group.command("deploy")
@click.option("--admin", default=None, help="hand the registry's admin role to this address (e.g. a multisig)")
@click.pass_obj
def deploy_command(runtime: Runtime, admin: str | None) -> None:
    """Deploy a new MemberRegistry (the consortium's first member does this once) and record it."""
    from healthledger.federation.registry import deploy_registry, registry_record

    chain = _chain(runtime)
    with runtime.sessions() as session:
        existing = registry_record(session, chain)
        if existing is not None:
            raise click.ClickException(f"a member registry is already recorded for this chain at {existing.address}")
        record = deploy_registry(chain, session, admin=admin, now=datetime.now(UTC))
        session.commit()
    click.echo(f"MemberRegistry deployed at {record.address} (block {record.deployment_block}) on chain {chain.chain_id}")
    click.echo(f"other members attach with: healthledger federation attach {record.address}")


@federation_group.command("attach")
@click.argument("address")
@click.pass_obj
def attach_command(runtime: Runtime, address: str) -> None:
    """Record the consortium's MemberRegistry at ADDRESS (its code is checked against this release's)."""
    from eth_utils import is_address

    from healthledger.federation.registry import attach_registry

    if not is_address(address):
        raise click.BadParameter("ADDRESS must be a 0x-prefixed 20-byte address")
    chain = _chain(runtime)
    with runtime.sessions() as session:
        record = attach_registry(chain, session, address, now=datetime.now(UTC))
        session.commit()
    click.echo(f"attached to MemberRegistry {record.address} (deployed in block {record.deployment_block})")


@federation_group.command("join")
@click.option("--org-id", default=None, help="this organisation's id (default: HEALTHLEDGER_FEDERATION_ORG_ID)")
@click.option("--name", required=True, help="display name patients see, e.g. 'Hospital B'")
@click.option("--fhir-base-url", required=True, help="the base URL of this hospital's FHIR API, as other members reach it")
@click.pass_obj
def join_command(runtime: Runtime, org_id: str | None, name: str, fhir_base_url: str) -> None:
    """Ask to join the consortium with this server's signing key; the consortium's admin then admits."""
    from healthledger.federation.keys import MemberKeys, thumbprint_bytes
    from healthledger.federation.registry import request_join

    org = _org_id(runtime, org_id)
    chain = _attached_chain(runtime)
    keys = MemberKeys.load_or_create(runtime.settings.keys_dir, runtime.key_provider)
    with _explained(org, "join"):
        block = request_join(chain, org, name, fhir_base_url, thumbprint_bytes(keys.current))
    click.echo(f"join requested for {org} in block {block} by {chain.operator.address}; key {keys.current.kid}")
    click.echo(f"the consortium admin admits it with: healthledger federation admit {org}")


@federation_group.command("admit")
@click.argument("org_id")
@click.pass_obj
def admit_command(runtime: Runtime, org_id: str) -> None:
    """(Consortium admin) admit a member that asked to join."""
    from healthledger.federation.registry import admit, check_org_id

    chain = _attached_chain(runtime)
    with _explained(org_id, "admit"):
        block = admit(chain, check_org_id(org_id))
    click.echo(f"{org_id} admitted in block {block}")


@federation_group.command("remove")
@click.argument("org_id")
@click.pass_obj
def remove_command(runtime: Runtime, org_id: str) -> None:
    """(Consortium admin, or the member itself) remove a member for good."""
    from healthledger.federation.registry import check_org_id, remove

    chain = _attached_chain(runtime)
    with _explained(org_id, "remove"):
        block = remove(chain, check_org_id(org_id))
    click.echo(f"{org_id} removed in block {block}")


@federation_group.command("rotate-key")
@click.option("--org-id", default=None, help="this organisation's id (default: HEALTHLEDGER_FEDERATION_ORG_ID)")
@click.pass_obj
def rotate_key_command(runtime: Runtime, org_id: str | None) -> None:
    """Replace this server's signing key in the directory (the old key stops working once indexed).

    The old key stays on file: this server signs with the key its own copy of the directory lists, so it keeps
    using the old one until it indexes the rotation, as the other members do at the same poll. The rotation
    after this one drops it (at most two keys on file)."""
    from healthledger.federation.keys import MemberKeys, thumbprint_bytes
    from healthledger.federation.registry import on_chain_member, rotate_key

    org = _org_id(runtime, org_id)
    chain = _attached_chain(runtime)
    settings, provider = runtime.settings, runtime.key_provider
    keys = MemberKeys.load_or_create(settings.keys_dir, provider)
    listed = on_chain_member(chain, org).key_thumbprint
    if listed and keys.by_thumbprint(listed) is not None:
        keys = keys.keep_only(listed, settings.keys_dir, provider)  # the key before the last rotation goes now
    # The new key is on file before the directory names it, so a crash in between loses nothing.
    keys = keys.with_new_key(settings.keys_dir, provider)
    with _explained(org, "rotate-key"):
        block = rotate_key(chain, org, thumbprint_bytes(keys.current))
    click.echo(f"key of {org} rotated in block {block}: now {keys.current.kid}")


@federation_group.command("status")
@click.option("--org-id", default=None, help="this organisation's id (default: HEALTHLEDGER_FEDERATION_ORG_ID)")
@click.pass_obj
def status_command(runtime: Runtime, org_id: str | None) -> None:
    """This organisation's entry in the directory, on-chain and as indexed here, and whether its key matches."""
    from healthledger.federation.keys import MemberKeys, thumbprint_hex
    from healthledger.federation.registry import attached_registry, on_chain_member, sync_directory
    from healthledger.ledger.members import member_by_id

    org = _org_id(runtime, org_id)
    chain = _chain(runtime)
    with runtime.sessions() as session:
        record = attached_registry(session, chain)
    sync_directory(runtime.sessions, chain, record)
    live = on_chain_member(chain, org)
    with runtime.sessions() as session:
        indexed = member_by_id(session, org)
    keys = MemberKeys.load_or_create(runtime.settings.keys_dir, runtime.key_provider)
    click.echo(f"registry {record.address} on chain {chain.chain_id}")
    if not live.status:
        click.echo(f"{org}: not in the directory (healthledger federation join)")
        return
    click.echo(f"{org}: {live.status}, '{live.name}', {live.fhir_base_url}, controller {live.controller}")
    on_file = keys.by_thumbprint(live.key_thumbprint) is not None
    click.echo(f"key {live.key_thumbprint}: {'on file here' if on_file else 'NOT on file here'}"
               + ("" if thumbprint_hex(keys.current) == live.key_thumbprint else " (a newer key is on file)"))
    click.echo(f"indexed here: {indexed.status if indexed else 'not yet'}")


@federation_group.command("members")
@click.pass_obj
def members_command(runtime: Runtime) -> None:
    """Every organisation in the directory (brought up to the chain first)."""
    from healthledger.federation.registry import attached_registry, sync_directory
    from healthledger.ledger.members import list_members

    chain = _chain(runtime)
    with runtime.sessions() as session:
        record = attached_registry(session, chain)
    sync_directory(runtime.sessions, chain, record)
    with runtime.sessions() as session:
        members = list_members(session)
    if not members:
        click.echo("no members yet")
    for m in members:
        click.echo(f"{m.org_id:<20} {m.status:<8} {m.name:<30} {m.fhir_base_url}  key {m.key_thumbprint[:18]}…")


def _federation(runtime: Runtime) -> Any:
    """The federation operations on this runtime's store, acting as this server's directory member."""
    from healthledger.federation.keys import MemberKeys
    from healthledger.federation.registry import attached_registry, sync_directory
    from healthledger.federation.service import Federation

    settings = runtime.settings
    if not settings.federation_org_id:
        raise click.UsageError("set HEALTHLEDGER_FEDERATION_ORG_ID to this hospital's directory id")
    chain = _chain(runtime)
    with runtime.sessions() as session:
        record = attached_registry(session, chain)
    sync_directory(runtime.sessions, chain, record)  # the directory as of now, for the member's endpoint and key
    base = settings.base_url.rstrip("/") or f"http://{settings.host}:{settings.port}"
    return Federation(runtime.store, runtime.sessions, org_id=settings.federation_org_id, fhir_base=base + "/fhir",
                      keys=lambda: MemberKeys.load_or_create(settings.keys_dir, runtime.key_provider))


def _operator(user: str, purpose: str) -> Any:
    from healthledger.principal import Principal

    # The operator acts as the service itself (unrestricted here); the user it names is who the other member logs.
    return Principal(actor_id=user, role="internal", purpose=purpose, via="cli")


@federation_group.command("link")
@click.argument("patient_id")
@click.argument("locator")
@click.option("--user", required=True, help="who asks, as the other member's log should name them (e.g. Practitioner/7)")
@click.option("--purpose", default="TREAT", show_default=True, help="HL7 v3 PurposeOfUse code")
@click.pass_obj
def link_command(runtime: Runtime, patient_id: str, locator: str, user: str, purpose: str) -> None:
    """Record a patient's record LOCATOR (made by the patient at another member) against our PATIENT_ID."""
    _check_purpose(purpose)
    link = _federation(runtime).link_record(_operator(user, purpose), patient_id, locator, purpose)
    click.echo(f"Patient/{patient_id} linked to {link.source_patient} at {link.source_org} under {link.consent_ref}")


@federation_group.command("unlink")
@click.argument("patient_id")
@click.argument("source")
@click.option("--consent", default="", help="only the link under this Consent at SOURCE (Consent/{id})")
@click.pass_obj
def unlink_command(runtime: Runtime, patient_id: str, source: str, consent: str) -> None:
    """Remove our PATIENT_ID's links to member SOURCE (the copies already fetched stay, with their Provenance)."""
    removed = _federation(runtime).unlink_record(_operator("cli", "TREAT"), patient_id, source, consent)
    click.echo(f"Patient/{patient_id}: {removed} link{'s' if removed != 1 else ''} to {source} removed")


def _check_purpose(purpose: str) -> None:
    from healthledger.principal import PURPOSES

    if purpose not in PURPOSES:
        raise click.BadParameter("an HL7 v3 PurposeOfUse code such as TREAT")


@federation_group.command("fetch")
@click.argument("patient_id")
@click.option("--user", required=True, help="who asks, as the other member's log should name them (e.g. Practitioner/7)")
@click.option("--purpose", default="TREAT", show_default=True, help="HL7 v3 PurposeOfUse code")
@click.pass_obj
def fetch_command(runtime: Runtime, patient_id: str, user: str, purpose: str) -> None:
    """Fetch what changed at every member our PATIENT_ID is linked to, into our store (with Provenance)."""
    _check_purpose(purpose)
    reports = _federation(runtime).fetch(_operator(user, purpose), patient_id, purpose)
    failed = False
    for r in reports:
        if r.refused:
            failed = True
            click.echo(f"{r.source}: refused: {r.refused}")
        else:
            kinds = ", ".join(f"{n} {t}" for t, n in sorted(r.by_type.items())) or "nothing new"
            gone = f", {r.removed} removed (deleted there or no longer permitted)" if r.removed else ""
            click.echo(f"{r.source}: {r.fetched} records ({kinds}){gone}{' ' + r.provenance if r.provenance else ''}")
    if failed:
        raise click.exceptions.Exit(1)
