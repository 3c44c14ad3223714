"""Known-answer tests for healthledger.crypto: AES-256-GCM (GCM spec test cases), HKDF (RFC 5869), HMAC (RFC 4231)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthledger import crypto
from healthledger.errors import DecryptionError

H = bytes.fromhex

# McGrew & Viega, "The Galois/Counter Mode of Operation", Appendix B, test cases 13, 14 and 16
# (AES-256; the same vectors are in NIST's gcmEncryptExtIV256 set).
GCM_CASES = [
    ("0" * 64, "0" * 24, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("0" * 64, "0" * 24, "0" * 32, "", "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
]


@pytest.mark.parametrize(("key", "iv", "pt", "aad", "ct", "tag"), GCM_CASES)
def test_seal_matches_gcm_known_answers(key: str, iv: str, pt: str, aad: str, ct: str, tag: str) -> None:
    blob = crypto.seal(H(key), H(pt), H(aad), nonce=H(iv))
    assert blob == b"\x01" + H(iv) + H(ct) + H(tag)
    assert crypto.open_(H(key), blob, H(aad)) == H(pt)


def test_open_rejects_wrong_aad_key_tamper_and_truncation() -> None:
    key = crypto.new_key()
    blob = crypto.seal(key, b"secret", b"aad")
    with pytest.raises(DecryptionError):
        crypto.open_(key, blob, b"other aad")
    with pytest.raises(DecryptionError):
        crypto.open_(crypto.new_key(), blob, b"aad")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        crypto.open_(key, tampered, b"aad")
    with pytest.raises(DecryptionError):
        crypto.open_(key, blob[:20], b"aad")
    with pytest.raises(DecryptionError):
        crypto.open_(key, b"\x02" + blob[1:], b"aad")


def test_random_nonces_differ() -> None:
    key = crypto.new_key()
    assert crypto.seal(key, b"x", b"") != crypto.seal(key, b"x", b"")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=64))
def test_seal_open_round_trip(plaintext: bytes, aad: bytes) -> None:
    key = crypto.new_key()
    assert crypto.open_(key, crypto.seal(key, plaintext, aad), aad) == plaintext


def test_hkdf_rfc5869_test_case_3() -> None:
    # RFC 5869 A.3: SHA-256, zero-length salt and info (derive_key uses no salt, which RFC 5869 §2.2
    # defines as HashLen zero octets, the same PRK as the empty salt of this case).
    okm = crypto.derive_key(H("0b" * 22), b"", 42)
    assert okm == H("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")


def test_hkdf_separates_purposes() -> None:
    master = crypto.new_key()
    assert crypto.derive_key(master, b"a") != crypto.derive_key(master, b"b")
    assert len(crypto.derive_key(master, b"a")) == 32


@pytest.mark.parametrize(
    ("key", "data", "length", "mac"),
    [
        # RFC 4231 §4.2 (test case 1), §4.3 (test case 2), §4.6 (test case 5, truncated to 128 bits)
        ("0b" * 20, b"Hi There", 32, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe".hex(), b"what do ya want for nothing?", 32,
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        ("0c" * 20, b"Test With Truncation", 16, "a3b6167473100ee06e0c796c2955552b"),
    ],
)
def test_keyed_hash_rfc4231(key: str, data: bytes, length: int, mac: str) -> None:
    assert crypto.keyed_hash(H(key), data, length) == H(mac)
