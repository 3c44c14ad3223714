"""`healthledger relay`: the chain outbox worker and event indexer (run, inspect, requeue, liveness).

`relay work` is a daemon: what it reports while it runs are structured log events on stderr (JSON lines with
`log_format=json`), like the API's; the other commands answer on stdout.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import structlog
from sqlalchemy.exc import OperationalError

from healthledger.errors import HealthLedgerError
from healthledger.ledger import heartbeat
from healthledger.runtime import Runtime

log = structlog.get_logger("healthledger.ledger.worker")

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


@click.group("relay")
def relay_group() -> None:
    """Chain writes (durable outbox) and the event indexer that feeds the consent engine."""


def _sessions(runtime: Runtime) -> sessionmaker[Session]:
    """The runtime's sessions, after the service's one-time setup (schema, keys)."""
    runtime.bootstrap()
    return runtime.sessions


@relay_group.command("status")
@click.pass_obj
def status_command(runtime: Runtime) -> None:
    """Outbox items per state, the oldest pending write, and the indexer's lag."""
    from sqlalchemy import func, select

    from healthledger.ledger import indexer, outbox
    from healthledger.ledger.models import OutboxItem

    with _sessions(runtime)() as session:
        counts = outbox.counts(session)
        oldest = session.scalar(
            select(func.min(OutboxItem.created_at)).where(OutboxItem.state.in_(["queued", "sent"]))
        )
        lag = indexer.lag(session)
    click.echo("outbox: " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    if oldest is not None:
        click.echo(f"oldest pending write: {time.time() - oldest:.0f} s old")
    if lag is None:
        click.echo("indexer: not run yet")
    else:
        click.echo(
            f"indexer: block {lag.last_block} of {lag.head_block} ({lag.blocks} blocks, {lag.seconds} s behind)"
        )


@relay_group.command("show")
@click.argument("item_id", type=int)
@click.pass_obj
def show_command(runtime: Runtime, item_id: int) -> None:
    """One chain write: state, attempts, transaction, failure reason."""
    from healthledger.ledger import outbox

    with _sessions(runtime)() as session:
        st = outbox.status(session, item_id)
    click.echo(f"#{st.id} {st.kind}: {st.state.value} after {st.attempts} attempt(s)")
    if st.tx_hash:
        click.echo(f"  tx {st.tx_hash}" + (f" in block {st.block_number}" if st.block_number else ""))
    if st.failure_reason:
        click.echo(f"  failed: {st.failure_reason}")
    if st.last_error and st.pending:
        click.echo(f"  last error: {st.last_error}")


@relay_group.command("requeue")
@click.argument("item_id", type=int)
@click.pass_obj
def requeue_command(runtime: Runtime, item_id: int) -> None:
    """Queue a failed write again (after its cause, e.g. a paused contract or missing role, is fixed)."""
    from healthledger.ledger import outbox

    with _sessions(runtime).begin() as session:
        outbox.requeue_failed(session, item_id, now=time.time())
    click.echo(f"#{item_id} queued again")


_HEARTBEAT_PATH = click.Path(dir_okay=False, path_type=Path)


@relay_group.command("alive")
@click.option("--heartbeat", "path", type=_HEARTBEAT_PATH, envvar=heartbeat.HEARTBEAT_ENV, required=True,
              help=f"the file `relay work --heartbeat` beats (env {heartbeat.HEARTBEAT_ENV})")
@click.option("--max-age", type=float, default=heartbeat.DEFAULT_MAX_AGE_SECONDS, show_default=True,
              help="seconds since the last pass beyond which the worker is taken for hung")
def alive_command(path: Path, max_age: float) -> None:
    """Liveness of a `relay work` loop: exit 0 if it beat within --max-age, else 1. Reads the file's age only:
    no database, no chain, no start-up work (a probe must not fail because a shared dependency is down)."""
    seconds = heartbeat.age(path, time.time())
    if seconds is None:
        raise click.ClickException(f"no heartbeat at {path}: the worker has not started its loop")
    if seconds > max_age:
        raise click.ClickException(f"last heartbeat {seconds:.0f} s ago (bound {max_age:.0f} s): the worker is stuck")
    click.echo(f"alive: last pass {max(seconds, 0.0):.1f} s ago")


@relay_group.command("work")
@click.option("--once", is_flag=True, help="one outbox pass and one indexer pass, then exit")
@click.option(
    "--interval", type=float, default=None, help="seconds between passes (default: chain_poll_seconds)"
)
@click.option(
    "--anchor-interval", type=float, default=None,
    help="also anchor the access log's tree head every this many seconds (default: never)",
)
@click.option("--heartbeat", "heartbeat_path", type=_HEARTBEAT_PATH, envvar=heartbeat.HEARTBEAT_ENV, default=None,
              help=f"touch this file at the start and after every pass, for `relay alive` (env {heartbeat.HEARTBEAT_ENV})")
@click.pass_obj
def work_command(runtime: Runtime, once: bool, interval: float | None, anchor_interval: float | None,
                 heartbeat_path: Path | None) -> None:
    """Submit queued chain writes and index contract events, in a loop until interrupted.

    Any number of these may run against one database and chain (several replicas): every one submits the
    outbox (its items are leased one by one), and whichever holds the `ledger-indexer` lease sequences and
    anchors the access log and follows the chain into the index; the others take over when it stops renewing.
    """
    from healthledger import leases
    from healthledger.ledger import indexer, members, outbox
    from healthledger.ledger.backends.sidecar import die_with_parent
    from healthledger.ledger.deploy import attach_deployments, load_deployments
    from healthledger.ledger.indexer import INDEXER_LEASE, LEASE_MIN_SECONDS

    die_with_parent()

    def beat() -> None:
        if heartbeat_path is not None:
            heartbeat.beat(heartbeat_path, time.time())

    beat()  # the start-up below (schema, keys, deployments) counts against the probe's bound too
    from healthledger.observability import configure_logging

    configure_logging(runtime.settings.log_format)
    sessions = _sessions(runtime)
    chain = runtime.chain
    settings = runtime.settings
    signal.signal(signal.SIGTERM, _stop_on_signal)
    owner = worker_name()
    pause = settings.chain_poll_seconds if interval is None else interval
    ttl = max(LEASE_MIN_SECONDS, LEASE_POLLS * pause)
    held: leases.Held | None = None
    try:
        with sessions() as session:
            records = attach_deployments(chain, session)

        def still_held(session: Session) -> bool:
            return held is not None and leases.holds(session, held, now=time.time())

        follower = indexer.Indexer(
            sessions, chain, from_block=min(r.deployment_block for r in records), guard=still_held
        )
        directory = members.indexer_for(sessions, chain, records, guard=still_held)
        next_anchor = time.monotonic()
        passes = runtime.background_passes(owner)
        while True:
            try:
                held = leases.acquire(sessions, INDEXER_LEASE, owner, now=time.time(), ttl=ttl)
                if held is not None:
                    _sequence_log(sessions)
                    if anchor_interval is not None and time.monotonic() >= next_anchor:
                        _queue_anchor(sessions, settings.tenant)
                        next_anchor = time.monotonic() + anchor_interval
                report = outbox.process_outbox(sessions, chain, time.time(), worker_id=owner)
                indexed = follower.run_once(time.time()) if held is not None else None
                for background in passes:  # research: studies confirmed, credentials re-issued
                    try:
                        background()
                    except (HealthLedgerError, OperationalError):
                        raise
                    except Exception as exc:  # noqa: BLE001 (one failing pass must not stop the chain writes)
                        log.warning("ledger.background_pass_failed", error=type(exc).__name__)
                if held is not None and directory is None:  # a registry attached since this worker started
                    with sessions() as session:
                        directory = members.indexer_for(
                            sessions, chain, load_deployments(session, chain.chain_id), guard=still_held)
                if held is not None and directory is not None:
                    directory.run_once(time.time())
                if report.claimed or (indexed is not None and indexed.to_block >= indexed.from_block):
                    log.info("ledger.pass", confirmed=report.confirmed, failed=report.failed, retrying=report.retried,
                             **({"indexed_to_block": indexed.to_block} if indexed is not None else {}))
            except HealthLedgerError as exc:  # the node is down, or the lease moved: keep the loop, say so
                log.warning("ledger.chain_unavailable", reason=exc.message)
            except OperationalError:  # the database is down or restarting: the next pass tries again
                log.warning("ledger.database_unavailable")
            beat()  # the loop turned, whether the pass succeeded or not: alive (hung is what a probe should catch)
            if once:
                break
            time.sleep(pause)
    except KeyboardInterrupt:
        pass
    finally:
        if held is not None:
            try:
                leases.release(sessions, held)  # a clean stop hands the work over at once
            except OperationalError:
                pass


LEASE_POLLS = 5  # a holder that misses this many passes loses the lease


def worker_name() -> str:
    """host:pid:random, unique per worker process (outbox item leases and named leases carry it)."""
    import os
    import secrets
    import socket

    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(3)}"


SEQUENCE_BATCH = 250  # entries per transaction (~5 ms of SQLite's write lock; ~17 us of CPU per entry)
SEQUENCE_BATCHES_PER_PASS = 400


def _sequence_log(sessions: Any) -> int:
    """Give committed access-log entries their leaf indexes, in short transactions, until caught up
    (bounded per pass); anchoring then takes the head as it stands. Returns how many were sequenced."""
    from datetime import datetime

    from healthledger.audit.group_commit import WriterTurn
    from healthledger.audit.log import integrate, tree_head
    from healthledger.audit.spool import ingest

    try:
        ingest(sessions.kw["bind"])  # (SQLite) the reads' spooled entries first
    except Exception as exc:  # noqa: BLE001 - sequencing, anchoring and the chain writes go on; the next pass retries
        log.warning("ledger.spool_ingest_failed", error=type(exc).__name__)
    turn = WriterTurn.for_engine(sessions.kw["bind"])  # in turn with any group commit's leaders on the file (SQLite)
    done = 0
    for _ in range(SEQUENCE_BATCHES_PER_PASS):
        with turn, sessions.begin() as session:
            before = tree_head(session).size
            after = integrate(session, datetime.now(UTC), limit=SEQUENCE_BATCH).size
        done += after - before
        if after - before < SEQUENCE_BATCH:
            break
    return done


def _queue_anchor(sessions: Any, tenant: str) -> None:
    """Sequence the access log and queue its new tree head (if any) for anchoring."""
    from datetime import datetime

    from healthledger.audit.anchoring import AnchorBehindChain, anchor_batch

    try:
        with sessions.begin() as session:
            cp = anchor_batch(session, datetime.now(UTC), tenant=tenant)
            if cp is not None:
                log.info("ledger.anchor_queued", tree_size=cp.size)
    except AnchorBehindChain as behind:  # a restore older than the last anchor: nothing queued, said at each pass
        log.warning("ledger.anchor_behind_chain", anchored_tree_size=behind.anchored, log_tree_size=behind.local,
                    reason=behind.message)


def _stop_on_signal(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
