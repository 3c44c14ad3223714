"""Key rotation (rewrap every data key under a new KEK) and crypto-shredding of a patient's records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from healthledger.errors import ConfigurationError, NotFound
from healthledger.keys import KEY_FILES, KeyFileRegistry, WrappedKey
from healthledger.store import envelope
from healthledger.store.keyring import PATIENT
from healthledger.store.models import data_keys_table as keys_t
from healthledger.store.models import resources_table as res_t
from healthledger.store.models import terms_table as terms_t

if TYPE_CHECKING:
    from healthledger.store.repository import ResourceStore

_MAX_PASSES = 5  # rewrap passes before giving up on keys created concurrently under an old KEK


@dataclass(frozen=True)
class RotationReport:
    new_kek_id: str
    rewrapped: int
    retired: list[str] = field(default_factory=list)
    remaining_on_old: int = 0
    # Keys outside the store still wrapped by an old KEK (files under keys_dir, `*kek_id` columns of
    # other packages' tables): while any exist, old KEKs are not retired.
    blocked_by: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ErasureReport:
    resources: dict[str, int]  # live resources made unreadable, per resource type
    versions: int  # every stored version (history included) now unreadable
    key_destroyed: bool


def _rewrap_pass(store: ResourceStore, new_kek: str, old_keks: list[str], batch_size: int) -> int:
    """Rewrap, batch by batch (one short transaction each), every live key not yet under `new_kek`.

    Resources are not re-encrypted: only the wrapped data keys change, and the unwrapped key (and
    so every ciphertext) stays the same, so readers keep working throughout (old KEK still present).
    """
    provider = store.keyring.provider
    done = 0
    after = ""
    while True:
        with store.engine.begin() as conn:
            rows = conn.execute(
                sa.select(keys_t.c.key_id, keys_t.c.tenant, keys_t.c.kek_id, keys_t.c.wrapped)
                .where(keys_t.c.wrapped.is_not(None), keys_t.c.kek_id.in_(old_keks), keys_t.c.key_id > after)
                .order_by(keys_t.c.key_id)
                .limit(batch_size)
            ).all()
            if not rows:
                return done
            for row in rows:
                context = envelope.wrap_context(row.tenant, row.key_id)
                key = provider.unwrap(WrappedKey(row.kek_id, bytes(row.wrapped)), context)
                rewrapped = provider.wrap(key, context)
                # Only if nobody changed the row meanwhile (e.g. an erasure destroyed it).
                result = conn.execute(
                    sa.update(keys_t)
                    .where(keys_t.c.key_id == row.key_id, keys_t.c.kek_id == row.kek_id)
                    .values(kek_id=rewrapped.kek_id, wrapped=rewrapped.blob)
                )
                done += result.rowcount
            after = rows[-1].key_id


def _count_on(store: ResourceStore, keks: list[str]) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(keys_t).where(keys_t.c.wrapped.is_not(None), keys_t.c.kek_id.in_(keks))
            ).scalar_one()
        )


def rotate_keys(
    store: ResourceStore,
    *,
    retire_old: bool = False,
    rotate: bool = True,
    batch_size: int = 500,
    key_files: KeyFileRegistry = KEY_FILES,
) -> RotationReport:
    """A new KEK becomes active (unless `rotate` is False); every data key and index master key under
    this provider's older KEKs (all tenants that share the provider) is rewrapped to the active KEK.

    With `retire_old`, old KEKs are removed from the provider once nothing depends on them: no store
    key and no key of another package (see `external_users`; `key_files` lists the wrapped key files).
    `rotate=False, retire_old=True` retires after those packages have rewrapped their keys, without
    starting yet another rotation.
    """
    provider = store.keyring.provider
    active = provider.rotate() if rotate else provider.active_kek_id()
    # Keys of this provider's older KEKs only: a database shared with tenants that use another
    # provider keeps their keys untouched (we could not unwrap them anyway).
    old_keks = [k for k in provider.kek_ids() if k != active]
    rewrapped = 0
    for _ in range(_MAX_PASSES):
        rewrapped += _rewrap_pass(store, active, old_keks, batch_size)
        if _count_on(store, old_keks) == 0:
            break
    remaining = _count_on(store, old_keks)
    retired: list[str] = []
    blocked_by = external_users(store, old_keks, key_files) if retire_old and old_keks else []
    if retire_old and remaining == 0 and not blocked_by:
        for kek_id in old_keks:
            provider.retire(kek_id)
            retired.append(kek_id)
    return RotationReport(active, rewrapped, retired, remaining, blocked_by)


def external_users(store: ResourceStore, keks: list[str], key_files: KeyFileRegistry = KEY_FILES) -> list[str]:
    """Where keys outside the store are still wrapped by one of `keks` (retiring them would break those).

    Other packages keep KEK-wrapped keys too: the wrapped key files of the registry (token signing key,
    chain operator key, web session secret; an unreadable one counts as in use), and columns named
    `*kek_id` in tables that are not the store's (patients' recovery wraps).
    """
    found: list[str] = []
    for key_file in key_files.files(store.keys_dir) if store.keys_dir is not None else ():
        try:
            contents = key_file.read()
        except ConfigurationError:
            found.append(f"key file {key_file.path.name} (unreadable)")
            continue
        if contents is not None and contents.wrapped.kek_id in keks:
            found.append(f"key file {key_file.path.name}")
    inspector = sa.inspect(store.engine)
    with store.engine.connect() as conn:
        for table in inspector.get_table_names():
            if table.startswith("store_"):
                continue
            for column in inspector.get_columns(table):
                name = column["name"]
                if not name.endswith("kek_id"):
                    continue
                n = conn.execute(
                    sa.select(sa.func.count()).select_from(sa.table(table)).where(sa.column(name).in_(keks))
                ).scalar_one()
                if n:
                    found.append(f"{n} row(s) of {table}.{name}")
    return found


def erase_patient(store: ResourceStore, patient_id: str) -> ErasureReport:
    """Crypto-shredding: destroy the data key of the patient's compartment in one transaction.

    Every version of every resource in the compartment (the Patient itself, Observations, ...) is
    flagged erased and reads as Gone; their blind-index terms are deleted. The ciphertext stays (also
    in backups) but no key to open it exists any more. Old backups still hold the wrapped key: run
    `rotate-keys --retire-old` afterwards to make those useless too.
    """
    store.open_keys()
    with store.engine.begin() as conn:
        if store._sqlite:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            # Overwrite freed pages so the destroyed wrapped key does not linger in the file.
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        comp = store.keyring.compartment_index(conn, patient_id)
        key_row = conn.execute(
            sa.select(keys_t.c.key_id, keys_t.c.destroyed_at).where(
                keys_t.c.tenant == store.tenant, keys_t.c.key_class == PATIENT, keys_t.c.scope == comp
            )
        ).first()
        in_compartment = (res_t.c.tenant == store.tenant, res_t.c.compartment == comp)
        live = conn.execute(
            sa.select(res_t.c.resource_type, sa.func.count())
            .where(*in_compartment, res_t.c.is_current.is_(True), res_t.c.erased.is_(False), res_t.c.deleted.is_(False))
            .group_by(res_t.c.resource_type)
        ).all()
        versions = conn.execute(
            sa.select(sa.func.count()).select_from(res_t).where(*in_compartment, res_t.c.erased.is_(False))
        ).scalar_one()
        if key_row is None and versions == 0:
            raise NotFound("no records are stored for this patient")
        rows = sa.select(res_t.c.row_id).where(*in_compartment).scalar_subquery()
        conn.execute(sa.delete(terms_t).where(terms_t.c.row_id.in_(rows)))
        conn.execute(sa.update(res_t).where(*in_compartment).values(erased=True))
        destroyed = False
        if key_row is not None and key_row.destroyed_at is None:
            conn.execute(
                sa.update(keys_t)
                .where(keys_t.c.key_id == key_row.key_id)
                .values(wrapped=None, kek_id=None, destroyed_at=store.clock())
            )
            destroyed = True
    if key_row is not None:
        store.keyring.forget(key_row.key_id)
    if store._sqlite:
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return ErasureReport(dict(sorted(Counter({t: n for t, n in live}).items())), int(versions), destroyed)
