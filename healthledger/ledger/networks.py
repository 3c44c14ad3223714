"""The networks the chain adapter meets, and what differs between them: finality, `eth_getLogs` caps, rate limits.

- Finality. QBFT (Besu) and CometBFT (Cosmos SDK chains with an EVM) finalise a block when it is committed:
  no reorganisation, 0 confirmations. Proof-of-work-style or probabilistic chains, and Ethereum before its
  checkpoint finalises (2 epochs, 64 slots), need confirmations before an event counts.
- Log queries. Nodes cap `eth_getLogs`: Cosmos EVM at 10,000 blocks and 10,000 logs per query by default
  (`json-rpc.block-range-cap`/`logs-cap` in app.toml; `filter-cap` bounds installed filters, not a query), Besu
  at 5,000 blocks (`--rpc-max-logs-range`), public providers lower. Queries are split into pages under the block cap; a page the node refuses as too large (or
  that comes back at the result cap, which some nodes truncate at silently) is split in two and read again.
- Rate limits. A hosted node answers 429 (HTTP) or JSON-RPC error -32005 when called too often: the request is
  sent again after the server's Retry-After or an exponential backoff, a bounded number of times.

docs/chains.md describes each network and how to configure the service for it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from web3.providers import HTTPProvider
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import RPCEndpoint, RPCResponse

from healthledger.errors import ChainError, ConfigurationError


@dataclass(frozen=True)
class NetworkPolicy:
    """How to treat one kind of network. `confirmations` = blocks an event must be under before it counts
    (0 = instant finality); `max_log_blocks` / `max_log_results`: the node's `eth_getLogs` caps (None: none)."""

    name: str
    instant_finality: bool
    confirmations: int
    max_log_blocks: int | None
    max_log_results: int | None
    rate_limit_retries: int = 5
    rate_limit_backoff_seconds: float = 0.5
    rate_limit_max_wait_seconds: float = 20.0
    notes: str = ""

    def __post_init__(self) -> None:
        if self.instant_finality and self.confirmations:
            raise ValueError(f"{self.name}: instant finality needs no confirmations")
        if self.max_log_blocks is not None and self.max_log_blocks < 1:
            raise ValueError(f"{self.name}: max_log_blocks must be positive")


NETWORKS: dict[str, NetworkPolicy] = {
    p.name: p
    for p in (
        NetworkPolicy("embedded", True, 0, None, None, notes="the in-process py-evm chain: one node, mined on arrival"),
        NetworkPolicy("anvil", True, 0, None, None, notes="anvil / Hardhat on loopback (development and tests)"),
        NetworkPolicy("besu-qbft", True, 0, 5_000, None, notes="Hyperledger Besu, QBFT: final on commit"),
        NetworkPolicy("cosmos-evm", True, 0, 10_000, 10_000, notes="Cosmos SDK chain with an EVM (CometBFT)"),
        NetworkPolicy("ethereum", False, 64, 2_000, 10_000, notes="Ethereum proof of stake: 2 epochs to finality"),
        NetworkPolicy("generic", False, 0, 2_000, 10_000,
                      notes="any other JSON-RPC node: confirmations from HEALTHLEDGER_CHAIN_CONFIRMATIONS"),
    )
}


def network_policy(name: str, *, chain_url: str = "", confirmations: int | None = None) -> NetworkPolicy:
    """The policy named `name` ("" = embedded without a URL, generic with one); `confirmations`, when given,
    overrides the network's (an operator's setting wins over a default)."""
    from dataclasses import replace

    key = name or ("generic" if chain_url else "embedded")
    if key not in NETWORKS:
        raise ConfigurationError(f"unknown chain network {key!r}: one of {', '.join(sorted(NETWORKS))}")
    policy = NETWORKS[key]
    if confirmations is not None and confirmations != policy.confirmations:
        if policy.instant_finality and confirmations:
            return replace(policy, instant_finality=False, confirmations=confirmations)
        return replace(policy, confirmations=confirmations)
    return policy


# ---- eth_getLogs in pages --------------------------------------------------------------------------

# How nodes say a log query is too large (Cosmos EVM, geth, Besu, Erigon, hosted providers).
_TOO_LARGE = ("more than", "too many", "range", "distance", "maximum", "exceed", "limit", "too large", "response size", "max results")


def log_pages(start: int, end: int, max_blocks: int | None) -> Iterator[tuple[int, int]]:
    """[start, end] as consecutive inclusive ranges of at most `max_blocks` blocks (one range if None).
    Requires start <= end + 1 (an empty range yields nothing)."""
    if end < start:
        return
    step = (end - start + 1) if max_blocks is None else max_blocks
    lo = start
    while lo <= end:
        hi = min(end, lo + step - 1)
        yield lo, hi
        lo = hi + 1


def too_large(error: BaseException) -> bool:
    text = str(error).lower()
    return "rate" not in text and any(marker in text for marker in _TOO_LARGE)


def paged_logs(
    fetch: Callable[[int, int], Sequence[Any]], start: int, end: int, policy: NetworkPolicy
) -> list[Any]:
    """Every log of [start, end], in chain order, read page by page under the policy's caps. A page refused as
    too large, or returned at the result cap, is split in two; a single block that is still too large raises."""
    pending: deque[tuple[int, int]] = deque(log_pages(start, end, policy.max_log_blocks))
    found: list[Any] = []
    while pending:
        lo, hi = pending.popleft()
        try:
            page = list(fetch(lo, hi))
        except ChainError as exc:
            if hi > lo and too_large(exc):
                mid = (lo + hi) // 2
                pending.extendleft([(mid + 1, hi), (lo, mid)])
                continue
            raise
        if policy.max_log_results is not None and len(page) >= policy.max_log_results and hi > lo:
            mid = (lo + hi) // 2  # at the cap: possibly truncated, read it again in halves
            pending.extendleft([(mid + 1, hi), (lo, mid)])
            continue
        found.extend(page)
    return sorted(found, key=lambda e: (int(e["blockNumber"]), int(e["logIndex"])))


# ---- rate limits ------------------------------------------------------------------------------------------

_RATE_LIMIT_CODES = frozenset({-32005, 429})
_RATE_LIMIT_WORDS = ("rate limit", "too many requests", "request limit", "limit exceeded")


def rate_limited(response: RPCResponse) -> bool:
    error = response.get("error") if isinstance(response, dict) else None
    if not isinstance(error, dict):
        return False
    message = str(error.get("message", "")).lower()
    return error.get("code") in _RATE_LIMIT_CODES or any(w in message for w in _RATE_LIMIT_WORDS)


def backoff(attempt: int, policy: NetworkPolicy, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt` (1-based) again: the server's Retry-After if it gave one, else
    base * 2^(attempt-1); never more than the policy's maximum wait."""
    wait = retry_after if retry_after is not None else policy.rate_limit_backoff_seconds * 2 ** (attempt - 1)
    return max(0.0, min(wait, policy.rate_limit_max_wait_seconds))


class RateLimitedHTTPProvider(HTTPProvider):
    """web3's HTTP provider, sending a request again when the node says it is rate limited (HTTP 429 or 503,
    JSON-RPC -32005). Sending a signed transaction again is safe: the node answers "already known"."""

    def __init__(self, url: str, policy: NetworkPolicy, *, timeout: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(
            url, request_kwargs={"timeout": timeout},
            # web3 retries transport failures of reads itself; HTTP errors are ours to retry (below).
            exception_retry_configuration=ExceptionRetryConfiguration(errors=(ConnectionError, requests.Timeout)),
        )  # fmt: skip
        self.policy = policy
        self.sleep = sleep
        self.rate_limited_retries = 0  # a count for tests and metrics

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                response = super().make_request(method, params)
                if not rate_limited(response):
                    return response
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status not in (429, 503):
                    raise
                retry_after = _retry_after(exc.response)
                response = None
            if attempt > self.policy.rate_limit_retries:
                if response is not None:
                    return response  # the node's own error, for the caller to report
                raise ChainError("chain node is rate limiting this service; try again later")
            self.rate_limited_retries += 1
            self.sleep(backoff(attempt, self.policy, retry_after))


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
