"""De-identified export of a study's cohort, as the FHIR Bulk Data Access IG says (`Group/{id}/$export`).

The protocol (https://hl.7.org/fhir/uv/bulkdata/export.html): kick-off with `Prefer: respond-async` -> 202 and a
status URL; polls -> 202 with `X-Progress` and `Retry-After` (429 for polls closer than the minimum), then 200
with the completion manifest (`transactionTime`, `request`, `requiresAccessToken: true`, `output` with type,
url, count and our sha256 extension per file); `DELETE` on the status URL cancels the job and removes its
files. Files are served only to the job's researcher, with the token.

What goes into a file, in order (docs/research.md, "De-identified export"):
1. The participants: enrolments by proof not withdrawn, whose on-chain enrolment is confirmed and whose study
   consent's grant is live now (`participants.live_participants`, over the consent index every decision
   reads). One who left is not among them, nor one whose enrolment is pending or failed on-chain.
2. Per participant, the resources of the requested types (`_type`, within the study's data categories),
   updated at or after `_since` and not after the job's `transactionTime`, within the study's codes and data
   period (a resource whose clinical date is unknown is left out when the study names a period).
3. Each resource is decided by the store's access policy (`screen`: the consent engine with the patient's
   Consents, so the participant's own consented categories and period apply) as the study itself
   (`ResearchStudy/{id}`, purpose HRESCH, no organisation): a permit carries the de-identify obligation
   (fhir_adapters.deidentify: Safe Harbor, ids and references replaced by pseudonyms keyed per study, so
   consistent within the study and unlinkable across studies). Anything not de-identified (no PSEUDED label)
   is left out, whatever decided it: fail closed.
4. The entries: one access-log entry per exported resource (actor `ResearchStudy/{id}`, action `export`), one
   per participant whose resources were withheld, and one for the manifest's sha256, all written in the
   transaction that completes the job (batched), so a patient sees every delivery exactly once and a job that
   never completed delivered (and logged) nothing.

Jobs are rows (`research_export_jobs`) and survive restarts; a worker takes a job under a lease
(`healthledger.leases`, fencing token checked in the completing transaction), so two workers never complete
the same job, and a job whose worker died is taken over once its lease expires, from the start. Files are
rows of AES-256-GCM ciphertext under a data key of the job (`research-export` key class): nothing of an
export is on disk in the clear, and every replica can serve it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from fhir_adapters import search as fhir_search
from fhir_adapters.deidentify import PSEUDED
from fhir_adapters.errors import FhirInputError
from fhir_adapters.research_study import EXTENSION_BASE, UNDATED_TYPES, StudyTerms, study_reference
from fhir_adapters.validation import is_resource_type
from healthledger import crypto, leases
from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_accesses
from healthledger.auth.scopes import parse_scopes
from healthledger.consent.facts import clinical_date_range, resource_codes
from healthledger.consent.index import ConsentIndex
from healthledger.errors import BadRequest, Conflict, HealthLedgerError, not_known
from healthledger.principal import HRESCH, Principal
from healthledger.research.data_models import ExportFile, ExportFileContent, ExportJob
from healthledger.research.participants import (
    Participant,
    is_owner,
    live_participants,
    load_study,
    study_for_group,
)
from healthledger.store.access import Screened
from healthledger.store.repository import ResourceStore, dump_resource

EXPORT_KEY_CLASS = "research-export"
SHA256_EXTENSION = EXTENSION_BASE + "export-file-sha256"
NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
KICKOFF_PARAMS = frozenset({"_outputFormat", "_type", "_since"})
RESOURCES_PER_FILE = 10_000
# ResearchStudy.status codes (R4 research-study-status) under which the study may receive data.
EXPORTING_STATUSES = frozenset({
    "active", "closed-to-accrual", "temporarily-closed-to-accrual", "closed-to-accrual-and-intervention",
    "temporarily-closed-to-accrual-and-intervention",
})
LEASE_SECONDS = 60.0
# Resources of one type of one participant read per page. Each page of a search decrypts every candidate from
# the first (the blind index only narrows), so pages as large as a patient's record avoid decrypting early
# resources again for every later page.
_PAGE = 20_000


class Throttled(HealthLedgerError):
    """A status poll sooner than the job's Retry-After (Bulk Data: 429 Too Many Requests)."""

    status = 429
    code = "throttled"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExportFailed(HealthLedgerError):
    status = 500
    code = "exception"


@dataclass(frozen=True, slots=True)
class Status:
    """What a status poll answers: in progress (202), complete (200 + manifest) or failed (500)."""

    state: str  # in-progress | complete | failed
    progress: str = ""
    retry_after: int = 1
    manifest: bytes = b""
    expires: datetime | None = None
    error: str = ""


# -- the pure part: what a kick-off asks ---------------------------------------------------------------


def kickoff_request(params: Sequence[tuple[str, str]], terms: StudyTerms) -> tuple[tuple[str, ...], datetime | None]:
    """(types, since) of a kick-off; BadRequest names what is not supported or not allowed."""
    allowed = tuple(dict.fromkeys(c.resource_type for c in terms.categories))
    types: tuple[str, ...] = allowed
    since: datetime | None = None
    seen: set[str] = set()
    for name, value in params:
        if name not in KICKOFF_PARAMS:
            raise BadRequest(f"parameter {name[:40]!r} is not supported by this export (supported: "
                             f"_outputFormat, _type, _since)", expression=name[:40])
        if name in seen:
            raise BadRequest(f"parameter {name!r} may be given once", expression=name)
        seen.add(name)
        if name == "_outputFormat" and value not in NDJSON_FORMATS:
            raise BadRequest("_outputFormat must be application/fhir+ndjson", expression="_outputFormat")
        if name == "_type":
            asked = [t.strip() for t in value.split(",") if t.strip()]
            if not asked:
                raise BadRequest("_type needs at least one resource type", expression="_type")
            for t in asked:
                if not is_resource_type(t):
                    raise BadRequest(f"_type: {t[:40]!r} is not a FHIR resource type", expression="_type")
                if t not in allowed:
                    raise BadRequest(f"_type: {t} is not among the study's data categories "
                                     f"({', '.join(allowed) or 'none'})", expression="_type")
            types = tuple(dict.fromkeys(asked))
        if name == "_since":
            since = _instant(value)
    if not types:
        raise BadRequest("the study requests no data categories: there is nothing to export")
    return types, since


def check_exporting(terms: StudyTerms) -> None:
    """A study releases data while it runs (active, or closed to new participants); not before approval
    (draft) nor after it ended (completed, withdrawn): Conflict naming its status."""
    if terms.status not in EXPORTING_STATUSES:
        raise Conflict(f"the study is {terms.status or 'without a status'}: data is released only while it is "
                       f"active or closed to accrual")


def _instant(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest("_since must be an instant like 2024-01-31T12:00:00Z", expression="_since") from None
    if moment.tzinfo is None:
        raise BadRequest("_since must carry a time zone (e.g. Z)", expression="_since")
    return moment


def in_study_scope(terms: StudyTerms, resource_type: str, resource: dict[str, Any]) -> bool:
    """The study's own narrowing: its category's code set and its data period (unknown date: left out, except
    for UNDATED_TYPES, which have none)."""
    for category in terms.categories:
        if category.resource_type != resource_type:
            continue
        if category.codes:
            codes = resource_codes(resource)
            if not any(code == fcode and (not system or system == fsystem)
                       for system, code in category.codes for fsystem, fcode in codes):
                continue
        if terms.data_period is not None and resource_type not in UNDATED_TYPES:
            when = clinical_date_range(resource)
            if when is None or not terms.data_period.covers(*when):
                continue
        return True
    return False


def study_principal(terms: StudyTerms) -> Principal:
    """Who reads for an export: the study itself, for research, bound by its participants' consents."""
    ref = study_reference(terms.study_id)
    return Principal(
        actor_id=ref, role="researcher", organization="", purpose=HRESCH, references=frozenset({ref}),
        scopes=tuple(parse_scopes("system/*.rs")), scope_context="system", via="api",
    )


def is_deidentified(resource: dict[str, Any]) -> bool:
    security = (resource.get("meta") or {}).get("security") or []
    return any(isinstance(c, dict) and (c.get("system"), c.get("code")) == PSEUDED for c in security)


# -- jobs --------------------------------------------------------------------------------------------


class Exports:
    """Kick-off, status, cancel and file download over the job table (the HTTP shell calls these)."""

    def __init__(
        self,
        store: ResourceStore,
        index: ConsentIndex,
        *,
        retention: timedelta = timedelta(hours=24),
        min_poll_seconds: float = 2.0,
        max_index_age_seconds: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`max_index_age_seconds`: the consent policy's; an export waits while the index is older (every
        decision would deny, and the export would be empty rather than fail closed visibly)."""
        self.store = store
        self.index = index
        self.max_index_age_seconds = max_index_age_seconds
        self.sessions: sessionmaker[Session] = sessionmaker(bind=store.engine, expire_on_commit=False)
        self.retention = retention
        self.min_poll_seconds = min_poll_seconds
        self.clock = clock

    def kick_off(self, principal: Principal, group_id: str, params: Sequence[tuple[str, str]], request_url: str) -> str:
        """A new job for the study whose cohort is `group_id`; its id. NotFound unless the caller owns it."""
        with self.store.engine.connect() as conn:
            terms = study_for_group(self.store, conn, group_id)
        if terms is None or not is_owner(principal, terms):
            self._log(principal, "Group", group_id, "deny", "export:not-owner-or-missing")
            raise not_known("Group", group_id)
        check_exporting(terms)
        types, since = kickoff_request(params, terms)
        job_id = uuid.uuid4().hex
        now = self.clock()
        with self.sessions.begin() as s:
            s.add(ExportJob(
                id=job_id, tenant=self.store.tenant, study_id=terms.study_id, group_id=group_id,
                requested_by=principal.actor_id, request_url=request_url[:2000], types=",".join(types), since=since,
                status="queued", progress="queued", error="", manifest="", manifest_sha256="", created_at=now,
                last_polled=0, attempts=0, cancelled=False,
            ))
            record_accesses(s, [_entry(principal, "Group", group_id, "permit", f"export:kick-off:{job_id}", now)])
        return job_id

    def _job(self, s: Session, principal: Principal, job_id: str) -> ExportJob:
        job = s.get(ExportJob, job_id) if len(job_id) <= 64 else None
        if job is None or job.tenant != self.store.tenant or job.requested_by != principal.actor_id or job.cancelled:
            raise NotFoundJob()
        return job

    def status(self, principal: Principal, job_id: str) -> Status:
        try:
            return self._status(principal, job_id)
        except NotFoundJob:
            self._log(principal, "Group", "", "deny", f"export:status:not-found:{job_id[:64]}")
            raise

    def _status(self, principal: Principal, job_id: str) -> Status:
        now = self.clock()
        wait = max(1, round(self.min_poll_seconds))
        with self.sessions.begin() as s:
            job = self._job(s, principal, job_id)
            if job.status in ("queued", "running"):
                stamp = int(now.timestamp() * 1000)
                polled: Any = s.execute(
                    update(ExportJob)
                    .where(ExportJob.id == job_id, ExportJob.last_polled <= stamp - int(self.min_poll_seconds * 1000))
                    .values(last_polled=stamp)
                )
                if polled.rowcount != 1:
                    raise Throttled(f"polled too often: wait {wait} s between status requests", wait)
                return Status("in-progress", progress=job.progress or job.status, retry_after=wait)
            if job.status == "complete":
                expires = _aware(job.expires_at) if job.expires_at else None
                if expires is not None and expires <= now:
                    raise NotFoundJob()
                return Status("complete", manifest=job.manifest.encode(), expires=expires)
            return Status("failed", error=job.error or "the export failed")

    def cancel(self, principal: Principal, job_id: str) -> None:
        """Cancel the job (or delete a finished one) and remove its files."""
        try:
            self._cancel(principal, job_id)
        except NotFoundJob:
            self._log(principal, "Group", "", "deny", f"export:cancel:not-found:{job_id[:64]}")
            raise

    def _cancel(self, principal: Principal, job_id: str) -> None:
        with self.sessions.begin() as s:
            job = self._job(s, principal, job_id)
            job.cancelled = True
            if job.status in ("queued", "running"):
                job.status = "cancelled"
            s.execute(delete(ExportFile).where(ExportFile.job_id == job_id))
            record_accesses(s, [_entry(principal, "Group", job.group_id, "permit", f"export:cancel:{job_id}",
                                       self.clock())])

    def file(self, principal: Principal, job_id: str, name: str) -> bytes:
        """A completed job's NDJSON file, decrypted, for the job's researcher only; each download is logged."""
        try:
            body, group_id = self._file(principal, job_id, name)
        except NotFoundJob:
            self._log(principal, "Group", "", "deny", f"export:download:not-found:{job_id[:64]}")
            raise
        self._log(principal, "Group", group_id, "permit", f"export:download:{job_id}/{name}")
        return body

    def _file(self, principal: Principal, job_id: str, name: str) -> tuple[bytes, str]:
        with self.sessions.begin() as s:
            job = self._job(s, principal, job_id)
            if job.status != "complete" or (job.expires_at and _aware(job.expires_at) <= self.clock()):
                raise NotFoundJob()
            row = s.get(ExportFile, (job_id, name[:64]))
            if row is None:
                raise NotFoundJob()
            conn = s.connection()
            key = self.store.keyring.key_for_scope(conn, EXPORT_KEY_CLASS, job_id.encode()).key
            sealed = _content(conn, job_id, row.name)
            group_id = job.group_id
        return crypto.open_(key, sealed, _file_aad(self.store.tenant, job_id, row.name)), group_id

    def _log(self, principal: Principal, resource_type: str, resource_id: str, decision: str, reason: str) -> None:
        with self.store.engine.begin() as conn:
            record_accesses(conn, [_entry(principal, resource_type, resource_id[:64], decision, reason, self.clock())])


class NotFoundJob(HealthLedgerError, LookupError):
    """No such export for this caller (missing, someone else's, cancelled or expired): one answer for all."""

    status = 404
    code = "not-found"

    def __init__(self) -> None:
        super().__init__("no such export job (it may have been cancelled or have expired)")


def _entry(principal: Principal, resource_type: str, resource_id: str, decision: str, reason: str,
           now: datetime, patient_pseudonym: str = "") -> AccessEntry:
    return AccessEntry(
        time=now, actor=principal.actor_id, organization=principal.organization, role=principal.role,
        purpose=HRESCH, action="export", resource_type=resource_type, resource_id=resource_id,
        patient_pseudonym=patient_pseudonym, decision=decision, reason=reason[:500],
    )


def _file_aad(tenant: str, job_id: str, name: str) -> bytes:
    return f"healthledger/research-export/v1|{tenant}|{job_id}|{name}".encode()


# File contents: a table of their own, read only when a file is downloaded.
def _content(conn: Connection, job_id: str, name: str) -> bytes:
    sealed = conn.execute(
        select(ExportFileContent.sealed).where(ExportFileContent.job_id == job_id, ExportFileContent.name == name)
    ).scalar_one()
    return bytes(sealed)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- the worker ---------------------------------------------------------------------------------------


@dataclass
class _Output:
    """What a job produced so far, in memory until the job completes."""

    lines: dict[str, list[bytes]] = field(default_factory=dict)  # resource type -> NDJSON lines
    entries: list[AccessEntry] = field(default_factory=list)


class ExportWorker:
    """Runs queued jobs (and jobs whose worker died) under a lease each; `run_once` is one pass."""

    def __init__(self, exports: Exports, *, owner: str | None = None, wall: Callable[[], float] = time.time) -> None:
        self.exports = exports
        self.store = exports.store
        self.owner = owner or f"export-{secrets.token_hex(6)}"
        self.wall = wall

    def run_once(self) -> int:
        """Process every job that is waiting (and may be taken); expire old files. How many jobs completed."""
        self._expire()
        done = 0
        with self.exports.sessions() as s:
            waiting = s.scalars(
                select(ExportJob.id).where(ExportJob.tenant == self.store.tenant,
                                           ExportJob.status.in_(("queued", "running")))
                .order_by(ExportJob.created_at)
            ).all()
        for job_id in waiting:
            held = leases.acquire(self.exports.sessions, f"research-export:{job_id}", self.owner,
                                  now=self.wall(), ttl=LEASE_SECONDS)
            if held is None:
                continue  # another worker has it
            try:
                done += self._run(job_id, held)
            finally:
                leases.release(self.exports.sessions, held)
        return done

    def _expire(self) -> None:
        now = self.exports.clock()
        with self.exports.sessions.begin() as s:
            old = s.scalars(select(ExportJob.id).where(
                ExportJob.tenant == self.store.tenant, ExportJob.expires_at.is_not(None), ExportJob.expires_at < now,
            )).all()
            cancelled = s.scalars(select(ExportJob.id).where(
                ExportJob.tenant == self.store.tenant, ExportJob.cancelled.is_(True))).all()
            gone = [*old, *cancelled]
            if gone:
                s.execute(delete(ExportFileContent).where(ExportFileContent.job_id.in_(gone)))
                s.execute(delete(ExportFile).where(ExportFile.job_id.in_(gone)))

    def _run(self, job_id: str, held: leases.Held) -> int:
        with self.exports.sessions.begin() as s:
            job = s.get(ExportJob, job_id)
            if job is None or job.cancelled or job.status not in ("queued", "running"):
                return 0
            job.status, job.progress, job.attempts = "running", "starting", job.attempts + 1
            job.transaction_time = self.exports.clock()
            snapshot = (job.study_id, job.group_id, job.requested_by, job.request_url, job.types, job.since,
                        job.transaction_time, job.attempts)
        study_id, group_id, requested_by, request_url, types, since, transaction_time, attempts = snapshot
        try:
            with self.store.engine.connect() as conn:
                terms = load_study(self.store, conn, study_id)
                index_age = self.exports.index.refresh(conn)
            if terms is None:
                raise ExportFailed("the study no longer exists")
            if terms.status not in EXPORTING_STATUSES:
                raise ExportFailed(f"the study is {terms.status}: it receives no more data")
            if index_age > self.exports.max_index_age_seconds:
                self._wait(job_id, "waiting for the consent index to catch up with the chain")
                return 0
            output = self._collect(job_id, terms, types.split(","), _aware(since) if since else None,
                                   _aware(transaction_time), held)
            if output is None:
                return 0  # cancelled or lease lost: nothing delivered
            return self._complete(job_id, terms, group_id, requested_by, request_url, output,
                                  _aware(transaction_time), held)
        except ExportFailed as failure:
            self._fail(job_id, failure.message)
            return 0
        except Exception:
            if attempts >= 3:
                self._fail(job_id, "the export failed repeatedly; ask the hospital to look at its logs")
            raise

    def _collect(self, job_id: str, terms: StudyTerms, types: list[str], since: datetime | None,
                 transaction_time: datetime, held: leases.Held) -> _Output | None:
        policy = self.store.policy
        principal = study_principal(terms)
        output = _Output()
        with self.store.engine.connect() as conn:
            participants = live_participants(self.store, self.exports.index, conn, terms.study_id, transaction_time)
        for n, participant in enumerate(participants, 1):
            if not self._still_ours(job_id, held, f"participant {n} of {len(participants)}"):
                return None
            with self.store.engine.connect() as conn:
                policy.begin(conn, defer=True)
                try:
                    for resource_type in types:
                        self._participant(conn, principal, terms, participant, resource_type, since,
                                          transaction_time, output)
                finally:
                    output.entries.extend(policy.rescue(conn))
                    conn.rollback()
        return output

    def _participant(self, conn: Connection, principal: Principal, terms: StudyTerms, participant: Participant,
                     resource_type: str, since: datetime | None, transaction_time: datetime, output: _Output) -> None:
        policy = self.store.policy
        disclosed: list[Screened] = []
        withheld: list[Screened] = []
        lines = output.lines.setdefault(resource_type, [])
        for stored in _resources_of(self.store, conn, resource_type, participant.patient_id):
            if stored.resource is None or _aware(stored.last_updated) > transaction_time:
                continue
            if since is not None and _aware(stored.last_updated) < since:
                continue
            if not in_study_scope(terms, resource_type, stored.resource):
                continue
            screened = policy.screen(principal, "export", resource_type, stored.resource, conn=conn)
            if screened.resource is None or not is_deidentified(screened.resource):
                withheld.append(Screened(resource_type, "", participant.patient_id, None, screened.verdict))
                continue
            disclosed.append(screened)
            lines.append(dump_resource(screened.resource))
        if disclosed or withheld:
            policy.record_results(principal, "export", resource_type, disclosed, withheld, conn=conn)

    def _still_ours(self, job_id: str, held: leases.Held, progress: str) -> bool:
        """Renew the lease, record progress; False when cancelled or when another worker took the job."""
        renewed = leases.acquire(self.exports.sessions, held.name, held.owner, now=self.wall(), ttl=LEASE_SECONDS)
        if renewed is None or renewed.token != held.token:
            return False
        with self.exports.sessions.begin() as s:
            job = s.get(ExportJob, job_id)
            if job is None or job.cancelled:
                return False
            job.progress = progress[:90]
        return True

    def _complete(self, job_id: str, terms: StudyTerms, group_id: str, requested_by: str, request_url: str,
                  output: _Output, transaction_time: datetime, held: leases.Held) -> int:
        fhir_base = request_url.split("/Group/", 1)[0]
        now = self.exports.clock()
        files: list[tuple[str, str, list[bytes]]] = []
        for resource_type, lines in output.lines.items():
            for part, start in enumerate(range(0, len(lines), RESOURCES_PER_FILE), 1):
                files.append((f"{resource_type}.{part}.ndjson", resource_type, lines[start:start + RESOURCES_PER_FILE]))
        with self.exports.sessions.begin() as s:
            if not leases.holds(s, held, now=self.wall()):
                return 0
            job = s.get(ExportJob, job_id)
            if job is None or job.cancelled:
                return 0
            conn = s.connection()
            key = self.store.keyring.key_for_scope(conn, EXPORT_KEY_CLASS, job_id.encode()).key
            s.execute(delete(ExportFileContent).where(ExportFileContent.job_id == job_id))
            s.execute(delete(ExportFile).where(ExportFile.job_id == job_id))
            manifest_output = []
            for name, resource_type, lines in files:
                body = b"\n".join(lines) + b"\n"
                digest = hashlib.sha256(body).hexdigest()
                s.add(ExportFile(job_id=job_id, name=name, resource_type=resource_type, count=len(lines),
                                 sha256=digest, size=len(body)))
                s.add(ExportFileContent(job_id=job_id, name=name,
                                        sealed=crypto.seal(key, body, _file_aad(self.store.tenant, job_id, name))))
                manifest_output.append({
                    "type": resource_type, "url": f"{fhir_base}/$export-file/{job_id}/{name}", "count": len(lines),
                    "extension": {SHA256_EXTENSION: digest},
                })
            manifest = {
                "transactionTime": transaction_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "request": request_url,
                "requiresAccessToken": True,
                "output": manifest_output,
                "error": [],
                "extension": {EXTENSION_BASE + "export-study": study_reference(terms.study_id)},
            }
            manifest_bytes = orjson.dumps(manifest)
            manifest_hash = hashlib.sha256(manifest_bytes).hexdigest()
            job.manifest = manifest_bytes.decode()
            job.manifest_sha256 = manifest_hash
            job.status, job.progress = "complete", "complete"
            job.finished_at = now
            job.expires_at = now + self.exports.retention
            self.store.policy.keep(conn, output.entries)
            researcher = Principal(requested_by, role="researcher")
            record_accesses(conn, [_entry(researcher, "Group", group_id, "permit",
                                          f"export:manifest:{job_id}:sha256={manifest_hash}", now)])
        return 1

    def _wait(self, job_id: str, progress: str) -> None:
        with self.exports.sessions.begin() as s:
            job = s.get(ExportJob, job_id)
            if job is not None and not job.cancelled:
                job.status, job.progress = "queued", progress[:90]

    def _fail(self, job_id: str, message: str) -> None:
        with self.exports.sessions.begin() as s:
            job = s.get(ExportJob, job_id)
            if job is not None and not job.cancelled:
                job.status, job.error, job.progress = "failed", message[:500], "failed"


def _resources_of(store: ResourceStore, conn: Connection, resource_type: str, patient_id: str) -> Iterator[Any]:
    """The patient's current resources of a type (service view: every one is decided by the caller)."""
    ref = f"Patient/{patient_id}"
    if resource_type == "Patient":
        params = [("_id", patient_id)]
    else:
        params = []
        for name in ("patient", "subject"):
            try:
                fhir_search.parse_search(resource_type, [(name, ref)])
            except FhirInputError:
                continue
            params = [(name, ref)]
            break
        if not params:
            return
    uow = store.view_on(conn)
    query = fhir_search.parse_search(resource_type, params)
    offset: int | None = 0
    while offset is not None:
        page = uow.search(resource_type, query, count=_PAGE, offset=offset, check=False)
        yield from page.items
        offset = page.next_offset


class BackgroundExports:
    """Runs the worker in a daemon thread of this process while there is work, started on demand (a kick-off
    or a status poll), so an export proceeds in whichever replica is asked and resumes after a restart."""

    def __init__(self, worker: ExportWorker, *, idle_seconds: float = 5.0, poll_seconds: float = 0.5) -> None:
        self.worker = worker
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds
        self.enabled = True  # tests switch it off to run `worker.run_once()` themselves
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._loop, name="research-export", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        import structlog

        log = structlog.get_logger("healthledger.research.export")
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < self.idle_seconds:
            try:
                if self.worker.run_once():
                    idle_since = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the job stays queued; the next pass retries it
                log.error("research.export.failed", error=type(exc).__name__)
            time.sleep(self.poll_seconds)
