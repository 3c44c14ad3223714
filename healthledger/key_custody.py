"""Which key-encryption keys (KEKs) stored data depends on, and which copies of key material can open it.

Crypto-shredding (`erase-patient`) destroys a patient's data key in the database; every older copy of the
database (a backup) still holds that data key wrapped by a KEK, and every copy of the key material made while that
KEK was held (a key backup, `kek.json` on a replica's mount, the first-deploy folder) can unwrap it. So an erasure is
final only once those KEKs are retired (`rotate-keys --retire-old`) *and* every copy of key material holding them
is destroyed. This module names them: the KEKs the data keys are wrapped with (one sample data key per KEK, to
try to unwrap), the KEKs a key backup holds, and the words the operator is told.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select, text

from healthledger.errors import DecryptionError
from healthledger.keys import KeyProvider, WrappedKey


@dataclass(frozen=True)
class DataKeySample:
    """One live data key wrapped by `kek_id` (public: a wrapped key is ciphertext), to try a key provider on."""

    key_id: str
    tenant: str
    kek_id: str
    wrapped: bytes

    def as_json(self) -> dict[str, str]:
        return {"key_id": self.key_id, "tenant": self.tenant, "kek_id": self.kek_id, "wrapped": self.wrapped.hex()}

    @classmethod
    def from_json(cls, value: dict[str, str]) -> DataKeySample:
        return cls(str(value["key_id"]), str(value["tenant"]), str(value["kek_id"]), bytes.fromhex(value["wrapped"]))


def kek_ids_in_use(conn: Connection) -> list[str]:
    """The distinct KEK ids of live data keys (every tenant's), through the kek_id index one seek per id (a loose
    index scan: a handful of KEKs, millions of keys). Destroyed keys have none."""
    from healthledger.store.models import data_keys_table as keys_t

    table = keys_t.name
    distinct = text(
        f"WITH RECURSIVE k(id) AS (SELECT MIN(kek_id) FROM {table} UNION ALL "
        f"SELECT (SELECT MIN(kek_id) FROM {table} WHERE kek_id > k.id) FROM k WHERE k.id IS NOT NULL) "
        "SELECT id FROM k WHERE id IS NOT NULL"
    )
    return [str(kek_id) for kek_id in conn.execute(distinct).scalars()]


def data_key_samples(conn: Connection, tenant: str, kek_ids: Iterable[str] | None = None) -> list[DataKeySample]:
    """One of `tenant`'s live data keys per KEK that wraps any (of `kek_ids` only, if given)."""
    from healthledger.store.models import data_keys_table as keys_t

    samples = []
    for kek_id in kek_ids_in_use(conn) if kek_ids is None else kek_ids:
        row = conn.execute(
            select(keys_t.c.key_id, keys_t.c.wrapped)
            .where(keys_t.c.kek_id == kek_id, keys_t.c.tenant == tenant, keys_t.c.wrapped.is_not(None))
            .limit(1)
        ).first()
        if row is not None:
            samples.append(DataKeySample(row.key_id, tenant, kek_id, bytes(row.wrapped)))
    return samples


def unopenable(provider: KeyProvider, samples: Sequence[DataKeySample]) -> list[str]:
    """The KEK ids of `samples` that `provider` cannot unwrap a data key of (empty: it opens them all)."""
    from healthledger.store.envelope import wrap_context

    failed = []
    for sample in samples:
        try:
            provider.unwrap(WrappedKey(sample.kek_id, sample.wrapped), wrap_context(sample.tenant, sample.key_id))
        except DecryptionError:
            failed.append(sample.kek_id)
    return sorted(set(failed))


def copies_to_destroy(kek_ids: Sequence[str]) -> list[str]:
    """Where copies of `kek_ids` live outside the service's own key provider, as the operator is told."""
    ids = ", ".join(kek_ids)
    return [
        (f"every key backup made before now (`backup --keys`) that holds {ids}: `healthledger keys check-backup DIR` "
         "tells; destroy those (a new key backup replaces them)"),
        ("the first-deploy copy of the keys, and the key Secret or volume of every replica and ledger worker: replace "
         "their keys with the current ones (docs/operations.md, Rotation)"),
        "with a KMS or HSM: the KEK versions themselves (disabling is reversible; schedule their destruction)",
    ]


def erasure_notice(held_now: Sequence[str]) -> list[str]:
    """What `erase-patient` tells the operator: the erasure is final only once older copies cannot be opened."""
    ids = ", ".join(held_now)
    return [
        ("the erased data key is still in every data backup made before now, wrapped by a key-encryption key the "
         f"service holds now ({ids}) or held before; every key backup made before now holds those keys too, and the "
         "two together open the records."),
        (f"to make that impossible: `healthledger rotate-keys --retire-old` ({ids} retired; with replicas that mount "
         "the key files, the steps of docs/operations.md, Rotation), then destroy every copy of the retired keys it "
         "lists, then take a new backup (`healthledger backup DEST --keys KEYDEST`): data backups made before now can "
         "then no longer be opened, for any patient."),
    ]


def retirement_notice(retired: Sequence[str]) -> list[str]:
    """What `rotate-keys --retire-old` tells the operator about the KEKs it retired."""
    lines = [(f"the service no longer holds {', '.join(retired)}; copies of these keys still open data backups made "
              "before now (the data keys of patients erased since included) until they are destroyed:")]
    return lines + [f"  - {where}" for where in copies_to_destroy(retired)]
