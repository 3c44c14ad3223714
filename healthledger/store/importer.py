"""Bulk import of FHIR Bundles and NDJSON files: validated, sealed and indexed in batched transactions."""

from __future__ import annotations

import gc
import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

import sqlalchemy as sa

from fhir_adapters import bundles as fhir_bundles
from fhir_adapters import compartment as fhir_compartment
from fhir_adapters import definition_search
from fhir_adapters import search as fhir_search
from fhir_adapters import validation as fhir_validation
from fhir_adapters.errors import FhirInputError
from healthledger.errors import HealthLedgerError
from healthledger.store import envelope
from healthledger.store.access import Principal
from healthledger.store.bundles import execute_bundle
from healthledger.store.models import resources_table as res_t
from healthledger.store.repository import ResourceStore, UnitOfWork, _NewVersion, check_id, fhir_errors

CHUNK = 500  # resources per transaction: large enough to amortise commits, small enough to stay responsive
SLICE = 250  # NDJSON lines per worker task
SUFFIXES = (".ndjson", ".json")

Progress = Callable[[int], None]  # called with the number of bytes just processed


@dataclass
class FileReport:
    path: str
    imported: int = 0
    skipped: int = 0
    rejected: int = 0
    unreadable: str | None = None
    # (where in the file, reason): every skipped or rejected entry, with a message safe to show
    problems: list[tuple[str, str, str]] = field(default_factory=list)

    def reject(self, where: str, reason: str) -> None:
        self.rejected += 1
        self.problems.append((where, "rejected", reason))

    def reject_all(self, where: str, reason: str, count: int) -> None:
        """`count` entries rejected for one reason (a transaction rolled back, a Bundle refused): said once."""
        self.rejected += count
        self.problems.append((where, "rejected", reason if count == 1 else f"{reason} ({count} entries)"))

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        self.problems.append((where, "skipped", reason))


@dataclass
class ImportReport:
    files: list[FileReport]

    @property
    def imported(self) -> int:
        return sum(f.imported for f in self.files)

    @property
    def skipped(self) -> int:
        return sum(f.skipped for f in self.files)

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    @property
    def failed(self) -> bool:
        """True when a file was unreadable or nothing at all could be imported (the CLI exits non-zero)."""
        if any(f.unreadable for f in self.files):
            return True
        return self.imported == 0 and self.skipped == 0 and self.rejected > 0


def discover(paths: Iterable[Path]) -> list[Path]:
    """The files to import: given files as they are, folders searched (recursively) for .json/.ndjson."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES))
        else:
            found.append(path)
    return found


class EntryError(ValueError):
    """An input item that is not a resource at all (its message is ours, safe to show)."""


# R4 BundleType (http://hl7.org/fhir/R4/valueset-bundle-type.html): batch and transaction run as the API runs
# them; the others are containers whose entries are imported one by one.
BUNDLE_TYPES: Final = frozenset({"document", "message", "transaction", "transaction-response", "batch",
                                 "batch-response", "history", "searchset", "collection"})


def _reason(exc: Exception) -> str:
    if isinstance(exc, FhirInputError | HealthLedgerError):
        where = f" ({exc.expression})" if exc.expression else ""
        return f"{exc.message}{where}"
    if isinstance(exc, EntryError):
        return str(exc)
    # Not one of ours: its message may quote the input, so only its kind is said.
    return f"could not be imported ({type(exc).__name__})"


@dataclass(frozen=True)
class Prepared:
    """One input item after validation: the resource with its index terms and compartment, or why not."""

    where: str
    resource: dict[str, Any] | None
    reason: str | None = None
    terms: dict[str, set[str]] | None = None
    patient_id: str | None = None
    blind: list[tuple[str, bytes]] | None = None  # `terms` as blind-index terms, when computed by a worker


# Set in each import worker process (forked, so the indexer's keys never cross a pipe).
_WORKER_INDEXER: envelope.BlindIndexer | None = None


def _init_worker(indexer: envelope.BlindIndexer) -> None:
    global _WORKER_INDEXER
    _WORKER_INDEXER = indexer


def prepare(where: str, item: Any, indexer: envelope.BlindIndexer | None = None) -> Prepared:
    """Validate one resource and compute its index terms (blind ones with `indexer`) and compartment."""
    if isinstance(item, Exception):
        return Prepared(where, None, _reason(item))
    try:
        with fhir_errors():
            resource = fhir_validation.parse_resource(item)
            definition_search.check_not_own_url(resource)
            if "id" in resource:
                check_id(resource["id"])
            terms = fhir_search.index_terms(resource)
            patient_id = fhir_compartment.patient_compartment(resource)
    except HealthLedgerError as exc:
        return Prepared(where, None, _reason(exc))
    if indexer is not None:
        return Prepared(where, resource, None, None, patient_id, indexer.terms(resource["resourceType"], terms))
    return Prepared(where, resource, None, terms, patient_id)


def prepare_ndjson_lines(lines: list[str], first_line_no: int) -> list[Prepared]:
    """Worker task: parse and prepare a slice of an NDJSON file (line numbers relative to the file)."""
    return [
        prepare(f"line {first_line_no + n - 1}", item, _WORKER_INDEXER)
        for n, item in fhir_bundles.read_ndjson(lines)
    ]


class Importer:
    """Imports files into a store. Resources that carry an id keep it (references between them stay
    valid); a resource whose id is already stored is skipped, so importing twice is harmless."""

    def __init__(
        self,
        store: ResourceStore,
        *,
        principal: Principal | None = None,
        chunk_size: int = CHUNK,
        workers: int | None = None,
    ) -> None:
        self.store = store
        self.principal = principal
        self.chunk_size = chunk_size
        # Validation with the R4B models costs ~1 ms per resource, more than sealing and writing it:
        # worker processes validate NDJSON slices while this process encrypts and writes.
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            gc.unfreeze()

    def _workers(self) -> ProcessPoolExecutor | None:
        if self.workers < 2:
            return None
        if self._pool is None:
            # fork: workers inherit the imported FHIR models instead of importing them again;
            # gc.freeze keeps the collector from touching (and so copying) the inherited heap.
            gc.freeze()
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_worker,
                initargs=(self.store.indexer,),
            )
        return self._pool

    def import_paths(self, paths: Iterable[Path], progress: Progress | None = None) -> ImportReport:
        try:
            return ImportReport([self.import_file(p, progress) for p in discover(paths)])
        finally:
            self.close()

    def import_file(self, path: Path, progress: Progress | None = None) -> FileReport:
        report = FileReport(str(path))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            report.unreadable = f"cannot read file: {exc.strerror or 'I/O error'}"
            return report
        if path.suffix.lower() == ".ndjson":
            self._import_ndjson(raw, report, progress)
        else:
            self._import_json(raw, report)
            if progress:
                progress(len(raw))
        return report

    # -- NDJSON (FHIR Bulk Data: one resource per line) ------------------------------------------
    def _import_ndjson(self, raw: bytes, report: FileReport, progress: Progress | None) -> None:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            report.unreadable = "file is not UTF-8 text"
            return
        lines = text.splitlines()
        slices = [(lines[i : i + SLICE], i + 1) for i in range(0, len(lines), SLICE)]
        pool = self._workers() if len(lines) > SLICE else None
        if pool is None:
            prepared_slices: Iterator[list[Prepared]] = (prepare_ndjson_lines(ls, first) for ls, first in slices)
        else:
            prepared_slices = _bounded_map(pool, prepare_ndjson_lines, slices, window=2 * self.workers)
        pending: list[Prepared] = []
        done_bytes = 0
        for (slice_lines, _), prepared in zip(slices, prepared_slices):
            pending.extend(prepared)
            done_bytes += sum(len(line.encode()) + 1 for line in slice_lines)
            if len(pending) >= self.chunk_size:
                self._write_prepared(pending, report)
                pending = []
                if progress:
                    progress(done_bytes)
                    done_bytes = 0
        self._write_prepared(pending, report)
        if progress and done_bytes:
            progress(done_bytes)

    # -- JSON: a Bundle or a single resource ---------------------------------------------------
    def _import_json(self, raw: bytes, report: FileReport) -> None:
        try:
            data = fhir_validation.loads_json(raw)
        except FhirInputError as exc:
            report.unreadable = f"not valid JSON: {exc.message}"
            return
        if not isinstance(data, dict):
            report.reject("file", "a FHIR JSON file must hold one resource or Bundle object")
            return
        if data.get("resourceType") == "Bundle" and data.get("type") in ("transaction", "batch"):
            self._import_bundle(data, report)
            return
        if data.get("resourceType") == "Bundle" and data.get("type") not in BUNDLE_TYPES:
            # What POST /fhir answers for such a Bundle (fhir_adapters.bundles.plan_bundle), said once for the file.
            try:
                fhir_bundles.plan_bundle(data)
            except FhirInputError as exc:
                entries = data.get("entry")
                report.reject_all("Bundle", _reason(exc), max(len(entries) if isinstance(entries, list) else 0, 1))
                return
        if data.get("resourceType") == "Bundle" and isinstance(data.get("entry"), list):
            entries = data["entry"]
            items = (
                (f"entry {i}", e.get("resource") if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                 else EntryError("the entry has no resource (Bundle.entry.resource)"), 0)
                for i, e in enumerate(entries)
            )
            self._import_resources(items, report, None)
            return
        self._import_resources(iter([("resource", data, 0)]), report, None)

    def _import_bundle(self, bundle: dict[str, Any], report: FileReport) -> None:
        raw_entries = bundle.get("entry")
        entries: list[Any] = raw_entries if isinstance(raw_entries, list) else []
        try:
            response = execute_bundle(self.store, bundle, principal=self.principal)
        except (HealthLedgerError, FhirInputError) as exc:
            # A transaction is all-or-nothing (a refused batch, too, failed as a whole): every entry is
            # rejected for the one reason, which is said once.
            what = "transaction rolled back" if bundle.get("type") == "transaction" else "batch refused"
            report.reject_all("Bundle", f"{what}: {_reason(exc)}", max(len(entries), 1))
            return
        for i, entry in enumerate(response.get("entry", [])):
            status = str(entry.get("response", {}).get("status", ""))
            if status.startswith("2"):
                report.imported += 1
            else:
                outcome = entry.get("response", {}).get("outcome") or {}
                issues = outcome.get("issue") or [{}]
                report.reject(f"entry {i}", f"{status}: {issues[0].get('diagnostics', 'failed')}")

    # -- the fast path: many resources, batched ------------------------------------------------
    def _import_resources(
        self,
        items: Iterator[tuple[str, Any, int]],
        report: FileReport,
        progress: Progress | None,
    ) -> None:
        while True:
            chunk = list(itertools.islice(items, self.chunk_size))
            if not chunk:
                return
            self._write_prepared([prepare(where, item) for where, item, _ in chunk], report)
            if progress:
                progress(sum(size for _, _, size in chunk))

    def _write_prepared(self, prepared: list[Prepared], report: FileReport) -> None:
        valid: list[Prepared] = []
        for p in prepared:
            if p.resource is None:
                report.reject(p.where, p.reason or "invalid")
            else:
                valid.append(p)
        if valid:
            self._write_chunk(valid, report)

    def _write_chunk(self, valid: list[Prepared], report: FileReport) -> None:
        try:
            with self.store.unit_of_work(self.principal) as uow:
                imported = self._write_in(uow, valid, report)
        except HealthLedgerError as exc:
            # Something failed for the chunk as a whole (e.g. an erased compartment): retry one by one
            # so one bad resource does not reject its neighbours.
            if len(valid) == 1:
                report.reject(valid[0].where, _reason(exc))
                return
            for one in valid:
                self._write_chunk([one], report)
            return
        report.imported += imported

    def _write_in(self, uow: UnitOfWork, valid: list[Prepared], report: FileReport) -> int:
        by_type: dict[str, set[str]] = {}
        for p in valid:
            r = p.resource
            assert r is not None
            if "id" in r:
                by_type.setdefault(r["resourceType"], set()).add(r["id"])
        existing: dict[tuple[str, str], Any] = {}
        for resource_type, ids in by_type.items():
            for found in uow.conn.execute(
                sa.select(res_t.c.row_id, res_t.c.resource_id, res_t.c.version_id, res_t.c.deleted, res_t.c.erased)
                .where(
                    res_t.c.tenant == uow.tenant,
                    res_t.c.resource_type == resource_type,
                    res_t.c.is_current.is_(True),
                    res_t.c.resource_id.in_(sorted(ids)),
                )
            ):
                existing[(resource_type, found.resource_id)] = found
        versions: list[_NewVersion] = []
        supersede: list[int] = []
        seen: set[tuple[str, str]] = set()
        for p in valid:
            where, resource = p.where, p.resource
            assert resource is not None
            resource_type = resource["resourceType"]
            resource_id = resource.get("id") or uow.store.new_id()
            key = (resource_type, resource_id)
            if key in seen:
                report.skip(where, f"{resource_type}/{resource_id} appears twice; the first was imported")
                continue
            seen.add(key)
            row = existing.get(key)
            if row is not None and row.erased:
                report.reject(where, f"{resource_type}/{resource_id} was erased")
                continue
            if row is not None and not row.deleted:
                report.skip(where, f"{resource_type}/{resource_id} is already stored")
                continue
            uow.authorize("create", resource_type, resource)
            version, _ = uow.prepare_version(
                resource_type, resource_id, 1 if row is None else row.version_id + 1, resource,
                patient_id=p.patient_id, index=p.terms, blind=p.blind,
            )
            versions.append(version)
            if row is not None:
                supersede.append(row.row_id)
        uow.write_versions(versions, supersede=supersede)
        return len(versions)


def summarise_json(report: ImportReport) -> str:
    """The report as JSON (for scripts)."""
    return json.dumps(
        {
            "imported": report.imported,
            "skipped": report.skipped,
            "rejected": report.rejected,
            "files": [f.__dict__ for f in report.files],
        },
        indent=2,
    )


def _bounded_map(
    pool: ProcessPoolExecutor, fn: Callable[..., list[Prepared]], args: list[tuple[Any, ...]], *, window: int
) -> Iterator[list[Prepared]]:
    """`pool.map` in order with at most `window` tasks in flight (memory stays bounded on big files)."""
    pending: deque[Future[list[Prepared]]] = deque()
    it = iter(args)
    for a in itertools.islice(it, window):
        pending.append(pool.submit(fn, *a))
    while pending:
        result = pending.popleft().result()
        for a in itertools.islice(it, 1):
            pending.append(pool.submit(fn, *a))
        yield result
