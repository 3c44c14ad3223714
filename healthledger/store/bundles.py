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
from typing import Any
from urllib.parse import parse_qsl

from fhir_adapters import bundles as fhir_bundles
from fhir_adapters import outcome as fhir_outcome
from fhir_adapters import search as fhir_search
from fhir_adapters.datatypes import instant
from fhir_adapters.errors import FhirInputError
from fhir_adapters.search.controls import parse_controls
from healthledger.actions import Action
from healthledger.errors import (
    BadRequest,
    HealthLedgerError,
    NotFound,
    NotSupported,
    PreconditionFailed,
)
from healthledger.store.access import Principal
from healthledger.store.repository import (
    ANY_VERSION,
    IfNoneMatch,
    ResourceStore,
    StoredResource,
    UnitOfWork,
    as_store_error,
    fhir_errors,
    translating_fhir_errors,
)
from healthledger.store.search_results import included_resources

_REASON = {200: "OK", 201: "Created", 204: "No Content"}
_ETAG = re.compile(r'^(?:W/)?"?(?P<v>[0-9]+)"?$')


@dataclass(frozen=True)
class Target:
    """Where an entry's request URL points: a type, an instance (maybe a version) or a conditional search."""

    resource_type: str
    id: str | None = None
    version: int | None = None
    params: list[tuple[str, str]] | None = None  # conditional / search URL: `Type?name=value`


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


def _response_entry(status: int, stored: StoredResource | None = None, *, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"status": f"{status} {_REASON.get(status, '')}".strip()}
    entry: dict[str, Any] = {}
    if stored is not None:
        response["location"] = stored.location
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
        if stored.resource is not None:
            entry["fullUrl"] = f"{stored.resource_type}/{stored.id}"
            entry["resource"] = stored.stamped()
    if resource is not None:
        entry["resource"] = resource
    entry["response"] = response
    return entry


def _error_entry(exc: HealthLedgerError) -> dict[str, Any]:
    outcome = fhir_outcome.operation_outcome("error", exc.code, exc.message, exc.expression)
    return {"response": {"status": str(exc.status), "outcome": outcome}}


def _searchset(page: Any, included: list[StoredResource] | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": page.total,
        "entry": [
            {"fullUrl": f"{r.resource_type}/{r.id}", "resource": r.stamped(), "search": {"mode": mode}}
            for rows, mode in ((page.items, "match"), (included or [], "include"))
            for r in rows
        ],
    }


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

    def __init__(self, uow: UnitOfWork, reads: Mapping[str, EntryRead] | None = None) -> None:
        self.uow = uow
        self.reads = reads or {}

    @translating_fhir_errors
    def run(self, entry: Any, resource: dict[str, Any] | None, assigned: dict[int, str]) -> dict[str, Any]:
        method = entry.method.upper()
        target = entry_target(entry)
        uow = self.uow
        if method in ("GET", "HEAD"):
            own = self.reads.get(target.resource_type)
            answer = own(uow, target) if own is not None else None
            if isinstance(answer, StoredResource):
                return _response_entry(200, answer)
            if answer is not None:
                return _response_entry(200, resource=answer)
            if target.params is not None or target.id is None:
                params = target.params or []
                with fhir_errors():  # a bundle entry has no Prefer header of its own: strict handling
                    query = fhir_search.parse_search(target.resource_type, params)
                    controls = parse_controls(target.resource_type, params, strict=True)
                page = uow.search(target.resource_type, query, count=uow.store.page_size, sort=controls.sort)
                included = included_resources(uow, target.resource_type, page.items, controls)
                return _response_entry(200, resource=_searchset(page, included))
            if target.version is not None:
                return _response_entry(200, uow.vread(target.resource_type, target.id, target.version))
            return _response_entry(200, uow.read(target.resource_type, target.id))
        if method == "DELETE":
            if_match = parse_etag(getattr(entry, "if_match", None))
            if target.params is not None:
                if entry.index not in assigned:
                    conditional_delete(uow, target.resource_type, target.params, if_match=if_match)
                    return _response_entry(204)
                uow.check_scope("delete", target.resource_type)
                match_id = assigned[entry.index].removeprefix("delete:") or None  # a transaction searched already
                if match_id is not None:
                    uow.delete(target.resource_type, match_id, if_match=if_match)
                return _response_entry(204)
            if target.id is None:
                raise BadRequest("DELETE needs 'Type/id' or 'Type?parameters'")
            uow.delete(target.resource_type, target.id, if_match=if_match)
            return _response_entry(204)
        if resource is None:
            raise BadRequest(f"{method} needs a resource")
        if method == "POST":
            if target.id is not None or target.params is not None:
                raise NotSupported("POST to an instance or with parameters (operations) is not supported")
            if entry.index in assigned and assigned[entry.index].startswith("existing:"):
                # The conditional create's match, decided and recorded by its probe (UnitOfWork.conditional_matches).
                existing = uow.peek(target.resource_type, assigned[entry.index].removeprefix("existing:"))
                if existing is None:
                    raise PreconditionFailed("the resource the conditional create matched is gone")
                return _response_entry(200, uow.present(existing))
            if_none_exist = None
            if entry.if_none_exist and entry.index not in assigned:
                if_none_exist = parse_qsl(entry.if_none_exist.lstrip("?"), keep_blank_values=True)
            stored, created = uow.create(
                resource, if_none_exist=if_none_exist, resource_id=assigned.get(entry.index), validated=True
            )
            return _response_entry(201 if created else 200, stored)
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
                    return _response_entry(201 if created else 200, stored)
                uow.check_scope("update", target.resource_type)
                body = {**resource, "id": resource_id} if resource.get("id") in (None, resource_id) else resource
                stored, created = uow.update(target.resource_type, resource_id, body, if_match=if_match,
                                             if_none_match=if_none_match, validated=True)
                return _response_entry(201 if created else 200, stored)
            if target.id is None or target.version is not None:
                raise BadRequest("PUT needs 'Type/id' or 'Type?parameters'")
            stored, created = uow.update(target.resource_type, target.id, resource, if_match=if_match,
                                         if_none_match=if_none_match, validated=True)
            return _response_entry(201 if created else 200, stored)
        raise NotSupported(f"{method} is not supported in bundles")


def execute_bundle(store: ResourceStore, bundle: dict[str, Any], *, principal: Principal | None = None,
                   reads: Mapping[str, EntryRead] | None = None,
                   refused: Mapping[int, HealthLedgerError] | None = None) -> dict[str, Any]:
    """Run a batch or transaction Bundle; returns the batch-response / transaction-response Bundle.

    `reads`: the GET entries of types another module serves (EntryRead), by type. `refused`: batch entries the
    caller refused already (an interaction the type does not support), answered with that error, not run.

    Each entry of a batch stands alone (R4 3.1.0.11.1): one that fails gets its status and an OperationOutcome in
    `response.outcome`, the same status and words as the same request outside a Bundle (so a withheld resource
    still reads like a missing one), and the others run; the batch-response is 200.

    A failing transaction raises the entry's error (message and expression name the entry); nothing
    of it is stored.
    """
    with fhir_errors():
        plan = fhir_bundles.plan_bundle(bundle, searched_elsewhere=frozenset(reads or ()))
    if plan.type == "batch":
        return _batch(store, plan, principal, reads, refused or {})
    return _transaction(store, plan, principal, reads)


def _batch(store: ResourceStore, plan: Any, principal: Principal | None, reads: Mapping[str, EntryRead] | None,
           refused: Mapping[int, HealthLedgerError]) -> dict[str, Any]:
    responses: dict[int, dict[str, Any]] = {}
    for entry in plan.entries:
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
                responses[entry.index] = _Executor(uow, reads).run(entry, entry.resource, {})
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
                 reads: Mapping[str, EntryRead] | None) -> dict[str, Any]:
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
        executor = _Executor(uow, reads)
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
