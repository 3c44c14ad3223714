"""The operator's HTTP surface: `/healthz` (liveness), `/readyz` (readiness), `/metrics` (Prometheus), and the
per-request hooks behind them (request id, latency by route, one JSON log line per request).

Liveness says only that the process answers: a failing dependency must not get every replica restarted.
Readiness says whether this replica can serve: the database answers, its schema is at every migration head
this release knows, and the key provider wraps and unwraps and holds every key-encryption key the database's
data keys are wrapped with (a replica whose key files predate a rotation is not ready, and says which KEK it
lacks). The consent index's freshness (the indexer passed
within the consent policy's `max_index_age_seconds`, the bound reads fail closed on) gates readiness only at
start: a replica turns ready once the index has been fresh since it started, so its first consent-dependent
reads succeed. Afterwards a stale index is reported (in the body, status "degraded", and in /metrics) without
failing the probe: the chain and the ledger worker are shared by every replica, so failing it would take
every endpoint out at once, while patient and break-the-glass reads can go on and other consent-dependent
reads fail closed on their own.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from flask import Blueprint, Flask, Response, g, request
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from healthledger.keys import KeyProvider
from healthledger.observability import REQUEST_ID_HEADER, Metrics, request_id_for

log = structlog.get_logger("healthledger.http")

_PROBE = b"healthledger/readiness-probe"
_UNMATCHED_ROUTE = "(unmatched)"
REPLICA_STARTED_ENV = "HEALTHLEDGER_REPLICA_STARTED_AT"


def mark_replica_started(now: float | None = None) -> float:
    """In gunicorn's master, before the workers fork: the replica's start, inherited by every worker (and by
    the workers that replace recycled ones), so the start-up gate of /readyz is passed once per replica."""
    started = time.time() if now is None else now
    os.environ[REPLICA_STARTED_ENV] = repr(started)
    return started


def replica_started_at(default: float) -> float:
    """The start marked by `mark_replica_started`, else `default` (a process that is the whole replica)."""
    try:
        return float(os.environ[REPLICA_STARTED_ENV])
    except (KeyError, ValueError):
        return default


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""  # safe to show: no URL, no credentials, no data
    required: bool = True  # False: reported, but this replica stays ready when it fails


class Readiness:
    """The checks of `/readyz`, each bounded and each reporting a reason a person can act on."""

    def __init__(
        self,
        engine: Engine,
        key_provider: KeyProvider,
        *,
        max_index_age_seconds: float,
        indexer_name: str = "ledger",
        wall_clock: Callable[[], float] = time.time,
        started_at: float | None = None,
        tenant: str | None = None,
    ) -> None:
        self.engine = engine
        self.tenant = tenant  # whose data keys this replica must unwrap (None: every tenant's)
        self.key_provider = key_provider
        self.max_index_age_seconds = max_index_age_seconds
        self.indexer_name = indexer_name
        self.wall_clock = wall_clock
        self.started_at = wall_clock() if started_at is None else started_at
        self._heads: frozenset[str] | None = None

    def checks(self) -> list[Check]:
        database = self._database()
        if not database.ok:
            skipped = "not checked: the database is unavailable"
            return [database, Check("migrations", False, skipped), self._keys(), Check("consent_index", False, skipped)]
        migrations = self._migrations()
        return [database, migrations, self._keys(data_keys=migrations.ok), self._consent_index()]

    def _database(self) -> Check:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 (any failure to answer is "unavailable"; the type says which)
            return Check("database", False, f"unavailable ({type(exc).__name__})")
        return Check("database", True)

    def expected_heads(self) -> frozenset[str]:
        if self._heads is None:
            from alembic.script import ScriptDirectory

            from healthledger.db import alembic_config

            self._heads = frozenset(ScriptDirectory.from_config(alembic_config(self.engine)).get_heads())
        return self._heads

    def _migrations(self) -> Check:
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as conn:
                current = frozenset(MigrationContext.configure(conn).get_current_heads())
        except Exception as exc:  # noqa: BLE001
            return Check("migrations", False, f"cannot read the schema version ({type(exc).__name__})")
        missing = self.expected_heads() - current
        if missing:
            return Check("migrations", False, f"{len(missing)} migration branch(es) behind: run `healthledger init`")
        return Check("migrations", True)

    def _keys(self, *, data_keys: bool = False) -> Check:
        """The provider wraps and unwraps; with `data_keys`, it also holds every KEK the database's data keys are
        wrapped with (after a rotation, a replica still mounting the previous key files does not)."""
        try:
            wrapped = self.key_provider.wrap(_PROBE, b"readyz")
            ok = self.key_provider.unwrap(wrapped, b"readyz") == _PROBE
        except Exception as exc:  # noqa: BLE001
            return Check("key_provider", False, f"unavailable ({type(exc).__name__})")
        if not ok:
            return Check("key_provider", False, "unwrap returned another value")
        if not data_keys:
            return Check("key_provider", True)
        try:
            missing = self._keks_not_held()
        except Exception as exc:  # noqa: BLE001
            return Check("key_provider", False, f"cannot compare its keys with the data keys' ({type(exc).__name__})")
        if missing:
            return Check("key_provider", False, (
                f"does not hold {', '.join(missing)}, which the database's data keys are wrapped with: this replica's "
                "key files are out of date (a rotation since they were made: give it the current ones, "
                "docs/operations.md, Rotation) or the database was restored with another key backup"))
        return Check("key_provider", True)

    def _keks_not_held(self) -> list[str]:
        """KEK ids that wrap live data keys (of this tenant) and that the provider does not hold; an id the provider
        lacks is checked against the tenant only then (a shared database may hold other tenants' keys)."""
        from healthledger.key_custody import kek_ids_in_use
        from healthledger.store.models import data_keys_table as keys_t

        with self.engine.connect() as conn:
            held = set(self.key_provider.kek_ids())
            missing = [kek for kek in kek_ids_in_use(conn) if kek not in held]
            if self.tenant is not None:
                mine = select(keys_t.c.key_id).where(keys_t.c.tenant == self.tenant).limit(1)
                missing = [kek for kek in missing if conn.execute(mine.where(keys_t.c.kek_id == kek)).first()]
        return missing

    def _consent_index(self) -> Check:
        from healthledger.ledger.models import IndexerCursor

        try:
            with Session(self.engine) as session:
                updated = session.scalar(select(IndexerCursor.updated_at).where(IndexerCursor.name == self.indexer_name))
        except Exception as exc:  # noqa: BLE001
            return Check("consent_index", False, f"cannot read the indexer's cursor ({type(exc).__name__})")
        if updated is None:
            return Check("consent_index", False, "the ledger worker has not indexed the chain yet")
        age = self.wall_clock() - float(updated)
        if age <= self.max_index_age_seconds:
            return Check("consent_index", True, f"indexed {max(age, 0.0):.1f} s ago")
        stale = f"the chain was last indexed {age:.0f} s ago (bound {self.max_index_age_seconds:.0f} s)"
        # The index was fresh until updated + bound: if that is after this replica started, the start-up gate
        # is passed, and the chain side's outage is every replica's alike (reads that need fresh consent fail
        # closed by themselves), so it does not take this one out of the load balancer.
        if float(updated) + self.max_index_age_seconds >= self.started_at:
            return Check("consent_index", False, stale + "; reads that need fresh consent fail closed", required=False)
        return Check("consent_index", False, stale + "; not ready until it is indexed once after the start")


class LedgerGauges:
    """A Prometheus collector of what the database says about the ledger side, read at each scrape (so every
    replica reports the same, shared values): outbox depth by state and the age of its oldest pending write,
    the indexer's lag, access-log entries appended, sequenced and anchored (the tenant's access log), resource
    versions stored."""

    def __init__(self, engine: Engine, *, tenant: str, max_index_age_seconds: float, indexer_name: str = "ledger",
                 wall_clock: Callable[[], float] = time.time):
        self.engine = engine
        self.tenant = tenant
        self.max_index_age_seconds = max_index_age_seconds
        self.indexer_name = indexer_name
        self.wall_clock = wall_clock

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from healthledger.audit.anchoring import chain_log_id
        from healthledger.audit.log import DEFAULT_LOG
        from healthledger.audit.models import AccessLogEntry, AuditHead
        from healthledger.audit.spool import ingest
        from healthledger.ledger.models import IndexerCursor, LogAnchorEvent, OutboxItem
        from healthledger.store.models import StoredVersion

        now = self.wall_clock()
        try:
            with contextlib.suppress(DBAPIError, OSError):  # (a busy database: counted at the next scrape)
                ingest(self.engine)  # (SQLite) the reads' entries still in the spool count as appended
            with Session(self.engine) as session:
                states = dict(session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
                oldest = session.scalar(
                    select(func.min(OutboxItem.created_at)).where(OutboxItem.state.in_(["queued", "sent"]))
                )
                cursor = session.get(IndexerCursor, self.indexer_name)
                appended = session.scalar(select(func.max(AccessLogEntry.id))) or 0
                sequenced = session.scalar(select(AuditHead.size).where(AuditHead.log_id == DEFAULT_LOG)) or 0
                anchored = session.scalar(select(func.max(LogAnchorEvent.tree_size)).where(
                    LogAnchorEvent.log_id == "0x" + chain_log_id(self.tenant).hex())) or 0
                oldest_unanchored = _oldest_unanchored(session, DEFAULT_LOG, int(anchored))
                versions = session.scalar(select(func.max(StoredVersion.row_id))) or 0
        except Exception:  # noqa: BLE001 (the database is down: /metrics still answers with what the process knows)
            up = GaugeMetricFamily("healthledger_database_up", "1 if the database answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("healthledger_database_up", "1 if the database answered this scrape")
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("healthledger_outbox_items", "Chain writes in the outbox by state", labels=["state"])
        for state in ("queued", "sent", "confirmed", "failed"):
            depth.add_metric([state], int(states.get(state, 0)))
        yield depth
        yield _gauge("healthledger_outbox_oldest_pending_seconds", "Age of the oldest queued or sent chain write",
                     0.0 if oldest is None else max(0.0, now - float(oldest)))
        if cursor is not None:
            blocks = max(0, (cursor.head_block or cursor.last_block) - cursor.last_block)
            behind = max(0, (cursor.head_timestamp or 0) - (cursor.last_block_timestamp or cursor.head_timestamp or 0))
            yield _gauge("healthledger_indexer_lag_blocks", "Blocks between the chain head and the indexed block", blocks)
            yield _gauge("healthledger_indexer_lag_seconds", "Block-time seconds the indexed block trails the head", behind)
            yield _gauge("healthledger_indexer_last_pass_age_seconds",
                         "Seconds since the indexer's last pass (reads fail closed past the policy bound)",
                         max(0.0, now - float(cursor.updated_at)))
        fresh = cursor is not None and now - float(cursor.updated_at) <= self.max_index_age_seconds
        yield _gauge("healthledger_consent_index_fresh", "1 if the consent index passed within the policy bound "
                     "(else reads that need fresh consent fail closed; /readyz says degraded)", int(fresh))
        yield _gauge("healthledger_access_log_appended", "Highest access-log entry id (entries appended)", appended)
        yield _gauge("healthledger_access_log_sequenced", "Access-log entries sequenced into the Merkle tree", sequenced)
        yield _gauge("healthledger_access_log_anchored", "Largest tree size anchored on-chain", anchored)
        lag_entries = max(0, int(sequenced) - int(anchored))
        yield _gauge("healthledger_anchoring_lag_entries", "Sequenced entries not yet covered by an anchor", lag_entries)
        lag_seconds = 0.0 if oldest_unanchored is None else max(0.0, now - oldest_unanchored.timestamp())
        yield _gauge("healthledger_anchoring_lag_seconds", "Age of the oldest access-log entry no anchor covers "
                     "(sequenced or not; 0 when every entry is anchored)", lag_seconds)
        yield _gauge("healthledger_store_versions", "Highest stored resource version row (writes and imports; "
                     "rate() is the import throughput)", versions)


def _oldest_unanchored(session: Session, log_id: str, anchored: int) -> datetime | None:
    """When the oldest entry not covered by the anchored tree size was recorded: the leaf at index `anchored`,
    else (every sequenced entry anchored) the first entry not sequenced yet. Both through the log's
    (log_id, leaf_index) index; leaves are given in id order (`integrate`)."""
    from healthledger.audit.models import AccessLogEntry as Entry

    leaf = session.scalar(select(Entry.recorded_at).where(Entry.log_id == log_id, Entry.leaf_index == anchored))
    if leaf is not None:
        return _utc(leaf)
    first = session.scalar(select(func.min(Entry.id)).where(Entry.log_id == log_id, Entry.leaf_index.is_(None)))
    return None if first is None else _utc(session.scalar(select(Entry.recorded_at).where(Entry.id == first)))


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; recorded_at is always UTC (AccessLogEntry)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _gauge(name: str, documentation: str, value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def operations_blueprint(readiness: Readiness, metrics: Metrics, gauges: LedgerGauges) -> Blueprint:
    """`/healthz`, `/readyz`, `/metrics` and `/openapi.json` (no authentication: they carry no data; keep `/metrics` and
    `/readyz` to the cluster network at the proxy)."""
    bp = Blueprint("operations", __name__)

    @bp.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @bp.get("/readyz")
    def readyz() -> tuple[dict[str, Any], int]:
        checks = readiness.checks()
        ready = all(c.ok or not c.required for c in checks)
        body = {
            "status": ("ready" if all(c.ok for c in checks) else "degraded") if ready else "not-ready",
            "checks": {c.name: {"ok": c.ok, **({} if c.required else {"required": False}),
                                **({"detail": c.detail} if c.detail else {})} for c in checks},
        }
        return body, 200 if ready else 503

    @bp.get("/openapi.json")
    def openapi() -> dict[str, Any]:
        from healthledger.api.openapi import openapi_document

        return openapi_document()

    @bp.get("/metrics")
    def prometheus() -> Response:
        payload, content_type = metrics.exposition([gauges])
        return Response(payload, content_type=content_type)

    return bp


def install_request_hooks(app: Flask, metrics: Metrics) -> None:
    """A request id for every request (the caller's X-Request-Id if plain, else new), bound to every log line
    of the request and returned in the response; then its latency observed and one log line written, by URL
    rule (never the URL: ids in paths, names and dates in query strings)."""

    @app.before_request
    def _start() -> None:
        g.healthledger_started = time.perf_counter()
        g.healthledger_request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.healthledger_request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.get("healthledger_started")
        request_id = g.get("healthledger_request_id")
        if started is None or request_id is None:
            return response
        seconds = time.perf_counter() - started
        route = request.url_rule.rule if request.url_rule is not None else _UNMATCHED_ROUTE
        response.headers[REQUEST_ID_HEADER] = request_id
        if route not in ("/metrics", "/healthz", "/readyz", "/openapi.json"):
            metrics.observe_request(route, request.method, response.status_code, seconds)
            log.info("http.request", method=request.method, route=route, status=response.status_code,
                     ms=round(seconds * 1000, 2), bytes=response.calculate_content_length())
        return response

    @app.teardown_request
    def _forget(_error: BaseException | None) -> None:
        structlog.contextvars.clear_contextvars()
