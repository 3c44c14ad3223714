"""EIP-712 typed data for ConsentRegistry grants and revocations (pure builders, eth-account signing).

The type strings must match the contract's GRANT_TYPEHASH / REVOKE_TYPEHASH byte for byte
(EIP-712 "Definition of encodeType"); a test compares them with the deployed contract's constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from healthledger.errors import BadRequest

DOMAIN_NAME = "HealthLedger ConsentRegistry"
DOMAIN_VERSION = "1"

EIP712_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
GRANT_TYPE = [
    {"name": "patient", "type": "address"},
    {"name": "grantee", "type": "address"},
    {"name": "scopeHash", "type": "bytes32"},
    {"name": "validFrom", "type": "uint64"},
    {"name": "validUntil", "type": "uint64"},
    {"name": "nonce", "type": "uint64"},
    {"name": "deadline", "type": "uint64"},
]
REVOKE_TYPE = [
    {"name": "patient", "type": "address"},
    {"name": "grantee", "type": "address"},
    {"name": "scopeHash", "type": "bytes32"},
    {"name": "nonce", "type": "uint64"},
    {"name": "deadline", "type": "uint64"},
]

UINT64_MAX = 2**64 - 1
SECP256K1_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def encode_type(primary: str, fields: list[dict[str, str]]) -> str:
    """EIP-712 encodeType for a struct without nested structs: `Name(type1 name1,...)`."""
    return f"{primary}(" + ",".join(f"{f['type']} {f['name']}" for f in fields) + ")"


GRANT_TYPEHASH = keccak(text=encode_type("Grant", GRANT_TYPE))
REVOKE_TYPEHASH = keccak(text=encode_type("Revoke", REVOKE_TYPE))


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain of one deployed ConsentRegistry."""

    chain_id: int
    verifying_contract: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }


@dataclass(frozen=True)
class GrantMessage:
    """A patient's consent: `grantee` may access `scope_hash` during [valid_from, valid_until)."""

    patient: str
    grantee: str
    scope_hash: bytes
    valid_from: int
    valid_until: int
    nonce: int
    deadline: int

    def __post_init__(self) -> None:
        _check_bytes32(self.scope_hash)
        for value in (self.valid_from, self.valid_until, self.nonce, self.deadline):
            _check_uint64(value)

    def as_message(self) -> dict[str, Any]:
        return {
            "patient": to_checksum_address(self.patient),
            "grantee": to_checksum_address(self.grantee),
            "scopeHash": self.scope_hash,
            "validFrom": self.valid_from,
            "validUntil": self.valid_until,
            "nonce": self.nonce,
            "deadline": self.deadline,
        }


@dataclass(frozen=True)
class RevokeMessage:
    """A patient's revocation of the grant keyed by (patient, grantee, scope_hash)."""

    patient: str
    grantee: str
    scope_hash: bytes
    nonce: int
    deadline: int

    def __post_init__(self) -> None:
        _check_bytes32(self.scope_hash)
        for value in (self.nonce, self.deadline):
            _check_uint64(value)

    def as_message(self) -> dict[str, Any]:
        return {
            "patient": to_checksum_address(self.patient),
            "grantee": to_checksum_address(self.grantee),
            "scopeHash": self.scope_hash,
            "nonce": self.nonce,
            "deadline": self.deadline,
        }


def typed_data(domain: Domain, message: GrantMessage | RevokeMessage) -> dict[str, Any]:
    """The full EIP-712 document (as `eth_signTypedData_v4` takes it)."""
    primary, fields = ("Grant", GRANT_TYPE) if isinstance(message, GrantMessage) else ("Revoke", REVOKE_TYPE)
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_TYPE, primary: fields},
        "primaryType": primary,
        "domain": domain.as_dict(),
        "message": message.as_message(),
    }


def digest(domain: Domain, message: GrantMessage | RevokeMessage) -> bytes:
    """keccak256("\\x19\\x01" || domainSeparator || hashStruct(message)), the value ecrecover checks."""
    signable = encode_typed_data(full_message=typed_data(domain, message))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign(private_key: bytes, domain: Domain, message: GrantMessage | RevokeMessage) -> bytes:
    """A 65-byte r || s || v signature (v in {27, 28}, low s as eth-keys produces it)."""
    signed = Account.sign_message(encode_typed_data(full_message=typed_data(domain, message)), private_key)
    return bytes(signed.signature)


def compact(signature: bytes) -> tuple[bytes, bytes]:
    """EIP-2098 compact form (r, vs) of a 65-byte r || s || v signature, as the contract takes it."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        raise BadRequest("signature must be 65 bytes r || s || v with v in {27, 28}")
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    if s > SECP256K1_HALF_ORDER:
        raise BadRequest("signature s value is not in the lower half order (EIP-2)")
    return r, ((v - 27) << 255 | s).to_bytes(32, "big")


def recover_signer(domain: Domain, message: GrantMessage | RevokeMessage, signature: bytes) -> str:
    """The checksummed address that produced `signature` over this message."""
    return str(
        Account.recover_message(
            encode_typed_data(full_message=typed_data(domain, message)), signature=signature
        )
    )


def _check_bytes32(value: bytes) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise BadRequest("scope hash must be 32 bytes")


def _check_uint64(value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise BadRequest("time, nonce and deadline values must fit in uint64")
