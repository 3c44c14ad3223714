"""Data keys of the store: created on demand, stored wrapped by the KEK, unwrapped once and cached."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from healthledger import crypto
from healthledger.errors import DecryptionError, Gone, HealthLedgerError, KeyProviderUnavailable
from healthledger.keys import KekNotHeld, KeyProvider, WrappedKey
from healthledger.store import envelope
from healthledger.store.models import data_keys_table as keys_t

T = TypeVar("T")

PATIENT = "patient"
TYPE = "type"
INDEX_MASTER = "index-master"


@dataclass(frozen=True)
class DataKeyRef:
    key_id: str
    key: bytes


class _LRU:
    """A small bounded, thread-safe LRU of unwrapped keys (a worker serves threads)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[object, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, k: object) -> bytes | None:
        with self._lock:
            v = self._items.get(k)
            if v is not None:
                self._items.move_to_end(k)
            return v

    def put(self, k: object, v: bytes) -> None:
        with self._lock:
            self._items[k] = v
            self._items.move_to_end(k)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, k: object) -> None:
        with self._lock:
            self._items.pop(k, None)


def _reaching(call: Callable[..., T], *args: object) -> T:
    """A key provider call; a provider that cannot be reached (network, timeout, file system) is
    KeyProviderUnavailable, a 503 that fails closed, never a traceback or a 500."""
    try:
        return call(*args)
    except HealthLedgerError:
        raise
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise KeyProviderUnavailable() from exc


class Keyring:
    """Finds or creates the data key of a compartment / resource type, and the blind-index keys.

    Destruction is checked against the database on every lookup by scope, so another process that
    erased a patient is honoured even though unwrapped keys are cached here by key id.
    """

    def __init__(self, provider: KeyProvider, tenant: str, clock: Callable[[], datetime], *, cache_size: int = 4096):
        self.provider = provider
        self.tenant = tenant
        self._clock = clock
        self._keys = _LRU(cache_size)
        self._derived = _LRU(cache_size)
        self._master: bytes | None = None
        self._master_lock = threading.Lock()

    # -- data keys -------------------------------------------------------------------------
    def _insert_if_absent(self, conn: Connection, key_class: str, scope: bytes) -> None:
        self._check_keys_current(conn)
        key_id = "dk-" + secrets.token_hex(12)
        context = envelope.wrap_context(self.tenant, key_id)
        key = crypto.new_key()
        try:
            wrapped = _reaching(self.provider.wrap, key, context)
        except DecryptionError:
            # The KEK this process believed active was retired by a rotate-keys run in another
            # process; the provider has reloaded its state, so wrapping again uses the new one.
            wrapped = _reaching(self.provider.wrap, key, context)
        values = {
            "key_id": key_id, "tenant": self.tenant, "key_class": key_class, "scope": scope,
            "kek_id": wrapped.kek_id, "wrapped": wrapped.blob, "created_at": self._clock(),
        }
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(keys_t).values(**values).on_conflict_do_nothing())

    def _check_keys_current(self, conn: Connection) -> None:
        """Before a new data key is wrapped: this process holds the KEK the tenant's blind-index master key is
        wrapped with (every rotation moves it too, so it names the KEK of the latest rotation to reach the
        store). A process that does not has key files older than a rotation made elsewhere (a replica whose key
        Secret was not updated, its keys unwrapped and cached from before): its active KEK is the old one, which
        the rotation retires next, and a key wrapped with it now would open nowhere once it is (its data lost).
        Refused instead, as a key not held (503, `transient`); /readyz says the replica is not ready too."""
        master = conn.execute(sa.select(keys_t.c.kek_id).where(
            keys_t.c.tenant == self.tenant, keys_t.c.key_class == INDEX_MASTER, keys_t.c.scope == b"",
        )).scalar_one_or_none()
        if master is None or master == self.provider.active_kek_id():
            return  # (the usual case: no key file read)
        if master not in _reaching(self.provider.kek_ids):
            raise KekNotHeld(master)

    def key_for_scope(self, conn: Connection, key_class: str, scope: bytes) -> DataKeyRef:
        """The live data key of (class, scope), created if missing; Gone if it was destroyed."""
        q = sa.select(keys_t.c.key_id, keys_t.c.kek_id, keys_t.c.wrapped, keys_t.c.destroyed_at).where(
            keys_t.c.tenant == self.tenant, keys_t.c.key_class == key_class, keys_t.c.scope == scope
        )
        row = conn.execute(q).first()
        if row is None:
            self._insert_if_absent(conn, key_class, scope)
            row = conn.execute(q).one()
        if row.destroyed_at is not None:
            raise Gone("the records of this patient were erased")
        try:
            return DataKeyRef(row.key_id, self._unwrap_cached(row.key_id, row.kek_id, row.wrapped))
        except DecryptionError:
            row = conn.execute(q).one()  # rewrapped and its old KEK retired meanwhile: read it again
            if row.destroyed_at is not None:
                raise Gone("the records of this patient were erased") from None
            return DataKeyRef(row.key_id, self._unwrap_cached(row.key_id, row.kek_id, row.wrapped))

    def key_by_id(self, conn: Connection, key_id: str) -> bytes:
        cached = self._keys.get(key_id)
        if cached is not None:
            return cached
        q = sa.select(keys_t.c.kek_id, keys_t.c.wrapped, keys_t.c.destroyed_at).where(keys_t.c.key_id == key_id)
        for attempt in (1, 2):
            row = conn.execute(q).first()
            if row is None or row.destroyed_at is not None or row.wrapped is None:
                raise DecryptionError()
            try:
                return self._unwrap_cached(key_id, row.kek_id, row.wrapped)
            except DecryptionError:
                # A rotate-keys run may have rewrapped this key and retired the KEK we read it under
                # between our read and our unwrap: one more read sees the new wrapping.
                if attempt == 2:
                    raise
        raise DecryptionError()  # pragma: no cover - the loop returns or raises

    def _unwrap_cached(self, key_id: str, kek_id: str, blob: bytes) -> bytes:
        cached = self._keys.get(key_id)
        if cached is None:
            cached = _reaching(
                self.provider.unwrap, WrappedKey(kek_id, bytes(blob)), envelope.wrap_context(self.tenant, key_id)
            )
            self._keys.put(key_id, cached)
        return cached

    def forget(self, key_id: str) -> None:
        self._keys.drop(key_id)

    # -- blind-index keys -----------------------------------------------------------------
    def load_master(self, conn: Connection) -> None:
        """Load (creating on first use) the blind-index master key, stored wrapped like a data key.

        Call it in a transaction of its own that commits: a master created inside a transaction
        that rolls back would leave this cache holding a key the database never kept.
        """
        with self._master_lock:
            if self._master is None:
                self._master = self.key_for_scope(conn, INDEX_MASTER, b"").key

    @property
    def master_loaded(self) -> bool:
        return self._master is not None

    def master(self, conn: Connection | None = None) -> bytes:
        if self._master is None:
            raise RuntimeError("blind-index master key not loaded (ResourceStore loads it first)")
        return self._master

    def compartment_index(self, conn: Connection, patient_id: str) -> bytes:
        key = self._derived.get("c")
        if key is None:
            key = envelope.compartment_key(self.master(conn), self.tenant)
            self._derived.put("c", key)
        return envelope.compartment_index(key, patient_id)
