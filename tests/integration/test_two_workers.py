"""Two ledger workers (two replicas' `healthledger relay work`) against one PostgreSQL database and one chain node:
every chain write is sent exactly once, every event indexed once, the access log anchored without conflict, and
when the lease holder is killed the other takes the indexing over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from serving import wait_for
from support import ROOT, append_to_session_log

from healthledger.app import bootstrap
from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_access
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.keys import key_provider_for
from healthledger.ledger import relayer
from healthledger.ledger.chain import chain_for
from healthledger.ledger.service import check_contracts
from tests.ledger.test_outbox import domain_of, signed_grant

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
GRANTS = 24


def _env(data_dir: Path, url: str, chain_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
    env.update(HEALTHLEDGER_DATA_DIR=str(data_dir), HEALTHLEDGER_DATABASE_URL=url, HEALTHLEDGER_CHAIN_URL=chain_url,
               HEALTHLEDGER_LOAD_DEMO_DATA="false", HEALTHLEDGER_TENANT="two-workers")
    return env


def test_two_workers_share_one_database_and_one_node(postgres_module_schema_url: tuple[str, str], tmp_path: Path) -> None:
    url, _schema = postgres_module_schema_url
    a, b = tmp_path / "replica-a", tmp_path / "replica-b"
    settings = Settings(data_dir=a, database_url=url, load_demo_data=False, tenant="two-workers")
    bootstrap(settings)
    node_log = Path(tempfile.mkstemp(suffix=".log")[1])
    node = subprocess.Popen([sys.executable, "-m", "healthledger.cli", "chain", "node", "--port", "0"], cwd=ROOT,
                            env=_env(a, url, ""), stdout=subprocess.DEVNULL, stderr=open(node_log, "ab"))  # noqa: SIM115
    workers: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []
    engine = make_engine(url)
    try:
        assert wait_for(lambda: (a / "chain" / "node.json").exists(), 60)
        chain_url = json.loads((a / "chain" / "node.json").read_text())["url"]
        run = settings.model_copy(update={"chain_url": chain_url})
        records = check_contracts(run, embedded=True)  # deploys on the fresh chain, as serve does
        deployed_at = min(r.deployment_block for r in records)
        shutil.copytree(a / "keys", b / "keys")  # one operator key for both replicas (a KMS in production)
        chain = chain_for(run, key_provider_for("file", a / "keys"))
        for r in records:
            chain.register(r.name, r.address)
        sessions = session_factory(engine)
        with sessions.begin() as s:
            for i in range(GRANTS):
                relayer.submit_grant(s, domain_of(chain), *signed_grant(chain, f"two:{i}"), now=time.time())
        for i in range(20):
            with engine.begin() as conn:
                record_access(conn, AccessEntry(
                    time=datetime.now(UTC), actor="ehr", organization="Organization/h", role="system", purpose="TREAT",
                    action="read", resource_type="Patient", resource_id=f"p{i}", patient_pseudonym="cd" * 16,
                    decision="permit", reason="policy"))  # fmt: skip

        for data_dir in (a, b):
            out = Path(tempfile.mkstemp(suffix=".log")[1])
            outputs.append(out)
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "healthledger.cli", "relay", "work", "--interval", "0.2", "--anchor-interval", "1"],
                cwd=ROOT, env=_env(data_dir, url, chain_url), stdout=open(out, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            ))

        def counts() -> dict[str, int]:
            with engine.connect() as conn:
                return dict(conn.execute(sa.text("select state, count(*) from chain_outbox group by state")).all())

        def holder() -> str | None:
            with engine.connect() as conn:
                return conn.execute(sa.text("select owner from ops_leases where name = 'ledger-indexer' "
                                            "and expires_at > extract(epoch from now())")).scalar()

        assert wait_for(lambda: holder() is not None, 30)
        # Kill the lease holder outright half-way: the other worker takes the indexing over after the ttl.
        assert wait_for(lambda: counts().get("confirmed", 0) >= GRANTS // 2, 60), counts()
        first = holder()
        victim = next(w for w in workers if f":{w.pid}:" in (first or ""))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        taken_at = time.monotonic()
        assert wait_for(lambda: holder() not in (None, first), 30), "no worker took the lease over"
        takeover = time.monotonic() - taken_at

        def settled() -> bool:
            with engine.connect() as conn:
                indexed = conn.execute(sa.text("select count(*) from consent_grants")).scalar_one()
                anchored = conn.execute(sa.text("select coalesce(max(tree_size), 0) from log_anchors")).scalar_one()
            left = counts()
            return indexed == GRANTS and anchored >= 20 and left.get("queued", 0) + left.get("sent", 0) == 0

        assert wait_for(settled, 90), counts()
        with engine.connect() as conn:
            items = conn.execute(sa.text("select state, nonce, tx_hash, kind from chain_outbox")).all()
            events = conn.execute(sa.text("select tx_hash, log_index from consent_grants")).all()
            checkpoints = conn.execute(sa.text("select size from audit_checkpoints")).scalars().all()
        assert {i.state for i in items} == {"confirmed"}
        assert len({i.nonce for i in items}) == len(items) and len({i.tx_hash for i in items}) == len(items)
        assert len(set(events)) == len(events) == GRANTS  # indexed once each
        assert len(set(checkpoints)) == len(checkpoints)
        on_chain = chain.get_logs("ConsentRegistry", "ConsentGranted", from_block=deployed_at)
        assert len(on_chain) == GRANTS  # each grant executed exactly once on-chain
        print(f"\ntwo workers: {len(items)} chain writes confirmed once each ({GRANTS} grants, "
              f"{len(checkpoints)} anchors), lease taken over {takeover:.1f} s after kill -9 of its holder")
        chain.close()
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=20)
        node.terminate()
        node.wait(timeout=20)
        for out in [*outputs, node_log]:
            append_to_session_log(out.read_text(errors="replace"))
            out.unlink()
        engine.dispose()
