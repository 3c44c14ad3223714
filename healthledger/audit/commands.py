"""`healthledger anchor` and `healthledger audit ...`: anchor the access log, verify it, prove entries."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click
import sqlalchemy as sa

from healthledger.audit.proof_check import PROOF_FORMAT
from healthledger.audit.spool import ingest
from healthledger.runtime import Runtime


def _attach_chain(runtime: Runtime) -> int:
    """Set up the service, attach our recorded contracts to the runtime's chain; AccessLogAnchor's
    deployment block (where its events start)."""
    from healthledger.ledger.deploy import attach_deployments

    runtime.bootstrap()
    with runtime.sessions() as s:
        records = attach_deployments(runtime.chain, s)
    return min((r.deployment_block for r in records if r.name == "AccessLogAnchor"), default=0)


@click.command("anchor")
@click.option("--submit/--queue-only", default=True, help="also run the outbox worker until the anchor is mined")
@click.pass_obj
def anchor_command(runtime: Runtime, submit: bool) -> None:
    """Anchor the access log's current tree head on-chain (through the durable outbox). Exits 1 when the anchor is
    refused or not confirmed, saying why."""
    from healthledger.audit.anchoring import anchor_batch, anchor_failure_words, chain_anchor_size
    from healthledger.ledger.outbox import OutboxState, drain, status

    _attach_chain(runtime)
    ingest(runtime.engine)  # (SQLite) reads' entries still in the spool: the head anchored covers them
    sessions = runtime.sessions
    tenant = runtime.settings.tenant
    anchored = chain_anchor_size(runtime.chain, tenant=tenant)
    with sessions.begin() as s:
        cp = anchor_batch(s, datetime.now(UTC), tenant=tenant, anchored=anchored)
        summary = None if cp is None else (cp.size, cp.root.hex(), cp.outbox_item)
    if summary is None:
        click.echo("nothing new to anchor")
        return
    size, root, item = summary
    if item is None:  # anchor_batch queues every tree head it makes
        raise click.ClickException("the tree head was not queued for the chain; run the command again")
    click.echo(f"tree head queued: size {size}, root {root} (outbox item {item})")
    if submit:
        import time

        drain(sessions, runtime.chain, time.time, max_passes=200, sleep=time.sleep, items=[int(item)])
        with sessions() as s:
            st = status(s, int(item))
        click.echo(f"outbox item {item}: {st.state}" + (f" in tx {st.tx_hash}" if st.tx_hash else ""))
        if st.state == OutboxState.FAILED:
            raise click.ClickException(f"the anchor failed: {anchor_failure_words(st.failure_reason)}")
        if st.state != OutboxState.CONFIRMED:
            raise click.ClickException(
                f"the anchor is not confirmed yet ({st.last_error or 'waiting for the chain'}); the ledger worker "
                f"goes on submitting it: `healthledger relay show {item}`")


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident access log: verify it against the chain, prove entries."""


@audit_group.command("verify")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify_command(runtime: Runtime, as_json: bool) -> None:
    """Recompute the log from the database and check every anchored head on-chain.

    Exit 0 when intact, 1 when not (naming the first tampered, missing or reordered entry and the
    anchor it contradicts).
    """
    from healthledger.audit.anchoring import anchors_on_chain
    from healthledger.audit.log import verify_log

    from_block = _attach_chain(runtime)
    anchors = anchors_on_chain(runtime.chain, tenant=runtime.settings.tenant, from_block=from_block)
    ingest(runtime.engine)  # (SQLite) reads' entries still in the spool are part of the log
    with runtime.sessions() as s:
        report = verify_log(s, anchors)
    p = report.problem
    if as_json:
        click.echo(json.dumps({
            "intact": report.ok, "entries_checked": report.entries_checked, "anchors_checked": report.anchors_checked,
            "problem": None if p is None else {
                "kind": p.kind, "message": p.message, "leaf_index": p.leaf_index, "entry_id": p.entry_id,
                "anchor": None if p.anchor is None else {"size": p.anchor.size, "root": p.anchor.root.hex(),
                                                          "where": p.anchor.where},
            },
        }))
    elif p is None:
        click.echo(f"intact: {report.entries_checked} entries, {report.anchors_checked} anchored heads match the chain")
    else:
        click.echo(f"NOT INTACT ({p.kind}): {p.message}")
        if p.kind == "truncated":
            from healthledger.audit.anchoring import RESTORE_DOCS

            click.echo("entries the chain has anchored are missing from the database: if it was restored from a "
                       f"backup older than the last anchor, this is the record of what the restore lost ({RESTORE_DOCS})")
    sys.exit(0 if report.ok else 1)


@audit_group.command("prove")
@click.argument("entry_id", type=int)
@click.option("--size", "tree_size", type=int, default=None,
              help="tree size to prove against (default: the first anchored head that covers the entry, else the current head)")
@click.pass_obj
def prove_command(runtime: Runtime, entry_id: int, tree_size: int | None) -> None:
    """Print an RFC 6962 inclusion proof (JSON) for an access-log entry: the entry's bytes, its audit path, and the
    on-chain anchor of that tree head (block, transaction, contract). `audit check-proof` checks it offline."""
    import base64

    from healthledger.audit.anchoring import anchored_proof, chain_log_id
    from healthledger.audit.log import integrate, prove_inclusion
    from healthledger.audit.models import AccessLogEntry
    from healthledger.ledger.deploy import ChainContract

    tenant = runtime.settings.tenant
    ingest(runtime.engine)
    with runtime.sessions.begin() as s:
        integrate(s, datetime.now(UTC))
        if tree_size is None:
            found = anchored_proof(s, entry_id, datetime.now(UTC), tenant=tenant)
            proof, anchor, body = found.proof, found.anchor, found.body
        else:
            proof, anchor = prove_inclusion(s, entry_id, tree_size=tree_size), None
            row = s.get(AccessLogEntry, entry_id)
            assert row is not None  # prove_inclusion found it
            body = row.body
        deployed = s.scalar(
            sa.select(ChainContract).where(ChainContract.name == "AccessLogAnchor").order_by(ChainContract.id.desc()).limit(1)
        )
        contract = None if deployed is None else (deployed.address, deployed.chain_id)
    document: dict[str, object] = {
        "format": PROOF_FORMAT, "entry_id": entry_id, "entry": base64.b64encode(body).decode(),
        "leaf_index": proof.leaf_index, "tree_size": proof.tree_size, "leaf_hash": proof.leaf_hash.hex(),
        "root": proof.root.hex(), "path": [h.hex() for h in proof.path], "anchor": None,
    }
    if anchor is not None:
        document["anchor"] = {
            "tree_size": anchor.size, "root": anchor.root.hex(), "block_number": anchor.block_number,
            "block_hash": anchor.block_hash, "transaction": anchor.transaction,
            "log_id": "0x" + chain_log_id(tenant).hex(),
            **({"contract": contract[0], "chain_id": contract[1]} if contract else {}),
        }
    else:
        document["note"] = ("no anchored tree head (read by the ledger worker) covers this entry yet: the proof is to "
                            "the current head, which check-proof cannot find on-chain; run `healthledger anchor`, "
                            "then prove again")
    click.echo(json.dumps(document))


@audit_group.command("check-proof")
@click.argument("proof_file", type=click.File("r"))
@click.option("--chain-url", default=None,
              help="JSON-RPC URL of a node of the chain (default: HEALTHLEDGER_CHAIN_URL, else the embedded chain's node)")
@click.option("--contract", default=None,
              help="address of the hospital's AccessLogAnchor contract (default: the one the proof file names)")
@click.option("--tenant", default=None, help="check the anchor is for this tenant's access log (default: settings)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def check_proof_command(runtime: Runtime, proof_file: Any, chain_url: str | None, contract: str | None,
                        tenant: str | None, as_json: bool) -> None:
    """Check an inclusion proof offline, against the tree head anchored on-chain: no database needed.

    PROOF_FILE is the JSON of `healthledger audit prove` or the FHIR Parameters of
    `GET /fhir/AuditEvent/{id}/$inclusion-proof` (`-` for standard input). Exit 0 when the entry is in the
    anchored log, 1 when the proof does not hold, 2 when the file cannot be read as a proof.
    """
    from healthledger.audit.anchoring import chain_log_id
    from healthledger.audit.entries import decode_entry
    from healthledger.audit.proof_check import ProofFileError, check_anchor, check_proof, parse_proof

    tenant = tenant or runtime.settings.tenant
    try:
        proof = parse_proof(json.loads(proof_file.read()))
    except ValueError as exc:  # ProofFileError is a ValueError too
        message = exc.message if isinstance(exc, ProofFileError) else "it is not JSON"
        click.echo(f"Error: {proof_file.name} is not a proof: {message}", err=True)
        sys.exit(2)
    report = check_proof(proof)
    trusted = contract or (proof.anchor.contract if proof.anchor else "")
    if report.ok:
        if not trusted:
            report.fail("no AccessLogAnchor contract address: pass --contract (the hospital publishes it: "
                        "`healthledger chain status`)")
        else:
            if not contract:
                report.warnings.append(f"the contract address {trusted} was read from the proof file: compare it with "
                                       "the one the hospital publishes")
            view = _chain_view(runtime, chain_url)
            log_id = chain_log_id(tenant)
            check_anchor(proof, view, contract=trusted, log_id=log_id, report=report)
    entry = decode_entry(proof.entry) if proof.entry is not None and report.ok else None
    if as_json:
        click.echo(json.dumps({
            "valid": report.ok, "steps": report.steps, "problem": report.problem, "warnings": report.warnings,
            "entry": None if entry is None else {
                "time": entry.time.isoformat(), "actor": entry.actor, "organization": entry.organization,
                "action": entry.action, "resource": f"{entry.resource_type}/{entry.resource_id}".rstrip("/"),
                "decision": entry.decision, "reason": entry.reason,
            },
        }))
    else:
        for step in report.steps:
            click.echo(f"ok: {step}")
        for warning in report.warnings:
            click.echo(f"warning: {warning}")
        if entry is not None:
            what = f"{entry.resource_type}/{entry.resource_id}".rstrip("/")
            click.echo(f"VALID: {entry.time.isoformat()} {entry.actor} ({entry.organization or 'no organisation'}) "
                       f"{entry.action} {what}: {entry.decision} ({entry.reason})")
        elif report.ok:
            click.echo("VALID: the leaf is in the anchored log")
        else:
            click.echo(f"NOT VALID: {report.problem}")
    sys.exit(0 if report.ok else 1)


def _chain_view(runtime: Runtime, chain_url: str | None) -> Any:
    """A read-only view of the chain: the URL given, the configured one, or the embedded chain's running node."""
    from pathlib import Path

    from web3 import Web3

    from healthledger.audit.proof_check import web3_chain_view
    from healthledger.ledger.chain import running_node_url
    from healthledger.ledger.compile import load_artifact

    abi = load_artifact("AccessLogAnchor").abi
    url = chain_url or runtime.settings.chain_url or running_node_url(Path(runtime.settings.data_dir) / "chain")
    if url:
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
        try:
            _ = w3.eth.chain_id
        except Exception:  # noqa: BLE001 - any transport failure: say which node, not the traceback
            raise click.ClickException(f"no chain node answers at {url.split('@')[-1]}") from None
        return web3_chain_view(w3, abi)
    return web3_chain_view(runtime.chain.w3, abi)  # the embedded chain, opened here (the service is not running)
