"""Pure envelope-encryption recipes of the store: AAD layout, wrap contexts and blind-index terms."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from healthledger import crypto

# Domain-separation tags (RFC 5869 §3.2: `info` binds a derived key to its purpose).
_RESOURCE_AAD = b"healthledger/resource/v1"
_DATA_KEY_WRAP = b"healthledger/data-key/v1"
_INDEX_KEY_INFO = b"healthledger/blind-index/v1"
_COMPARTMENT_INFO = b"healthledger/compartment/v1"

# Truncating the HMAC to 128 bits keeps collisions negligible for our sizes while each term
# reveals no more than equality with other terms of the same index.
BLIND_TERM_BYTES = 16


def _fields(*parts: str) -> bytes:
    # Length-prefixed so no two different tuples encode alike (tenants or ids cannot smuggle separators).
    return b"".join(len(p.encode()).to_bytes(2, "big") + p.encode() for p in parts)


def resource_aad(tenant: str, resource_type: str, resource_id: str, version_id: int) -> bytes:
    """AAD of a sealed resource version: moving the ciphertext to another row makes it fail to open."""
    return _RESOURCE_AAD + _fields(tenant, resource_type, resource_id, str(version_id))


def wrap_context(tenant: str, key_id: str) -> bytes:
    """Context bound when a data key is wrapped by a KEK: a wrapped key cannot be swapped between rows."""
    return _DATA_KEY_WRAP + _fields(tenant, key_id)


def index_key(master: bytes, tenant: str, resource_type: str, param: str) -> bytes:
    """One blind-index key per (tenant, resource type, search parameter), derived with HKDF."""
    return crypto.derive_key(master, _INDEX_KEY_INFO + _fields(tenant, resource_type, param))


def compartment_key(master: bytes, tenant: str) -> bytes:
    return crypto.derive_key(master, _COMPARTMENT_INFO + _fields(tenant))


def blind_term(key: bytes, term: str) -> bytes:
    """HMAC-SHA256 of a normalised search term, truncated to BLIND_TERM_BYTES."""
    return crypto.keyed_hash(key, term.encode(), BLIND_TERM_BYTES)


def compartment_index(key: bytes, patient_id: str) -> bytes:
    """Blind index of a patient compartment (never the plaintext patient id)."""
    return crypto.keyed_hash(key, b"Patient/" + patient_id.encode(), BLIND_TERM_BYTES)


class BlindIndexer:
    """Index terms -> blind terms: HMAC under one key per (resource type, parameter), derived once.

    Pure and picklable, so import workers can compute blind terms too. `master` None means privacy is
    off (benchmarks only): an unkeyed SHA-256 keeps search working without any secret.
    """

    def __init__(self, master: bytes | None, tenant: str) -> None:
        self._master = master
        self._tenant = tenant
        self._keys: dict[tuple[str, str], bytes] = {}

    def key(self, resource_type: str, param: str) -> bytes | None:
        if self._master is None:
            return None
        key = self._keys.get((resource_type, param))
        if key is None:
            key = self._keys[(resource_type, param)] = index_key(self._master, self._tenant, resource_type, param)
        return key

    @staticmethod
    def term(key: bytes | None, value: str) -> bytes:
        if key is None:
            return hashlib.sha256(value.encode()).digest()[:BLIND_TERM_BYTES]
        return blind_term(key, value)

    def terms(self, resource_type: str, index: Mapping[str, Iterable[str]]) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for param, values in index.items():
            key = self.key(resource_type, param)
            out.extend((param, self.term(key, value)) for value in values)
        return out

    def query_terms(self, resource_type: str, param: str, values: Iterable[str]) -> list[bytes]:
        key = self.key(resource_type, param)
        return [self.term(key, v) for v in values]
