"""A loopback Ethereum JSON-RPC server over the embedded chain (`healthledger chain node`).

The embedded EVM lives in exactly one process (its SQLite state and py-evm's in-memory head cannot
be shared). gunicorn runs several workers, so the service starts this server as a sidecar and every
worker, the relayer and the indexer use `rpc_chain("http://127.0.0.1:<port>")`, the same code path
as for a real node. It speaks what web3 needs (eth_chainId, eth_blockNumber, eth_getBlockByNumber,
eth_getBlockByHash, eth_sendRawTransaction, eth_getTransactionReceipt, eth_getTransactionByHash,
eth_call, eth_estimateGas, eth_getLogs, eth_getTransactionCount, eth_getBalance, eth_getCode,
eth_gasPrice, eth_maxPriorityFeePerGas, eth_feeHistory, net_version, web3_clientVersion, ...).
Only signed raw transactions are accepted: the node holds no keys.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from web3 import Web3

from fhir_adapters.validation import check_json_text_nesting
from healthledger.ledger.backends.embedded import EmbeddedProvider

MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Methods that would let a caller sign with, or rewrite the state of, the node: never served.
REFUSED_METHODS = frozenset(
    {"eth_sendTransaction", "eth_sign", "eth_signTransaction", "eth_accounts", "personal_sign"}
    | {"evm_mine", "evm_revert", "evm_snapshot", "testing_timeTravel"}
)
_RENAMED_KEYS = {"y_parity": "yParity", "state_root": "root"}
_DATA_KEYS = frozenset({"logsBloom"})  # fixed-size byte strings eth-tester hands out as integers
_BLOOM_BYTES = 256


def to_rpc_json(value: Any, key: str | None = None) -> Any:
    """eth-tester's Python values -> JSON-RPC wire format (hex quantities, 0x-prefixed data)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if key in _DATA_KEYS:
            return "0x" + value.to_bytes(_BLOOM_BYTES, "big").hex()
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {_RENAMED_KEYS.get(k, k): to_rpc_json(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_rpc_json(v) for v in value]
    return value


class EmbeddedRPC:
    """Dispatches JSON-RPC request objects to the embedded provider (thread-safe: the provider locks)."""

    def __init__(self, provider: EmbeddedProvider) -> None:
        self.provider = provider
        w3 = Web3(provider, middleware=[])
        self._request = provider.request_func(w3, w3.middleware_onion)

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, list):
            if not payload:
                return _error(None, -32600, "empty batch")
            return [self._one(item) for item in payload]
        return self._one(payload)

    def _one(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            return _error(None, -32600, "invalid request")
        request_id, method = item.get("id"), item["method"]
        params = item.get("params", [])
        if method in REFUSED_METHODS:
            return _error(request_id, -32601, f"method not available on this node: {method}")
        if not isinstance(params, list):
            return _error(request_id, -32602, "params must be a list")
        try:
            response = self._request(method, params)
        except Exception as exc:  # noqa: BLE001 (server boundary: a malformed parameter must get an answer)
            return _error(request_id, -32602, f"invalid params: {type(exc).__name__}")
        if "error" in response:
            return {"jsonrpc": "2.0", "id": request_id, "error": response["error"]}
        return {"jsonrpc": "2.0", "id": request_id, "result": to_rpc_json(response.get("result"))}


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def make_server(rpc: EmbeddedRPC, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering JSON-RPC POSTs on `host:port` (port 0 = any free port)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        wbufsize = 1 << 16  # headers and body leave in one segment (flushed after each request): no delayed-ACK stall

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_REQUEST_BYTES:
                self._reply(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length else HTTPStatus.LENGTH_REQUIRED, None
                )
                return
            try:
                raw = self.rfile.read(length)
                check_json_text_nesting(raw)  # before the recursive parser (a MalformedJson is a ValueError)
                payload = json.loads(raw)
            except ValueError:
                self._reply(HTTPStatus.OK, _error(None, -32700, "parse error"))
                return
            self._reply(HTTPStatus.OK, rpc.handle(payload))

        def do_GET(self) -> None:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, None)

        def _reply(self, status: HTTPStatus, body: Any) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # request logging would only repeat transaction hashes; errors are answered in-band

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_in_thread(
    rpc: EmbeddedRPC, host: str = "127.0.0.1", port: int = 0
) -> tuple[ThreadingHTTPServer, str]:
    """Start the server on a background thread; returns it (call .shutdown()) and its URL."""
    server = make_server(rpc, host, port)
    threading.Thread(target=server.serve_forever, name="embedded-chain-rpc", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    return server, f"http://{bound_host!s}:{bound_port}"
