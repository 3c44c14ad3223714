"""The embedded chain: py-evm (Prague) through eth-tester, persisted in SQLite, with our own chain id.

`PersistentPyEVMBackend` resumes from the stored canonical head or, on first start, creates a
genesis block with a fixed timestamp (so its hash is stable) that funds only the given operator
addresses; the well-known eth-tester accounts do not exist on this chain. `EmbeddedProvider` is a
thread-safe web3 provider over it that reports our chain id and returns reverts as JSON-RPC errors
carrying the raw revert data (code 3, as geth and anvil do), so web3 decodes custom errors alike on
every backend.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from eth.chains.base import MiningChain
from eth.db.chain import ChainDB
from eth.estimators.gas import binary_gas_search_1000_tolerance
from eth.exceptions import CanonicalHeadNotFound, Revert
from eth.typing import AccountDetails
from eth.vm.forks import PragueVM
from eth.vm.spoof import SpoofTransaction
from eth_tester import EthereumTester
from eth_tester.backends.pyevm.main import (
    PyEVMBackend,
    _execute_and_revert_transaction,
    get_default_genesis_params,
)
from eth_tester.exceptions import TransactionFailed
from eth_typing import Address, BlockNumber
from eth_utils import to_canonical_address, to_hex
from eth_utils.toolz import assoc
from web3.providers.eth_tester import EthereumTesterProvider
from web3.providers.eth_tester.defaults import API_ENDPOINTS, static_return
from web3.types import RPCEndpoint, RPCResponse

from healthledger.data_dir import private_dir, private_file
from healthledger.errors import ConfigurationError
from healthledger.ledger.evm_store import SQLiteAtomicDB

# "HL" = 0x484c. Our own chain id: signatures made for this chain are useless on any other (EIP-155).
EMBEDDED_CHAIN_ID = 0x484C
# Fixed genesis time (2026-01-01T00:00:00Z) so the genesis hash is the same on every first start.
GENESIS_TIMESTAMP = 1_767_225_600
GENESIS_OPERATOR_BALANCE = 10**24  # 1,000,000 ether of a chain where ether buys only gas
CHAIN_DB_FILE = "chain.sqlite3"
LOCK_FILE = "LOCK"
NODE_FILE = "node.json"  # written by `healthledger chain node`: {"url": ..., "pid": ...}


class EmbeddedChainBusy(ConfigurationError):
    """Another process (normally `healthledger chain node`) has the embedded chain open."""


def _execution_error(state: Any, transaction: Any) -> tuple[Any, int]:
    """Run a transaction on a snapshot: (error or None, gas used before refunds)."""
    snapshot = state.snapshot()
    try:
        computation = state.apply_transaction(transaction)
        return computation.error if computation.is_error else None, int(computation.get_gas_used())
    finally:
        state.revert(snapshot)


def measured_gas_estimate(state: Any, transaction: Any) -> int:
    """eth_estimateGas in two executions instead of py-evm's ~13-step binary search.

    Run once with the block gas limit and measure; then check that intrinsic + used, plus 1/63 for
    the EIP-150 all-but-one-64th rule, succeeds; fall back to the binary search if it does not.
    """
    full = SpoofTransaction(transaction, gas=state.gas_limit, gas_price=0)
    error, used = _execution_error(state, full)
    if error is not None:
        raise error
    candidate = min(state.gas_limit, transaction.intrinsic_gas + used + used // 63 + 2_300)
    if _execution_error(state, SpoofTransaction(transaction, gas=candidate))[0] is None:
        return candidate
    return int(binary_gas_search_1000_tolerance(state, transaction))


class EmbeddedMiningChain(MiningChain):  # type: ignore[misc]
    """Post-merge Prague chain with a constant gas limit, as eth-tester's tester chain, our chain id."""

    chain_id = EMBEDDED_CHAIN_ID
    vm_configuration = ((BlockNumber(0), PragueVM),)
    gas_estimator = staticmethod(measured_gas_estimate)

    def create_header_from_parent(self, parent_header: Any, **header_params: Any) -> Any:
        return super().create_header_from_parent(
            parent_header, **assoc(header_params, "gas_limit", parent_header.gas_limit)
        )

    def get_transaction_builder(self) -> Any:
        return super().get_vm().get_transaction_builder()


class PersistentPyEVMBackend(PyEVMBackend):  # type: ignore[misc]
    """eth-tester's py-evm backend over a SQLite database; every mined block is committed."""

    def __init__(self, db: SQLiteAtomicDB, genesis_alloc: Mapping[str, int]) -> None:
        self._db = db
        self._genesis_alloc = dict(genesis_alloc)
        super().__init__()

    @property
    def db(self) -> SQLiteAtomicDB:
        return self._db

    def reset_to_genesis(self, *_args: Any, **_kwargs: Any) -> None:
        """Resume from the stored head; create the genesis block only on an empty database."""
        self.account_keys = ()  # no built-in test accounts: every transaction is signed by its sender
        try:
            ChainDB(self._db).get_canonical_head()
        except CanonicalHeadNotFound:
            params = get_default_genesis_params(overrides={"timestamp": GENESIS_TIMESTAMP})
            state: dict[Address, AccountDetails] = {
                Address(to_canonical_address(address)): AccountDetails(
                    balance=balance, nonce=0, code=b"", storage={}
                )
                for address, balance in self._genesis_alloc.items()
            }
            self.chain = EmbeddedMiningChain.from_genesis(self._db, params, state)
            self._db.commit()
        else:
            self.chain = EmbeddedMiningChain(self._db)

    def mine_blocks(self, num_blocks: int = 1, coinbase: bytes = b"\x00" * 20) -> tuple[bytes, ...]:
        hashes: tuple[bytes, ...] = super().mine_blocks(num_blocks, coinbase)
        self._db.commit()
        return hashes

    def call(self, transaction: dict[str, Any], block_number: Any = "latest") -> bytes:
        """As eth-tester's, but a revert keeps its raw data (custom errors) instead of a string."""
        defaulted = dict(transaction)
        defaulted.setdefault("gas", self._max_available_gas())
        unsigned = self._get_normalized_and_unsigned_evm_transaction(defaulted, block_number)
        computation = _execute_and_revert_transaction(
            self.chain, SpoofTransaction(unsigned, from_=transaction["from"]), block_number
        )
        if computation.is_error:
            error = computation._error
            raise TransactionFailed(error.args[0] if isinstance(error, Revert) and error.args else str(error))
        return bytes(computation.output)


def _revert_response(exc: TransactionFailed, request_id: str) -> RPCResponse:
    reason = exc.args[0] if exc.args else b""
    while isinstance(reason, Exception):  # eth-tester sometimes wraps the EVM exception
        reason = reason.args[0] if reason.args else b""
    error: dict[str, Any] = {"code": 3, "message": "execution reverted"}
    if isinstance(reason, bytes | bytearray):
        error["data"] = to_hex(bytes(reason))
    else:
        error["message"] = f"execution reverted: {reason}"
    return {"jsonrpc": "2.0", "id": request_id, "error": error}  # type: ignore[typeddict-item]


class EmbeddedProvider(EthereumTesterProvider):
    """A web3 provider over the persistent backend; one lock serialises the EVM between threads."""

    def __init__(self, backend: PersistentPyEVMBackend) -> None:
        endpoints = {ns: dict(methods) for ns, methods in API_ENDPOINTS.items()}
        endpoints["eth"]["chainId"] = static_return(EMBEDDED_CHAIN_ID)
        endpoints["net"]["version"] = static_return(str(EMBEDDED_CHAIN_ID))
        super().__init__(EthereumTester(backend), api_endpoints=endpoints)
        self.backend = backend
        self.lock = threading.RLock()
        self.lock_file: IO[str] | None = None

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        with self.lock:
            request_id = repr(self._current_request_id)
            self._current_request_id += 1
            namespace, _, endpoint = method.partition("_")
            delegator = (self.api_endpoints or {}).get(namespace, {}).get(endpoint)
            if delegator is None:
                error = {"code": -32601, "message": f"method not found: {method}"}
                return {"jsonrpc": "2.0", "id": request_id, "error": error}  # type: ignore[typeddict-item]
            try:
                result = delegator(self.ethereum_tester, params)
            except NotImplementedError:
                error = {"code": -32601, "message": f"method not implemented: {method}"}
                return {"jsonrpc": "2.0", "id": request_id, "error": error}  # type: ignore[typeddict-item]
            except TransactionFailed as exc:
                return _revert_response(exc, request_id)
            return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def close(self) -> None:
        with self.lock:
            self.backend.db.close()
            if self.lock_file is not None:
                self.lock_file.close()  # releases the flock
                self.lock_file = None


def open_embedded_provider(chain_dir: Path, genesis_alloc: Mapping[str, int]) -> EmbeddedProvider:
    """The provider over `chain_dir/chain.sqlite3`; genesis (funding `genesis_alloc`) only when new.

    An exclusive lock on `chain_dir/LOCK` keeps a second process from opening the same chain: py-evm
    keeps the head in memory, so two writers would fork the stored state. Other processes use
    `healthledger chain node` over JSON-RPC instead.
    """
    private_dir(chain_dir)
    lock = open(private_file(chain_dir / LOCK_FILE), "a+")  # noqa: SIM115 (held for the provider's lifetime)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise EmbeddedChainBusy(
            f"the embedded chain in {chain_dir} is open in another process: "
            "connect through `healthledger chain node` (HEALTHLEDGER_CHAIN_URL) instead"
        ) from None
    try:
        db = SQLiteAtomicDB(chain_dir / CHAIN_DB_FILE)
        provider = EmbeddedProvider(PersistentPyEVMBackend(db, genesis_alloc))
    except BaseException:
        lock.close()
        raise
    provider.lock_file = lock
    return provider
