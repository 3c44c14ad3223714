"""Crash: kill -9 the whole service in the middle of bulk writes (transaction Bundles, creates) and of a burst of
consent grants, then, separately, the chain node in the middle of a grant burst. After the restart every
acknowledged write is there, no transaction is half-written, every stored version opens, every queued chain write
is confirmed exactly once, and `audit verify` passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from serving import Served, wait_for
from support import ROOT

from healthledger.app import bootstrap
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.ledger import eip712, relayer
from healthledger.ledger.backends.embedded import EMBEDDED_CHAIN_ID
from tests.ledger.test_outbox import signed_grant
from tests.reliability.traffic import HOME, Client, Tally, mixed_traffic, register_ehr, token

pytestmark = pytest.mark.slow


class _Domain:
    """What signed_grant needs of a chain: its id and the registry's address (read from the database)."""

    def __init__(self, engine: sa.Engine) -> None:
        with engine.connect() as conn:
            self.registry = conn.execute(sa.text("select address from chain_contracts where name = 'ConsentRegistry'")).scalar_one()
        self.chain_id = EMBEDDED_CHAIN_ID

    def address_of(self, _name: str) -> str:
        return str(self.registry)


def _grant_burst(engine: sa.Engine, prefix: str, n: int, stop: threading.Event, queued: list[int]) -> None:
    """Consent changes acknowledged one by one (relayer.submit_grant in its own transaction, as $sign does)."""
    sessions = session_factory(engine)
    domain = _Domain(engine)
    for i in range(n):
        if stop.is_set():
            return
        with sessions.begin() as s:
            queued.append(relayer.submit_grant(s, eip712.Domain(domain.chain_id, domain.registry),
                                               *signed_grant(domain, f"{prefix}:{i}"), now=time.time()))  # type: ignore[arg-type]
        time.sleep(0.02)


def _outbox(engine: sa.Engine, ids: list[int]) -> dict[str, int]:
    """States of the queued grants (anchors go through the outbox too, and are not counted here)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select id, state from chain_outbox")).all()
    wanted = set(ids)
    states: dict[str, int] = {}
    for item, state in rows:
        if item in wanted:
            states[state] = states.get(state, 0) + 1
    return states


def _on_chain_grants(served: Served) -> int:
    """ConsentGranted events on the chain, counted by the CLI through the running node."""
    script = ("from healthledger.config import Settings; from healthledger.keys import key_provider_for;"
              "from healthledger.ledger.chain import chain_for; from healthledger.db import make_engine;"
              "from sqlalchemy.orm import Session; from healthledger.ledger.deploy import attach_deployments;"
              "s = Settings.load(); c = chain_for(s, key_provider_for('file', s.keys_dir));"
              "e = make_engine(s.database_url); r = attach_deployments(c, Session(e));"
              "print(len(c.get_logs('ConsentRegistry', 'ConsentGranted', from_block=min(x.deployment_block for x in r))))")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")},
           "HEALTHLEDGER_DATA_DIR": str(served.data_dir)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


def _audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")},
           "HEALTHLEDGER_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "healthledger.cli", "audit", "verify"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_kill_9_during_writes_and_grants_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    settings = Settings(data_dir=data_dir, load_demo_data=False, home_organization=HOME)
    bootstrap(settings)
    engine = make_engine(settings.database_url)
    client_id, secret = register_ehr(session_factory(engine))
    env = {"HEALTHLEDGER_HOME_ORGANIZATION": HOME}
    served = Served(data_dir, env=env, args=["--workers", "2"]).start(wait="/readyz")
    faults: list[str] = []
    queued: list[int] = []
    tally = Tally()
    try:
        bearer = token(served.port, client_id, secret)
        stop = threading.Event()
        grants = threading.Thread(target=_grant_burst, args=(engine, "crash", 60, stop, queued))
        traffic = threading.Thread(target=mixed_traffic, args=(served.port, bearer, 8.0, 4, tally),
                                   kwargs={"bundle_share": 0.3})
        grants.start()
        traffic.start()
        time.sleep(4.0)
        os.killpg(served.process.pid, signal.SIGKILL)  # type: ignore[union-attr]  # the host dies mid-burst
        served.process.wait(timeout=10)  # type: ignore[union-attr]
        faults.append("kill -9 serve (master, gunicorn workers, chain node, ledger worker)")
        traffic.join(timeout=60)
        stop.set()
        grants.join(timeout=60)
        served._keep_log()

        served = Served(data_dir, env=env, args=["--workers", "2"]).start(wait="/readyz")
        # Second fault: the chain node alone, while a new burst of grants is sent.
        stop2 = threading.Event()
        grants2 = threading.Thread(target=_grant_burst, args=(engine, "node", 30, stop2, queued))
        grants2.start()
        time.sleep(0.5)
        node = served.node_pid()
        assert node is not None
        os.kill(node, signal.SIGKILL)
        faults.append("kill -9 chain node during a grant burst")
        grants2.join(timeout=60)
        assert wait_for(lambda: _outbox(engine, queued) == {"confirmed": len(queued)}, 120), _outbox(engine, queued)

        reader = Client(served.port, token(served.port, client_id, secret))
        missing = [(t, i) for t, i in tally.acknowledged if reader.call("GET", f"/fhir/{t}/{i}")[0] != 200]
        assert missing == []
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("select resource_id from store_resources "
                                              "where resource_type = 'Observation'")).scalars())
            rows = conn.execute(sa.text("select resource_type, resource_id from store_resources")).all()
        half = [ids for _ack, ids in tally.bundles if 0 < sum(i in stored for i in ids) < len(ids)]
        assert half == []  # each transaction Bundle is all there or not at all
        unreadable = [r for r in rows if reader.call("GET", f"/fhir/{r[0]}/{r[1]}")[0] != 200]
        assert unreadable == []  # every stored version opens
        assert _on_chain_grants(served) == len(queued)  # each queued grant executed exactly once
        unacknowledged = sum(1 for ack, _ in tally.bundles if not ack)
    finally:
        served.kill()
    verified = _audit_verify(data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    print(f"\ncrash: faults {len(faults)} ({'; '.join(faults)}); {tally.requests} requests before the kill, "
          f"{len(tally.acknowledged)} writes acknowledged, lost 0; {len(tally.bundles)} transaction Bundles "
          f"({unacknowledged} not acknowledged: in flight at the kill or refused after it), half-written 0; {len(rows)} stored versions open; "
          f"{len(queued)} grants queued, confirmed once each, duplicates 0; audit verify intact")
    engine.dispose()


