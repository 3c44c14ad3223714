"""Load: mixed traffic (creates, transaction Bundles, reads, searches) from a SMART client whose every request is
decided by the consent engine, for a fixed time against `serve` on loopback: zero 5xx, every acknowledged write
readable afterwards; requests and p50/p99 printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving import Served

from healthledger.app import bootstrap
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from tests.reliability.traffic import HOME, Client, Tally, mixed_traffic, register_ehr, token

pytestmark = pytest.mark.slow
SECONDS = 15.0
THREADS = 6


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
        reader = Client(served.port, bearer)
        lost = [(t, i) for t, i in tally.acknowledged if reader.call("GET", f"/fhir/{t}/{i}")[0] != 200]
        assert lost == []
        print(f"\nload: {tally.requests} requests in {SECONDS:.0f} s ({tally.requests / SECONDS:.0f}/s, {THREADS} clients, "
              f"2 workers), 5xx 0, {len(tally.acknowledged)} writes acknowledged, lost 0; {tally.summary()}")
    finally:
        assert served.stop() == 0
        engine.dispose()
