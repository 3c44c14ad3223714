"""Outages: the chain node, the database and the key provider each go away and come back.

- Chain: reads that need fresh consent fail closed within the policy's bound; chain writes wait in the outbox and
  drain when the node returns, each sent once.
- Database: a clean 503 OperationOutcome while it is away, service again without a restart.
- Key provider: fail closed with a clear 503, readiness says which dependency is missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from healthledger.app import bootstrap, create_app
from healthledger.auth.tokens import register_client
from healthledger.config import Settings
from healthledger.db import session_factory
from healthledger.errors import HealthLedgerError
from healthledger.keys import key_provider_for
from healthledger.ledger import indexer, outbox, relayer
from healthledger.ledger.chain import chain_for
from healthledger.ledger.service import check_contracts
from tests.ledger.fixtures_relay import AnvilNode
from tests.ledger.test_outbox import domain_of, signed_grant
from tests.reliability.faults import TcpProxy

DEV = {"Authorization": "Bearer dev-token", "Content-Type": "application/fhir+json"}
HOME = "Organization/home-hospital"
BOUND = 2.0  # the consent policy's max_index_age_seconds in these tests


def _token(app: Flask, client_id: str, secret: str) -> dict[str, str]:
    response = app.test_client().post("/auth/token", data={
        "grant_type": "client_credentials", "scope": "system/*.rs", "client_id": client_id, "client_secret": secret})
    assert response.status_code == 200, response.json
    return {"Authorization": f"Bearer {response.json['access_token']}"}


def _system_client(app: Flask) -> dict[str, str]:
    """A client of the home organisation (a treating system: reads under TREAT unless the index is stale)."""
    sessions = session_factory(app.extensions["healthledger.engine"])
    with sessions.begin() as s:
        client, secret = register_client(s, name="EHR", scopes="system/*.rs", role="system", organization=HOME,
                                         with_secret=True, now=datetime.now(UTC))
    assert secret is not None
    return _token(app, client.client_id, secret)


class LedgerLoop:
    """The ledger worker's loop (outbox + indexer) on a thread, as `relay work` runs it."""

    def __init__(self, settings: Settings, from_block: int, records: Any) -> None:
        self.chain = chain_for(settings, key_provider_for("file", settings.keys_dir))
        for r in records:
            self.chain.register(r.name, r.address)
        from healthledger.db import make_engine

        self.engine = make_engine(settings.database_url)
        self.sessions = session_factory(self.engine)
        self.indexer = indexer.Indexer(self.sessions, self.chain, from_block=from_block)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.policy = outbox.OutboxPolicy(base_backoff_seconds=0.2, max_backoff_seconds=1.0, receipt_poll_seconds=0.1,
                                          rebroadcast_after_seconds=1.0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                outbox.process_outbox(self.sessions, self.chain, time.time(), policy=self.policy)
                self.indexer.run_once(time.time())
            except HealthLedgerError as exc:
                self.errors.append(exc.message)
            self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        self.chain.close()
        self.engine.dispose()


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[AnvilNode]:
    anvil = AnvilNode(state_file=tmp_path / "anvil-state.json").start()
    yield anvil
    anvil.stop()


@pytest.mark.anvil
def test_chain_outage_fails_closed_in_bound_and_loses_no_write(tmp_path: Path, node: AnvilNode) -> None:
    settings = Settings(data_dir=tmp_path / "var", chain_url=node.url, home_organization=HOME, load_demo_data=False,
                        consent_policy={"max_index_age_seconds": BOUND}, chain_network="anvil")
    bootstrap(settings)
    operator = chain_for(settings, key_provider_for("file", settings.keys_dir))
    node.rpc("anvil_setBalance", [operator.operator.address, hex(10**22)])
    operator.close()
    records = check_contracts(settings, embedded=True)
    deployed_at = min(r.deployment_block for r in records)
    loop = LedgerLoop(settings, deployed_at, records)
    app = create_app(settings)
    client = app.test_client()
    try:
        patient = client.post("/fhir/Patient", json={"resourceType": "Patient", "managingOrganization":
                                                     {"reference": HOME}}, headers=DEV).json["id"]
        ehr = _system_client(app)
        url = f"/fhir/Patient/{patient}"
        assert _wait(lambda: client.get(url, headers=ehr).status_code == 200, 10)
        with loop.sessions.begin() as s:
            for i in range(3):
                relayer.submit_grant(s, domain_of(loop.chain), *signed_grant(loop.chain, f"outage:{i}"), now=time.time())
        assert _wait(lambda: _states(loop) == {"confirmed": 3}, 20), _states(loop)

        node.stop()  # the chain goes away
        down_at = time.monotonic()
        assert _wait(lambda: client.get(url, headers=ehr).status_code == 404, BOUND + 5)
        failed_closed_after = time.monotonic() - down_at
        assert failed_closed_after <= BOUND + 2.0  # the bound plus one indexer poll and a read
        ready = client.get("/readyz")  # degraded, not unready: a shared chain outage must not drain every replica
        assert ready.status_code == 200 and ready.json["status"] == "degraded", ready.json
        assert ready.json["checks"]["consent_index"]["ok"] is False
        assert ready.json["checks"]["consent_index"]["required"] is False
        assert client.get(url, headers=DEV).status_code == 200  # the service itself (unrestricted) still reads
        with loop.sessions.begin() as s:  # consent changes keep being accepted, into the outbox
            for i in range(3, 6):
                relayer.submit_grant(s, domain_of(loop.chain), *signed_grant(loop.chain, f"outage:{i}"), now=time.time())
        time.sleep(1.5)
        assert _states(loop) == {"confirmed": 3, "queued": 3}  # waiting, not failed

        node.start()  # same port, state reloaded
        assert _wait(lambda: _states(loop) == {"confirmed": 6}, 30), _states(loop)
        assert _wait(lambda: client.get(url, headers=ehr).status_code == 200, 10)
        events = loop.chain.get_logs("ConsentRegistry", "ConsentGranted", from_block=deployed_at)
        assert len(events) == 6 and len({e["transactionHash"] for e in events}) == 6  # each once
        print(f"\nchain outage: reads failed closed {failed_closed_after:.1f} s after the node went (bound {BOUND} s), "
              f"3 grants queued during the outage, 6 confirmed once each, lost 0")
    finally:
        loop.close()
        app.extensions["healthledger.engine"].dispose()


def _states(loop: LedgerLoop) -> dict[str, int]:
    with loop.engine.connect() as conn:
        return dict(conn.execute(sa.text("select state, count(*) from chain_outbox group by state")).all())


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.mark.postgres
def test_database_outage_is_a_clean_503_and_recovers_without_restart(
    postgres_module_schema_url: tuple[str, str], tmp_path: Path
) -> None:
    url, _schema = postgres_module_schema_url
    proxy = TcpProxy("127.0.0.1", 5432)
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = Settings(data_dir=tmp_path / "var", database_url=proxied, load_demo_data=False, tenant="db-outage")
    bootstrap(settings)
    app = create_app(settings)
    client = app.test_client()
    try:
        created = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=DEV)
        assert created.status_code == 201
        path = f"/fhir/Patient/{created.json['id']}"
        proxy.cut()
        statuses = []
        for call in (lambda: client.get(path, headers=DEV),
                     lambda: client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=DEV),
                     lambda: client.get("/fhir/Patient?_count=5", headers=DEV)):
            response = call()
            statuses.append(response.status_code)
            assert response.status_code == 503, response.data[:300]
            assert response.json["resourceType"] == "OperationOutcome"
            assert response.json["issue"][0]["code"] == "transient" and response.headers.get("Retry-After")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and not ready.json["checks"]["database"]["ok"]
        assert client.get("/healthz").status_code == 200  # alive: no restart wanted
        proxy.restore()
        assert _wait(lambda: client.get(path, headers=DEV).status_code == 200, 10)
        assert client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=DEV).status_code == 201
        print(f"\ndatabase outage: {len(statuses)} requests answered 503 OperationOutcome, recovered without restart")
    finally:
        proxy.close()
        app.extensions["healthledger.engine"].dispose()


class _UnreachableKms:
    """A KMS that stopped answering: every call times out."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def active_kek_id(self) -> str:
        return str(self.real.active_kek_id())

    def kek_ids(self) -> list[str]:
        raise TimeoutError("kms.internal:443 timed out")

    def wrap(self, key: bytes, context: bytes = b"") -> Any:
        raise TimeoutError("kms.internal:443 timed out")

    def unwrap(self, wrapped: Any, context: bytes = b"") -> bytes:
        raise TimeoutError("kms.internal:443 timed out")


def test_key_provider_unavailable_fails_closed_with_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    bootstrap(settings)
    writer = create_app(settings)
    created = writer.test_client().post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Kmsdown"}]},
                                        headers=DEV)
    assert created.status_code == 201
    app = create_app(settings)  # a fresh worker: no data key cached yet
    store = app.extensions["healthledger.store"]
    store.keyring.provider = _UnreachableKms(store.keyring.provider)
    client = app.test_client()
    read = client.get(f"/fhir/Patient/{created.json['id']}", headers=DEV)
    assert read.status_code == 503 and read.json["issue"][0]["diagnostics"] == "the key provider is unavailable; retry later"
    write = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Neverstored"}]}, headers=DEV)
    assert write.status_code == 503
    engine = app.extensions["healthledger.engine"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from store_resources")).scalar_one() == 1  # nothing half-written
    for application in (writer, app):
        application.extensions["healthledger.engine"].dispose()
