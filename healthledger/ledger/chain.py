"""`Chain`: one small interface over the embedded EVM and any JSON-RPC node (web3 at the edge).

Build one with `embedded_chain(data_dir, key_provider)`, `rpc_chain(url, key_provider, ...)` or
`chain_for(settings, key_provider)`. Every transaction is signed locally by the operator key (kept
wrapped by the KeyProvider) and sent raw with EIP-1559 fees; nonces come from the node's pending
count under a per-operator lock (a thread lock plus an flock on a file in the data dir, so several
gunicorn workers on one host never reuse a nonce, and a restart starts from the node's count).
Reverts come back as `ContractRevert` with the decoded custom error name and arguments.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexAddress, HexStr
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from eth_utils.exceptions import ValidationError as EthValidationError
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TimeExhausted, TransactionNotFound, Web3Exception
from web3.types import Nonce, TxParams, TxReceipt, Wei

from healthledger.data_dir import private_dir, private_file
from healthledger.errors import ChainError, ConfigurationError, HealthLedgerError
from healthledger.keys import CHAIN_OPERATOR_KEY, KEY_FILES, KeyProvider
from healthledger.ledger.compile import ARTIFACTS_DIR, load_artifact
from healthledger.ledger.networks import (
    NETWORKS,
    NetworkPolicy,
    RateLimitedHTTPProvider,
    network_policy,
    paged_logs,
)

DEFAULT_PRIORITY_FEE_WEI = 10**9  # 1 gwei, when the node cannot suggest one
GAS_MARGIN_PERCENT = 25  # added to eth_estimateGas: estimates are exact only for the state they ran on
RECEIPT_TIMEOUT_SECONDS = 120.0
RPC_TIMEOUT_SECONDS = 15.0
UNREACHABLE = "chain node is unreachable"  # the message (and an outbox item's last_error) of a transport failure


class ContractRevert(ChainError):
    """A contract refused a call or transaction; `error_name` / `error_args` say which rule."""

    status = 422
    code = "processing"

    def __init__(self, error_name: str, error_args: tuple[Any, ...] = (), raw: str = "") -> None:
        shown = f"{error_name}({', '.join(map(_show_arg, error_args))})" if error_args else error_name
        super().__init__(f"contract refused the call: {shown}")
        self.error_name = error_name
        self.error_args = error_args
        self.raw = raw


@dataclass(frozen=True)
class Fees:
    """EIP-1559 fee caps in wei (max_fee >= priority_fee)."""

    max_fee: int
    priority_fee: int


class Chain:
    """A web3 connection, the operator account that signs, and the addresses of our contracts."""

    def __init__(
        self,
        w3: Web3,
        operator: LocalAccount,
        *,
        confirmations: int = 0,
        nonce_lock_path: Path | None = None,
        on_close: Callable[[], None] | None = None,
        poll_seconds: float = 0.05,
        network: NetworkPolicy = NETWORKS["embedded"],
    ) -> None:
        self.w3 = w3
        self.network = network
        self.operator = operator
        self.confirmations = confirmations
        self.poll_seconds = poll_seconds
        self._nonce_lock_path = nonce_lock_path
        self._thread_lock = threading.RLock()
        self._on_close = on_close
        self._addresses: dict[str, str] = {}
        self._errors = _error_table()
        with translate_errors():
            self.chain_id: int = int(w3.eth.chain_id)

    # -- contracts -----------------------------------------------------------------------------
    def register(self, name: str, address: str) -> None:
        self._addresses[name] = to_checksum_address(address)

    def address_of(self, name: str) -> str:
        try:
            return self._addresses[name]
        except KeyError:
            raise ConfigurationError(f"contract {name} is not deployed or not registered") from None

    def contract(self, name: str) -> Contract:
        return self.w3.eth.contract(
            address=ChecksumAddress(HexAddress(HexStr(self.address_of(name)))), abi=load_artifact(name).abi
        )

    def deploy(self, name: str, *args: Any, gas: int | None = None) -> tuple[str, TxReceipt]:
        """Deploy a contract from its committed artifact and register it under its name."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.send(factory.constructor(*args), gas=gas)
        if receipt["contractAddress"] is None:
            raise ChainError(f"deploying {name} created no contract")
        address = to_checksum_address(receipt["contractAddress"])
        self.register(name, address)
        return address, receipt

    # -- reads ---------------------------------------------------------------------------------
    def head(self) -> int:
        with translate_errors(self._errors):
            return int(self.w3.eth.block_number)

    def call(self, fn_call: Any, *, block: int | str = "latest", sender: str | None = None) -> Any:
        """Run a view (or simulate a write from `sender`) and return its decoded result."""
        with translate_errors(self._errors):
            return fn_call.call({"from": sender or self.operator.address}, block_identifier=block)

    def get_logs(
        self,
        name: str,
        event: str,
        *,
        from_block: int,
        to_block: int | str = "latest",
        argument_filters: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Decoded events of one of our contracts, in chain order, read in pages under the network's
        `eth_getLogs` caps (healthledger.ledger.networks.paged_logs)."""
        events = getattr(self.contract(name).events, event)
        end = self.head() if to_block == "latest" else int(to_block)

        def fetch(lo: int, hi: int) -> list[Any]:
            with translate_errors(self._errors):
                return list(events.get_logs(from_block=lo, to_block=hi, argument_filters=argument_filters))

        return paged_logs(fetch, from_block, end, self.network)

    def code_at(self, address: str) -> bytes:
        with translate_errors(self._errors):
            return bytes(self.w3.eth.get_code(to_checksum_address(address)))

    # -- writes --------------------------------------------------------------------------------
    def fees(self) -> Fees:
        """maxFeePerGas = 2 x the latest base fee + priority (survives six full blocks of +12.5%)."""
        with translate_errors(self._errors):
            block = self.w3.eth.get_block("latest")
            base_fee = int(block.get("baseFeePerGas", 0) or 0)
            try:
                priority = int(self.w3.eth.max_priority_fee)
            except (Web3Exception, ValueError):
                priority = DEFAULT_PRIORITY_FEE_WEI
        return Fees(max_fee=2 * base_fee + priority, priority_fee=priority)

    def build(
        self,
        fn_call: Any,
        *,
        gas: int | None = None,
        nonce: int | None = None,
        fees: Fees | None = None,
        value: int = 0,
        sender: LocalAccount | None = None,
    ) -> TxParams:
        """An unsigned EIP-1559 transaction from the operator, or `sender` (gas estimated when not given)."""
        sender = sender or self.operator
        base: TxParams = {"from": sender.address, "chainId": self.chain_id, "value": Wei(value)}
        with translate_errors(self._errors):
            if gas is None:
                estimate = fn_call.estimate_gas(base)
                gas = estimate + estimate * GAS_MARGIN_PERCENT // 100
            fees = fees or self.fees()
            tx: TxParams = fn_call.build_transaction(
                {
                    **base,
                    "gas": gas,
                    "maxFeePerGas": fees.max_fee,
                    "maxPriorityFeePerGas": fees.priority_fee,
                    "nonce": 0 if nonce is None else nonce,
                }
            )
        if nonce is not None:
            tx["nonce"] = Nonce(nonce)
        else:
            tx.pop("nonce", None)  # assigned under the nonce lock in sign_and_submit
        return tx

    def sign_and_submit(self, tx: TxParams, *, sender: LocalAccount | None = None) -> HexBytes:
        """Sign with the operator key (or `sender`'s) and broadcast; no nonce = the next one."""
        sender = sender or self.operator
        with self._nonce_lock(), translate_errors(self._errors):
            if "nonce" not in tx:
                tx = {**tx, "nonce": self.w3.eth.get_transaction_count(sender.address, "pending")}
            signed = sender.sign_transaction(tx)  # type: ignore[arg-type]
            return HexBytes(self.w3.eth.send_raw_transaction(signed.raw_transaction))

    def wait(self, tx_hash: HexBytes | str, *, timeout: float = RECEIPT_TIMEOUT_SECONDS) -> TxReceipt:
        """The receipt once mined and `confirmations` blocks deep; ContractRevert if it failed."""
        deadline = time.monotonic() + timeout
        with translate_errors(self._errors):
            try:
                receipt = self.w3.eth.wait_for_transaction_receipt(
                    HexBytes(tx_hash), timeout=timeout, poll_latency=self.poll_seconds
                )
            except TimeExhausted as exc:
                raise ChainError("transaction was not mined in time; it may still be pending") from exc
            while (
                self.confirmations and self.w3.eth.block_number < receipt["blockNumber"] + self.confirmations
            ):
                if time.monotonic() > deadline:
                    raise ChainError("transaction mined but not yet confirmed")
                time.sleep(self.poll_seconds)
        if receipt["status"] != 1:
            self._raise_failure(receipt)
        return receipt

    def send(
        self,
        fn_call: Any,
        *,
        gas: int | None = None,
        nonce: int | None = None,
        fees: Fees | None = None,
        timeout: float = RECEIPT_TIMEOUT_SECONDS,
        sender: LocalAccount | None = None,
    ) -> TxReceipt:
        """build + sign_and_submit + wait: a contract write (from the operator unless `sender`)."""
        tx = self.build(fn_call, gas=gas, nonce=nonce, fees=fees, sender=sender)
        return self.wait(self.sign_and_submit(tx, sender=sender), timeout=timeout)

    def receipt(self, tx_hash: HexBytes | str) -> TxReceipt | None:
        """The receipt if the transaction is mined, else None (no waiting)."""
        with translate_errors(self._errors):
            try:
                return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    # -- internals -----------------------------------------------------------------------------
    def _raise_failure(self, receipt: TxReceipt) -> None:
        raise self.failure_of(receipt)

    def failure_of(self, receipt: Any) -> ChainError:
        """Why a mined transaction failed: it is replayed (eth_call) on the state its own block ended with.

        Not the parent block's: transactions before it in the same block (ours, sent in one burst, or
        anyone's on a busy chain) may be what made it revert, e.g. a pause, and only the block's state has
        them. A reverted transaction changed nothing itself, so that state differs from the one it ran on
        only by the transactions after it in its block: the closest state a plain node can replay on
        (tests/ledger/test_chain_rpc.py: two transactions mined in one block). A decoded revert comes back as
        ContractRevert; anything else (out of gas, a revert without data) as a plain ChainError.
        """
        try:
            with translate_errors(self._errors):
                tx = self.w3.eth.get_transaction(receipt["transactionHash"])
                replay: TxParams = {
                    "from": tx["from"], "to": tx["to"], "data": tx.get("input", tx.get("data")) or b"", "gas": tx["gas"],
                }
                self.w3.eth.call(replay, block_identifier=int(receipt["blockNumber"]))
        except ChainError as exc:
            return exc
        return ChainError("transaction failed on-chain (out of gas or reverted without reason)")

    @contextmanager
    def _nonce_lock(self) -> Iterator[None]:
        with self._thread_lock:
            if self._nonce_lock_path is None:
                yield
                return
            private_dir(self._nonce_lock_path.parent)
            with open(private_file(self._nonce_lock_path), "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)


# -- errors ------------------------------------------------------------------------------------

ErrorTable = dict[bytes, tuple[str, list[str]]]


def _error_table() -> ErrorTable:
    """4-byte selector -> (error name, argument types), over every committed artifact's ABI."""
    table: ErrorTable = {}
    for path in sorted(ARTIFACTS_DIR.glob("*.json")):
        for item in json.loads(path.read_text())["abi"]:
            if item.get("type") == "error":
                types = [i["type"] for i in item["inputs"]]
                table[function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")] = (
                    item["name"],
                    types,
                )
    return table


def decode_revert(data: str | bytes | None, table: ErrorTable | None = None) -> ContractRevert:
    """Solidity revert data -> ContractRevert: custom errors by ABI, Error(string), Panic(uint256)."""
    raw = HexBytes(data or b"")
    table = table if table is not None else _error_table()
    selector, body = bytes(raw[:4]), bytes(raw[4:])
    try:
        if selector == function_signature_to_4byte_selector("Error(string)"):
            return ContractRevert("Error", tuple(abi_decode(["string"], body)), raw.hex())
        if selector == function_signature_to_4byte_selector("Panic(uint256)"):
            return ContractRevert("Panic", tuple(abi_decode(["uint256"], body)), raw.hex())
        if selector in table:
            name, types = table[selector]
            values = abi_decode(types, body)
            shown = (
                to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)
            )
            return ContractRevert(name, tuple(shown), raw.hex())
    except (ValueError, TypeError, OverflowError):  # data does not match the declared types: show it raw
        return ContractRevert("UnknownRevert", (), raw.hex())
    return ContractRevert("UnknownRevert" if raw else "Reverted", (), raw.hex())


@contextmanager
def translate_errors(table: ErrorTable | None = None) -> Iterator[None]:
    """web3 / transport exceptions -> ChainError (unreachable, refused) or ContractRevert (decoded)."""
    try:
        yield
    except HealthLedgerError:
        raise
    except ContractLogicError as exc:
        data = exc.data if isinstance(exc.data, str) else None
        if data and data.startswith("0x") and len(data) >= 10:
            raise decode_revert(data, table) from None
        raise ContractRevert("Error", (str(exc.message or exc),)) from None
    except (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError) as exc:
        raise ChainError(UNREACHABLE) from exc
    except Web3Exception as exc:
        raise ChainError(f"chain node refused the request: {_short(exc)}") from exc
    except EthValidationError as exc:
        # The embedded chain (eth-tester) refuses in-process, e.g. a nonce ahead of the account's while a
        # concurrent worker's lower nonce is still on its way: transient, the outbox sends it again later.
        raise ChainError(f"chain node refused the request: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def _show_arg(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


# -- operator key ------------------------------------------------------------------------------


def load_or_create_operator(keys_dir: Path, key_provider: KeyProvider) -> LocalAccount:
    """The operator account, generated on first use and stored wrapped by the KeyProvider
    (`healthledger.keys.CHAIN_OPERATOR_KEY`, beside its address; key rotation rewraps it)."""
    key = KEY_FILES.file(keys_dir, CHAIN_OPERATOR_KEY).load_or_create(
        key_provider, lambda: bytes(Account.create().key), public=_operator_address
    )
    account: LocalAccount = Account.from_key(key)
    return account


def _operator_address(key: bytes) -> dict[str, str]:
    return {"address": Account.from_key(key).address}


# -- factories ---------------------------------------------------------------------------------


def embedded_chain(data_dir: Path, key_provider: KeyProvider, *, keys_dir: Path | None = None) -> Chain:
    """The in-process EVM persisted under `data_dir/chain/`; the operator is funded at genesis.

    Only one process may open it (SQLite holds one writer and py-evm keeps the head in memory);
    other processes reach it through `healthledger chain node` and `rpc_chain`.
    """
    from healthledger.ledger.backends.embedded import GENESIS_OPERATOR_BALANCE, open_embedded_provider

    operator = load_or_create_operator(keys_dir or Path(data_dir) / "keys", key_provider)
    provider = open_embedded_provider(Path(data_dir) / "chain", {operator.address: GENESIS_OPERATOR_BALANCE})
    # Each transaction is mined as it arrives and the node is the only one: finality is immediate.
    return Chain(Web3(provider), operator, confirmations=0, on_close=provider.close, poll_seconds=0.01)


def rpc_chain(
    url: str,
    key_provider: KeyProvider,
    *,
    keys_dir: Path,
    confirmations: int | None = None,
    poll_seconds: float = 0.5,
    operator: LocalAccount | None = None,
    network: NetworkPolicy | None = None,
) -> Chain:
    """Any Ethereum JSON-RPC node (anvil, geth, Besu, an EVM on Cosmos SDK) by HTTP URL; `network` says its
    finality, log caps and rate-limit handling (default: generic), `confirmations` overrides its finality."""
    network = network or NETWORKS["generic"]
    provider = RateLimitedHTTPProvider(url, network, timeout=RPC_TIMEOUT_SECONDS)
    w3 = Web3(provider)
    operator = operator or load_or_create_operator(keys_dir, key_provider)
    try:
        return Chain(
            w3,
            operator,
            confirmations=network.confirmations if confirmations is None else confirmations,
            nonce_lock_path=Path(keys_dir).parent / "chain" / f"nonce-{operator.address}.lock",
            poll_seconds=poll_seconds,
            network=network,
        )
    except ChainError as exc:
        raise ChainError(f"chain node at {_redact(url)} is unreachable") from exc


def chain_for(settings: Any, key_provider: KeyProvider) -> Chain:
    """The configured chain: a JSON-RPC node when `settings.chain_url` is set, else the embedded one
    (in this process, or through the `healthledger chain node` that has it open, as gunicorn workers,
    the relayer and the CLI do while `serve` runs)."""
    from healthledger.ledger.backends.embedded import EmbeddedChainBusy

    if settings.chain_url:
        explicit = "chain_confirmations" in settings.model_fields_set or settings.chain_confirmations != 0
        network = network_policy(
            getattr(settings, "chain_network", ""), chain_url=settings.chain_url,
            confirmations=settings.chain_confirmations if explicit else None,
        )  # fmt: skip
        return rpc_chain(
            settings.chain_url,
            key_provider,
            keys_dir=settings.keys_dir,
            poll_seconds=min(settings.chain_poll_seconds, 0.5),
            network=network,
        )
    try:
        return embedded_chain(settings.data_dir, key_provider, keys_dir=settings.keys_dir)
    except EmbeddedChainBusy:
        url = running_node_url(Path(settings.data_dir) / "chain")
        if url is None:
            raise
        return rpc_chain(url, key_provider, keys_dir=settings.keys_dir, poll_seconds=0.02)


def running_node_url(chain_dir: Path) -> str | None:
    """The loopback URL a running `healthledger chain node` advertises for this chain directory."""
    from healthledger.ledger.backends.embedded import NODE_FILE

    try:
        document = json.loads((chain_dir / NODE_FILE).read_text())
        os.kill(int(document["pid"]), 0)  # still alive?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = document.get("url")
    return url if isinstance(url, str) and url.startswith("http://127.0.0.1:") else None


def _redact(url: str) -> str:
    """Drop credentials and query strings (API keys) from a node URL before showing it."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"


def wait_until(predicate: Callable[[], bool], *, timeout: float, poll: float = 0.1) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def patient_grant_events(chain: Chain, patient: str, *, from_block: int) -> Sequence[Any]:
    """ConsentGranted and ConsentRevoked events of one patient pseudonym, in chain order.

    The registry keeps no on-chain list per patient (it would cost a storage slot per grant); the
    `patient` topic is indexed so any node answers this filter.
    """
    filters = {"patient": to_checksum_address(patient)}
    events = [
        *chain.get_logs("ConsentRegistry", "ConsentGranted", from_block=from_block, argument_filters=filters),
        *chain.get_logs("ConsentRegistry", "ConsentRevoked", from_block=from_block, argument_filters=filters),
    ]
    return sorted(events, key=lambda e: (e["blockNumber"], e["logIndex"]))
