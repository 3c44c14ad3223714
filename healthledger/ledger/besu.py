"""A Hyperledger Besu QBFT consortium network's files: genesis (QBFT `extraData` RLP-encoded here), validator keys,
node configurations. Pure functions build the documents; `write_network` puts them in a folder (keys 0600).

QBFT `extraData` (Besu, "Configure QBFT consensus", genesis file with block header validator selection; the same
value `besu rlp encode --type=QBFT_EXTRA_DATA` produces): RLP([vanity (32 zero bytes), [validator addresses],
vote (an empty list: none), round (0, the empty string), committed seals (an empty list)]). With validators chosen
by a contract instead, the address list is empty. tests/ledger/test_besu.py holds both values of Besu's
documentation. 4 validators tolerate 1 faulty one (BFT: n >= 3f + 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rlp
from eth_account import Account
from eth_keys import keys as eth_keys
from eth_utils import to_checksum_address

VANITY = b"\x00" * 32
MIX_HASH = "0x63746963616c2062797a616e74696e65206661756c7420746f6c6572616e6365"  # "ctical byzantine fault tolerance"
GENESIS_TIMESTAMP = "0x0"
P2P_PORT = 30303
RPC_PORT = 8545
FUNDED_BALANCE = hex(10**24)  # gas money on a private chain: the service's operator account


def qbft_extra_data(validators: Sequence[str]) -> str:
    """The genesis `extraData` of a QBFT network whose first validators are `validators` (0x addresses)."""
    addresses = [bytes.fromhex(a.removeprefix("0x")) for a in validators]
    if any(len(a) != 20 for a in addresses):
        raise ValueError("validator addresses are 20 bytes")
    return "0x" + rlp.encode([VANITY, addresses, [], b"", []]).hex()


def decode_validators(extra_data: str) -> list[str]:
    """The validator addresses in a QBFT `extraData` (checksummed), for checks and tests."""
    vanity, validators, _vote, _round, _seals = rlp.decode(bytes.fromhex(extra_data.removeprefix("0x")))
    if vanity != VANITY:
        raise ValueError("extraData does not start with 32 zero bytes of vanity")
    return [to_checksum_address(v) for v in validators]


def qbft_genesis(
    chain_id: int,
    validators: Sequence[str],
    *,
    alloc: Mapping[str, str] | None = None,
    block_period_seconds: int = 2,
    epoch_length: int = 30_000,
    request_timeout_seconds: int = 10,
    gas_limit: str = "0x1fffffffffffff",
) -> dict[str, Any]:
    """A Besu QBFT genesis with every fork our contracts need active from block 0 (they are compiled for Prague:
    PUSH0, MCOPY, transient storage), and a zero base fee (a consortium chain: gas meters, it does not charge)."""
    return {
        "config": {
            "chainId": chain_id,
            "berlinBlock": 0,
            "londonBlock": 0,
            "shanghaiTime": 0,
            "cancunTime": 0,
            "pragueTime": 0,
            "zeroBaseFee": True,
            "qbft": {
                "blockperiodseconds": block_period_seconds,
                "epochlength": epoch_length,
                "requesttimeoutseconds": request_timeout_seconds,
            },
        },
        "nonce": "0x0",
        "timestamp": GENESIS_TIMESTAMP,
        "extraData": qbft_extra_data(validators),
        "gasLimit": gas_limit,
        "difficulty": "0x1",
        "mixHash": MIX_HASH,
        "coinbase": "0x0000000000000000000000000000000000000000",
        "alloc": {a.removeprefix("0x").lower(): {"balance": b} for a, b in (alloc or {}).items()},
    }


@dataclass(frozen=True)
class Validator:
    """One validator node: its secp256k1 node key (its address is the validator address), host and ports."""

    name: str
    private_key: bytes
    host: str

    @property
    def address(self) -> str:
        return str(Account.from_key(self.private_key).address)

    @property
    def public_key(self) -> str:
        return eth_keys.PrivateKey(self.private_key).public_key.to_hex().removeprefix("0x")

    @property
    def enode(self) -> str:
        return f"enode://{self.public_key}@{self.host}:{P2P_PORT}"


def node_config(validator: Validator, bootnodes: Sequence[str]) -> str:
    """Besu's config.toml for one validator (paths as mounted in deploy/compose.yaml)."""
    lines = {
        "data-path": '"/var/lib/besu"',
        "genesis-file": '"/config/genesis.json"',
        "node-private-key-file": '"/keys/key"',
        "p2p-host": f'"{validator.host}"',
        "p2p-port": str(P2P_PORT),
        "bootnodes": json.dumps([b for b in bootnodes if not b.startswith(f"enode://{validator.public_key}@")]),
        "rpc-http-enabled": "true",
        "rpc-http-host": '"0.0.0.0"',
        "rpc-http-port": str(RPC_PORT),
        "rpc-http-api": '["ETH","NET","WEB3","QBFT","TXPOOL"]',
        "host-allowlist": '["*"]',
        "rpc-max-logs-range": "5000",  # Besu's default cap, as healthledger.ledger.networks expects
        "min-gas-price": "0",
        "metrics-enabled": "true",
        "metrics-host": '"0.0.0.0"',
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def new_validators(count: int, hosts: Sequence[str]) -> list[Validator]:
    """`count` validators with fresh keys (from the OS's randomness), one host each."""
    if count < 4:
        raise ValueError("a QBFT network needs at least 4 validators to tolerate one fault")
    if len(hosts) < count:
        raise ValueError("one host per validator")
    return [Validator(f"validator{i + 1}", bytes(Account.create().key), hosts[i]) for i in range(count)]


def write_network(
    out: Path, validators: Sequence[Validator], *, chain_id: int, fund: Sequence[str] = (), block_period_seconds: int = 2
) -> dict[str, Any]:
    """genesis.json, and per validator: key (0600), key.pub, address, config.toml. Returns the genesis."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    genesis = qbft_genesis(chain_id, [v.address for v in validators], alloc={a: FUNDED_BALANCE for a in fund},
                           block_period_seconds=block_period_seconds)
    (out / "genesis.json").write_text(json.dumps(genesis, indent=2) + "\n")
    bootnodes = [v.enode for v in validators]
    for v in validators:
        node = out / v.name
        node.mkdir(exist_ok=True)
        key = node / "key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("0x" + v.private_key.hex())
        os.chmod(key, 0o600)
        (node / "key.pub").write_text("0x" + v.public_key)
        (node / "address").write_text(v.address)
        (node / "config.toml").write_text(node_config(v, bootnodes))
    return genesis
