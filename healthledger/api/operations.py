"""The operator's HTTP surface: `/healthz` (liveness), `/readyz` (readiness), `/metrics` (Prometheus), and the
per-request hooks behind them (request id, latency by route, one JSON log line per request).

Liveness says only that the process answers: a failing dependency must not get every replica restarted.
Readiness says whether this replica should get traffic: the database answers, its schema is at every
migration head this release knows, the key provider wraps and unwraps, and the consent index is fresh (the
indexer passed within the consent policy's `max_index_age_seconds`, the bound reads fail closed on), so a
replica turns ready only once consent-dependent reads can succeed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from flask import Blueprint, Flask, Response, g, request
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from healthledger.keys import KeyProvider
from healthledger.observability import REQUEST_ID_HEADER, Metrics, request_id_for

log = structlog.get_logger("healthledger.http")

_PROBE = b"healthledger/readiness-probe"
_UNMATCHED_ROUTE = "(unmatched)"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""  # safe to show: no URL, no credentials, no data


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
    ) -> None:
        self.engine = engine
        self.key_provider = key_provider
        self.max_index_age_seconds = max_index_age_seconds
        self.indexer_name = indexer_name
        self.wall_clock = wall_clock
        self._heads: frozenset[str] | None = None

    def checks(self) -> list[Check]:
        database = self._database()
        if not database.ok:
            skipped = "not checked: the database is unavailable"
            return [database, Check("migrations", False, skipped), self._keys(), Check("consent_index", False, skipped)]
        return [database, self._migrations(), self._keys(), self._consent_index()]

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

    def _keys(self) -> Check:
        try:
            wrapped = self.key_provider.wrap(_PROBE, b"readyz")
            ok = self.key_provider.unwrap(wrapped, b"readyz") == _PROBE
        except Exception as exc:  # noqa: BLE001
            return Check("key_provider", False, f"unavailable ({type(exc).__name__})")
        return Check("key_provider", ok, "" if ok else "unwrap returned another value")

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
        if age > self.max_index_age_seconds:
            return Check(
                "consent_index", False,
                f"the chain was last indexed {age:.0f} s ago (bound {self.max_index_age_seconds:.0f} s)",
            )  # fmt: skip
        return Check("consent_index", True, f"indexed {max(age, 0.0):.1f} s ago")


class LedgerGauges:
    """A Prometheus collector of what the database says about the ledger side, read at each scrape (so every
    replica reports the same, shared values): outbox depth by state and the age of its oldest pending write,
    the indexer's lag, access-log entries appended, sequenced and anchored, resource versions stored."""

    def __init__(self, engine: Engine, *, indexer_name: str = "ledger", wall_clock: Callable[[], float] = time.time):
        self.engine = engine
        self.indexer_name = indexer_name
        self.wall_clock = wall_clock

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from healthledger.audit.models import AccessLogEntry, AuditCheckpoint, AuditHead
        from healthledger.ledger.models import IndexerCursor, LogAnchorEvent, OutboxItem
        from healthledger.store.models import StoredVersion

        now = self.wall_clock()
        try:
            with Session(self.engine) as session:
                states = dict(session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
                oldest = session.scalar(
                    select(func.min(OutboxItem.created_at)).where(OutboxItem.state.in_(["queued", "sent"]))
                )
                cursor = session.get(IndexerCursor, self.indexer_name)
                appended = session.scalar(select(func.max(AccessLogEntry.id))) or 0
                sequenced = session.scalar(select(func.coalesce(func.sum(AuditHead.size), 0))) or 0
                anchored = session.scalar(select(func.max(LogAnchorEvent.tree_size))) or 0
                last_anchor_made = session.scalar(
                    select(AuditCheckpoint.created_at).where(AuditCheckpoint.size == anchored)
                )
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
        yield _gauge("healthledger_access_log_appended", "Highest access-log entry id (entries appended)", appended)
        yield _gauge("healthledger_access_log_sequenced", "Access-log entries sequenced into the Merkle tree", sequenced)
        yield _gauge("healthledger_access_log_anchored", "Largest tree size anchored on-chain", anchored)
        lag_entries = max(0, int(sequenced) - int(anchored))
        yield _gauge("healthledger_anchoring_lag_entries", "Sequenced entries not yet covered by an anchor", lag_entries)
        lag_seconds = 0.0
        if lag_entries and last_anchor_made is not None:
            lag_seconds = max(0.0, now - last_anchor_made.timestamp())
        yield _gauge("healthledger_anchoring_lag_seconds", "Seconds since the newest anchored tree head was made, "
                     "while entries wait for an anchor", lag_seconds)
        yield _gauge("healthledger_store_versions", "Highest stored resource version row (writes and imports; "
                     "rate() is the import throughput)", versions)


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
        ready = all(c.ok for c in checks)
        body = {
            "status": "ready" if ready else "not-ready",
            "checks": {c.name: {"ok": c.ok, **({"detail": c.detail} if c.detail else {})} for c in checks},
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
