"""Load: mixed traffic (creates, transaction Bundles, reads, searches) from a SMART client whose every request is
decided by the consent engine, for a fixed time against `serve` on loopback: zero 5xx, nearly every request of each
kind answered with its success status (4xx counted by kind), reads and searches give back what was written, and
every acknowledged write reads back afterwards as it was sent; requests and p50/p99 printed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serving import Served

from healthledger.app import bootstrap
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from tests.reliability.traffic import (
    HOME,
    SUCCESS,
    Client,
    Tally,
    differs,
    mixed_traffic,
    register_ehr,
    token,
)

pytestmark = pytest.mark.slow
SECONDS = 15.0
THREADS = 6
MIN_SUCCESS = 0.98  # of each kind: nothing here should be refused (a few 4xx would still be printed and looked at)


def test_mixed_load_has_no_5xx_and_loses_no_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    settings = Settings(data_dir=data_dir, load_demo_data=False, home_organization=HOME)
    bootstrap(settings)
    engine = make_engine(settings.database_url)
    client_id, secret = register_ehr(session_factory(engine))
    served = Served(data_dir, env={"HEALTHLEDGER_HOME_ORGANIZATION": HOME}, args=["--workers", "2"]).start(wait="/readyz")
    try:
        bearer = token(served.port, client_id, secret)
        tally = Tally()
        mixed_traffic(served.port, bearer, SECONDS, THREADS, tally, bundle_share=0.07)
        assert tally.server_errors() == 0, tally.statuses
        assert not tally.errors, tally.errors
        assert set(tally.by_kind) == set(SUCCESS), tally.by_kind  # every kind was exercised
        assert {k: tally.success_share(k) for k in SUCCESS if tally.success_share(k) < MIN_SUCCESS} == {}, tally.by_kind
        assert not tally.mismatched, tally.mismatched  # a 200 read or search gave back something else

        def read_back(part: list[tuple[str, str, dict[str, object]]]) -> list[tuple[str, str, int]]:
            reader = Client(served.port, bearer)
            lost = []
            for resource_type, resource_id, sent in part:
                status, body = reader.call("GET", f"/fhir/{resource_type}/{resource_id}")
                if status != 200 or differs({**sent, "id": resource_id}, body):
                    lost.append((resource_type, resource_id, status))
            return lost

        parts = [tally.acknowledged[i::THREADS] for i in range(THREADS)]
        with ThreadPoolExecutor(THREADS) as pool:
            lost = [item for found in pool.map(read_back, parts) for item in found]
        assert lost == []  # every acknowledged write is there, as written
        print(f"\nload: {tally.requests} requests in {SECONDS:.0f} s ({tally.requests / SECONDS:.0f}/s, {THREADS} clients, "
              f"2 workers), 5xx 0, {len(tally.acknowledged)} writes acknowledged, read back as written {len(tally.acknowledged)}, "
              f"lost 0; {tally.summary()}")
    finally:
        assert served.stop() == 0
        engine.dispose()
