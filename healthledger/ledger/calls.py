"""What each outbox kind becomes on-chain: a payload (as the relayer stored it) -> a contract call.

The worker (`healthledger.ledger.outbox`) looks the kind up in `RELAY_CALLS`; the relayer
(`healthledger.ledger.relayer`) makes the payloads. Payloads are checked again here, as they come back
from the database: a malformed one fails its item, it is never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address, to_checksum_address

from healthledger.errors import BadRequest
from healthledger.ledger.eip712 import compact

GRANT = "grant"
REVOKE = "revoke"
ANCHOR = "anchor"
# Zero-knowledge eligibility (healthledger/research): credential tree roots, studies, enrolments.
CREDENTIAL_ROOT = "credential-root"
STUDY_REGISTER = "study-register"
STUDY_CLOSE = "study-close"
STUDY_ENROL = "study-enrol"

# Gas limits with ample headroom over what the contracts use (benchmarks/gas.py: grant by signature
# ~76k on a new slot, revoke ~30k, anchor ~46k on a new log); only gas used is paid.
GRANT_GAS_LIMIT = 150_000
REVOKE_GAS_LIMIT = 100_000
ANCHOR_GAS_LIMIT = 120_000
# benchmarks/research.py: anchorRoot ~70k, registerStudy ~140k, enrolFor ~300k (4-pair pairing check).
CREDENTIAL_ROOT_GAS_LIMIT = 150_000
STUDY_REGISTER_GAS_LIMIT = 250_000
STUDY_CLOSE_GAS_LIMIT = 80_000
STUDY_ENROL_GAS_LIMIT = 600_000
# BN254 scalar field order (EIP-196): roots, study ids, criteria hashes and nullifiers are field elements.
FIELD_ORDER = 21888242871839275222246405745257275088548364400416034343698204186575808495617


@dataclass(frozen=True)
class ContractCall:
    """What an outbox item asks the chain to do: `contract.function(*args)`."""

    contract: str
    function: str
    args: tuple[Any, ...]
    # A known-sufficient gas limit: the worker then simulates once (eth_call) to catch reverts instead
    # of eth_estimateGas (a binary search of many executions). Unused gas is not charged (EIP-1559).
    gas_limit: int | None = None


# kind -> function from the stored payload to the call.
CallBuilders = Mapping[str, Callable[[Mapping[str, Any]], ContractCall]]


def _address(value: Any) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise BadRequest("payload address is malformed")
    return to_checksum_address(value)


def _bytes(value: Any, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise BadRequest("payload bytes must be 0x-hex")
    raw = bytes.fromhex(value[2:])
    if length is not None and len(raw) != length:
        raise BadRequest(f"payload value must be {length} bytes")
    return raw


def _uint(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise BadRequest("payload integer must be a uint64")
    return value


def _field(value: Any) -> int:
    """A field element stored as a decimal string (JSON numbers would lose precision in other readers)."""
    if not isinstance(value, str) or not value.isdigit() or len(value) > 78:
        raise BadRequest("payload field element must be a decimal string")
    number = int(value)
    if not 0 <= number < FIELD_ORDER:
        raise BadRequest("payload value is not a field element")
    return number


def _uint32(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise BadRequest("payload integer must be a uint32")
    return value


def grant_call(p: Mapping[str, Any]) -> ContractCall:
    return ContractCall(
        "ConsentRegistry",
        "grantBySig",
        (
            _address(p["patient"]),
            _address(p["grantee"]),
            _bytes(p["scope_hash"], 32),
            _uint(p["valid_from"]),
            _uint(p["valid_until"]),
            _uint(p["nonce"]),
            _uint(p["deadline"]),
            *compact(_bytes(p["signature"], 65)),  # EIP-2098 (r, vs), as the contract takes it
        ),
        GRANT_GAS_LIMIT,
    )


def revoke_call(p: Mapping[str, Any]) -> ContractCall:
    return ContractCall(
        "ConsentRegistry",
        "revokeBySig",
        (
            _address(p["patient"]),
            _address(p["grantee"]),
            _bytes(p["scope_hash"], 32),
            _uint(p["nonce"]),
            _uint(p["deadline"]),
            *compact(_bytes(p["signature"], 65)),  # EIP-2098 (r, vs), as the contract takes it
        ),
        REVOKE_GAS_LIMIT,
    )


def anchor_call(p: Mapping[str, Any]) -> ContractCall:
    return ContractCall(
        "AccessLogAnchor",
        "anchor",
        (_bytes(p["log_id"], 32), _uint(p["tree_size"]), _bytes(p["root_hash"], 32)),
        ANCHOR_GAS_LIMIT,
    )


def credential_root_call(p: Mapping[str, Any]) -> ContractCall:
    return ContractCall(
        "CredentialRegistry", "anchorRoot", (_field(p["root"]), _uint(p["leaf_count"])), CREDENTIAL_ROOT_GAS_LIMIT
    )


def study_register_call(p: Mapping[str, Any]) -> ContractCall:
    return ContractCall(
        "StudyRegistry",
        "registerStudy",
        (
            _field(p["study_id"]),
            _field(p["criteria_hash"]),
            _bytes(p["verifying_key_id"], 32),
            _uint(p["opens_at"]),
            _uint(p["closes_at"]),
            _uint32(p["max_participants"]),
            _address(p["owner"]),
        ),
        STUDY_REGISTER_GAS_LIMIT,
    )


def study_close_call(p: Mapping[str, Any]) -> ContractCall:
    return ContractCall("StudyRegistry", "closeStudy", (_field(p["study_id"]),), STUDY_CLOSE_GAS_LIMIT)


def study_enrol_call(p: Mapping[str, Any]) -> ContractCall:
    a, b, c = p["a"], p["b"], p["c"]
    if not (isinstance(a, list) and isinstance(b, list) and isinstance(c, list) and len(a) == len(c) == len(b) == 2):
        raise BadRequest("payload proof must hold a, b and c")
    return ContractCall(
        "StudyRegistry",
        "enrolFor",
        (
            _address(p["enrollee"]),
            _field(p["study_id"]),
            _field(p["root"]),
            _field(p["nullifier"]),
            [_coordinate(x) for x in a],
            [[_coordinate(x) for x in pair] for pair in b],
            [_coordinate(x) for x in c],
        ),
        STUDY_ENROL_GAS_LIMIT,
    )


def _coordinate(value: Any) -> int:
    if not isinstance(value, str) or not value.isdigit() or len(value) > 78:
        raise BadRequest("payload proof coordinates must be decimal strings")
    return int(value)


RELAY_CALLS: CallBuilders = {
    GRANT: grant_call,
    REVOKE: revoke_call,
    ANCHOR: anchor_call,
    CREDENTIAL_ROOT: credential_root_call,
    STUDY_REGISTER: study_register_call,
    STUDY_CLOSE: study_close_call,
    STUDY_ENROL: study_enrol_call,
}
