"""Eligibility credentials, the hospital as issuer: facts -> encoded attributes -> a leaf of the tenant's
Poseidon tree -> a new root anchored on CredentialRegistry through the outbox.

A leaf commits to the patient's identity commitment Poseidon([secret]), and the secret is derived from the
patient's own key (`identity_secret`), which only their password unlocks. So the hospital can issue a leaf but
never prove with it: a patient *activates* their credential once with their password (the commitment is
stored, the secret is not), and every later issue re-uses the commitment. Without activation there is no leaf.

What is stored: the commitment; per patient the leaf index, the leaf, a keyed fingerprint of the attributes
(to notice changed facts without keeping them readable) and the attributes sealed under a per-patient data
key (the patient reads them back in `$eligibility-credential`); the tree's nodes (Poseidon hashes) and roots.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fhir_adapters.eligibility import EligibilityFacts, eligibility_facts
from fhir_adapters.search import parse_search
from healthledger import crypto
from healthledger.errors import Conflict, NotFound
from healthledger.ledger import outbox, relayer
from healthledger.ledger.outbox import OutboxState
from healthledger.research.models import IdentityCommitment, IssuedCredential
from healthledger.research.tree import ROOT_HISTORY, credential_tree, known_roots, roots_t
from healthledger.store.repository import ResourceStore
from zk.credential import (
    CONDITION_SLOTS,
    ConditionHasher,
    EligibilityAttributes,
    PatientAttributes,
    condition_hasher,
    encode,
    identity_commitment,
    leaf,
    leaves,
)
from zk.errors import MalformedInput
from zk.field import R
from zk.merkle import MerklePath, PairHasher

IDENTITY_INFO = b"healthledger/zk/identity-secret/v1"
CONDITION_KEY_INFO = b"healthledger/zk/condition-key/v1|"
FINGERPRINT_INFO = b"healthledger/zk/credential-fingerprint/v1|"
CREDENTIAL_KEY_CLASS = "zk-credential"  # store_data_keys.key_class holds 16 characters
SEAL_AAD = b"healthledger/research/credential-attributes/v1|"
FACT_TYPES = ("Condition", "Observation")
SECONDS_PER_DAY = 86_400
PARALLEL_LEAVES = 5_000  # below this, starting worker processes costs more than it saves


def identity_secret(master: bytes) -> int:
    """The patient's zk identity secret: HKDF(master key, IDENTITY_INFO) reduced to a non-zero field element."""
    material = crypto.derive_key(master, IDENTITY_INFO, length=48)
    return int.from_bytes(material, "big") % (R - 1) + 1


def condition_hasher_for(store: ResourceStore, conn: Connection) -> ConditionHasher:
    """The tenant's keyed hash of condition codes (credentials and criteria must use the same key)."""
    store.open_keys()
    key = crypto.derive_key(store.keyring.master(conn), CONDITION_KEY_INFO + store.tenant.encode())
    return condition_hasher(key)


def _fingerprint_key(store: ResourceStore, conn: Connection) -> bytes:
    store.open_keys()
    return crypto.derive_key(store.keyring.master(conn), FINGERPRINT_INFO + store.tenant.encode())


def patient_attributes(facts: EligibilityFacts, epoch: int) -> tuple[PatientAttributes | None, str]:
    """The attributes a credential can hold, or None and why not (no values in the reason)."""
    if facts.birth_date is None:
        return None, "no full birth date"
    conditions = facts.conditions[:CONDITION_SLOTS]  # sorted codes; the circuit has CONDITION_SLOTS slots
    note = f"{len(facts.conditions) - CONDITION_SLOTS} condition codes left out" if len(facts.conditions) > CONDITION_SLOTS else ""
    return PatientAttributes(facts.birth_date, facts.sex, conditions, dict(facts.labs), epoch), note


def attributes_json(attrs: EligibilityAttributes) -> bytes:
    return json.dumps({
        "birthDays": attrs.birth_days, "sex": attrs.sex, "conditions": [str(c) for c in attrs.conditions],
        "labs": list(attrs.labs), "issuanceEpoch": attrs.issuance_epoch,
    }, sort_keys=True).encode()


def attributes_from_json(raw: bytes | str | dict[str, Any]) -> EligibilityAttributes:
    data = json.loads(raw) if isinstance(raw, bytes | str) else raw
    return EligibilityAttributes(
        birth_days=int(data["birthDays"]), sex=int(data["sex"]), conditions=tuple(int(c) for c in data["conditions"]),
        labs=tuple(int(v) for v in data["labs"]), issuance_epoch=int(data["issuanceEpoch"]),
    )


@dataclass
class IssueReport:
    """What one issuing run did: counts only (never who)."""

    examined: int = 0
    issued: int = 0  # new leaves
    reissued: int = 0  # changed leaves
    unchanged: int = 0
    not_activated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    root: int | None = None
    anchor_item: int | None = None


@dataclass(frozen=True)
class Credential:
    """A patient's credential as `$eligibility-credential` gives it: leaf inputs, path, root, anchoring."""

    patient_ref: str
    leaf_index: int
    commitment: int
    attributes: EligibilityAttributes
    path: MerklePath
    root: int
    anchor_state: str  # queued | sent | confirmed | failed
    anchor_block: int | None
    anchor_tx: str | None

    @property
    def anchored(self) -> bool:
        return self.anchor_state == OutboxState.CONFIRMED.value


def leaves_of(pairs: Sequence[tuple[int, EligibilityAttributes]], *, workers: int = 1) -> list[int]:
    """The credential leaves of (identity commitment, attributes) pairs, in order. A leaf is a Poseidon of 15
    inputs (~1 ms in Python), so a first issue for a whole hospital computes them in `workers` processes
    (spawned: nothing of the caller's connections or keys is inherited; only field elements cross) when there
    are at least `PARALLEL_LEAVES`."""
    if workers <= 1 or len(pairs) < PARALLEL_LEAVES:
        return [leaf(commitment, attrs) for commitment, attrs in pairs]
    size = -(-len(pairs) // (workers * 8))
    chunks = [list(pairs[i:i + size]) for i in range(0, len(pairs), size)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [value for part in pool.map(leaves, chunks) for value in part]


class CredentialIssuer:
    """Issues and re-issues leaves for the patients of one store's tenant."""

    def __init__(self, store: ResourceStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # -- activation --------------------------------------------------------------------------------
    def activate(self, conn: Connection, patient_ref: str, master: bytes) -> int:
        """Store the commitment of the patient's identity secret (idempotent); returns the secret."""
        secret = identity_secret(master)
        commitment = identity_commitment(secret)
        row = conn.execute(sa.select(IdentityCommitment.commitment).where(
            IdentityCommitment.tenant == self.store.tenant, IdentityCommitment.patient_ref == patient_ref)).first()
        if row is None:
            conn.execute(sa.insert(IdentityCommitment).values(
                tenant=self.store.tenant, patient_ref=patient_ref, commitment=str(commitment), created_at=self.clock()))
        elif int(row.commitment) != commitment:
            # Recovery keeps the master key, so this means the stored commitment is not this key's.
            raise Conflict("this credential was activated with another key")
        return secret

    # -- facts from the store ------------------------------------------------------------------------
    def facts(self, conn: Connection, patient_id: str) -> EligibilityFacts | None:
        """The patient's eligibility facts from their records (service view: the issuer's own reading)."""
        uow = self.store.view_on(conn)
        patient = uow.peek("Patient", patient_id)
        if patient is None or patient.resource is None:
            return None
        resources: list[dict[str, Any]] = []
        for resource_type in FACT_TYPES:
            query = parse_search(resource_type, [("patient", f"Patient/{patient_id}")])
            offset: int | None = 0
            while offset is not None:
                page = uow.search(resource_type, query, count=500, offset=offset, check=False)
                resources.extend(item.resource for item in page.items if item.resource is not None)
                offset = page.next_offset
        return eligibility_facts(patient.resource, resources)

    # -- issuing -------------------------------------------------------------------------------------
    def activated(self, conn: Connection, patient_refs: Sequence[str] | None = None) -> dict[str, int]:
        """patient ref -> identity commitment, for all activated patients or the ones named."""
        q = sa.select(IdentityCommitment.patient_ref, IdentityCommitment.commitment).where(
            IdentityCommitment.tenant == self.store.tenant)
        if patient_refs is not None:
            q = q.where(IdentityCommitment.patient_ref.in_(list(patient_refs)))
        return {r.patient_ref: int(r.commitment) for r in conn.execute(q)}

    def issue(
        self, conn: Connection, patient_refs: Sequence[str] | None = None, *,
        facts_of: Callable[[Connection, str], EligibilityFacts | None] | None = None,
        hash_pairs: PairHasher | None = None,
        leaf_workers: int = 1,
    ) -> IssueReport:
        """Issue or re-issue the leaves of activated patients (all, or those named) in the caller's transaction:
        new leaves are appended, changed ones replaced, unchanged ones left; one new root, one anchoring write.
        `leaf_workers`: processes computing the leaves (Poseidon) when there are many (`leaves_of`)."""
        report = IssueReport()
        now = self.clock()
        epoch = int(now) // SECONDS_PER_DAY
        commitments = self.activated(conn, patient_refs)
        if patient_refs is not None:
            report.not_activated = len(set(patient_refs) - set(commitments))
        hasher = condition_hasher_for(self.store, conn)
        fingerprint_key = _fingerprint_key(self.store, conn)
        facts_of = facts_of or self.facts
        existing = {
            r.patient_ref: r for r in conn.execute(sa.select(IssuedCredential).where(
                IssuedCredential.tenant == self.store.tenant, IssuedCredential.patient_ref.in_(list(commitments))))
        } if commitments else {}
        tree, nodes = credential_tree(conn, self.store.tenant)
        appended: list[tuple[str, int, dict[str, Any]]] = []  # (patient, leaf, row values)
        updates: dict[int, int] = {}
        changed: list[tuple[str, EligibilityAttributes, bytes]] = []  # (patient, attributes, fingerprint)
        for patient_ref in sorted(commitments):
            report.examined += 1
            facts = facts_of(conn, patient_ref.removeprefix("Patient/"))
            plain, reason = (None, "no Patient resource") if facts is None else patient_attributes(facts, epoch)
            if plain is None:
                report.skipped[reason] = report.skipped.get(reason, 0) + 1
                continue
            try:
                attrs = encode(plain, hasher)
            except MalformedInput:
                reason = "attributes out of the circuit's range"
                report.skipped[reason] = report.skipped.get(reason, 0) + 1
                continue
            # The fingerprint leaves the issuance epoch out: a new day alone is not a change.
            stable = EligibilityAttributes(attrs.birth_days, attrs.sex, attrs.conditions, attrs.labs, 0)
            fingerprint = crypto.keyed_hash(fingerprint_key, patient_ref.encode() + b"|" + attributes_json(stable))
            previous = existing.get(patient_ref)
            if previous is not None and previous.fingerprint == fingerprint:
                report.unchanged += 1
                continue
            changed.append((patient_ref, attrs, fingerprint))
        values_of = leaves_of([(commitments[ref], attrs) for ref, attrs, _ in changed], workers=leaf_workers)
        for (patient_ref, attrs, fingerprint), value in zip(changed, values_of, strict=True):
            previous = existing.get(patient_ref)
            sealed, key_id = self._seal(conn, patient_ref, attrs)
            values = {"leaf": str(value), "fingerprint": fingerprint, "sealed_attributes": sealed,
                      "data_key_id": key_id, "issued_at": now}
            if previous is None:
                appended.append((patient_ref, value, values))
                report.issued += 1
            else:
                updates[int(previous.leaf_index)] = value
                conn.execute(sa.update(IssuedCredential).where(
                    IssuedCredential.tenant == self.store.tenant, IssuedCredential.patient_ref == patient_ref,
                ).values(**values))
                report.reissued += 1
        if not appended and not updates:
            return report
        start = tree.size
        leaves = {**updates, **{start + k: v for k, (_, v, _) in enumerate(appended)}}
        if len(leaves) <= 64:
            nodes.preload_paths(sorted(leaves))
        tree.set_leaves(leaves, hash_pairs=hash_pairs)
        rows = [{"tenant": self.store.tenant, "patient_ref": ref, "leaf_index": start + k, **values}
                for k, (ref, _, values) in enumerate(appended)]
        for chunk in range(0, len(rows), 5000):
            conn.execute(sa.insert(IssuedCredential), rows[chunk:chunk + 5000])
        root = tree.root
        item = relayer.submit_credential_root(_session(conn), root, tree.size, now=now)
        assert nodes.last_root_id is not None
        conn.execute(sa.update(roots_t).where(roots_t.c.id == nodes.last_root_id).values(anchor_item=item,
                                                                                          created_at=now))
        report.root, report.anchor_item = root, item
        return report

    def _seal(self, conn: Connection, patient_ref: str, attrs: EligibilityAttributes) -> tuple[bytes, str]:
        key = self.store.keyring.key_for_scope(conn, CREDENTIAL_KEY_CLASS, patient_ref.encode())
        aad = SEAL_AAD + self.store.tenant.encode() + b"|" + patient_ref.encode()
        return crypto.seal(key.key, attributes_json(attrs), aad), key.key_id

    def _open(self, conn: Connection, patient_ref: str, sealed: bytes, key_id: str) -> EligibilityAttributes:
        key = self.store.keyring.key_by_id(conn, key_id)
        aad = SEAL_AAD + self.store.tenant.encode() + b"|" + patient_ref.encode()
        return attributes_from_json(crypto.open_(key, sealed, aad))

    # -- the patient's view ----------------------------------------------------------------------------
    def credential(self, conn: Connection, patient_ref: str) -> Credential:
        """The patient's leaf, its inputs and path under the current root; NotFound when none was issued."""
        row = conn.execute(sa.select(IssuedCredential).where(
            IssuedCredential.tenant == self.store.tenant, IssuedCredential.patient_ref == patient_ref)).first()
        commitment = self.activated(conn, [patient_ref]).get(patient_ref)
        if row is None or commitment is None:
            raise NotFound("no eligibility credential has been issued to this patient")
        tree, _ = credential_tree(conn, self.store.tenant)
        roots = known_roots(conn, self.store.tenant, 1)
        latest = roots[0]
        state, block, tx = OutboxState.QUEUED.value, None, None
        if latest.anchor_item is not None:
            status = outbox.status(_session(conn), latest.anchor_item)
            state, block, tx = status.state.value, status.block_number, status.tx_hash
        return Credential(
            patient_ref=patient_ref, leaf_index=int(row.leaf_index), commitment=commitment,
            attributes=self._open(conn, patient_ref, row.sealed_attributes, row.data_key_id),
            path=tree.path(int(row.leaf_index)), root=tree.root, anchor_state=state, anchor_block=block,
            anchor_tx=tx,
        )


def root_state(session: Any, tenant: str, root: int) -> str:
    """'current' (among the last ROOT_HISTORY roots and anchored), 'pending' (not anchored yet) or 'stale'."""
    for record in known_roots(session.connection(), tenant, ROOT_HISTORY):
        if record.root != root:
            continue
        if record.anchor_item is None:
            return "pending"
        return "current" if outbox.status(session, record.anchor_item).state is OutboxState.CONFIRMED else "pending"
    return "stale"


def _session(conn: Connection) -> Any:
    from sqlalchemy.orm import Session

    return Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)


def changed_since(conn: Connection, store: ResourceStore, since: datetime, patient_refs: Iterable[str]) -> list[str]:
    """Of `patient_refs`, those with a Patient, Condition or Observation written after `since` (blind index)."""
    from healthledger.store.models import StoredVersion

    wanted = {store.keyring.compartment_index(conn, ref.removeprefix("Patient/")): ref for ref in patient_refs}
    if not wanted:
        return []
    rows = conn.execute(
        sa.select(StoredVersion.compartment).where(
            StoredVersion.tenant == store.tenant, StoredVersion.last_updated > since,
            StoredVersion.resource_type.in_(["Patient", *FACT_TYPES]),
        ).distinct()
    ).scalars()
    return sorted({wanted[c] for c in rows if c in wanted})


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
