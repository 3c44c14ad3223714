"""The in-process consent index: each patient's Consents, on-chain grant states, care organisations and requests.

Decisions must take microseconds, so each worker keeps what the engine needs per patient in memory.
It is kept exact, not merely fresh: every change a decision depends on (a Consent or Patient
written; a grant event indexed from the chain) bumps one generation counter in the same transaction, and each operation reads that counter (one indexed row) before deciding; a new value
empties the cache. Freshness of the chain view itself is the indexer's: the age of its last pass
(`indexer_cursor.updated_at`) is the index age the engine fails closed on.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Connection

from fhir_adapters import search as fhir_search
from fhir_adapters.consent import DENY, ConsentRules, consent_rules
from fhir_adapters.errors import FhirInputError
from healthledger.consent.engine import GrantStatus, PatientContext
from healthledger.consent.models import ConsentBinding, ConsentRequest
from healthledger.db import driver_fetch_one
from healthledger.ledger.indexer import DEFAULT_NAME, state_from_events
from healthledger.ledger.models import ConsentEvent
from healthledger.store.repository import ResourceStore

T = TypeVar("T")

# Consent statuses that may take effect (R4 consent-state-codes); the rest never count.
_LIVE_STATUSES = frozenset({"active", "proposed"})
# A grant not valid yet, or not seen on the chain yet, is pending as far as the Consent is concerned.
_AS_CONSENT = {GrantStatus.NOT_YET_VALID: GrantStatus.PENDING, GrantStatus.UNKNOWN: GrantStatus.PENDING}
# Writes of these types change consent decisions (a patient's Consents and care organisations): the store
# bumps the generation for them (ResourceStore(bump_generation_on=...)). Only these: every bump empties every
# worker's index, so the types written all day (Observation, Encounter) must not be among them.
CONSENT_INPUT_TYPES = frozenset({"Consent", "Patient"})
# The elements of a Patient that name its care organisations (beside the home organisation).
_CARE = ("managingOrganization", "generalPractitioner")
_CARED_FOR_ORGANIZATIONS = 256  # organisations whose patient lists are kept per worker
_PAGE = 1000
# One round trip per operation: the generation and the indexer's last pass.
# The consent generation (store.generation.Generation) and when the indexer last ran (ledger.models.IndexerCursor):
# on every request's path, so through the driver (healthledger.db.driver_fetch_one).
_FRESHNESS_COLUMNS = (
    "(SELECT g.generation FROM consent_generation g WHERE g.id = 1), "
    "(SELECT c.updated_at FROM indexer_cursor c WHERE c.name = ?)"
)
_FRESHNESS_SQL = f"SELECT {_FRESHNESS_COLUMNS}"
# The freshness row read by this request's first statement (see `Freshness`), until its first operation uses it.
_PREFETCHED: ContextVar[tuple[float, Any, Any] | None] = ContextVar("healthledger_index_freshness", default=None)
_PREFETCH_KEPT_SECONDS = 1.0  # a bound on top of `Freshness.forget` at each request's start and end


@dataclass(frozen=True, slots=True)
class Freshness:
    """The consent index's freshness as extra columns of another single-row SELECT (`columns`, with `params`
    to put before that statement's own), so a request reads it in the round trip it makes anyway.

    Reading it a few microseconds before the operation starts is the same as the operation starting then: a
    change committed after it is seen by the next request, as one committed during the operation would be.
    """

    columns: str
    params: tuple[str, ...]

    @staticmethod
    def received(generation: Any, updated: Any) -> None:
        """Keep the values for this request's first operation (`ConsentIndex.refresh`)."""
        _PREFETCHED.set((time.monotonic(), generation, updated))

    @staticmethod
    def forget() -> None:
        """A request begins or ends: nothing read for another request, or left over by this one, is used by
        what the thread does next."""
        _PREFETCHED.set(None)


@dataclass(frozen=True, slots=True)
class IndexedEvent:
    """A ConsentEvent row as the cache keeps it (the attributes `state_from_events` reads)."""

    status: str
    valid_from: int
    valid_until: int
    block_number: int
    log_index: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class ChainGrant:
    """One binding of a Consent and the indexed events of its grant."""

    grantee_ref: str
    grant_id: str
    events: tuple[IndexedEvent, ...]
    revoke_requested: bool


@dataclass(frozen=True, slots=True)
class PatientEntry:
    patient_id: str
    consents: tuple[ConsentRules, ...]
    grants: dict[str, tuple[ChainGrant, ...]]  # consent id -> its bindings (empty: not signed)
    care_organizations: frozenset[str]
    requests: dict[str, str]  # consent id -> the organisation that recorded it to ask for access


def consent_grant_status(bindings: Sequence[ChainGrant], now: int) -> GrantStatus:
    """A Consent's grant is live only while every one of its on-chain grants is live."""
    if not bindings:
        return GrantStatus.PENDING
    chain = (state_from_events(list(b.events), now).status for b in bindings)  # type: ignore[arg-type]
    states = [_AS_CONSENT.get(status, status) for status in chain]
    for worst in (GrantStatus.REVOKED, GrantStatus.EXPIRED, GrantStatus.PENDING):
        if worst in states:
            return worst
    return GrantStatus.LIVE


def effective_rules(rules: ConsentRules, signed: bool) -> ConsentRules:
    """The status the engine should see. A permitting Consent needs the patient's key: until it is
    signed it stays `proposed` (even if a client wrote `active`); a denying one (the root rule is deny)
    takes effect as soon as it is recorded, by anyone, because it can only take access away."""
    if rules.status not in _LIVE_STATUSES:
        return rules
    active = rules.root.type == DENY or signed
    status = "active" if active else "proposed"
    if status == rules.status:
        return rules
    return ConsentRules(rules.consent_id, rules.patient_id, status, rules.scopes, rules.root)


class ConsentIndex:
    """Per-worker cache of PatientEntry, invalidated by the generation counter (thread-safe)."""

    def __init__(
        self,
        store: ResourceStore,
        *,
        home_organization: str = "",
        indexer_name: str = DEFAULT_NAME,
        max_patients: int = 20_000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.home_organization = home_organization
        self.indexer_name = indexer_name
        self.max_patients = max_patients
        self.wall_clock = wall_clock
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._entries: OrderedDict[str, PatientEntry] = OrderedDict()
        self._cared_for: OrderedDict[str, frozenset[str]] = OrderedDict()  # organisation -> patient ids
        self.loads = 0  # how many patients were (re)loaded: for tests and metrics

    # -- freshness --------------------------------------------------------------------------------
    def refresh(self, conn: Connection) -> float:
        """Empty the cache if anything changed since it was filled; return the index age in seconds.

        The freshness row is read here, or, when this request's token check already read it with the client's
        state in the same statement (`Freshness`), taken from there: one round trip fewer on every request.
        A request's first operation takes it; a later one (an _include, a second page) reads it again.
        """
        prefetched = _PREFETCHED.get()
        if prefetched is not None and time.monotonic() - prefetched[0] <= _PREFETCH_KEPT_SECONDS:
            _PREFETCHED.set(None)
            generation, updated = prefetched[1], prefetched[2]
        else:
            row = driver_fetch_one(conn, _FRESHNESS_SQL, (self.indexer_name,))
            generation, updated = (row[0], row[1]) if row is not None else (None, None)
        with self._lock:
            if generation != self._generation:
                self._entries.clear()
                self._cared_for.clear()
                self._generation = generation
        return math.inf if updated is None else max(0.0, self.wall_clock() - float(updated))

    def freshness(self) -> Freshness:
        """The freshness columns, for a statement that runs first on each request (the token check's)."""
        return Freshness(_FRESHNESS_COLUMNS, (self.indexer_name,))

    # -- per patient ------------------------------------------------------------------------------
    def entry(self, conn: Connection, patient_id: str) -> PatientEntry:
        return self._cached(self._entries, patient_id, lambda: self._load(conn, patient_id), self.max_patients)

    def _cached(self, cache: OrderedDict[str, T], key: str, load: Callable[[], T], limit: int) -> T:
        """`cache[key]`, loaded outside the lock on a miss; least recently used entries go past `limit`."""
        with self._lock:
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
                return found
        loaded = load()
        with self._lock:
            cache[key] = loaded
            while len(cache) > limit:
                cache.popitem(last=False)
        return loaded

    def context(self, conn: Connection, patient_id: str, now: datetime, index_age: float) -> PatientContext:
        entry = self.entry(conn, patient_id)
        epoch = int(now.timestamp())
        return PatientContext(
            patient_id=patient_id,
            consents=entry.consents,
            grants={cid: consent_grant_status(b, epoch) for cid, b in entry.grants.items()},
            care_organizations=entry.care_organizations,
            index_age_seconds=index_age,
            requests=entry.requests,
        )

    # -- per organisation -------------------------------------------------------------------------
    def patients_cared_for(self, conn: Connection, organization: str) -> frozenset[str]:
        """The ids of the patients whose care organisations include `organization`, as `_load` computes
        them (`Patient.managingOrganization`, `generalPractitioner`; the home organisation cares for all).

        Cached like the patient entries, and as exact: a Patient written bumps the generation, which
        empties this cache with the rest (`refresh`, read here first).
        """
        if not organization:
            return frozenset()
        self.refresh(conn)
        return self._cached(
            self._cared_for, organization, lambda: self._load_cared_for(conn, organization), _CARED_FOR_ORGANIZATIONS
        )

    def _load_cared_for(self, conn: Connection, organization: str) -> frozenset[str]:
        uow = self.store.view_on(conn)
        home = organization == self.home_organization
        searches = [[]] if home else [[("organization", organization)], [("general-practitioner", organization)]]
        found: set[str] = set()
        for params in searches:
            query = fhir_search.parse_search("Patient", params)
            offset: int | None = 0
            while offset is not None:
                page = uow.search("Patient", query, count=_PAGE, offset=offset, check=False)
                for item in page.items:
                    # The search found candidates; the same reading as `_load` decides.
                    if item.resource is not None and (home or organization in _references(item.resource, _CARE)):
                        found.add(item.id)
                offset = page.next_offset
        return frozenset(found)

    def _load(self, conn: Connection, patient_id: str) -> PatientEntry:
        self.loads += 1
        uow = self.store.view_on(conn)
        ref = f"Patient/{patient_id}"
        care: set[str] = {self.home_organization} if self.home_organization else set()
        patient = uow.peek("Patient", patient_id)
        if patient is not None and patient.resource is not None:
            care |= _references(patient.resource, _CARE)

        compiled: list[ConsentRules] = []
        for consent in _all(uow, "Consent", [("patient", ref)]):
            try:
                compiled.append(consent_rules(consent))
            except FhirInputError:
                continue  # validated on write; an unusable one grants nothing
        ids = [c.consent_id for c in compiled]
        grants = load_chain_grants(conn, self.store.tenant, ids)
        consents = tuple(effective_rules(c, bool(grants[c.consent_id])) for c in compiled)
        care.discard("")
        return PatientEntry(patient_id, consents, grants, frozenset(care), load_requests(conn, self.store.tenant, ids))


def load_chain_grants(conn: Connection, tenant: str, consent_ids: Sequence[str]) -> dict[str, tuple[ChainGrant, ...]]:
    """Each Consent's bindings with their indexed events (in chain order); () for an unsigned Consent."""
    out: dict[str, list[ChainGrant]] = {cid: [] for cid in consent_ids}
    if not out:
        return {}
    bindings = conn.execute(
        select(ConsentBinding).where(ConsentBinding.tenant == tenant, ConsentBinding.consent_id.in_(list(out)))
    ).all()
    events: dict[str, list[IndexedEvent]] = {}
    grant_ids = [b.grant_id for b in bindings]
    for start in range(0, len(grant_ids), 500):
        for e in conn.execute(
            select(ConsentEvent).where(ConsentEvent.grant_id.in_(grant_ids[start : start + 500]))
        ).all():
            events.setdefault(e.grant_id, []).append(
                IndexedEvent(e.status, e.valid_from, e.valid_until, e.block_number, e.log_index, e.tx_hash)
            )
    for b in bindings:
        ordered = sorted(events.get(b.grant_id, ()), key=lambda e: (e.block_number, e.log_index))
        out[b.consent_id].append(ChainGrant(b.grantee_ref, b.grant_id, tuple(ordered), b.revoke_item is not None))
    return {cid: tuple(grants) for cid, grants in out.items()}


def load_requests(conn: Connection, tenant: str, consent_ids: Sequence[str]) -> dict[str, str]:
    """Of these Consents, those recorded as requests for access: consent id -> the organisation that asked."""
    out: dict[str, str] = {}
    for start in range(0, len(consent_ids), 500):
        rows = conn.execute(
            select(ConsentRequest.consent_id, ConsentRequest.organization).where(
                ConsentRequest.tenant == tenant, ConsentRequest.consent_id.in_(list(consent_ids[start : start + 500]))
            )
        ).all()
        out.update({row.consent_id: row.organization for row in rows})
    return out


def _all(uow: Any, resource_type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    query = fhir_search.parse_search(resource_type, params)
    page = uow.search(resource_type, query, count=100_000, offset=0, check=False)
    return [item.resource for item in page.items if item.resource is not None]


def care_named(patient: dict[str, Any]) -> set[str]:
    """The organisations a Patient names as caring for it (`managingOrganization`, `generalPractitioner`)."""
    return _references(patient, _CARE)


def _references(resource: dict[str, Any], elements: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for name in elements:
        value = resource.get(name)
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                out.add(ref["reference"])
    return out
