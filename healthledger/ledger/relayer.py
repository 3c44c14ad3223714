"""Relayer: patients' signed EIP-712 grants/revokes, access-log anchors and the zero-knowledge writes
(credential roots, studies, enrolments), queued in the chain outbox.

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
from healthledger.ledger.calls import (
    ANCHOR,
    CREDENTIAL_ROOT,
    FIELD_ORDER,
    GRANT,
    REVOKE,
    STUDY_CLOSE,
    STUDY_ENROL,
    STUDY_REGISTER,
)
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


def _field_text(value: int, what: str) -> str:
    if type(value) is not int or not 0 <= value < FIELD_ORDER:
        raise BadRequest(f"{what} must be a field element")
    return str(value)


def submit_credential_root(session: Session, root: int, leaf_count: int, *, now: float) -> int:
    """Queue an issuer's new credential tree root for CredentialRegistry.anchorRoot (in issuing order)."""
    if root == 0 or not 0 < leaf_count < 2**64:
        raise BadRequest("a credential root must be non-zero and cover at least one leaf")
    payload = {"root": _field_text(root, "root"), "leaf_count": leaf_count}
    return outbox.enqueue(
        session, CREDENTIAL_ROOT, payload, now=now, dedupe_key=f"{CREDENTIAL_ROOT}:{root}",
        ordering_key=CREDENTIAL_ROOT,
    )


def submit_study(
    session: Session, study_id: int, criteria_hash: int, verifying_key_id: bytes, opens_at: int, closes_at: int,
    max_participants: int, owner: str, *, now: float,
) -> int:
    """Queue StudyRegistry.registerStudy (once per study id)."""
    if len(verifying_key_id) != 32:
        raise BadRequest("verifying key id must be 32 bytes")
    payload = {
        "study_id": _field_text(study_id, "study id"), "criteria_hash": _field_text(criteria_hash, "criteria hash"),
        "verifying_key_id": "0x" + verifying_key_id.hex(), "opens_at": opens_at, "closes_at": closes_at,
        "max_participants": max_participants, "owner": to_checksum_address(owner),
    }
    key = f"study:{study_id}"
    return outbox.enqueue(session, STUDY_REGISTER, payload, now=now, dedupe_key=f"{STUDY_REGISTER}:{study_id}",
                          ordering_key=key)


def submit_study_close(session: Session, study_id: int, *, now: float) -> int:
    """Queue StudyRegistry.closeStudy (after the registration, on the same ordering key)."""
    return outbox.enqueue(session, STUDY_CLOSE, {"study_id": _field_text(study_id, "study id")}, now=now,
                          dedupe_key=f"{STUDY_CLOSE}:{study_id}", ordering_key=f"study:{study_id}")


def submit_enrolment(
    session: Session, enrollee: str, study_id: int, root: int, nullifier: int,
    a: tuple[int, int], b: tuple[tuple[int, int], tuple[int, int]], c: tuple[int, int], *, now: float,
) -> int:
    """Queue StudyRegistry.enrolFor with a verified proof (EIP-197 coordinate order); once per nullifier.

    No ordering key: enrolments are accepted only once the study's registration is confirmed, and they do
    not depend on each other (the contract counts them), so a slow one does not hold up the next.
    """
    payload = {
        "enrollee": to_checksum_address(enrollee), "study_id": _field_text(study_id, "study id"),
        "root": _field_text(root, "root"), "nullifier": _field_text(nullifier, "nullifier"),
        "a": [str(x) for x in a], "b": [[str(x) for x in pair] for pair in b], "c": [str(x) for x in c],
    }
    return outbox.enqueue(session, STUDY_ENROL, payload, now=now, dedupe_key=f"{STUDY_ENROL}:{nullifier}")
