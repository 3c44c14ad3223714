"""The chain side of `healthledger serve`: node, contracts, and the ledger worker, as sidecar processes.

- With no `chain_url`, the embedded chain runs in its own process (`healthledger chain node`), because
  py-evm's state lives in one process and gunicorn forks several workers.
- At start the contracts are checked (and, on a fresh embedded chain, deployed): the service refuses
  to start on a chain whose code is not ours.
- One worker process (`healthledger relay work`) submits the durable outbox, follows contract events
  into the consent index and anchors the access log every `anchor_interval_seconds`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from healthledger.config import Settings
from healthledger.db import make_engine
from healthledger.keys import key_provider_for
from healthledger.ledger.backends.sidecar import chain_node_sidecar, stop_process
from healthledger.ledger.chain import chain_for
from healthledger.ledger.deploy import DeploymentRecord, ensure_deployment


def check_contracts(settings: Settings, *, embedded: bool) -> list[DeploymentRecord]:
    """Verified deployments for the configured chain (deploying on a fresh embedded chain)."""
    engine = make_engine(settings.database_url)
    chain = chain_for(settings, key_provider_for(settings.key_provider, settings.keys_dir))
    try:
        with Session(engine) as session:
            return ensure_deployment(chain, session, embedded=embedded, now=datetime.now(UTC))
    finally:
        chain.close()
        engine.dispose()


@contextmanager
def ledger_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "HEALTHLEDGER_DATA_DIR": str(settings.data_dir.resolve()),
           "HEALTHLEDGER_DATABASE_URL": settings.database_url, "HEALTHLEDGER_CHAIN_URL": settings.chain_url,
           "HEALTHLEDGER_KEY_PROVIDER": settings.key_provider, "HEALTHLEDGER_TENANT": settings.tenant}  # fmt: skip
    command = [sys.executable, "-m", "healthledger.cli", "relay", "work",
               "--anchor-interval", str(settings.anchor_interval_seconds)]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    try:
        yield process
    finally:
        stop_process(process)


@contextmanager
def ledger_sidecars(settings: Settings) -> Iterator[Settings]:
    """Yield the settings the web workers should run with (chain_url pointing at the node)."""
    with chain_node_sidecar(settings) as node_url:
        run = settings if node_url is None else settings.model_copy(update={"chain_url": node_url})
        check_contracts(run, embedded=not settings.chain_url)
        with ledger_worker(run):
            yield run
