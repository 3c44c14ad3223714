"""What a search adds around its matches: `_has` (reverse chaining), `_include` and `_revinclude` (R4 3.1.1.5).

Each runs as the caller, on the search's own unit of work, through the same decisions as anything else:
- `_has:Observation:patient:code=X` first searches Observations (decided and recorded as a search of its own);
  only those the caller may see select anything, so a withheld Observation cannot be detected through the
  Patient it points at;
- every `_include`d resource is a read of its own: decided on its content, recorded in its patient's log, and
  left out, exactly like a missing one, when denied (included resources are where other FHIR servers leaked);
- every `_revinclude` is a search of its own, decided per resource and recorded like one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from fhir_adapters.search.controls import ResultControls
from fhir_adapters.search.parameters import ID_PARAM, search_parameters
from fhir_adapters.search.query import SearchCriterion, SearchQuery, TokenValue
from fhir_adapters.search.references import ReferenceValue
from fhir_adapters.search.sorting import Position
from fhir_adapters.search.values import element_references, element_values
from healthledger.errors import BadRequest, Forbidden, Gone, NotFound

if TYPE_CHECKING:
    from healthledger.principal import Principal
    from healthledger.store.repository import Page, ResourceStore, StoredResource, UnitOfWork

MAX_HAS_MATCHES: Final = 1000  # resources of the other type a `_has` may select by
MAX_REVINCLUDED: Final = 1000  # resources one `_revinclude` adds to a page
MAX_INCLUDED: Final = 1000  # resources all `_include`s add to a page


@dataclass(frozen=True)
class SearchResult:
    page: Page
    included: list[StoredResource]  # search.mode = include, each decided and recorded on its own


def run_search(
    store: ResourceStore, resource_type: str, query: SearchQuery, *, count: int, offset: int,
    controls: ResultControls, principal: Principal, after: Position | None = None,
) -> SearchResult:
    """One search with its result controls, in one view (one set of decisions and log entries); `after`: a keyset
    (UnitOfWork.search)."""
    with store.reading(principal) as uow:
        page = uow.search(resource_type, query, count=count, offset=offset, sort=controls.sort, after=after)
        included = included_resources(uow, resource_type, page.items, controls) if count else []
    return SearchResult(page, included)


def resolve_has(uow: UnitOfWork, query: SearchQuery, *, check: bool = True) -> SearchQuery:
    """`query` with each `_has` clause replaced by an `_id` criterion: the ids the caller's visible matches of
    the clause's search refer to (none: a criterion nothing matches)."""
    criteria = list(query.criteria)
    for clause in query.has:
        page = uow.search(clause.source_type, clause.inner, count=MAX_HAS_MATCHES, offset=0, check=check)
        if (page.total or 0) > MAX_HAS_MATCHES:
            raise BadRequest(f"'{clause.text[:80]}' selects more than {MAX_HAS_MATCHES} resources: narrow it")
        reference = search_parameters(clause.source_type)[clause.reference]
        ids: set[str] = set()
        for item in page.items:
            for element in element_values(item.resource or {}, reference):
                for ref in element_references(reference, element):
                    if ref.id is not None and ref.type in (None, query.resource_type):
                        ids.add(ref.id)
        values = tuple(TokenValue(None, i) for i in sorted(ids)) or (TokenValue(None, ""),)
        criteria.append(SearchCriterion(ID_PARAM, None, values))
    return replace(query, criteria=tuple(criteria), has=())


def included_resources(
    uow: UnitOfWork, resource_type: str, items: Sequence[StoredResource], controls: ResultControls
) -> list[StoredResource]:
    """The `_include`d and `_revinclude`d resources of one page, each decided and recorded on its own."""
    seen = {(item.resource_type, item.id) for item in items}
    out: list[StoredResource] = []
    reads = 0
    for spec in controls.include:
        for item in items:
            for element in element_values(item.resource or {}, spec.param):
                for ref in element_references(spec.param, element):
                    if ref.type is None or ref.id is None or (spec.target_type and ref.type != spec.target_type):
                        continue
                    if (ref.type, ref.id) in seen or reads >= MAX_INCLUDED:
                        continue
                    seen.add((ref.type, ref.id))
                    reads += 1
                    try:
                        out.append(uow.read(ref.type, ref.id))
                    except (NotFound, Gone, Forbidden):
                        continue  # withheld, missing or out of scope: left out alike (the read is recorded)
    ids = [item.id for item in items if item.resource_type == resource_type]
    for spec in controls.revinclude:
        if not ids:
            break
        criterion = SearchCriterion(spec.param, None, tuple(ReferenceValue(resource_type, i) for i in ids))
        try:
            page = uow.search(spec.source_type, SearchQuery(spec.source_type, (criterion,)), count=MAX_REVINCLUDED)
        except Forbidden:
            continue  # no scope to search that type: nothing of it is visible (the refusal is recorded)
        for found in page.items:
            if (found.resource_type, found.id) not in seen:
                seen.add((found.resource_type, found.id))
                out.append(found)
    return out
