"""Batch and transaction Bundles (FHIR R4 3.1.0.11) executed against the store.

A batch runs each entry in its own transaction and reports each outcome; a transaction runs every entry
in ONE database transaction, in the spec's processing order (DELETE, POST, PUT/PATCH, GET; 3.1.0.11.2),
after assigning ids to new resources and rewriting `urn:uuid:` and conditional references
(`Patient?identifier=x`) in every resource, and fails whole, naming the entry, on any error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from fhir_adapters import bundles as fhir_bundles
from fhir_adapters import definition_search
from fhir_adapters import outcome as fhir_outcome
from fhir_adapters import search as fhir_search
from fhir_adapters.datatypes import instant
from fhir_adapters.errors import FhirInputError, UnsupportedSearch
from fhir_adapters.search.controls import ResultControls, parse_controls
from fhir_adapters.subsetting import select_elements, summarize
from healthledger.actions import Action
from healthledger.errors import (
    BadRequest,
    HealthLedgerError,
    NotFound,
    NotSupported,
    PreconditionFailed,
)
from healthledger.store.access import Principal
from healthledger.store.own_definitions import refuse_own_url
from healthledger.store.repository import (
    ANY_VERSION,
    IfNoneMatch,
    ResourceStore,
    StoredResource,
    UnitOfWork,
    as_store_error,
    check_writable,
    fhir_errors,
    translating_fhir_errors,
)
from healthledger.store.search_results import included_resources

_ETAG = re.compile(r'^(?:W/)?"?(?P<v>[0-9]+)"?$')


@dataclass(frozen=True)
class Target:
    """Where an entry's request URL points: a type, an instance (maybe a version) or a conditional search."""

    resource_type: str
    id: str | None = None
    version: int | None = None
    params: list[tuple[str, str]] | None = None  # conditional / search URL: `Type?name=value`


# A batch's GET or HEAD entry answered by the caller as the same REST request would be (status, resource, etag,
# lastModified, outcome; decided and logged as that request): the batch-response entry, or None where the caller
# leaves the entry to the store (a type another module serves, answered through EntryRead).
RoutedRead = Callable[[Any], dict[str, Any] | None]

# A GET entry of a type that a module of its own serves (research: ResearchStudy, ResearchSubject), answered as that
# module's REST read or search answers it, on the entry's unit of work: a stored resource (a read), a resource (a
# searchset Bundle, an enrolment), or None where the store's generic read answers (after the module's checks).
EntryRead = Callable[[UnitOfWork, Target], StoredResource | dict[str, Any] | None]


def entry_target(entry: Any) -> Target:
    """The target of a planned entry (plan_bundle has parsed and checked the request URL)."""
    params = list(entry.conditional) if entry.conditional is not None else None
    version = int(entry.version_id) if entry.version_id and entry.version_id.isdigit() else None
    if entry.version_id and version is None:
        raise NotFound("no such version")
    return Target(entry.resource_type, entry.id, version, params)


def reference_target(reference: str) -> Target:
    """The target of a conditional reference `Type?query` (plan_bundle checked it parses)."""
    resource_type, _, query = reference.partition("?")
    return Target(resource_type, params=parse_qsl(query, keep_blank_values=True))


def parse_etag(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    m = _ETAG.match(str(value).strip())
    if not m:
        raise PreconditionFailed("If-Match does not name a version of this server (expected W/\"<n>\")")
    return int(m["v"])


def parse_if_none_match(value: Any) -> IfNoneMatch | None:
    """An entry's `request.ifNoneMatch` (R4 Bundle; RFC 7232 §3.2): `*`, or the versions that must not be current."""
    if value is None or value == "":
        return None
    if str(value).strip() == "*":
        return ANY_VERSION
    versions = {parse_etag(tag) for tag in str(value).split(",") if tag.strip()}
    return frozenset(v for v in versions if v is not None)


@dataclass(frozen=True)
class _Answers:
    """How entries' answers are written: the server's base (fullUrl and location are absolute, as the REST API
    gives them; R4 bundle.html: a fullUrl is absolute) and what the request's `Prefer: return=` asks of writes."""

    base: str | None = None
    prefer: str = "representation"  # Prefer: return= (RFC 7240 §4.2; R4 http.html#ops): minimal, OperationOutcome

    def url(self, relative: str) -> str:
        return f"{self.base.rstrip('/')}/{relative}" if self.base else relative

    def entry(self, status: int, stored: StoredResource | None = None, *, resource: dict[str, Any] | None = None,
              write: bool = False) -> dict[str, Any]:
        """A response entry; `write`: a create/update, whose resource follows Prefer as the REST write's does."""
        response: dict[str, Any] = {"status": fhir_bundles.response_status(status)}
        entry: dict[str, Any] = {}
        if stored is not None:
            response["location"] = self.url(stored.location)
            response["etag"] = stored.etag
            response["lastModified"] = instant(stored.last_updated)
            if stored.resource is not None:
                if write and self.prefer == "OperationOutcome":
                    verb = "created" if status == 201 else "updated"
                    response["outcome"] = fhir_outcome.operation_outcome(
                        "information", "informational",
                        f"{stored.resource_type}/{stored.id} {verb} (version {stored.version_id})")
                elif not write or self.prefer != "minimal":
                    entry["fullUrl"] = self.url(f"{stored.resource_type}/{stored.id}")
                    entry["resource"] = stored.stamped()
        if resource is not None:
            entry["resource"] = resource
        entry["response"] = response
        return entry

    def searchset(self, page: Any, included: list[StoredResource], controls: ResultControls) -> dict[str, Any]:
        """A transaction's search as the REST search shows it: absolute fullUrls, `_summary`/`_elements` applied,
        the total unless `_total=none` (no paging links: the page is what the transaction saw)."""
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if controls.total != "none" or controls.summary == "count":
            bundle["total"] = page.total
        bundle["entry"] = [
            {"fullUrl": self.url(f"{r.resource_type}/{r.id}"), "resource": _subset(r.stamped(), controls),
             "search": {"mode": mode}}
            for rows, mode in ((page.items, "match"), (included, "include"))
            for r in rows
        ]
        if not bundle["entry"]:
            del bundle["entry"]
        return bundle


def _subset(body: dict[str, Any], controls: ResultControls) -> dict[str, Any]:
    """A resource as `_summary` / `_elements` ask (fhir_adapters.subsetting), after every decision."""
    if controls.summary in ("true", "text", "data"):
        return summarize(body, controls.summary)  # type: ignore[arg-type]
    if controls.elements is not None:
        return select_elements(body, controls.elements)
    return body


def not_modified(etag: str | None, last_modified: datetime | None, if_none_match: str | None,
                 if_modified_since: str | None) -> bool:
    """Whether a read's conditions say the client's copy is current (304; R4 http.html#cread, RFC 7232 §3.2-3.3,
    §6: If-None-Match wins over If-Modified-Since). Tags compare weakly (`W/"3"` equals `"3"`); an
    ifModifiedSince that is not an instant is ignored, as RFC 7232 §3.3 says of an invalid date."""
    if if_none_match is not None and if_none_match.strip():
        if etag is None:
            return False
        tags = {_weak(tag) for tag in if_none_match.split(",")}
        return "*" in tags or _weak(etag) in tags
    if if_modified_since is None or last_modified is None:
        return False
    try:
        since = datetime.fromisoformat(if_modified_since.strip())
    except ValueError:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified.replace(microsecond=0) <= since


def _weak(tag: str) -> str:
    return tag.strip().removeprefix("W/").strip('"')


def _error_entry(exc: HealthLedgerError) -> dict[str, Any]:
    outcome = fhir_outcome.operation_outcome("error", exc.code, exc.message, exc.expression)
    return {"response": {"status": fhir_bundles.response_status(exc.status), "outcome": outcome}}


def _entry_error(exc: Exception, index: int, method: str, resource_type: str | None) -> HealthLedgerError:
    """The same error, its message prefixed with the entry (never its URL: search values may be PHI)."""
    base = as_store_error(exc) if isinstance(exc, FhirInputError) else exc
    assert isinstance(base, HealthLedgerError)
    what = f"{method} {resource_type}" if resource_type else method
    expression = base.expression or ""
    if not expression.startswith("Bundle.entry"):
        expression = f"Bundle.entry[{index}]" + (f".resource ({expression})" if expression else "")
    err = type(base).__new__(type(base))
    Exception.__init__(err, f"entry {index} ({what}): {base.message}")
    err.message = f"entry {index} ({what}): {base.message}"
    err.expression = expression
    err.status = base.status
    err.code = base.code
    return err


def _single_match(uow: UnitOfWork, target: Target, what: str) -> StoredResource | None:
    """The one resource a conditional URL names, as the caller sees it; None when none; 412 when several
    (R4 3.1.0.4.3). Matches the caller may not read do not exist for it (UnitOfWork.conditional_matches)."""
    with fhir_errors():
        definition_search.check_conditional(target.resource_type, target.params or [], what)
    matches = uow.conditional_matches(target.resource_type, target.params or [], what)
    return matches[0] if matches else None


def conditional_update(
    uow: UnitOfWork, resource_type: str, params: list[tuple[str, str]], resource: dict[str, Any], *,
    if_match: int | None = None, if_none_match: IfNoneMatch | None = None, validated: bool = False,
) -> tuple[StoredResource, bool]:
    """`PUT Type?query` (R4 3.1.0.4.3), as a REST request and as a bundle entry: scopes first, then the search as
    the caller (what it may not read does not exist for it): no match creates (with the body's id, if any), one
    match is updated, several are a 412."""
    uow.check_scope("update", resource_type)  # scopes before the conditional search
    match = _single_match(uow, Target(resource_type, params=params), "update")
    resource_id = match.id if match is not None else (resource.get("id") or uow.store.new_id())
    body = {**resource, "id": resource_id} if resource.get("id") in (None, resource_id) else resource
    check_writable(resource_type, resource_id)  # (a published id is refused as such, whatever the body says)
    refuse_own_url(uow, "update", body)
    return uow.update(resource_type, resource_id, body, if_match=if_match, if_none_match=if_none_match,
                      validated=validated)


def conditional_delete(
    uow: UnitOfWork, resource_type: str, params: list[tuple[str, str]], *, if_match: int | None = None
) -> None:
    """`DELETE Type?query` (R4 3.1.0.7.1): the one match the caller can see is deleted; none is not an error (the
    same answer whether nothing matched or the match is withheld); several are a 412."""
    uow.check_scope("delete", resource_type)  # scopes before the conditional search
    match = _single_match(uow, Target(resource_type, params=params), "delete")
    if match is not None:
        uow.delete(resource_type, match.id, if_match=if_match)


class _Executor:
    """Runs one entry's interaction on a unit of work."""

    def __init__(self, uow: UnitOfWork, reads: Mapping[str, EntryRead] | None = None,
                 answers: _Answers = _Answers(), max_count: int | None = None) -> None:
        self.uow = uow
        self.reads = reads or {}
        self.answers = answers
        self.max_count = max_count if max_count is not None else uow.store.page_size

    def run(self, entry: Any, resource: dict[str, Any] | None, assigned: dict[int, str]) -> dict[str, Any]:
        answer = self._run(entry, resource, assigned)
        if entry.method.upper() == "HEAD":  # GET without the body (R4 http.html#read)
            answer.pop("resource", None)
            answer.pop("fullUrl", None)
        return answer

    @translating_fhir_errors
    def _run(self, entry: Any, resource: dict[str, Any] | None, assigned: dict[int, str]) -> dict[str, Any]:
        method = entry.method.upper()
        target = entry_target(entry)
        uow = self.uow
        answers = self.answers
        if method in ("GET", "HEAD"):
            own = self.reads.get(target.resource_type)
            answer = own(uow, target) if own is not None else None
            if isinstance(answer, StoredResource):
                return self._read(entry, answer)
            if answer is not None:
                return answers.entry(200, resource=answer)
            if target.params is not None or target.id is None:
                return answers.entry(200, resource=self._search(target))
            if target.version is not None:
                return self._read(entry, uow.vread(target.resource_type, target.id, target.version))
            return self._read(entry, uow.read(target.resource_type, target.id))
        if method == "DELETE":
            if_match = parse_etag(getattr(entry, "if_match", None))
            if target.params is not None:
                if entry.index not in assigned:
                    conditional_delete(uow, target.resource_type, target.params, if_match=if_match)
                    return answers.entry(204)
                uow.check_scope("delete", target.resource_type)
                match_id = assigned[entry.index].removeprefix("delete:") or None  # a transaction searched already
                if match_id is not None:
                    uow.delete(target.resource_type, match_id, if_match=if_match)
                return answers.entry(204)
            if target.id is None:
                raise BadRequest("DELETE needs 'Type/id' or 'Type?parameters'")
            gone = uow.delete(target.resource_type, target.id, if_match=if_match)
            answer = answers.entry(204)
            if gone is not None:
                answer["response"]["etag"] = gone.etag  # the tombstone's version, as REST's ETag
            return answer
        if resource is None:
            raise BadRequest(f"{method} needs a resource")
        if method == "PUT" and target.id is not None:
            check_writable(target.resource_type, target.id)  # (a published id is refused as such, whatever the body)
        refuse_own_url(uow, "create" if method == "POST" else "update", resource)
        if method == "POST":
            if target.id is not None or target.params is not None:
                raise NotSupported("POST to an instance or with parameters (operations) is not supported")
            if entry.index in assigned and assigned[entry.index].startswith("existing:"):
                # The conditional create's match, decided and recorded by its probe (UnitOfWork.conditional_matches).
                existing = uow.peek(target.resource_type, assigned[entry.index].removeprefix("existing:"))
                if existing is None:
                    raise PreconditionFailed("the resource the conditional create matched is gone")
                return answers.entry(200, uow.present(existing))  # as REST: the match itself, whatever Prefer says
            if_none_exist = None
            if entry.if_none_exist and entry.index not in assigned:
                if_none_exist = parse_qsl(entry.if_none_exist.lstrip("?"), keep_blank_values=True)
                definition_search.check_conditional(target.resource_type, if_none_exist, "create")
            stored, created = uow.create(
                resource, if_none_exist=if_none_exist, resource_id=assigned.get(entry.index), validated=True
            )
            return answers.entry(201 if created else 200, stored, write=True)
        if method == "PUT":
            if_match = parse_etag(getattr(entry, "if_match", None))
            if_none_match = parse_if_none_match(getattr(entry, "if_none_match", None))
            if target.params is not None:
                resource_id = assigned.get(entry.index)
                if resource_id is None:
                    stored, created = conditional_update(
                        uow, target.resource_type, target.params, resource, if_match=if_match,
                        if_none_match=if_none_match, validated=True,
                    )
                    return answers.entry(201 if created else 200, stored, write=True)
                uow.check_scope("update", target.resource_type)
                body = {**resource, "id": resource_id} if resource.get("id") in (None, resource_id) else resource
                stored, created = uow.update(target.resource_type, resource_id, body, if_match=if_match,
                                             if_none_match=if_none_match, validated=True)
                return answers.entry(201 if created else 200, stored, write=True)
            if target.id is None or target.version is not None:
                raise BadRequest("PUT needs 'Type/id' or 'Type?parameters'")
            stored, created = uow.update(target.resource_type, target.id, resource, if_match=if_match,
                                         if_none_match=if_none_match, validated=True)
            return answers.entry(201 if created else 200, stored, write=True)
        raise NotSupported(f"{method} is not supported in bundles")

    def _read(self, entry: Any, stored: StoredResource) -> dict[str, Any]:
        """A read's entry, or 304 when its ifNoneMatch / ifModifiedSince say the client's copy is current."""
        if not_modified(stored.etag, stored.last_updated, getattr(entry, "if_none_match", None),
                        getattr(entry, "if_modified_since", None)):
            answer = self.answers.entry(200, stored)
            answer.pop("resource", None)
            answer.pop("fullUrl", None)
            answer["response"].pop("location", None)
            answer["response"]["status"] = fhir_bundles.response_status(304)
            return answer
        answer = self.answers.entry(200, stored)
        answer["response"].pop("location", None)  # a read has no Location (as REST)
        wanted = [(n, v) for n, v in getattr(entry, "read_params", ()) if n in ("_summary", "_elements")]
        if wanted and "resource" in answer:  # as the REST read (api/fhir.py `_read_subset`)
            with fhir_errors():
                controls = parse_controls(stored.resource_type, wanted, strict=True)
            if controls.summary == "count":
                raise BadRequest("_summary=count applies to searches, not reads", expression="_summary")
            answer["resource"] = _subset(answer["resource"], controls)
        return answer

    def _search(self, target: Target) -> dict[str, Any]:
        """A search entry with the REST search's result parameters (`_count`, `_summary`, `_elements`, `_total`,
        `_sort`, `_include`); strict handling (a transaction's entry has no Prefer of its own to say otherwise)."""
        params = target.params or []
        with fhir_errors():
            query = fhir_search.parse_search(target.resource_type, params)
            controls = parse_controls(target.resource_type, params, strict=True)
            if controls.summary is not None and controls.elements is not None:
                raise UnsupportedSearch("use either _summary or _elements, not both")
        count = _count([v for n, v in params if n == "_count"], default=self.uow.store.page_size,
                       maximum=self.max_count)
        uow = self.uow
        if controls.summary == "count" or count == 0:
            page = uow.search(target.resource_type, query, count=0)
            return self.answers.searchset(page, [], controls)
        page = uow.search(target.resource_type, query, count=count, sort=controls.sort)
        included = included_resources(uow, target.resource_type, page.items, controls)
        return self.answers.searchset(page, included, controls)


def _count(values: list[str], *, default: int, maximum: int) -> int:
    """`_count` (R4 search.html#count) in the REST API's words (api/paging.py parse_count)."""
    if not values:
        return default
    if len(values) > 1:
        raise BadRequest("_count may be given only once")
    text = values[-1].strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise BadRequest("_count must be a non-negative integer")
    return min(int(text), maximum)


def execute_bundle(store: ResourceStore, bundle: dict[str, Any], *, principal: Principal | None = None,
                   reads: Mapping[str, EntryRead] | None = None,
                   refused: Mapping[int, HealthLedgerError] | None = None,
                   routed: RoutedRead | None = None, base: str | None = None,
                   prefer: str = "representation", max_count: int | None = None) -> dict[str, Any]:
    """Run a batch or transaction Bundle; returns the batch-response / transaction-response Bundle.

    `reads`: the GET entries of types another module serves (EntryRead), by type. `refused`: batch entries the
    caller refused already (an interaction the type does not support), answered with that error, not run.
    `routed`: answers a batch's GET and HEAD entries as the same REST requests (RoutedRead), so that they honour
    what REST honours (result parameters, lenient handling, history, metadata, HEAD, conditional reads).
    `base`: the server's base URL, which fullUrl and location start with (R4: absolute, as in REST responses).
    `prefer`: the request's `Prefer: return=`, applied to each created or updated resource as REST applies it.
    `max_count`: the largest `_count` a search entry is given (default: the store's page size).

    Each entry of a batch stands alone (R4 3.1.0.11.1): one that fails gets its status and an OperationOutcome in
    `response.outcome`, the same status and words as the same request outside a Bundle (so a withheld resource
    still reads like a missing one), and the others run; the batch-response is 200.

    A failing transaction raises the entry's error (message and expression name the entry); nothing
    of it is stored. Its GET entries run inside it, after its writes (R4 3.1.0.11.2), on the store's search with
    the REST search's result parameters but no paging links (see `_Executor._search`).
    """
    answers = _Answers(base, prefer)
    with fhir_errors():
        plan = fhir_bundles.plan_bundle(bundle, searched_elsewhere=frozenset(reads or ()), routed_reads=routed is not None)
    if plan.type == "batch":
        return _batch(store, plan, principal, reads, refused or {}, routed, answers, max_count)
    return _transaction(store, plan, principal, reads, answers, max_count)


def _batch(store: ResourceStore, plan: Any, principal: Principal | None, reads: Mapping[str, EntryRead] | None,
           refused: Mapping[int, HealthLedgerError], routed: RoutedRead | None, answers: _Answers,
           max_count: int | None) -> dict[str, Any]:
    responses: dict[int, dict[str, Any]] = {}
    for entry in plan.entries:
        if entry.routed and routed is not None:
            answer = routed(entry)  # the REST request's own answer, refusals included
            if answer is not None:
                responses[entry.index] = answer
                continue
        if entry.index in refused:  # first, as outside a Bundle: a type's refusal comes before its body is read
            responses[entry.index] = _error_entry(refused[entry.index])
            continue
        if entry.error is not None:
            # Its resource or search is refused as the same request's would be, in those words; an entry that is
            # itself malformed (no request, a bad URL) is named by its place in the Bundle.
            responses[entry.index] = _error_entry(as_store_error(entry.error.cause or entry.error))
            continue
        try:
            with store.unit_of_work(principal) as uow:
                responses[entry.index] = _Executor(uow, reads, answers, max_count).run(entry, entry.resource, {})
        except HealthLedgerError as exc:
            responses[entry.index] = _error_entry(exc)  # the single request's own answer
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [responses[i] for i in sorted(responses)],
    }


def _interaction(entry: Any) -> Action:
    """The interaction an entry asks for, in the access vocabulary (scopes are checked on it)."""
    method = entry.method.upper()
    if method in ("GET", "HEAD"):
        if entry.conditional is not None or entry.id is None:
            return "search"
        return "vread" if entry.version_id else "read"
    return {"POST": "create", "PUT": "update", "DELETE": "delete"}.get(method, "update")  # type: ignore[return-value]


def _type_of(entry: Any) -> str | None:
    return getattr(entry, "resource_type", None)


def _transaction(store: ResourceStore, plan: Any, principal: Principal | None,
                 reads: Mapping[str, EntryRead] | None, answers: _Answers, max_count: int | None) -> dict[str, Any]:
    responses: dict[int, dict[str, Any]] = {}
    with store.unit_of_work(principal) as uow:
        # 0. Scopes first: an entry the caller's scopes refuse fails the transaction before anything of it
        # (conditional searches, references) is looked at.
        for entry in plan.entries:
            try:
                uow.check_scope(_interaction(entry), entry.resource_type)
            except HealthLedgerError as exc:
                raise _entry_error(exc, entry.index, entry.method, _type_of(entry)) from None
        assigned: dict[int, str] = {}
        mapping: dict[str, str] = {}
        touched: dict[tuple[str, str], int] = {}
        # 1. Ids for new resources (and matches of conditional create/update), so references resolve.
        for entry in plan.entries:
            try:
                _assign(uow, entry, assigned, mapping, touched)
            except HealthLedgerError as exc:
                raise _entry_error(exc, entry.index, entry.method, _type_of(entry)) from None
        # 2. Rewrite urn:uuid and conditional references in every resource.
        resources: dict[int, dict[str, Any] | None] = {}
        for entry in plan.entries:
            try:
                resources[entry.index] = _rewritten(uow, entry.resource, mapping)
            except HealthLedgerError as exc:
                raise _entry_error(exc, entry.index, entry.method, _type_of(entry)) from None
        # 3. Execute in processing order; any failure rolls the whole transaction back.
        executor = _Executor(uow, reads, answers, max_count)
        for entry in plan.entries:
            try:
                responses[entry.index] = executor.run(entry, resources[entry.index], assigned)
            except HealthLedgerError as exc:
                raise _entry_error(exc, entry.index, entry.method, _type_of(entry)) from None
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [responses[i] for i in sorted(responses)],
    }


@translating_fhir_errors
def _assign(
    uow: UnitOfWork, entry: Any, assigned: dict[int, str], mapping: dict[str, str], touched: dict[tuple[str, str], int]
) -> None:
    method = entry.method.upper()
    if method not in ("POST", "PUT", "DELETE"):
        return
    target = entry_target(entry)
    resource_id: str | None = None
    if method == "POST" and target.id is None and target.params is None:
        resource_id = uow.store.new_id()
        if entry.if_none_exist:
            params = parse_qsl(entry.if_none_exist.lstrip("?"), keep_blank_values=True)
            match = _single_match(uow, fhir_target(target.resource_type, params), "create")
            if match is not None:
                assigned[entry.index] = "existing:" + match.id
                resource_id = match.id
            else:
                assigned[entry.index] = resource_id
        else:
            assigned[entry.index] = resource_id
    elif method == "PUT" and target.params is not None:
        match = _single_match(uow, target, "update")
        body_id = (entry.resource or {}).get("id")
        resource_id = match.id if match is not None else (body_id or uow.store.new_id())
        assigned[entry.index] = resource_id
    elif method == "DELETE" and target.params is not None:
        match = _single_match(uow, target, "delete")
        resource_id = match.id if match is not None else None
        assigned[entry.index] = "delete:" + (resource_id or "")
    else:
        resource_id = target.id
    if resource_id is not None:
        key = (target.resource_type, resource_id)
        if key in touched:
            # R4 3.1.0.11.2: a resource can be the subject of only one entry of a transaction.
            raise BadRequest(f"{target.resource_type} is changed by entries {touched[key]} and {entry.index}")
        touched[key] = entry.index
    full_url = getattr(entry, "full_url", None)
    if full_url and resource_id is not None:
        mapping[full_url] = f"{target.resource_type}/{resource_id}"


def fhir_target(resource_type: str, params: list[tuple[str, str]]) -> Target:
    return Target(resource_type, params=params)


@translating_fhir_errors
def _rewritten(uow: UnitOfWork, resource: dict[str, Any] | None, mapping: dict[str, str]) -> dict[str, Any] | None:
    if resource is None:
        return None
    local = dict(mapping)
    for _path, reference in fhir_bundles.references_in(resource):
        if reference in local:
            continue
        if reference.startswith(("urn:uuid:", "urn:oid:")):
            raise BadRequest("a reference names a urn:uuid that is not the fullUrl of any entry")
        if "?" in reference:
            target = reference_target(reference)
            match = _single_match(uow, target, "reference")
            if match is None:
                raise PreconditionFailed("a conditional reference matched no resource")
            local[reference] = f"{target.resource_type}/{match.id}"
    with fhir_errors():
        return fhir_bundles.rewrite_references(resource, local)  # type: ignore[no-any-return]
