"""The one recipe for authenticated encryption: AES-256-GCM with a random 96-bit nonce.

Only this module imports `cryptography`'s AEAD primitives; everything else calls `seal` / `open_`.
Every failure to open is the same opaque `DecryptionError` (wrong key, wrong AAD, truncated, tampered).
Layout of a sealed blob: VERSION (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes).
"""

from __future__ import annotations

import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from healthledger.errors import DecryptionError

KEY_BYTES = 32
NONCE_BYTES = 12  # NIST SP 800-38D §8.2.2: random 96-bit IVs
TAG_BYTES = 16
_VERSION = b"\x01"


def new_key() -> bytes:
    """A fresh 256-bit key from the OS CSPRNG."""
    return os.urandom(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes, *, nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate `plaintext`, binding `aad`. `nonce` is for known-answer tests only."""
    if len(key) != KEY_BYTES:
        raise ValueError("key must be 32 bytes")
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a blob from `seal`; any failure raises the one opaque DecryptionError."""
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[:1] != _VERSION or len(key) != KEY_BYTES:
        raise DecryptionError()
    try:
        return AESGCM(key).decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], aad)
    except InvalidTag:
        raise DecryptionError() from None


def derive_key(master: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) sub-key for a named purpose (`info` is a domain-separation tag)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


def keyed_hash(key: bytes, message: bytes, length: int = 32) -> bytes:
    """HMAC-SHA256 (RFC 2104), truncated to `length` bytes."""
    return hmac.digest(key, message, "sha256")[:length]  # one-shot C HMAC: ~10x faster than hmac.new
