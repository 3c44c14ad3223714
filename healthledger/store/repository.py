"""The encrypted FHIR resource repository: versioned, sealed per patient compartment, searched by blind index.

Every version of a resource is one row whose payload is the resource JSON sealed with AES-256-GCM under
the data key of its patient compartment (or of its resource type outside any compartment); the AAD binds
tenant, type, id and version. Search terms come from `fhir_adapters.search.index_terms` and are stored
only as truncated HMACs with one key per (type, parameter); candidates found by term are decrypted and
checked with `fhir_adapters.search.matches`, so the index may over-approximate but results are exact.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fhir_adapters import compartment as fhir_compartment
from fhir_adapters import definition_search
from fhir_adapters import search as fhir_search
from fhir_adapters import validation as fhir_validation
from fhir_adapters.datatypes import is_id, with_version_meta
from fhir_adapters.errors import FhirInputError
from fhir_adapters.research_study import names_a_study
from fhir_adapters.search.sorting import Position, comes_after, sort_matches, sort_position
from healthledger import crypto
from healthledger.actions import Action
from healthledger.config import Settings
from healthledger.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    HealthLedgerError,
    InvalidResource,
    NotFound,
    PreconditionFailed,
    Unprocessable,
    not_known,
    refused_write,
)
from healthledger.keys import KeyProvider
from healthledger.store import envelope
from healthledger.store.access import SYSTEM, AccessPolicy, DevelopmentPolicy, Principal, Screened
from healthledger.store.generation import bump_generation
from healthledger.store.keyring import PATIENT, TYPE, DataKeyRef, Keyring
from healthledger.store.models import resources_table as res_t
from healthledger.store.models import terms_table as terms_t
from healthledger.store.search_results import resolve_has

_SCAN_BATCH = 200

# `If-None-Match` of a write (RFC 7232 §3.2): ANY_VERSION (`*`: the resource must not exist), or the versions
# that must not be current.
ANY_VERSION = "*"
IfNoneMatch = Collection[int] | str


P = ParamSpec("P")
R = TypeVar("R")

# Built once: constructing Core statements per call cost more than running them (reads ~3x faster).
_COLUMNS = (
    res_t.c.row_id, res_t.c.resource_type, res_t.c.resource_id, res_t.c.version_id, res_t.c.last_updated,
    res_t.c.deleted, res_t.c.erased, res_t.c.compartment, res_t.c.data_key_id, res_t.c.payload, res_t.c.by_update,
)
_SAME_RESOURCE = (
    res_t.c.tenant == sa.bindparam("tenant"),
    res_t.c.resource_type == sa.bindparam("resource_type"),
    res_t.c.resource_id == sa.bindparam("resource_id"),
)
_SELECT_CURRENT = sa.select(*_COLUMNS).where(*_SAME_RESOURCE, res_t.c.is_current.is_(True))
_SELECT_VERSION = sa.select(*_COLUMNS).where(*_SAME_RESOURCE, res_t.c.version_id == sa.bindparam("version_id"))
_INSERT_ONE = sa.insert(res_t).returning(res_t.c.row_id)
_INSERT_MANY = sa.insert(res_t).returning(res_t.c.row_id, sort_by_parameter_order=True)
def _json_default(value: object) -> object:
    if isinstance(value, fhir_validation.FhirDecimal):
        return orjson.Fragment(value.text)  # the decimal exactly as the client wrote it (FHIR 2.24.0.1)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dump_resource(resource: dict[str, Any]) -> bytes:
    return orjson.dumps(resource, default=_json_default)


def load_resource(raw: bytes) -> dict[str, Any]:
    # fhir_adapters' loader keeps decimal text (`1.50` stays `1.50`); orjson would not.
    return fhir_validation.loads_json(raw)  # type: ignore[no-any-return]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource as the store returns it; `resource` is None for a tombstone. `by_update`: written
    by an update (PUT), not a create (POST): the interaction a history entry names (models.StoredVersion)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    resource: dict[str, Any] | None
    by_update: bool = False

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"

    def stamped(self) -> dict[str, Any]:
        """The resource as the API shows it: its meta says which stored version it is, whatever an obligation
        (de-identification for research) kept of the stored meta."""
        return with_version_meta(self.resource or {}, self.version_id, self.last_updated)


@dataclass(frozen=True)
class Page:
    """One page of a search or a history: its items, the total (None: not counted), the next offset."""

    items: list[StoredResource]
    total: int | None
    next_offset: int | None


def _aware(moment: datetime) -> datetime:
    # SQLite hands DateTime(timezone=True) back naive; every stored moment is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def as_store_error(exc: FhirInputError) -> HealthLedgerError:
    """The healthledger error for an input error of fhir_adapters (same message, path and status)."""
    cls: type[HealthLedgerError] = NotFound if exc.status == 404 else InvalidResource if exc.status == 400 else BadRequest
    err = cls(exc.message, expression=exc.expression, status=exc.status)
    err.code = exc.code
    return err


@contextmanager
def fhir_errors() -> Iterator[None]:
    """The one place fhir_adapters' input errors become the service's (the pure package may not import it):
    the store wraps every call into fhir_adapters it makes, so its callers see HealthLedgerError only."""
    try:
        yield
    except FhirInputError as exc:
        raise as_store_error(exc) from None


def translating_fhir_errors(function: Callable[P, R]) -> Callable[P, R]:
    """`fhir_errors` around a whole function."""

    @functools.wraps(function)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        with fhir_errors():
            return function(*args, **kwargs)

    return translated


class PublishedDefinition(Forbidden):
    """A write to one of this server's own definitions (fhir_adapters/definition_search.py): they are published from
    code and read at their ids whatever is stored there, so a write could only ever seem to succeed."""

    status = 405
    code = "not-supported"


def check_writable(resource_type: str, resource_id: str) -> None:
    """Refuse a write at the id of a definition this server publishes (public ids: the refusal discloses nothing)."""
    if resource_type in definition_search.PUBLISHED_TYPES and resource_id in definition_search.published_ids(resource_type):
        raise PublishedDefinition(f"{resource_type}/{resource_id} is this server's own definition, published from its "
                                  "code: it is read only")


def check_id(resource_id: str) -> str:
    if not is_id(resource_id):
        raise BadRequest("resource id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'")
    return resource_id


class ResourceStore:
    """Versioned, encrypted FHIR resources. Each public method runs in its own transaction;
    `unit_of_work()` runs several in one."""

    def __init__(
        self,
        engine: Engine,
        key_provider: KeyProvider,
        *,
        tenant: str,
        keys_dir: Path | None = None,
        page_size: int = 50,
        privacy: bool = True,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        policy: AccessPolicy | None = None,
        bump_generation_on: Collection[str] | None = None,
    ) -> None:
        """`tenant` is bound into every ciphertext and index term; `keys_dir` holds the service's wrapped key
        files (key rotation rewraps and checks them); `page_size` is the page a batch GET search returns;
        `privacy` False stores plaintext (benchmarks only). `bump_generation_on`: the resource types whose
        writes change what caches of decisions hold (see store/generation.py); None, the safe default,
        bumps the counter on every write. `store_for_settings` reads these from the settings."""
        self.engine = engine
        self.tenant = tenant
        self.keys_dir = keys_dir
        self.page_size = page_size
        self.privacy = privacy
        self.clock = clock
        self.new_id = new_id
        self.policy: AccessPolicy = policy or DevelopmentPolicy()
        self.bump_generation_on = frozenset(bump_generation_on) if bump_generation_on is not None else None
        self.keyring = Keyring(key_provider, self.tenant, clock)
        self._sqlite = engine.dialect.name == "sqlite"
        self._indexer: envelope.BlindIndexer | None = None
        self._decoys: dict[str, tuple[bytes, bytes, bytes]] = {}

    def decoy(self, resource_type: str) -> tuple[bytes, bytes, bytes]:
        """(sealed stand-in resource, its key, its AAD) for misses to decide like denials (made once per type)."""
        made = self._decoys.get(resource_type)
        if made is None:
            key = crypto.new_key()
            aad = envelope.resource_aad(self.tenant, resource_type, "decoy", 1)
            made = (crypto.seal(key, dump_resource(_decoy_resource(resource_type)), aad), key, aad)
            if len(self._decoys) < 256:
                self._decoys[resource_type] = made
        return made

    # -- transactions -----------------------------------------------------------------------
    def open_keys(self) -> None:
        """Load the tenant's index master key (once): every operation needs it; maintenance calls it first."""
        if self._indexer is not None:
            return
        if self.privacy and not self.keyring.master_loaded:
            with self.engine.begin() as conn:
                self.keyring.load_master(conn)
        self._indexer = envelope.BlindIndexer(self.keyring.master(None) if self.privacy else None, self.tenant)

    @contextmanager
    def service_view(self) -> Iterator[UnitOfWork]:
        """Reads for the service's own bookkeeping (the consent index, maintenance): no decision, nothing
        recorded, on a connection of their own. Never hand what it reads to a caller."""
        self.open_keys()
        with self.engine.connect() as conn:
            yield UnitOfWork(self, conn, SYSTEM)

    def view_on(self, conn: Connection) -> UnitOfWork:
        """`service_view` on a connection the caller already holds (inside an operation's transaction)."""
        self.open_keys()
        return UnitOfWork(self, conn, SYSTEM)

    @property
    def indexer(self) -> envelope.BlindIndexer:
        """Blind-index terms for this tenant (loads the index master key on first use)."""
        self.open_keys()
        assert self._indexer is not None
        return self._indexer

    @contextmanager
    def unit_of_work(self, principal: Principal | None = None) -> Iterator[UnitOfWork]:
        """One database transaction for several operations: all commit, or none does.

        The policy's decisions (and its access-log entries) are made on this transaction. If it rolls
        back, the policy is handed what it recorded, to keep in a transaction of its own: a failed
        attempt is still an attempt.
        """
        self.open_keys()
        policy = self.policy
        rescued: list[Any] = []
        try:
            with self.engine.begin() as conn:
                if self._sqlite:
                    # Take the write lock up front: a read-then-write SQLite transaction cannot upgrade
                    # its lock once another writer committed (SQLITE_BUSY without waiting).
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                policy.begin(conn)
                try:
                    yield UnitOfWork(self, conn, principal or SYSTEM)
                except BaseException:
                    rescued = policy.rescue(conn)
                    raise
        except sa.exc.IntegrityError:
            self._keep_rescued(rescued)
            # Two writers created the same new version at once (e.g. concurrent update-as-create).
            raise Conflict("the resource was changed concurrently; retry the request") from None
        except BaseException:
            self._keep_rescued(rescued)
            raise

    def _keep_rescued(self, rescued: list[Any]) -> None:
        if rescued:
            with self.engine.begin() as conn:
                self.policy.keep(conn, rescued)

    @contextmanager
    def reading(self, principal: Principal | None = None) -> Iterator[UnitOfWork]:
        """A view for reads.

        On PostgreSQL the view runs in autocommit. Under read committed every statement takes a snapshot of its
        own whether a transaction is open or not, so BEGIN (and the ROLLBACK when the pool takes the connection
        back) bought two round trips and nothing else; the access-log entries are then one INSERT that commits
        by itself (`commit_accesses_on_driver`), and long scans go in keyset batches (`UnitOfWork._scan`).

        Under a policy that logs accesses, reads make their log entries durable before returning (or
        raising). The decision is made on a read view, whose entries are only collected; when the read
        ends, its transaction is rolled back and the policy makes them durable (`keep_durably`: on SQLite a
        write to this worker's access-log spool, healthledger.audit.spool; on PostgreSQL a group commit shared
        with the reads that end at the same time, healthledger.audit.group_commit, written on this connection
        when this read leads the group). A read never holds a write lock through decryption and
        the decision (SQLite has one writer at a time: that would serialise every reader); and if the
        entries cannot be committed, the read raises instead of answering.
        """
        principal = principal or SYSTEM
        policy = self.policy
        if policy.records_accesses and principal.via != "cli":
            self.open_keys()
            with self._read_connection() as conn:
                policy.begin(conn, defer=True)
                try:
                    yield UnitOfWork(self, conn, principal)
                except BaseException:
                    entries = policy.rescue(conn)
                    conn.rollback()  # the read failed (maybe its transaction with it): the entries start afresh
                    if entries:
                        policy.keep_durably(entries, conn)
                    raise
                # On PostgreSQL (autocommit) the read holds no transaction; its entries' INSERT, when this read
                # leads the group, commits by itself. On SQLite the read's transaction ends first: a read
                # snapshot still held there (a statement not run to its end) would make the INSERT fail at
                # once (SQLITE_BUSY_SNAPSHOT) whenever another writer committed meanwhile; after the rollback
                # the connection holds none, and its INSERT waits for the write lock (busy timeout).
                entries = policy.rescue(conn)
                if self._sqlite:
                    conn.rollback()
                if entries:
                    policy.keep_durably(entries, conn)
            return
        self.open_keys()
        with self._read_connection() as conn:
            yield UnitOfWork(self, conn, principal)

    def _read_connection(self) -> Connection:
        conn = self.engine.connect()
        if not self._sqlite:  # (sqlite3 opens no transaction for a SELECT anyway)
            conn.execution_options(isolation_level="AUTOCOMMIT")  # undone when the pool takes it back
        return conn

    # -- one operation, one transaction ----------------------------------------------------
    def create(
        self,
        resource: dict[str, Any],
        *,
        if_none_exist: list[tuple[str, str]] | None = None,
        principal: Principal | None = None,
    ) -> tuple[StoredResource, bool]:
        with self.unit_of_work(principal) as uow:
            return uow.create(resource, if_none_exist=if_none_exist)

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None = None,
        if_none_match: IfNoneMatch | None = None,
        principal: Principal | None = None,
    ) -> tuple[StoredResource, bool]:
        with self.unit_of_work(principal) as uow:
            return uow.update(resource_type, resource_id, resource, if_match=if_match, if_none_match=if_none_match)

    def delete(
        self, resource_type: str, resource_id: str, *, if_match: int | None = None, principal: Principal | None = None
    ) -> StoredResource | None:
        with self.unit_of_work(principal) as uow:
            return uow.delete(resource_type, resource_id, if_match=if_match)

    def read(self, resource_type: str, resource_id: str, *, principal: Principal | None = None) -> StoredResource:
        with self.reading(principal) as uow:
            return uow.read(resource_type, resource_id)

    def vread(
        self, resource_type: str, resource_id: str, version_id: int, *, principal: Principal | None = None
    ) -> StoredResource:
        with self.reading(principal) as uow:
            return uow.vread(resource_type, resource_id, version_id)

    def history(
        self,
        resource_type: str,
        resource_id: str | None = None,
        *,
        since: datetime | None = None,
        count: int = 50,
        offset: int = 0,
        principal: Principal | None = None,
    ) -> Page:
        with self.reading(principal) as uow:
            return uow.history(resource_type, resource_id, since=since, count=count, offset=offset)

    def search(
        self,
        resource_type: str,
        query: Any,
        *,
        count: int = 50,
        offset: int = 0,
        principal: Principal | None = None,
    ) -> Page:
        with self.reading(principal) as uow:
            return uow.search(resource_type, query, count=count, offset=offset)

    def search_params(
        self,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        count: int = 50,
        offset: int = 0,
        principal: Principal | None = None,
    ) -> Page:
        """Search from raw `(name, value)` pairs (parsed with fhir_adapters.search.parse_search)."""
        with fhir_errors():
            query = fhir_search.parse_search(resource_type, params)
        return self.search(resource_type, query, count=count, offset=offset, principal=principal)


@dataclass
class _NewVersion:
    """A version about to be written (prepared outside SQL so bulk imports can batch them)."""

    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    compartment: bytes | None
    data_key_id: str | None
    payload: bytes | None
    terms: list[tuple[str, bytes]]
    by_update: bool = False


class UnitOfWork:
    """The store's operations on one open connection (one transaction when opened for writing)."""

    def __init__(self, store: ResourceStore, conn: Connection, principal: Principal) -> None:
        self.store = store
        self.conn = conn
        self.principal = principal
        self.tenant = store.tenant
        self.keyring = store.keyring
        self._keys: dict[tuple[str, bytes | None], DataKeyRef] = {}

    def acting_for(self, principal: Principal) -> UnitOfWork:
        """The same transaction, deciding for `principal` instead: for a module that applies rules of its own on
        top of the store's and acts for the caller (research: `studies.acting`), inside a Bundle's entry."""
        return UnitOfWork(self.store, self.conn, principal)

    def authorize(
        self, action: Action, resource_type: str, resource: dict[str, Any] | None, resource_id: str = ""
    ) -> dict[str, Any] | None:
        """The policy's decision on one operation: the resource to hand back, or an exception."""
        return self.store.policy.check(
            self.principal, action, resource_type, resource, resource_id=resource_id, conn=self.conn
        )

    def check_scope(self, action: Action, resource_type: str) -> None:
        """Scopes first: 403 (recorded) if the caller may not do `action` on this type at all."""
        self.store.policy.check_scope(self.principal, action, resource_type, conn=self.conn)

    def present(self, stored: StoredResource) -> StoredResource:
        """`stored` as the caller may be shown it (obligations applied), deciding nothing and recording nothing:
        for a resource an operation has already decided and recorded (see `for_operation`)."""
        if stored.resource is None:
            return stored
        shown = self.store.policy.screen(self.principal, "read", stored.resource_type, stored.resource, conn=self.conn)
        return _replace_resource(stored, shown.resource)

    def for_operation(self, resource_type: str, resource_id: str) -> StoredResource:
        """The current version of a resource an operation changes ($sign, $revoke), decided once as an update.

        One decision, one entry: a caller who may not even read it gets the same 404 as for a missing one; one
        who may read but not change it, 403.
        """
        check_id(resource_id)
        self.check_scope("update", resource_type)
        row = self._current_row(resource_type, resource_id, for_update=True)
        if row is None or row.deleted or row.erased:
            raise self._not_found("update", resource_type, resource_id)
        stored = self._to_stored(row)
        assert stored.resource is not None
        if not self.principal.unrestricted:
            visible = self.store.policy.screen(self.principal, "read", resource_type, stored.resource, conn=self.conn)
            if visible.resource is None:
                self.store.policy.record_results(self.principal, "update", resource_type, [], [visible], conn=self.conn)
                raise not_known(resource_type, resource_id)
        self.authorize("update", resource_type, stored.resource, resource_id)
        return stored

    @property
    def _screens(self) -> bool:
        """Whether the policy decides searches and histories per resource."""
        return self.store.policy.filters_search_results

    def _not_found(self, action: Action, resource_type: str, resource_id: str) -> NotFound:
        """NotFound for a missing (or deleted, or erased, or withheld) resource, recorded as an attempt.

        The message depends only on what was asked, so a withheld resource reads exactly like a missing one;
        and for a caller who could be refused, a miss does the work a refusal does (see `_decoy_decision`),
        so that it also takes as long.
        """
        if self._screens and not self.principal.unrestricted:
            self._decoy_decision(resource_type)
        self.store.policy.record_miss(self.principal, action, resource_type, resource_id, conn=self.conn)
        return not_known(resource_type, resource_id)

    def _decoy_decision(self, resource_type: str) -> None:
        """Open, parse and decide a stand-in resource, as a denied read of a real one would.

        A denied read decrypts the resource, reads its facts and asks the engine before answering 404; a
        miss has nothing to decrypt and would answer ~0.4 ms sooner, which a client could measure. The
        decision is thrown away.
        """
        sealed, key, aad = self.store.decoy(resource_type)
        resource = load_resource(crypto.open_(key, sealed, aad))
        self.store.policy.screen(self.principal, "read", resource_type, resource, conn=self.conn)

    def _gone_or_hidden(self, action: Action, resource_type: str, resource_id: str, message: str) -> HealthLedgerError:
        """410 Gone for callers who may see everything; to anyone else a deleted resource looks missing
        (whether it existed is itself something a consent may withhold). Recorded as an attempt either way."""
        hidden = self._not_found(action, resource_type, resource_id)
        return Gone(message) if self.principal.unrestricted else hidden

    def _gone_if_seen(self, action: Action, deletion: Any, message: str) -> HealthLedgerError:
        """The answer about a deletion (`deletion`, its row): 410 Gone to a caller who could see what it deleted
        (R4 3.1.0.7: a read of a deleted resource is 410), the 404 of a missing resource to anyone else.

        Unrestricted callers see everything. Anyone else is decided, with `action`, on the version the deletion
        buried, as if it were current: permitted, Gone (and recorded as that decision); refused, exactly the
        404 of a resource that never existed (the refusal is recorded as any refusal is). Whether it existed is
        itself something a consent may withhold, and a refusal costs what a miss costs (a decryption and a
        decision), so neither the answer nor its time tells the two apart.
        """
        resource_type, resource_id = deletion.resource_type, deletion.resource_id
        if self.principal.unrestricted:
            self.store.policy.record_miss(self.principal, action, resource_type, resource_id, conn=self.conn)
            return Gone(message)
        buried = self._live_before(deletion)
        if buried is None or buried.resource is None:
            return self._not_found(action, resource_type, resource_id)
        try:
            self.authorize(action, resource_type, buried.resource, resource_id)
        except Forbidden:
            # A policy that refuses writes with 403 (DevelopmentPolicy, a consent refusing a delete): a deleted
            # resource is still only ever Gone or unknown.
            return not_known(resource_type, resource_id)
        except NotFound as hidden:
            return hidden
        return Gone(message)

    def _live_before(self, deletion: Any) -> StoredResource | None:
        """The newest version before `deletion` (a row) that is not a deletion: the one it deleted."""
        row = self.conn.execute(
            sa.select(*_COLUMNS)
            .where(*_same_resource(self.tenant, deletion.resource_type, deletion.resource_id),
                   res_t.c.version_id < deletion.version_id, res_t.c.deleted.is_(False), res_t.c.erased.is_(False))
            .order_by(res_t.c.version_id.desc())
            .limit(1)
        ).first()
        return self._to_stored(row) if row is not None else None

    def peek(self, resource_type: str, resource_id: str) -> StoredResource | None:
        """The current version without any access decision (for the service's own bookkeeping)."""
        row = self._current_row(resource_type, resource_id)
        if row is None or row.deleted or row.erased:
            return None
        return self._to_stored(row)

    # -- encryption and indexing -----------------------------------------------------------------
    def _compartment_of(self, resource: dict[str, Any]) -> str | None:
        with fhir_errors():
            return fhir_compartment.patient_compartment(resource)

    def _seal_key(self, resource_type: str, patient_id: str | None) -> tuple[bytes | None, str, bytes]:
        """(compartment blind index, data key id, data key) for a resource of this type/compartment."""
        if patient_id is not None:
            comp: bytes | None = self.keyring.compartment_index(self.conn, patient_id)
            key_class, scope = PATIENT, comp
        else:
            comp, key_class, scope = None, TYPE, resource_type.encode()
        # Within one transaction a key found live stays live for us (an erasure would have to wait
        # for our write lock on SQLite); caching it saves one query per resource in bulk imports.
        ref = self._keys.get((key_class, scope))
        if ref is None:
            ref = self.keyring.key_for_scope(self.conn, key_class, scope)  # type: ignore[arg-type]
            self._keys[(key_class, scope)] = ref
        return comp, ref.key_id, ref.key

    def _blind_terms(
        self, resource_type: str, resource: dict[str, Any], terms: dict[str, set[str]] | None = None
    ) -> list[tuple[str, bytes]]:
        if terms is None:
            with fhir_errors():
                terms = fhir_search.index_terms(resource)
        return self.store.indexer.terms(resource_type, terms)

    def prepare_version(
        self,
        resource_type: str,
        resource_id: str,
        version_id: int,
        resource: dict[str, Any] | None,
        *,
        previous_compartment: bytes | None = None,
        patient_id: str | None = None,
        index: dict[str, set[str]] | None = None,
        blind: list[tuple[str, bytes]] | None = None,
        by_update: bool = False,
    ) -> tuple[_NewVersion, dict[str, Any] | None]:
        """Stamp meta, seal and index one version. `resource` None writes a tombstone; `by_update`: written by an
        update (PUT), not a create.

        `patient_id`, `index` (its index_terms) or `blind` (those as blind terms) may be computed
        beforehand, e.g. by import workers.
        """
        now = self.store.clock()
        if resource is None:
            return (
                _NewVersion(resource_type, resource_id, version_id, now, True, previous_compartment, None, None, []),
                None,
            )
        resource = with_version_meta({**resource, "id": resource_id}, version_id, now)
        plaintext = dump_resource(resource)
        if not self.store.privacy:
            terms = blind if blind is not None else self._blind_terms(resource_type, resource, index)
            return _NewVersion(resource_type, resource_id, version_id, now, False, None, None, plaintext, terms,
                               by_update), resource
        if patient_id is None:
            patient_id = self._compartment_of(resource)
        comp, key_id, key = self._seal_key(resource_type, patient_id)
        aad = envelope.resource_aad(self.tenant, resource_type, resource_id, version_id)
        payload = crypto.seal(key, plaintext, aad)
        terms = blind if blind is not None else self._blind_terms(resource_type, resource, index)
        return _NewVersion(resource_type, resource_id, version_id, now, False, comp, key_id, payload, terms,
                           by_update), resource

    def write_versions(self, versions: Sequence[_NewVersion], supersede: Sequence[int] = ()) -> list[int]:
        """Insert prepared versions (marking `supersede` rows no longer current); returns new row ids."""
        if supersede:
            self.conn.execute(sa.update(res_t).where(res_t.c.row_id.in_(supersede)).values(is_current=False))
            self.conn.execute(sa.delete(terms_t).where(terms_t.c.row_id.in_(supersede)))
        if not versions:
            return []
        bump_on = self.store.bump_generation_on
        if bump_on is None or any(v.resource_type in bump_on for v in versions):
            bump_generation(self.conn)
        rows = [
            {
                "tenant": self.tenant, "resource_type": v.resource_type, "resource_id": v.resource_id,
                "version_id": v.version_id, "last_updated": v.last_updated, "deleted": v.deleted, "is_current": True,
                "erased": False, "compartment": v.compartment, "data_key_id": v.data_key_id, "payload": v.payload,
                "by_update": v.by_update,
            }
            for v in versions
        ]
        if len(rows) == 1:
            row_ids = [self.conn.execute(_INSERT_ONE, rows[0]).scalar_one()]
        else:
            row_ids = [r[0] for r in self.conn.execute(_INSERT_MANY, rows)]
        term_rows = [
            (row_id, param, term) for row_id, v in zip(row_ids, versions) for param, term in dict.fromkeys(v.terms)
        ]
        if term_rows:
            # ~15 terms per resource: the driver's executemany directly, without SQLAlchemy's per-row
            # parameter processing (it dominated bulk imports).
            mark = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
            self.conn.exec_driver_sql(
                f"INSERT INTO store_search_terms (row_id, param, term) VALUES ({mark}, {mark}, {mark})", term_rows
            )
        return row_ids

    def _open(self, row: Any) -> dict[str, Any]:
        """Decrypt one row's payload (AAD rebuilt from the row's own tenant/type/id/version)."""
        if row.data_key_id is None:
            return load_resource(bytes(row.payload))
        key = self.keyring.key_by_id(self.conn, row.data_key_id)
        aad = envelope.resource_aad(self.tenant, row.resource_type, row.resource_id, row.version_id)
        return load_resource(crypto.open_(key, bytes(row.payload), aad))

    def _to_stored(self, row: Any) -> StoredResource:
        resource = None if row.deleted or row.payload is None else self._open(row)
        return StoredResource(
            row.resource_type, row.resource_id, row.version_id, _aware(row.last_updated), row.deleted, resource,
            row.by_update,
        )


    def _current_row(self, resource_type: str, resource_id: str, *, for_update: bool = False) -> Any:
        if for_update and self.conn.dialect.name == "postgresql":
            # Serialise writers of one resource (creates included) until commit; the next statement
            # then sees the winner's version (READ COMMITTED). SQLite writers serialise on BEGIN IMMEDIATE.
            self.conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": f"healthledger/store|{self.tenant}|{resource_type}|{resource_id}"},
            )
        return self.conn.execute(
            _SELECT_CURRENT, {"tenant": self.tenant, "resource_type": resource_type, "resource_id": resource_id}
        ).first()

    # -- validation --------------------------------------------------------------------------------
    def _validated(self, resource: dict[str, Any], resource_type: str | None) -> dict[str, Any]:
        with fhir_errors():
            return fhir_validation.parse_resource(resource, expected_type=resource_type)

    # -- operations -------------------------------------------------------------------------------
    def create(
        self,
        resource: dict[str, Any],
        *,
        if_none_exist: list[tuple[str, str]] | None = None,
        resource_id: str | None = None,
        validated: bool = False,
        study_consent: bool = False,
    ) -> tuple[StoredResource, bool]:
        """FHIR create (http://hl7.org/fhir/R4/http.html#create): the server assigns the id.

        Conditional create (`If-None-Exist`, R4 3.1.0.8.1) searches as the caller: matches it may not read
        do not exist for it, so no visible match creates, one returns it unchanged (created False), several
        fail with 412. Each match the probe touched is recorded for its patient.

        `study_consent`: the caller is `$enrol` writing a participant's study consent; any other write of a
        Consent naming a ResearchStudy is refused (`_refuse_study_consent`).
        """
        declared = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(declared, str) and fhir_validation.is_resource_type(declared):
            self.check_scope("create", declared)  # scopes first, before anything about the body
        if not validated:  # `validated`: already the output of parse_resource (e.g. from plan_bundle)
            resource = self._validated(resource, None)
        resource_type = resource["resourceType"]
        self.check_scope("create", resource_type)
        if not study_consent:
            _refuse_study_consent(resource)
        self._compartment_of(resource)  # whose record it is must be clear before anyone decides on it
        if if_none_exist:
            matches = self.conditional_matches(resource_type, if_none_exist, "create")
            if matches:
                return matches[0], False  # FHIR: the match is the answer; nothing is created or decided
        new_id = resource_id or self.store.new_id()
        check_writable(resource_type, new_id)
        self.authorize("create", resource_type, resource, new_id)  # decided (and recorded) under the id it gets
        version, stamped = self.prepare_version(resource_type, new_id, 1, resource)
        self.write_versions([version])
        return self._stored(version, stamped), True

    def conditional_matches(self, resource_type: str, params: list[tuple[str, str]], what: str) -> list[StoredResource]:
        """What a conditional interaction's search finds, as the caller sees it (R4 3.1.0.8, 3.1.0.4.3).

        The search is the caller's own: each match is decided and recorded like a search result, and those
        it may not read are left out, so the answer is the one it would get if they did not exist. A caller
        whose scopes do not allow searching the type finds nothing. More than one visible match is a 412.
        """
        with fhir_errors():
            query = fhir_search.parse_search(resource_type, params)
        try:
            page = self.search(resource_type, query, count=2, offset=0)
        except Forbidden:
            return []  # not allowed to search this type: nothing is visible to it (the refusal is recorded)
        if (page.total or 0) > 1 or len(page.items) > 1:
            raise PreconditionFailed(f"conditional {what} matched more than one resource")
        return page.items

    @staticmethod
    def _stored(version: _NewVersion, resource: dict[str, Any] | None) -> StoredResource:
        return StoredResource(
            version.resource_type, version.resource_id, version.version_id, version.last_updated,
            version.deleted, resource, version.by_update,
        )

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None = None,
        if_none_match: IfNoneMatch | None = None,
        validated: bool = False,
        already_decided: bool = False,
    ) -> tuple[StoredResource, bool]:
        """FHIR update (R4 3.1.0.4); update of an unknown id creates it (update-as-create).

        Preconditions (RFC 7232 §3.1, §3.2; R4 3.1.0.5) are evaluated after the decision, so that a 412 says
        nothing to a caller the write would have been refused to: `if_match`, the version that must be current;
        `if_none_match`, ANY_VERSION (the resource must not exist: a deleted one does not) or versions that must
        not be current.

        `already_decided`: an operation has decided and recorded this change of the current version itself
        (`for_operation`); the store neither decides nor records it again.

        Writing over an id changes the record of the patient whose resource it last held, even when that
        version was since deleted: moving it to another patient (or out of every compartment) needs the
        writer to be allowed to update that last live version too.
        """
        check_id(resource_id)
        check_writable(resource_type, resource_id)
        self.check_scope("update", resource_type)
        body_id = resource.get("id") if isinstance(resource, dict) else None
        if body_id is not None and body_id != resource_id:
            raise InvalidResource("the resource id does not match the id in the URL", expression=f"{resource_type}.id")
        if not validated or resource.get("resourceType") != resource_type:
            resource = self._validated(resource, resource_type)
        if not already_decided:  # (the consent lifecycle's own status changes are decided beforehand)
            _refuse_study_consent(resource)
        patient = self._compartment_of(resource)
        current = self._current_row(resource_type, resource_id, for_update=True)
        if current is not None and current.erased:
            if not self.principal.unrestricted:
                # An erased resource looks missing, but its id cannot be taken over: refused like any
                # existing resource the caller may not write (recorded).
                self.store.policy.record_miss(self.principal, "update", resource_type, resource_id, conn=self.conn)
                raise refused_write(resource_type)
            raise Gone(f"{resource_type}/{resource_id} was erased")
        if already_decided:
            before = self._to_stored(current) if current is not None else None
            if before is None or before.resource is None or not _same_patient(before.resource, patient):
                raise ValueError("only a change of a live resource within its compartment can be decided beforehand")
        else:
            refused: Forbidden | None = None
            if current is not None and self._screens:
                previous = self._last_live(current)
                if previous is not None and previous.resource is not None and not _same_patient(previous.resource, patient):
                    # A move between two patients is decided (and recorded) on both sides, whatever the first says.
                    try:
                        self.authorize("update", resource_type, previous.resource, resource_id)
                    except Forbidden as exc:
                        refused = exc
            self.authorize("update" if current is not None else "create", resource_type, resource, resource_id)
            if refused is not None:
                raise refused
        if if_match is not None and (current is None or current.version_id != if_match):
            raise PreconditionFailed("version mismatch: the resource was changed by someone else (If-Match)")
        if if_none_match is not None and current is not None and not current.deleted and (
            if_none_match == ANY_VERSION or current.version_id in if_none_match
        ):
            raise PreconditionFailed(
                f"{resource_type}/{resource_id} exists (If-None-Match: *)" if if_none_match == ANY_VERSION
                else f"{resource_type}/{resource_id} is at version {current.version_id} (If-None-Match)")
        next_version = 1 if current is None else current.version_id + 1
        version, stamped = self.prepare_version(
            resource_type, resource_id, next_version, resource, patient_id=patient, by_update=True)
        self.write_versions([version], supersede=[current.row_id] if current is not None else [])
        created = current is None or current.deleted
        return self._stored(version, stamped), created

    def _last_live(self, current: Any) -> StoredResource | None:
        """The newest version that is not a deletion: `current` itself, or the one a deletion buried."""
        if not current.deleted:
            return self._to_stored(current)
        row = self.conn.execute(
            sa.select(*_COLUMNS)
            .where(*_same_resource(self.tenant, current.resource_type, current.resource_id), res_t.c.deleted.is_(False))
            .order_by(res_t.c.version_id.desc())
            .limit(1)
        ).first()
        return self._to_stored(row) if row is not None else None

    def delete(self, resource_type: str, resource_id: str, *, if_match: int | None = None) -> StoredResource | None:
        """Soft delete (R4 3.1.0.7): a tombstone version.

        Deleting a deleted resource succeeds and writes nothing (R4: 200 or 204), to a caller who may delete the
        version it buried (`_gone_if_seen`); to anyone else it is the 404 of a missing resource, as are a missing
        resource and one it may not delete: whether it exists may itself be what a consent withholds. To a
        caller who may see everything, deleting a missing resource is fine too (204).

        `if_match` (RFC 7232 §3.1): the version that must be current, checked after the decision (a 412 says
        nothing to a caller the delete would be refused to); a resource with no current version fails it.
        """
        check_id(resource_id)
        check_writable(resource_type, resource_id)
        self.check_scope("delete", resource_type)
        current = self._current_row(resource_type, resource_id, for_update=True)
        if current is not None and current.deleted and not current.erased:
            answer = self._gone_if_seen("delete", current, f"{resource_type}/{resource_id} was deleted")
            if not isinstance(answer, Gone):
                raise answer
            if if_match is not None:
                raise PreconditionFailed(f"{resource_type}/{resource_id} was deleted: no version matches If-Match")
            return StoredResource(resource_type, resource_id, current.version_id, _aware(current.last_updated), True, None)
        if current is None or current.erased:
            if not self.principal.unrestricted:
                raise self._not_found("delete", resource_type, resource_id)
            self.store.policy.record_miss(self.principal, "delete", resource_type, resource_id, conn=self.conn)
            if if_match is not None:
                raise PreconditionFailed(f"{resource_type}/{resource_id} has no version that matches If-Match")
            if current is None:
                return None
            return StoredResource(resource_type, resource_id, current.version_id, _aware(current.last_updated), True, None)
        self.authorize("delete", resource_type, self._to_stored(current).resource, resource_id)
        if if_match is not None and current.version_id != if_match:
            raise PreconditionFailed("version mismatch: the resource was changed by someone else (If-Match)")
        version, _ = self.prepare_version(
            resource_type, resource_id, current.version_id + 1, None, previous_compartment=current.compartment
        )
        self.write_versions([version], supersede=[current.row_id])
        return self._stored(version, None)

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        check_id(resource_id)
        self.check_scope("read", resource_type)
        row = self._current_row(resource_type, resource_id)
        if row is None:
            raise self._not_found("read", resource_type, resource_id)
        if row.erased:
            raise self._gone_or_hidden("read", resource_type, resource_id, f"{resource_type}/{resource_id} was erased")
        if row.deleted:
            raise self._gone_if_seen("read", row, f"{resource_type}/{resource_id} was deleted")
        stored = self._to_stored(row)
        return _replace_resource(stored, self.authorize("read", resource_type, stored.resource, resource_id))

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource:
        """One version, decided on its own content (a resource may have moved between patients)."""
        check_id(resource_id)
        self.check_scope("vread", resource_type)
        row = self.conn.execute(
            _SELECT_VERSION,
            {"tenant": self.tenant, "resource_type": resource_type, "resource_id": resource_id, "version_id": version_id},
        ).first()
        if row is None:
            raise self._not_found("vread", resource_type, resource_id)
        if row.erased:
            raise self._gone_or_hidden("vread", resource_type, resource_id, f"{resource_type}/{resource_id} was erased")
        if row.deleted:
            raise self._gone_if_seen("vread", row, f"{resource_type}/{resource_id} version {version_id} is a deletion")
        stored = self._to_stored(row)
        return _replace_resource(stored, self.authorize("vread", resource_type, stored.resource, resource_id))

    def history(
        self,
        resource_type: str,
        resource_id: str | None = None,
        *,
        since: datetime | None = None,
        count: int = 50,
        offset: int = 0,
    ) -> Page:
        """Instance or type history (R4 3.1.0.10), newest first.

        Under a policy that decides per resource, every version is decided on its own content, so a version
        that belonged to a patient the caller may not read is never shown, whatever the resource became
        later. Withheld versions are left out of the page and the total; an instance history with nothing
        to show is the same 404 as a missing resource. A deletion is shown with the version it deleted
        (type histories show none to restricted callers: there the deleted version is on another page).
        """
        self.authorize("history", resource_type, None)
        where = [res_t.c.tenant == self.tenant, res_t.c.resource_type == resource_type, res_t.c.erased.is_(False)]
        screen = self._screens
        per_version = screen and not self.principal.unrestricted
        if resource_id is not None:
            check_id(resource_id)
            if not per_version:  # (per version: a missing or erased resource is simply one with nothing to show)
                first = self.conn.execute(
                    sa.select(res_t.c.erased).where(*_same_resource(self.tenant, resource_type, resource_id)).limit(1)
                ).first()
                if first is None:
                    raise self._not_found("history", resource_type, resource_id)
                if first.erased:
                    raise self._gone_or_hidden(
                        "history", resource_type, resource_id, f"{resource_type}/{resource_id} was erased"
                    )
            where.append(res_t.c.resource_id == resource_id)
        if since is not None:
            # Stored moments are UTC (SQLite keeps them without an offset): compare in UTC.
            since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
            where.append(res_t.c.last_updated >= since)
        ordered = sa.select(*_COLUMNS).where(*where).order_by(res_t.c.last_updated.desc(), res_t.c.row_id.desc())
        if per_version:
            shown, withheld, stored_any = self._screened_history(resource_type, resource_id, ordered)
            if resource_id is not None and not shown:
                if not stored_any:
                    raise self._not_found("history", resource_type, resource_id)
                self.store.policy.record_results(self.principal, "history", resource_type, [], withheld, conn=self.conn)
                raise not_known(resource_type, resource_id)
            total = len(shown)
            page = shown[offset : offset + count]
            items = [stored for stored, _ in page]
            disclosed = [s for _, s in page if s is not None]
            counted = [s for _, s in shown[:offset] + shown[offset + count :] if s is not None]
            self.store.policy.record_results(
                self.principal, "history", resource_type, disclosed, withheld, counted=counted, conn=self.conn
            )
        else:
            total = self.conn.execute(sa.select(sa.func.count()).select_from(res_t).where(*where)).scalar_one()
            rows = self.conn.execute(ordered.limit(count).offset(offset)).all()
            items = [self._to_stored(r) for r in rows]
            if screen:
                self._record_unscreened("history", resource_type, items)
        next_offset = offset + count if offset + count < total else None
        return Page(items, total, next_offset)

    def _screened_history(
        self, resource_type: str, resource_id: str | None, ordered: sa.Select[Any]
    ) -> tuple[list[tuple[StoredResource, Screened | None]], list[Screened], bool]:
        """(every version the caller may see, newest first, each with its decision (None for a deletion),
        the decisions of the versions withheld, whether any version was stored at all)."""
        policy = self.store.policy
        shown: list[tuple[StoredResource, Screened | None]] = []
        withheld: list[Screened] = []
        pending_deletions: dict[str, list[StoredResource]] = {}  # resource id -> newer deletions awaiting it
        stored_any = False
        newest_first = (res_t.c.last_updated, res_t.c.row_id)
        for row in self._scan(ordered, lambda last: sa.tuple_(*newest_first) < (last.last_updated, last.row_id)):
            stored_any = True
            stored = self._to_stored(row)
            if row.deleted or stored.resource is None:
                if resource_id is not None:
                    pending_deletions.setdefault(row.resource_id, []).append(stored)
                continue
            screened = policy.screen(self.principal, "history", resource_type, stored.resource, conn=self.conn)
            buried = pending_deletions.pop(row.resource_id, [])
            if screened.resource is None:
                if len(withheld) < _Tally.MAX_PATIENTS and all(w.patient_id != screened.patient_id for w in withheld[-50:]):
                    withheld.append(screened)
                continue
            version = _replace_resource(stored, screened.resource)
            # A deletion of a version it may see, named as that version is shown to it (a pseudonym, maybe).
            shown.extend((replace(deletion, id=version.id), None) for deletion in buried)
            shown.append((version, screened))
        return shown, withheld, stored_any

    def _record_unscreened(self, action: Action, resource_type: str, items: Sequence[StoredResource]) -> None:
        """Record what an unrestricted caller was shown (one entry per resource, for its patient's log)."""
        policy = self.store.policy
        with_content = {item.id for item in items if item.resource is not None}
        shown = [
            policy.screen(
                self.principal, action, resource_type,
                item.resource if item.resource is not None else {"resourceType": resource_type, "id": item.id},
                conn=self.conn,
            )
            for item in items
            # A deletion is recorded with the resource's shown versions; alone on the page, on its own.
            if item.resource is not None or item.id not in with_content
        ]
        policy.record_results(self.principal, action, resource_type, shown, [], conn=self.conn)


    def _scan(self, ordered: sa.Select[Any], after: Callable[[sa.Row[Any]], sa.ColumnElement[bool]]) -> Iterator[sa.Row[Any]]:
        """The rows of a long scan in `ordered`'s order, a batch at a time.

        In a transaction one cursor streams them (server-side on PostgreSQL), all from the statement's snapshot.
        A PostgreSQL read view runs in autocommit, where PostgreSQL declares no cursor: there each batch is a
        statement of its own, with its own snapshot, resuming after the last row by `after(last row)`, the
        condition "past this row in the scan's order" (a keyset). A resource changed between two batches is
        still seen at most once (searches go by id: as it was, or as it is now; a history, newest first, does
        not reach back to versions written after it began), as a FHIR search's pages see it anyway.
        """
        if self.conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            yield from self.conn.execute(ordered.execution_options(yield_per=_SCAN_BATCH))
            return
        batch = ordered
        while True:
            rows = self.conn.execute(batch.limit(_SCAN_BATCH)).all()
            yield from rows
            if len(rows) < _SCAN_BATCH:
                return
            batch = ordered.where(after(rows[-1]))

    def _candidates(self, resource_type: str, query: Any) -> sa.Select[Any]:
        stmt = sa.select(*_COLUMNS).where(
            res_t.c.tenant == self.tenant,
            res_t.c.resource_type == resource_type,
            res_t.c.is_current.is_(True),
            res_t.c.deleted.is_(False),
            res_t.c.erased.is_(False),
        )
        with fhir_errors():
            filters = fhir_search.candidate_filters(query)
        for f in filters:
            if f.param == "_id":
                stmt = stmt.where(res_t.c.resource_id.in_(sorted(f.any_of)))
                continue
            if f.param in fhir_search.COMMON_PARAMETERS:
                continue  # _lastUpdated is not in the blind index: matches() decides it
            terms = self.store.indexer.query_terms(resource_type, f.param, sorted(f.any_of))
            stmt = stmt.where(
                res_t.c.row_id.in_(sa.select(terms_t.c.row_id).where(terms_t.c.param == f.param, terms_t.c.term.in_(terms)))
            )
        return stmt

    def search(
        self, resource_type: str, query: Any, *, count: int = 50, offset: int = 0, check: bool = True,
        sort: Sequence[Any] = (), keep: Callable[[dict[str, Any]], bool] | None = None, after: Position | None = None,
    ) -> Page:
        """Search current, live resources; stable order by id (or by `sort`, fhir_adapters.search.sorting, ties by
        id); exact total (after decryption and matching). A `_has` clause is resolved first by a search of its own
        (store/search_results.py), decided and recorded like any other: what the caller may not see of the
        other type does not select anything. `keep(resource)`: a further criterion of the caller's that the
        index cannot answer (ResearchSubject's study), applied with the query's own, before any decision: what
        it leaves out is neither decided nor recorded. `after`: the page starts just past that position
        (sorting.sort_position of the previous page's last match, a keyset) rather than at `offset`, which then
        only says where the page is; so what is created or deleted meanwhile does not shift a match onto two
        pages or off both."""
        if check:
            self.authorize("search", resource_type, None)
        if getattr(query, "has", ()):
            query = resolve_has(self, query, check=check)
        # A policy that decides per resource (consent) sees every candidate; results it denies are left
        # out of the page and of the total, as if they did not exist.
        screen = check and self._screens
        per_resource = screen and not self.principal.unrestricted
        stmt = self._candidates(resource_type, query).order_by(res_t.c.resource_id)
        if per_resource and self._withheld_whole(resource_type, query, stmt):
            return Page([], 0, None)
        # Unsorted, the keyset is the id, compared by the database (in the order it lists them, its collation's).
        past_id = after is not None and not sort
        if past_id:
            assert after is not None
            stmt = stmt.add_columns((res_t.c.resource_id > str(after[-1])).label("past_anchor"))
        more: bool | None = None  # past the page: whether anything is (None: offset + count < total says)
        if not _has_criteria(query) and not per_resource and not sort and keep is None:
            total = self.conn.execute(sa.select(sa.func.count()).select_from(stmt.subquery())).scalar_one()
            if past_id:
                assert after is not None
                rows = self.conn.execute(stmt.where(res_t.c.resource_id > str(after[-1])).limit(count + 1)).all()
                more, rows = len(rows) > count, rows[:count]
            else:
                rows = self.conn.execute(stmt.limit(count).offset(offset)).all()
            items = [self._to_stored(r) for r in rows]
            if screen:
                self._record_unscreened("search", resource_type, items)
        else:
            policy = self.store.policy
            matched: list[StoredResource] = []
            tally = _Tally()
            total = 0
            every: list[tuple[StoredResource, Screened | None]] = []  # with `sort`: all visible matches
            # With a keyset, unsorted: the page past the anchor and the page at the offset, until it is known
            # which one the caller may be shown (`shown_as_is`); the decisions of both, recorded once known.
            keyset_page: list[tuple[StoredResource, Screened | None]] = []
            offset_page: list[tuple[StoredResource, Screened | None]] = []
            candidates: list[Screened] = []
            shown_as_is = True
            for row in self._scan(stmt, lambda last: res_t.c.resource_id > last.resource_id):
                stored = self._to_stored(row)
                assert stored.resource is not None
                meta = fhir_search.ResourceMeta(id=stored.id, last_updated=stored.last_updated)
                with fhir_errors():
                    ok = fhir_search.matches(stored.resource, query, meta)
                if not ok or (keep is not None and not keep(stored.resource)):
                    continue
                screened = None
                if screen:
                    screened = policy.screen(self.principal, "search", resource_type, stored.resource, conn=self.conn)
                    if screened.resource is None:
                        tally.withhold(screened)
                        continue
                    stored = _replace_resource(stored, screened.resource)
                if sort:
                    every.append((stored, screened))  # sorted (on what the caller is shown) and paged below
                    total += 1
                    continue
                by_offset = offset <= total < offset + count
                by_key = past_id and bool(row.past_anchor) and len(keyset_page) < count
                if past_id:
                    shown_as_is = shown_as_is and stored.id == row.resource_id
                    more = more or (bool(row.past_anchor) and not by_key)
                    if by_key:
                        keyset_page.append((stored, screened))
                    if by_offset:
                        offset_page.append((stored, screened))
                    if (by_key or by_offset) and screened is not None:
                        candidates.append(screened)
                    elif screened is not None:
                        tally.count(screened)
                elif by_offset:
                    matched.append(stored)
                    if screened is not None:
                        tally.disclosed.append(screened)
                elif screened is not None:
                    tally.count(screened)  # in the total, so its existence is disclosed too
                total += 1
            if past_id:
                # The keyset compares real ids: it holds only where the caller is shown them. A view that shows
                # pseudonyms (a de-identifying policy) pages by offset: the anchor must not tell it their order.
                chosen = keyset_page if shown_as_is else offset_page
                if not shown_as_is:
                    more = None
                matched = [item for item, _ in chosen]
                on_page = {id(screened) for _, screened in chosen if screened is not None}
                for screened in candidates:
                    if id(screened) in on_page:
                        tally.disclosed.append(screened)
                    else:
                        tally.count(screened)
            if sort:
                def view(pair: tuple[StoredResource, Screened | None]) -> tuple[dict[str, Any], fhir_search.ResourceMeta]:
                    return pair[0].resource or {}, fhir_search.ResourceMeta(id=pair[0].id, last_updated=pair[0].last_updated)

                # Ties by id as sorting.comes_after compares them (the database's collation may differ).
                every = sort_matches(sorted(every, key=lambda pair: pair[0].id), sort, view)
                start = offset
                if after is not None:
                    start = next((i for i, pair in enumerate(every)
                                  if comes_after(sort_position(*view(pair), sort), after, sort)), len(every))
                more = start + count < len(every)
                for position, (stored, screened) in enumerate(every):
                    if start <= position < start + count:
                        matched.append(stored)
                        if screened is not None:
                            tally.disclosed.append(screened)
                    elif screened is not None:
                        tally.count(screened)
            items = matched
            if screen:
                policy.record_results(
                    self.principal, "search", resource_type, tally.disclosed, tally.withheld(),
                    counted=tally.counted(), conn=self.conn,
                )
        if more is None:
            next_offset = offset + count if offset + count < total else None
        else:
            next_offset = offset + len(items) if more else None
        return Page(items, total, next_offset)


    def _withheld_whole(self, resource_type: str, query: Any, candidates: sa.Select[Any]) -> bool:
        """A search pinned to patients of whose `resource_type` records the caller may see none, whatever they
        say: recorded as withheld from each, and answered empty without reading their records, so it takes the
        time a search for patients who do not exist takes (timing would tell them apart otherwise: the scan and
        its decisions grow with the patient's records; docs/consent-semantics.md, "No existence oracle"). The
        index is still asked for the first candidate, as the scan of a patient with no records asks and finds
        none: skipping that query too would make a withheld patient answer faster than a missing one."""
        named = fhir_compartment.searched_patients(resource_type, getattr(query, "criteria", ()))
        if not named:
            return False
        policy = self.store.policy
        withheld = []
        for patient_id in sorted(named):
            screened = policy.withheld_patient(self.principal, resource_type, patient_id, conn=self.conn)
            if screened is None:
                return False  # some of theirs may be shown: every match is screened
            withheld.append(screened)
        self.conn.execute(candidates.with_only_columns(res_t.c.resource_id).limit(1)).all()  # (nothing decrypted)
        policy.record_results(self.principal, "search", resource_type, [], withheld, conn=self.conn)
        return True


_DECOY_PATIENT = "hl-decoy-6f1c2a9e4b7d40e38a5f9c1d2e3b4a5f"


def _decoy_resource(resource_type: str) -> dict[str, Any]:
    """A typical resource of `resource_type` about a stand-in patient (its decision is never used)."""
    meta = {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00.000Z"}
    if resource_type == "Patient":
        return {"resourceType": "Patient", "id": "decoy", "meta": meta, "name": [{"family": "Decoy", "given": ["D"]}],
                "gender": "unknown", "birthDate": "1970-01-01", "managingOrganization": {"reference": "Organization/decoy"}}
    return {
        "resourceType": resource_type, "id": "decoy", "meta": meta, "status": "final",
        "subject": {"reference": f"Patient/{_DECOY_PATIENT}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "effectiveDateTime": "2024-01-01", "valueQuantity": {"value": 6.1, "unit": "%"},
        "performer": [{"reference": "Practitioner/decoy"}], "encounter": {"reference": "Encounter/decoy"},
    }


def _same_resource(tenant: str, resource_type: str, resource_id: str) -> tuple[Any, ...]:
    return (res_t.c.tenant == tenant, res_t.c.resource_type == resource_type, res_t.c.resource_id == resource_id)


def _refuse_study_consent(resource: dict[str, Any]) -> None:
    """A study consent is made by enrolling by proof, never written directly: otherwise anyone could make
    themself (or, for an unrestricted writer, anybody) a participant without meeting the criteria."""
    if resource.get("resourceType") == "Consent" and names_a_study(resource):
        raise Unprocessable(
            "a Consent naming a ResearchStudy is made by POST /fhir/ResearchStudy/{id}/$enrol (enrolment by "
            "proof), not written directly; to leave a study use $leave",
            expression="Consent.provision.actor",
        )


def _same_patient(stored: dict[str, Any], patient_id: str | None) -> bool:
    """Whether a stored version belongs to `patient_id`'s compartment (one no longer resolvable never does)."""
    try:
        return fhir_compartment.patient_compartment(stored) == patient_id
    except FhirInputError:
        return False


class _Tally:
    """What one search or history did to whom: disclosed matches, and per patient one withheld / counted match."""

    MAX_PATIENTS = 10_000  # per attempt; beyond it a search has touched most of the hospital anyway

    def __init__(self) -> None:
        self.disclosed: list[Screened] = []
        self._withheld: dict[str, Screened] = {}
        self._counted: dict[str, Screened] = {}

    def withhold(self, screened: Screened) -> None:
        if screened.patient_id not in self._withheld and len(self._withheld) < self.MAX_PATIENTS:
            self._withheld[screened.patient_id] = screened

    def count(self, screened: Screened) -> None:
        if screened.patient_id not in self._counted and len(self._counted) < self.MAX_PATIENTS:
            self._counted[screened.patient_id] = screened

    def withheld(self) -> list[Screened]:
        return list(self._withheld.values())

    def counted(self) -> list[Screened]:
        return list(self._counted.values())


def _replace_resource(stored: StoredResource, resource: dict[str, Any] | None) -> StoredResource:
    """`stored` carrying the resource the policy handed back (e.g. redacted, de-identified), if it changed.

    A de-identified resource carries a pseudonymous id: the StoredResource takes it too, so no URL built
    from it (fullUrl, history, batch responses) puts the real id beside the pseudonym.
    """
    if resource is stored.resource:
        return stored
    shown_id = resource.get("id") if resource is not None else None
    return replace(stored, id=shown_id if isinstance(shown_id, str) and shown_id else stored.id, resource=resource)


def _has_criteria(query: Any) -> bool:
    """Whether the query selects anything (not only result controls such as _count)."""
    return bool(query.criteria)



def store_for_settings(engine: Engine, key_provider: KeyProvider, settings: Settings, **extra: Any) -> ResourceStore:
    """The store as the settings configure it (the values it reads: tenant, keys dir, page size, privacy)."""
    return ResourceStore(
        engine, key_provider, tenant=settings.tenant, keys_dir=settings.keys_dir,
        page_size=settings.default_page_size, privacy=not settings.privacy_off_for_benchmark, **extra,
    )
