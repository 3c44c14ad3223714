"""EIP-712 typed data for grants and revocations: known-answer vector, independent re-derivation, properties."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from healthledger.errors import BadRequest
from healthledger.ledger import eip712

UINT64 = st.integers(min_value=0, max_value=eip712.UINT64_MAX)
ADDRESSES = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
# Private keys are scalars in [1, n - 1], n the secp256k1 group order (SEC 2 v2 §2.4.1); the field
# prime p is larger than n, so bounding by p let hypothesis draw invalid keys.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
KEYS = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))


def test_eip712_specification_mail_example() -> None:
    """The worked example of https://eips.ethereum.org/EIPS/eip-712 (assets/eip-712/Example.js)."""
    mail = {
        "types": {
            "EIP712Domain": eip712.EIP712_DOMAIN_TYPE,
            "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
            "Mail": [
                {"name": "from", "type": "Person"},
                {"name": "to", "type": "Person"},
                {"name": "contents", "type": "string"},
            ],
        },
        "primaryType": "Mail",
        "domain": {
            "name": "Ether Mail",
            "version": "1",
            "chainId": 1,
            "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
        },
        "message": {
            "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
            "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
            "contents": "Hello, Bob!",
        },
    }
    signable = encode_typed_data(full_message=mail)
    digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert digest.hex() == "be609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"
    cow = Account.from_key(keccak(text="cow"))
    assert cow.address == "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"
    signature = Account.sign_message(signable, cow.key).signature
    assert signature.hex().startswith("4355c47d63924e8a72e509b65029052eb6c299d53a04e167c5775fd466751c9d")


def _independent_digest(domain: eip712.Domain, m: eip712.GrantMessage) -> bytes:
    domain_separator = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                keccak(
                    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
                ),
                keccak(text=eip712.DOMAIN_NAME),
                keccak(text=eip712.DOMAIN_VERSION),
                domain.chain_id,
                domain.verifying_contract,
            ],
        )
    )
    struct_hash = keccak(
        encode(
            ["bytes32", "address", "address", "bytes32", "uint64", "uint64", "uint64", "uint64"],
            [
                eip712.GRANT_TYPEHASH,
                m.patient,
                m.grantee,
                m.scope_hash,
                m.valid_from,
                m.valid_until,
                m.nonce,
                m.deadline,
            ],
        )
    )
    return keccak(b"\x19\x01" + domain_separator + struct_hash)


@settings(max_examples=25, deadline=None)
@given(
    key=KEYS,
    grantee=ADDRESSES,
    contract=ADDRESSES,
    chain_id=st.integers(min_value=1, max_value=2**64),
    scope=st.binary(min_size=32, max_size=32),
    times=st.tuples(UINT64, UINT64, UINT64, UINT64),
)
def test_grant_digest_signature_and_compact_form(
    key: bytes, grantee: str, contract: str, chain_id: int, scope: bytes, times: tuple[int, int, int, int]
) -> None:
    patient = Account.from_key(key)
    domain = eip712.Domain(chain_id, contract)
    message = eip712.GrantMessage(patient.address, grantee, scope, *times)
    assert eip712.digest(domain, message) == _independent_digest(domain, message)
    signature = eip712.sign(key, domain, message)
    assert eip712.recover_signer(domain, message, signature) == patient.address
    r, vs = eip712.compact(signature)
    vs_int = int.from_bytes(vs, "big")
    assert r == signature[:32]
    assert (vs_int & (2**255 - 1)).to_bytes(32, "big") == signature[32:64]
    assert 27 + (vs_int >> 255) == signature[64]
    other = eip712.Domain(chain_id + 1, contract)
    assert eip712.recover_signer(other, message, signature) != patient.address


def test_type_strings_are_the_contracts() -> None:
    assert eip712.encode_type("Grant", eip712.GRANT_TYPE) == (
        "Grant(address patient,address grantee,bytes32 scopeHash,uint64 validFrom,uint64 validUntil,"
        "uint64 nonce,uint64 deadline)"
    )
    assert eip712.encode_type("Revoke", eip712.REVOKE_TYPE) == (
        "Revoke(address patient,address grantee,bytes32 scopeHash,uint64 nonce,uint64 deadline)"
    )


@pytest.mark.parametrize(
    "changes",
    [{"scope_hash": b"\x01" * 31}, {"valid_until": 2**64}, {"nonce": -1}, {"deadline": 1.5}],
)
def test_out_of_range_fields_are_bad_requests(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "patient": Account.create().address,
        "grantee": Account.create().address,
        "scope_hash": bytes(32),
        "valid_from": 0,
        "valid_until": 1,
        "nonce": 0,
        "deadline": 1,
    }
    with pytest.raises(BadRequest):
        eip712.GrantMessage(**{**fields, **changes})  # type: ignore[arg-type]


def test_malformed_signatures_are_bad_requests() -> None:
    with pytest.raises(BadRequest):
        eip712.compact(b"\x01" * 64)
    with pytest.raises(BadRequest):
        eip712.compact(b"\x01" * 64 + b"\x00")
