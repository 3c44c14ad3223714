"""Network policies: finality per network, eth_getLogs in pages under a node's caps, retries on rate limits.

The caps are tested against a real anvil behind a loopback proxy that refuses what a Cosmos EVM node refuses
(too many blocks, too many logs in one query) and answers 429 to every third request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from support import node_tool

from healthledger.db import session_factory
from healthledger.errors import ChainError, ConfigurationError
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import indexer, outbox, relayer
from healthledger.ledger.chain import rpc_chain
from healthledger.ledger.networks import (
    NETWORKS,
    NetworkPolicy,
    backoff,
    log_pages,
    network_policy,
    paged_logs,
    rate_limited,
)
from tests.integration.anvil import running_anvil
from tests.ledger.fixtures_relay import deploy_ledger, relay_engine
from tests.ledger.test_outbox import domain_of, signed_grant

SMALL = NetworkPolicy("capped", True, 0, max_log_blocks=3, max_log_results=2, rate_limit_backoff_seconds=0.0)


def test_instant_finality_on_qbft_and_cosmos_confirmations_elsewhere() -> None:
    assert NETWORKS["besu-qbft"].instant_finality and NETWORKS["besu-qbft"].confirmations == 0
    cosmos = NETWORKS["cosmos-evm"]
    assert cosmos.instant_finality and (cosmos.max_log_blocks, cosmos.max_log_results) == (10_000, 10_000)
    assert not NETWORKS["ethereum"].instant_finality and NETWORKS["ethereum"].confirmations == 64
    assert network_policy("", chain_url="").name == "embedded"
    assert network_policy("", chain_url="http://node:8545").name == "generic"
    overridden = network_policy("besu-qbft", confirmations=2)  # an operator's setting wins
    assert overridden.confirmations == 2 and not overridden.instant_finality
    with pytest.raises(ConfigurationError, match="unknown chain network 'polygon'"):
        network_policy("polygon")
    with pytest.raises(ValueError):
        NetworkPolicy("bad", True, 3, None, None)


def test_log_pages_cover_the_range_exactly_once() -> None:
    assert list(log_pages(5, 4, 3)) == []
    assert list(log_pages(0, 9, 3)) == [(0, 2), (3, 5), (6, 8), (9, 9)]
    assert list(log_pages(7, 7, 10_000)) == [(7, 7)]
    assert list(log_pages(1, 100, None)) == [(1, 100)]
    for start, end, cap in [(0, 0, 1), (3, 1000, 7), (10, 10_010, 10_000)]:
        covered = [b for lo, hi in log_pages(start, end, cap) for b in range(lo, hi + 1)]
        assert covered == list(range(start, end + 1))
        assert all(hi - lo + 1 <= cap for lo, hi in log_pages(start, end, cap))


def _events(blocks: dict[int, int]) -> list[dict[str, int]]:
    return [{"blockNumber": b, "logIndex": i} for b, n in sorted(blocks.items()) for i in range(n)]


def test_paged_logs_split_what_the_node_refuses_or_truncates() -> None:
    logs = _events({1: 1, 2: 3, 5: 1, 9: 2})
    calls: list[tuple[int, int]] = []

    def node(lo: int, hi: int) -> list[dict[str, int]]:  # refuses > 4 blocks, truncates at 3 logs silently
        calls.append((lo, hi))
        if hi - lo + 1 > 4:
            raise ChainError("chain node refused the request: maximum [from, to] blocks distance: 4")
        return [e for e in logs if lo <= e["blockNumber"] <= hi][:3]

    policy = NetworkPolicy("t", True, 0, max_log_blocks=10, max_log_results=3)
    assert paged_logs(node, 0, 12, policy) == logs
    assert any(hi - lo + 1 > 4 for lo, hi in calls)  # the refused page was split, not given up
    with pytest.raises(ChainError, match="unreachable"):
        paged_logs(lambda lo, hi: (_ for _ in ()).throw(ChainError("chain node is unreachable")), 0, 5, policy)


def test_rate_limit_answers_and_backoff() -> None:
    assert rate_limited({"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "limit exceeded"}})  # type: ignore[typeddict-item]
    assert rate_limited({"error": {"code": -32000, "message": "Too Many Requests"}})  # type: ignore[typeddict-item]
    assert not rate_limited({"error": {"code": 3, "message": "execution reverted"}})  # type: ignore[typeddict-item]
    policy = NetworkPolicy("t", True, 0, None, None, rate_limit_backoff_seconds=0.5, rate_limit_max_wait_seconds=3)
    assert [backoff(a, policy) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert backoff(1, policy, retry_after=2.5) == 2.5 and backoff(1, policy, retry_after=99) == 3.0


class CappingProxy:
    """A loopback JSON-RPC proxy with a Cosmos EVM node's eth_getLogs caps and a rate limit: every
    `every`-th request is answered 429 (Retry-After: 0)."""

    def __init__(self, upstream: str, *, max_blocks: int, max_logs: int, every: int = 3) -> None:
        self.upstream, self.max_blocks, self.max_logs, self.every = upstream, max_blocks, max_logs, every
        self.requests = 0
        self.refused = {"range": 0, "results": 0, "429": 0}
        self.served_ranges: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, answer = proxy.answer(json.loads(body))
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, call: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self.requests += 1
            if self.requests % self.every == 0:
                self.refused["429"] += 1
                return 429, {"jsonrpc": "2.0", "id": call.get("id"), "error": {"code": 429, "message": "Too Many Requests"}}
        reply = requests.post(self.upstream, json=call, timeout=10).json()
        if call.get("method") == "eth_getLogs":
            query = call["params"][0]
            lo, hi = int(query["fromBlock"], 16), int(query["toBlock"], 16)
            error = None
            if hi - lo + 1 > self.max_blocks:
                self.refused["range"] += 1
                error = f"maximum [from, to] blocks distance: {self.max_blocks}"
            elif len(reply.get("result", [])) > self.max_logs:
                self.refused["results"] += 1
                error = f"query returned more than {self.max_logs} results"
            if error:
                return 200, {"jsonrpc": "2.0", "id": call.get("id"), "error": {"code": -32000, "message": error}}
            self.served_ranges.append((lo, hi))
        return 200, reply

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def capped(tmp_path: Path) -> Iterator[tuple[CappingProxy, str]]:
    with running_anvil(node_tool("anvil")) as anvil:
        proxy = CappingProxy(anvil, max_blocks=3, max_logs=2)
        try:
            yield proxy, anvil
        finally:
            proxy.close()


@pytest.mark.anvil
def test_indexer_reads_every_event_through_a_capped_rate_limited_node(capped, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, anvil = capped
    keys = tmp_path / "keys"
    chain = rpc_chain(proxy.url, LocalFileKeyProvider(keys), keys_dir=keys, poll_seconds=0.02, network=SMALL)
    requests.post(anvil, json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance",
                               "params": [chain.operator.address, hex(10**22)]}, timeout=10)
    deployed_at = deploy_ledger(chain)
    engine = relay_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    sessions = session_factory(engine)
    with sessions.begin() as s:
        for i in range(9):
            relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, f"capped:{i}"), now=time.time())
    policy = outbox.OutboxPolicy(base_backoff_seconds=0.0, receipt_poll_seconds=0.0, batch_size=3)
    outbox.drain(sessions, chain, time.time, policy=policy, max_passes=40)
    with sessions() as s:
        assert outbox.counts(s)["confirmed"] == 9
    head = chain.head()
    assert head - deployed_at > 2 * SMALL.max_log_blocks  # the events span several pages
    direct = rpc_chain(anvil, LocalFileKeyProvider(keys), keys_dir=keys, network=NETWORKS["anvil"])
    direct.register("ConsentRegistry", chain.address_of("ConsentRegistry"))
    expected = direct.get_logs("ConsentRegistry", "ConsentGranted", from_block=deployed_at)
    assert len(expected) == 9

    follower = indexer.Indexer(sessions, chain, from_block=deployed_at)
    follower.catch_up(time.time())
    with sessions() as s:
        indexed = s.query(indexer.ConsentEvent).count()
    assert indexed == 9
    assert all(hi - lo + 1 <= 3 for lo, hi in proxy.served_ranges)
    assert proxy.refused["429"] > 0 and chain.w3.provider.rate_limited_retries >= proxy.refused["429"]  # type: ignore[attr-defined]
    print(f"\ncapped node: {proxy.requests} requests, {proxy.refused['429']} answered 429 and retried, "
          f"{len(proxy.served_ranges)} eth_getLogs pages of <= 3 blocks, events lost 0")
    chain.close()
    direct.close()
    engine.dispose()


@pytest.mark.anvil
def test_refused_pages_are_split_until_under_the_result_cap(capped, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, anvil = capped
    keys = tmp_path / "keys"
    # The policy does not know the node's caps (a generic node): the node's refusals teach it.
    unknown = NetworkPolicy("unknown", True, 0, max_log_blocks=None, max_log_results=None, rate_limit_backoff_seconds=0)
    chain = rpc_chain(proxy.url, LocalFileKeyProvider(keys), keys_dir=keys, poll_seconds=0.02, network=unknown)
    requests.post(anvil, json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance",
                               "params": [chain.operator.address, hex(10**22)]}, timeout=10)
    deployed_at = deploy_ledger(chain)
    registry = chain.contract("ConsentRegistry")
    engine = relay_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    sessions = session_factory(engine)
    with sessions.begin() as s:
        for i in range(5):
            relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, f"split:{i}"), now=time.time())
    outbox.drain(sessions, chain, time.time, policy=outbox.OutboxPolicy(base_backoff_seconds=0.0, batch_size=5),
                 max_passes=40)
    events = chain.get_logs("ConsentRegistry", "ConsentGranted", from_block=deployed_at)
    assert len(events) == 5 and registry is not None
    assert proxy.refused["range"] + proxy.refused["results"] > 0  # it was refused, and split, not failed
    chain.close()
    engine.dispose()
