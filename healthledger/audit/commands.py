"""`healthledger anchor` and `healthledger audit ...`: anchor the access log, verify it, prove entries."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from healthledger.errors import HealthLedgerError


def _open(settings: Any) -> tuple[Any, Any, Any, int]:
    """(sessionmaker, chain with our contracts attached, engine, AccessLogAnchor's deployment block)."""
    from healthledger.app import bootstrap
    from healthledger.db import make_engine, session_factory
    from healthledger.keys import key_provider_for
    from healthledger.ledger.chain import chain_for
    from healthledger.ledger.deploy import attach_deployments

    bootstrap(settings)
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    chain = chain_for(settings, key_provider_for(settings.key_provider, settings.keys_dir))
    with sessions() as s:
        records = attach_deployments(chain, s)
    from_block = min((r.deployment_block for r in records if r.name == "AccessLogAnchor"), default=0)
    return sessions, chain, engine, from_block


@click.command("anchor")
@click.option("--submit/--queue-only", default=True, help="also run the outbox worker until the anchor is mined")
def anchor_command(submit: bool) -> None:
    """Anchor the access log's current tree head on-chain (through the durable outbox)."""
    from healthledger.audit.anchoring import anchor_batch
    from healthledger.cli import load_settings
    from healthledger.ledger.outbox import drain, status

    settings = load_settings()
    try:
        sessions, chain, engine, _ = _open(settings)
        try:
            with sessions.begin() as s:
                cp = anchor_batch(s, datetime.now(UTC), tenant=settings.tenant)
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

                drain(sessions, chain, time.time, max_passes=200, sleep=time.sleep, items=[int(item)])
                with sessions() as s:
                    st = status(s, int(item))
                click.echo(f"outbox item {item}: {st.state}" + (f" in tx {st.tx_hash}" if st.tx_hash else ""))
        finally:
            chain.close()
            engine.dispose()
    except HealthLedgerError as exc:
        raise click.ClickException(exc.message) from None


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident access log: verify it against the chain, prove entries."""


@audit_group.command("verify")
@click.option("--json", "as_json", is_flag=True)
def verify_command(as_json: bool) -> None:
    """Recompute the log from the database and check every anchored head on-chain.

    Exit 0 when intact, 1 when not (naming the first tampered, missing or reordered entry and the
    anchor it contradicts).
    """
    from healthledger.audit.anchoring import anchors_on_chain
    from healthledger.audit.log import verify_log
    from healthledger.cli import load_settings

    settings = load_settings()
    try:
        sessions, chain, engine, from_block = _open(settings)
        try:
            anchors = anchors_on_chain(chain, tenant=settings.tenant, from_block=from_block)
            with sessions() as s:
                report = verify_log(s, anchors)
        finally:
            chain.close()
            engine.dispose()
    except HealthLedgerError as exc:
        raise click.ClickException(exc.message) from None
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
def prove_command(entry_id: int, tree_size: int | None) -> None:
    """Print an RFC 6962 inclusion proof (JSON) for an access-log entry."""
    from healthledger.audit.log import integrate, prove_inclusion
    from healthledger.cli import load_settings
    from healthledger.db import make_engine, session_factory

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine).begin() as s:
            integrate(s, datetime.now(UTC))
            proof = prove_inclusion(s, entry_id, tree_size=tree_size)
    except HealthLedgerError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        engine.dispose()
    click.echo(json.dumps({
        "leaf_index": proof.leaf_index, "tree_size": proof.tree_size, "leaf_hash": proof.leaf_hash.hex(),
        "root": proof.root.hex(), "path": [h.hex() for h in proof.path],
    }))
