"""A Consent's life on the chain: signed by the patient's key, granted, revoked; and its state as shown.

A permit Consent stays `proposed` until the patient signs it: `$sign` unlocks the patient's key with
their password (the hospital cannot make a consent active on its own), and for each grantee named in
its permit provisions (or "*" when it names none) signs an EIP-712 grant by the patient's pseudonym
towards that grantee, queued through the chain outbox in the same transaction. The indexer's events
then make it live. `$revoke` signs the revocations the same way, and marks the Consent inactive at
once off-chain (access stops now; the chain follows).

Nothing identifying goes on-chain: the grantee is a keyed address derived from its reference and
the scope hash a keyed hash of the Consent's id (both under the tenant's index master key), so the
chain shows unlinkable pseudonyms and opaque 32-byte values.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from fhir_adapters.consent import PERMIT, ConsentRules, Provision, consent_rules
from fhir_adapters.errors import FhirInputError
from healthledger import crypto
from healthledger.consent.index import ChainGrant, consent_grant_status, load_chain_grants
from healthledger.consent.models import ConsentBinding
from healthledger.errors import BadRequest, ChainError, Conflict, Forbidden
from healthledger.ledger import eip712, patient_keys, relayer
from healthledger.ledger.deploy import ChainContract
from healthledger.ledger.grants import GrantStatus
from healthledger.ledger.indexer import state_from_events
from healthledger.store.generation import bump_generation
from healthledger.store.repository import ResourceStore

ANY_GRANTEE = "*"
GRANT_NONCE, REVOKE_NONCE = 0, 1  # each binding has its own grant key: its first write is nonce 0
SIGNATURE_LIFETIME = 7 * 86_400  # deadline: the outbox may retry for a week (e.g. through a chain outage)
DEFAULT_GRANT_SECONDS = 10 * 365 * 86_400  # a consent without an end lasts ten years on-chain
CHAIN_STATE_URL = "https://healthledger.dev/fhir/StructureDefinition/consent-chain-state"
_GRANTEE_INFO = b"healthledger/consent-grantee/v1|"
_SCOPE_INFO = b"healthledger/consent-scope/v1|"


def grantees_of(rules: ConsentRules) -> list[str]:
    """References the Consent permits (actors of its permit provisions, at any depth); ["*"] if none."""
    found: list[str] = []

    def walk(p: Provision) -> None:
        if p.type == PERMIT:
            found.extend(sorted(p.actor_refs))
        for child in p.children:
            walk(child)

    walk(rules.root)
    unique = list(dict.fromkeys(found))
    return unique or [ANY_GRANTEE]


@dataclass(frozen=True)
class ChainKeys:
    """The tenant's keys for on-chain pseudonyms of grantees and scopes."""

    grantee_key: bytes
    scope_key: bytes

    @classmethod
    def for_store(cls, store: ResourceStore, conn: Connection) -> ChainKeys:
        master = store.keyring.master(conn)
        tenant = store.tenant.encode()
        return cls(crypto.derive_key(master, _GRANTEE_INFO + tenant), crypto.derive_key(master, _SCOPE_INFO + tenant))

    def grantee_address(self, reference: str) -> str:
        from eth_utils import to_checksum_address

        return to_checksum_address(crypto.keyed_hash(self.grantee_key, reference.encode(), 20))

    def scope_hash(self, consent_id: str) -> bytes:
        return crypto.keyed_hash(self.scope_key, f"Consent/{consent_id}".encode(), 32)


def registry_domain(conn: Connection) -> eip712.Domain:
    """The EIP-712 domain of the deployed ConsentRegistry (the latest deployment recorded)."""
    row = conn.execute(
        select(ChainContract.chain_id, ChainContract.address)
        .where(ChainContract.name == "ConsentRegistry")
        .order_by(ChainContract.deployed_at.desc(), ChainContract.id.desc())
        .limit(1)
    ).first()
    if row is None:
        raise ChainError("the consent ledger is not deployed yet; try again when the service has started")
    return eip712.Domain(int(row.chain_id), row.address)


def _rules(resource: dict[str, Any]) -> ConsentRules:
    try:
        return consent_rules(resource)
    except FhirInputError as exc:
        raise BadRequest(exc.message, expression=exc.expression) from None


def _session(conn: Connection) -> Session:
    return Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)


def _unlock(session: Session, patient_ref: str, password: str) -> bytes:
    try:
        return patient_keys.unlock(session, patient_ref, password)
    except patient_keys.KeyUnlockError:
        raise Forbidden("the patient's key could not be unlocked with that password") from None


def sign_consent(
    uow: Any, consent_id: str, password: str, *, now: float | None = None, master: bytes | None = None
) -> list[ConsentBinding]:
    """Sign and queue the grants of a proposed Consent with the patient's key (in `uow`'s transaction).

    `master`: the patient's key, already unlocked with `password` by the caller in this request (enrolment in
    a study unlocks it to derive the study pseudonym): one argon2 evaluation instead of two."""
    now = time.time() if now is None else now
    stored = uow.for_operation("Consent", consent_id)  # decided once: may the caller change it?
    resource = stored.resource
    rules = _rules(resource)
    if rules.status not in ("proposed", "active"):
        raise Conflict(f"a Consent with status {rules.status!r} cannot be signed; only proposed ones")
    if rules.root.type != PERMIT:
        raise Conflict("a denying Consent takes effect without a signature; there is nothing to sign")
    conn: Connection = uow.conn
    existing = conn.execute(
        select(ConsentBinding).where(ConsentBinding.tenant == uow.tenant, ConsentBinding.consent_id == consent_id)
    ).first()
    if existing is not None:
        raise Conflict("this Consent is already signed")
    keys = ChainKeys.for_store(uow.store, conn)
    domain = registry_domain(conn)
    patient_ref = f"Patient/{rules.patient_id}"
    session = _session(conn)
    master = master if master is not None else _unlock(session, patient_ref, password)
    period = rules.root.period
    valid_from = int(period.start.timestamp()) if period is not None and period.start is not None else int(now) - 60
    valid_until = (
        int(period.end.timestamp()) if period is not None and period.end is not None else int(now) + DEFAULT_GRANT_SECONDS
    )
    if valid_until <= max(valid_from, int(now)):
        raise Conflict("this Consent's period has already ended")
    scope = keys.scope_hash(consent_id)
    bindings = []
    for grantee_ref in grantees_of(rules):
        account = patient_keys.pseudonym_account(session, patient_ref, master, grantee_ref, now=now)
        grantee = keys.grantee_address(grantee_ref)
        message = eip712.GrantMessage(
            account.address, grantee, scope, valid_from, valid_until, GRANT_NONCE, int(now) + SIGNATURE_LIFETIME
        )
        item = relayer.submit_grant(session, domain, message, eip712.sign(bytes(account.key), domain, message), now=now)
        binding = ConsentBinding(
            tenant=uow.tenant, consent_id=consent_id, grantee_ref=grantee_ref, patient_address=account.address,
            grantee_address=grantee, scope_hash="0x" + scope.hex(),
            grant_id="0x" + relayer.grant_id(account.address, grantee, scope).hex(),
            grant_item=item, valid_until=valid_until, signed_at=now,
        )
        session.add(binding)
        bindings.append(binding)
    session.commit()  # releases the savepoint into the caller's transaction, which commits it all
    bump_generation(conn)
    return bindings


def revoke_consent(uow: Any, consent_id: str, password: str, *, now: float | None = None) -> list[ConsentBinding]:
    """Mark the Consent inactive now and sign and queue the revocation of each of its grants."""
    now = time.time() if now is None else now
    stored = uow.for_operation("Consent", consent_id)
    rules = _rules(stored.resource)
    conn: Connection = uow.conn
    session = _session(conn)
    rows = list(
        session.scalars(
            select(ConsentBinding).where(ConsentBinding.tenant == uow.tenant, ConsentBinding.consent_id == consent_id)
        )
    )
    pending = [b for b in rows if b.revoke_item is None]
    if pending:
        domain = registry_domain(conn)
        master = _unlock(session, f"Patient/{rules.patient_id}", password)
        for binding in pending:
            account = patient_keys.pseudonym_account(
                session, f"Patient/{rules.patient_id}", master, binding.grantee_ref, now=now
            )
            message = eip712.RevokeMessage(
                account.address, binding.grantee_address, bytes.fromhex(binding.scope_hash[2:]), REVOKE_NONCE,
                int(now) + SIGNATURE_LIFETIME,
            )
            binding.revoke_item = relayer.submit_revoke(
                session, domain, message, eip712.sign(bytes(account.key), domain, message), now=now
            )
            binding.revoked_at = now
    elif not rows:
        _unlock(session, f"Patient/{rules.patient_id}", password)  # only the patient withdraws their consent
    session.commit()  # releases the savepoint into the caller's transaction
    if rules.status != "inactive":
        updated = dict(stored.resource)
        updated["status"] = "inactive"
        uow.update("Consent", consent_id, updated, already_decided=True)
    bump_generation(conn)
    return rows


# -- what readers see -----------------------------------------------------------------------------


def chain_states(
    conn: Connection, tenant: str, consent_ids: Iterable[str], *, now: float | None = None
) -> dict[str, dict[str, Any]]:
    """For each Consent id: its grants' on-chain state at `now` ("unsigned" when it has none)."""
    at = int(time.time() if now is None else now)
    out: dict[str, dict[str, Any]] = {}
    for cid, grants in load_chain_grants(conn, tenant, list(dict.fromkeys(consent_ids))).items():
        if not grants:
            out[cid] = {"state": "unsigned", "grants": []}
            continue
        status = consent_grant_status(grants, at).value  # live | pending | revoked | expired
        if status == "pending" and any(g.revoke_requested for g in grants):
            status = "revoking"
        out[cid] = {
            "state": "active" if status == "live" else status,
            "grants": [
                {
                    "grantee": g.grantee_ref,
                    "state": _grant_label(g, at),
                    "block": g.events[-1].block_number if g.events else None,
                    "transaction": g.events[-1].tx_hash if g.events else None,
                }
                for g in grants
            ],
        }
    return out


_GRANT_LABELS = {
    GrantStatus.LIVE: "active", GrantStatus.NOT_YET_VALID: "pending", GrantStatus.UNKNOWN: "pending",
    GrantStatus.EXPIRED: "expired", GrantStatus.REVOKED: "revoked",
}


def _grant_label(grant: ChainGrant, now: int) -> str:
    if not grant.events:
        return "pending"
    status = state_from_events(list(grant.events), now).status  # type: ignore[arg-type]
    if grant.revoke_requested and status is not GrantStatus.REVOKED:
        return "revoking"
    return _GRANT_LABELS[status]


def present_consent(resource: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The Consent as readers see it: status from the chain (proposed until its grants are live, inactive
    once revoked or expired) and an extension with each grant's state, block and transaction."""
    shown = dict(resource)
    status = shown.get("status")
    chain = state["state"]
    if status in ("proposed", "active"):
        try:
            denying = consent_rules(resource).root.type != PERMIT
        except FhirInputError:
            denying = False
        if denying or chain == "active":
            shown["status"] = "active"
        elif chain in ("revoked", "expired", "revoking"):
            shown["status"] = "inactive"
        else:
            shown["status"] = "proposed"
    ext: list[dict[str, Any]] = [{"url": "state", "valueCode": chain}]
    for grant in state["grants"]:
        sub: list[dict[str, Any]] = [
            {"url": "grantee", "valueString": grant["grantee"]},
            {"url": "state", "valueCode": grant["state"]},
        ]
        if grant["block"] is not None:
            sub.append({"url": "block", "valueInteger64": str(grant["block"])})
        if grant["transaction"]:
            sub.append({"url": "transaction", "valueString": grant["transaction"]})
        ext.append({"url": "grant", "extension": sub})
    others = [e for e in shown.get("extension") or [] if isinstance(e, dict) and e.get("url") != CHAIN_STATE_URL]
    shown["extension"] = [*others, {"url": CHAIN_STATE_URL, "extension": ext}]
    return shown
