"""A study's past data releases for its owner: the feasibility answers released and the caller's export jobs.

Read-only queries over the `research_data` tables (no new table): what the researcher was already told, listed
again. A caller who does not own the study gets the answer for a study that does not exist (`owned_study`), and
the refusal is logged like the operations' own (`feasibility:...`, `export:...` reasons, no patient named).
Nothing here names a patient: a release holds only its noisy count; a job only its state and, once complete,
the number of resources per type (an aggregate of the manifest, never per-patient entries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection

from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_accesses
from healthledger.errors import HealthLedgerError
from healthledger.principal import HRESCH, Principal
from healthledger.research.data_models import ExportJob, FeasibilityRelease
from healthledger.research.participants import owned_study
from healthledger.store.repository import ResourceStore

MICRO = 1_000_000
MAX_LISTED = 200  # the newest first; older ones are still in the access log


@dataclass(frozen=True, slots=True)
class PastRelease:
    released_at: datetime
    question_hash: str
    epsilon: float
    reference_date: str
    count: int | None  # None: below the threshold
    threshold: int
    half_width: int
    yours: bool  # asked by the caller (another researcher of the study may have asked it)


@dataclass(frozen=True, slots=True)
class PastExport:
    job_id: str
    status: str  # queued | running | complete | failed | expired
    created_at: datetime
    finished_at: datetime | None
    expires_at: datetime | None
    types: str
    counts: tuple[tuple[str, int], ...]  # (resource type, resources delivered), from the manifest
    manifest_sha256: str
    error: str


def feasibility_releases(store: ResourceStore, principal: Principal, study_id: str, *,
                         now: datetime | None = None) -> list[PastRelease]:
    """The study's released feasibility answers, newest first; NotFound unless `principal` owns it."""
    with store.engine.connect() as conn:
        _owned(store, conn, principal, study_id, "feasibility:history", now)
        rows = conn.execute(
            select(FeasibilityRelease)
            .where(FeasibilityRelease.tenant == store.tenant, FeasibilityRelease.study_id == study_id)
            .order_by(FeasibilityRelease.released_at.desc(), FeasibilityRelease.id.desc())
            .limit(MAX_LISTED)
        ).all()
    return [PastRelease(
        released_at=_aware(r.released_at), question_hash=r.question_hash, epsilon=r.epsilon_micro / MICRO,
        reference_date=r.reference_date, count=r.noisy_count, threshold=r.threshold, half_width=r.half_width,
        yours=r.requested_by == principal.actor_id,
    ) for r in rows]


def export_jobs(store: ResourceStore, principal: Principal, study_id: str, *,
                now: datetime | None = None) -> list[PastExport]:
    """The caller's export jobs of the study (not cancelled), newest first; NotFound unless they own it.

    Only the caller's own: a job is polled and downloaded by the researcher who asked for it alone."""
    moment = now or datetime.now(UTC)
    with store.engine.connect() as conn:
        _owned(store, conn, principal, study_id, "export:history", now)
        rows = conn.execute(
            select(ExportJob.id, ExportJob.status, ExportJob.created_at, ExportJob.finished_at, ExportJob.expires_at,
                   ExportJob.types, ExportJob.manifest, ExportJob.manifest_sha256, ExportJob.error)
            .where(ExportJob.tenant == store.tenant, ExportJob.study_id == study_id,
                   ExportJob.requested_by == principal.actor_id, ExportJob.cancelled.is_(False))
            .order_by(ExportJob.created_at.desc(), ExportJob.id)
            .limit(MAX_LISTED)
        ).all()
    out = []
    for r in rows:
        expires = _aware(r.expires_at) if r.expires_at else None
        status = "expired" if r.status == "complete" and expires is not None and expires <= moment else r.status
        out.append(PastExport(
            job_id=r.id, status=status, created_at=_aware(r.created_at),
            finished_at=_aware(r.finished_at) if r.finished_at else None, expires_at=expires, types=r.types,
            counts=_counts(r.manifest) if r.status == "complete" else (), manifest_sha256=r.manifest_sha256,
            error=r.error if r.status == "failed" else "",
        ))
    return out


def _counts(manifest: str) -> tuple[tuple[str, int], ...]:
    """Resources per type over the manifest's files (files of one type summed)."""
    try:
        outputs = json.loads(manifest).get("output") or []
    except (ValueError, AttributeError):
        return ()
    totals: dict[str, int] = {}
    for f in outputs:
        if isinstance(f, dict) and isinstance(f.get("type"), str) and isinstance(f.get("count"), int):
            totals[f["type"]] = totals.get(f["type"], 0) + f["count"]
    return tuple(sorted(totals.items()))


def _owned(store: ResourceStore, conn: Connection, principal: Principal, study_id: str, reason: str,
           now: datetime | None) -> None:
    try:
        owned_study(store, conn, principal, study_id)
    except HealthLedgerError:
        if principal.via != "cli":
            with store.engine.begin() as log_conn:
                record_accesses(log_conn, [AccessEntry(
                    time=now or datetime.now(UTC), actor=principal.actor_id, organization=principal.organization,
                    role=principal.role, purpose=HRESCH, action="search", resource_type="ResearchStudy",
                    resource_id=study_id[:64], patient_pseudonym="", decision="deny",
                    reason=f"{reason}:not-owner-or-missing",
                )])
        raise


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
