"""`healthledger anchor` and `healthledger audit ...`: anchor the access log, verify it, prove entries."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click

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
    """Anchor the access log's current tree head on-chain (through the durable outbox)."""
    from healthledger.audit.anchoring import anchor_batch
    from healthledger.ledger.outbox import drain, status

    _attach_chain(runtime)
    sessions = runtime.sessions
    with sessions.begin() as s:
        cp = anchor_batch(s, datetime.now(UTC), tenant=runtime.settings.tenant)
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
    sys.exit(0 if report.ok else 1)


@audit_group.command("prove")
@click.argument("entry_id", type=int)
@click.option("--size", "tree_size", type=int, default=None, help="tree size to prove against (default: current)")
@click.pass_obj
def prove_command(runtime: Runtime, entry_id: int, tree_size: int | None) -> None:
    """Print an RFC 6962 inclusion proof (JSON) for an access-log entry."""
    from healthledger.audit.log import integrate, prove_inclusion

    with runtime.sessions.begin() as s:
        integrate(s, datetime.now(UTC))
        proof = prove_inclusion(s, entry_id, tree_size=tree_size)
    click.echo(json.dumps({
        "leaf_index": proof.leaf_index, "tree_size": proof.tree_size, "leaf_hash": proof.leaf_hash.hex(),
        "root": proof.root.hex(), "path": [h.hex() for h in proof.path],
    }))
