"""Relayer: patients' signed EIP-712 grants/revokes and access-log anchors, queued in the chain outbox.

`submit_*` run inside the caller's transaction (with the business change that caused them) and return
the outbox id to report as "pending". The worker (`outbox.process_outbox`) turns each kind into a call
of ConsentRegistry.grantBySig / revokeBySig or AccessLogAnchor.anchor (`healthledger.ledger.calls`).
Payloads hold only what goes on-chain anyway: pseudonymous addresses, keyed scope hashes, times,
nonces and signatures.
"""

from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak, to_checksum_address
from sqlalchemy.orm import Session

from healthledger.errors import BadRequest
from healthledger.ledger import outbox
from healthledger.ledger.calls import ANCHOR, GRANT, REVOKE
from healthledger.ledger.eip712 import Domain, GrantMessage, RevokeMessage, recover_signer


def grant_id(patient: str, grantee: str, scope_hash: bytes) -> bytes:
    """ConsentRegistry's key of a grant: keccak256(abi.encode(patient, grantee, scopeHash))."""
    return keccak(
        abi_encode(
            ["address", "address", "bytes32"],
            [to_checksum_address(patient), to_checksum_address(grantee), scope_hash],
        )
    )


def _consent_ordering_key(patient: str, grantee: str, scope_hash: bytes) -> str:
    # Grants and revokes of one grant key are mined in the order they were signed (their nonces chain).
    return "consent:0x" + grant_id(patient, grantee, scope_hash).hex()


def _check_signature(domain: Domain, message: GrantMessage | RevokeMessage, signature: bytes) -> None:
    if len(signature) != 65:
        raise BadRequest("signature must be 65 bytes (r || s || v)")
    try:
        signer = recover_signer(domain, message, signature)
    except (BadSignature, ValidationError, ValueError):  # malformed r, s or v
        raise BadRequest("signature is malformed") from None
    if signer != to_checksum_address(message.patient):
        raise BadRequest("signature was not made by the patient key named in the message")


def submit_grant(
    session: Session, domain: Domain, message: GrantMessage, signature: bytes, *, now: float
) -> int:
    """Queue a signed grant; the same signed message queued twice gives the same item id."""
    _check_signature(domain, message, signature)
    if message.valid_until <= message.valid_from:
        raise BadRequest("a grant must end after it starts")
    payload = {
        "patient": to_checksum_address(message.patient),
        "grantee": to_checksum_address(message.grantee),
        "scope_hash": "0x" + message.scope_hash.hex(),
        "valid_from": message.valid_from,
        "valid_until": message.valid_until,
        "nonce": message.nonce,
        "deadline": message.deadline,
        "signature": "0x" + signature.hex(),
    }
    key = _consent_ordering_key(message.patient, message.grantee, message.scope_hash)
    return outbox.enqueue(
        session, GRANT, payload, now=now, dedupe_key=f"{GRANT}:{key}:{message.nonce}", ordering_key=key
    )


def submit_revoke(
    session: Session, domain: Domain, message: RevokeMessage, signature: bytes, *, now: float
) -> int:
    """Queue a signed revocation (ordered after any earlier queued write of the same grant)."""
    _check_signature(domain, message, signature)
    payload = {
        "patient": to_checksum_address(message.patient),
        "grantee": to_checksum_address(message.grantee),
        "scope_hash": "0x" + message.scope_hash.hex(),
        "nonce": message.nonce,
        "deadline": message.deadline,
        "signature": "0x" + signature.hex(),
    }
    key = _consent_ordering_key(message.patient, message.grantee, message.scope_hash)
    return outbox.enqueue(
        session, REVOKE, payload, now=now, dedupe_key=f"{REVOKE}:{key}:{message.nonce}", ordering_key=key
    )


def submit_anchor(session: Session, log_id: bytes, tree_size: int, root_hash: bytes, *, now: float) -> int:
    """Queue an access-log tree head (RFC 9162 §4.10) for AccessLogAnchor.anchor; sizes per log in order."""
    if len(log_id) != 32 or len(root_hash) != 32:
        raise BadRequest("log id and root hash must be 32 bytes")
    if not 0 < tree_size < 2**64:
        raise BadRequest("tree size must be a positive uint64")
    payload = {"log_id": "0x" + log_id.hex(), "tree_size": tree_size, "root_hash": "0x" + root_hash.hex()}
    return outbox.enqueue(
        session,
        ANCHOR,
        payload,
        now=now,
        dedupe_key=f"{ANCHOR}:0x{log_id.hex()}:{tree_size}",
        ordering_key=f"anchor:0x{log_id.hex()}",
    )
