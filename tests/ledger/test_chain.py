"""Chain backends: persistence across restarts, single-process lock, loopback JSON-RPC node, errors,
deployment records and verification."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from eth_account import Account
from sqlalchemy.orm import Session

from healthledger.config import Settings
from healthledger.db import make_engine, upgrade
from healthledger.errors import ChainError, ConfigurationError
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import eip712
from healthledger.ledger.backends.embedded import EMBEDDED_CHAIN_ID, GENESIS_TIMESTAMP
from healthledger.ledger.backends.rpc_server import EmbeddedRPC, serve_in_thread
from healthledger.ledger.chain import Chain, ContractRevert, decode_revert, embedded_chain, rpc_chain
from healthledger.ledger.deploy import (
    REQUIRED_CONTRACTS,
    SERVICE_CONTRACTS,
    DeploymentRecord,
    attach_deployments,
    deploy_contracts,
    load_deployments,
    save_deployments,
    verify_deployment,
)
from tests.integration.anvil import free_port

HOUR = 3600


def _grant(chain: Chain, patient: Account, grantee: str, scope: bytes) -> None:
    registry = chain.contract("ConsentRegistry")
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    message = eip712.GrantMessage(patient.address, grantee, scope, now - 5, now + HOUR, 0, now + 600)
    r, vs = eip712.compact(
        eip712.sign(bytes(patient.key), eip712.Domain(chain.chain_id, registry.address), message)
    )
    chain.send(
        registry.functions.grantBySig(
            patient.address, grantee, scope, now - 5, now + HOUR, 0, now + 600, r, vs
        )
    )


def test_embedded_chain_keeps_grants_revokes_and_anchors_over_three_restarts(tmp_path: Path) -> None:
    keys = LocalFileKeyProvider(tmp_path / "keys")
    chain = embedded_chain(tmp_path, keys)
    operator, genesis = chain.operator.address, chain.w3.eth.get_block(0)
    assert chain.chain_id == EMBEDDED_CHAIN_ID
    assert genesis["timestamp"] == GENESIS_TIMESTAMP
    records = deploy_contracts(chain)
    kept, revoked = (Account.create(), Account.create().address, secrets.token_bytes(32)), None
    _grant(chain, *kept)
    patient2, grantee2, scope2 = Account.create(), Account.create().address, secrets.token_bytes(32)
    _grant(chain, patient2, grantee2, scope2)
    revoke = eip712.RevokeMessage(patient2.address, grantee2, scope2, 1, 2**40)
    r, vs = eip712.compact(
        eip712.sign(bytes(patient2.key), eip712.Domain(chain.chain_id, records[0].address), revoke)
    )
    chain.send(
        chain.contract("ConsentRegistry").functions.revokeBySig(
            patient2.address, grantee2, scope2, 1, 2**40, r, vs
        )
    )
    revoked = (patient2.address, grantee2, scope2)
    log_id, root = secrets.token_bytes(32), secrets.token_bytes(32)
    chain.send(chain.contract("AccessLogAnchor").functions.anchor(log_id, 7, root))
    head = chain.head()
    chain.close()

    for restart in range(3):
        chain = embedded_chain(tmp_path, LocalFileKeyProvider(tmp_path / "keys"))
        try:
            assert chain.operator.address == operator  # the same wrapped key, not a new one
            assert chain.w3.eth.get_block(0)["hash"] == genesis["hash"]
            assert chain.head() == head + restart
            for record in records:
                chain.register(record.name, record.address)
            verify_deployment(chain, records)
            registry, anchor = chain.contract("ConsentRegistry"), chain.contract("AccessLogAnchor")
            patient, grantee, scope = kept
            assert chain.call(registry.functions.isLive(patient.address, grantee, scope))
            assert not chain.call(registry.functions.isLive(*revoked))
            assert chain.call(registry.functions.nonceOf(*revoked)) == 2
            assert list(chain.call(anchor.functions.latest(log_id)))[:2] == [7 + restart, root]
            # the chain keeps accepting writes after each restart, and they persist too
            chain.send(anchor.functions.anchor(log_id, 8 + restart, root))
        finally:
            chain.close()


def test_embedded_chain_is_opened_by_one_process_only(tmp_path: Path) -> None:
    keys = LocalFileKeyProvider(tmp_path / "keys")
    first = embedded_chain(tmp_path, keys)
    try:
        with pytest.raises(ConfigurationError, match="chain node"):
            embedded_chain(tmp_path, keys)
    finally:
        first.close()
    embedded_chain(tmp_path, keys).close()  # free again once closed


def test_operator_key_is_stored_wrapped_not_in_clear(tmp_path: Path) -> None:
    chain = embedded_chain(tmp_path, LocalFileKeyProvider(tmp_path / "keys"))
    try:
        stored = (tmp_path / "keys" / "chain-operator.json").read_text()
        assert bytes(chain.operator.key).hex() not in stored
        assert chain.operator.address in stored
        assert (tmp_path / "keys" / "chain-operator.json").stat().st_mode & 0o077 == 0
    finally:
        chain.close()


def test_loopback_node_serves_the_embedded_chain_to_rpc_clients(tmp_path: Path) -> None:
    keys = LocalFileKeyProvider(tmp_path / "keys")
    embedded = embedded_chain(tmp_path, keys)
    server, url = serve_in_thread(EmbeddedRPC(embedded.w3.provider))  # type: ignore[arg-type]
    try:
        client = rpc_chain(url, keys, keys_dir=tmp_path / "keys", poll_seconds=0.01)
        assert client.chain_id == EMBEDDED_CHAIN_ID
        assert client.operator.address == embedded.operator.address
        records = deploy_contracts(client)
        verify_deployment(client, records)
        patient, grantee, scope = Account.create(), Account.create().address, secrets.token_bytes(32)
        _grant(client, patient, grantee, scope)
        registry = client.contract("ConsentRegistry")
        assert client.call(registry.functions.isLive(patient.address, grantee, scope))
        with pytest.raises(ContractRevert, match="InvalidNonce"):
            _grant(client, patient, grantee, scope)
        events = client.get_logs("ConsentRegistry", "ConsentGranted", from_block=0)
        assert [e["args"]["patient"] for e in events] == [patient.address]
        # keys never live in the node: signing methods are refused
        answer = requests.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction", "params": [{}]}, timeout=5
        ).json()
        assert answer["error"]["code"] == -32601
        batch = requests.post(
            url, json=[{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, {"id": 2}], timeout=5
        ).json()
        assert batch[0]["result"] == hex(EMBEDDED_CHAIN_ID) and batch[1]["error"]["code"] == -32600
        assert requests.post(url, data=b"{not json", timeout=5).json()["error"]["code"] == -32700
    finally:
        server.shutdown()
        server.server_close()
        embedded.close()


def test_unreachable_node_is_a_clear_chain_error(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="unreachable") as caught:
        rpc_chain(
            f"http://user:secret@127.0.0.1:{free_port()}/?key=abc",
            LocalFileKeyProvider(tmp_path / "keys"),
            keys_dir=tmp_path / "keys",
        )
    assert "secret" not in str(caught.value) and "abc" not in str(caught.value)


def test_revert_data_is_decoded_by_abi() -> None:
    error = decode_revert(
        "0x" + "08c379a0" + "20".rjust(64, "0") + "4".rjust(64, "0") + b"nope".hex().ljust(64, "0")
    )
    assert (error.error_name, error.error_args) == ("Error", ("nope",))
    assert decode_revert("0xdeadbeef").error_name == "UnknownRevert"
    assert decode_revert(None).error_name == "Reverted"


def test_deployment_is_recorded_and_verified(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    upgrade(engine)
    chain = embedded_chain(tmp_path, LocalFileKeyProvider(tmp_path / "keys"))
    try:
        with Session(engine) as session:
            with pytest.raises(ConfigurationError, match="chain deploy"):
                attach_deployments(chain, session)  # nothing deployed yet: refuse
            records = deploy_contracts(chain)
            save_deployments(session, records, now=datetime.now(UTC))
            session.commit()
            stored = load_deployments(session, chain.chain_id)
            assert {r.name for r in stored} == set(REQUIRED_CONTRACTS)
            assert all(r.deployment_block > 0 and r.code_hash.startswith("0x") for r in stored)
            assert load_deployments(session, chain.chain_id + 1) == []
            assert attach_deployments(chain, session) == stored
            assert chain.address_of("ConsentRegistry") == next(
                r.address for r in stored if r.name == "ConsentRegistry"
            )

        by_name = {r.name: r for r in records}
        rest = [r for r in records if r.name not in ("ConsentRegistry", "AccessLogAnchor")]
        swapped = [
            DeploymentRecord(
                chain.chain_id,
                "ConsentRegistry",
                by_name["AccessLogAnchor"].address,
                1,
                by_name["AccessLogAnchor"].code_hash,
            ),
            by_name["AccessLogAnchor"],
            *rest,
        ]
        with pytest.raises(ConfigurationError, match="not the contract this release ships"):
            verify_deployment(chain, swapped)
        empty_address = [
            DeploymentRecord(chain.chain_id, "ConsentRegistry", Account.create().address, 1, "0x00"),
            by_name["AccessLogAnchor"],
            *rest,
        ]
        with pytest.raises(ConfigurationError):
            verify_deployment(chain, empty_address)
        tampered = [
            DeploymentRecord(**{**by_name["ConsentRegistry"].__dict__, "code_hash": "0x" + "00" * 32}),
            by_name["AccessLogAnchor"],
            *rest,
        ]
        with pytest.raises(ConfigurationError, match="changed since"):
            verify_deployment(chain, tampered)
        other_admin = Account.create().address
        handed_over = deploy_contracts(chain, admin=other_admin)
        registry = chain.w3.eth.contract(
            address=handed_over[0].address, abi=chain.contract("ConsentRegistry").abi
        )
        assert chain.call(registry.functions.pendingAdmin()) == other_admin
    finally:
        chain.close()
        engine.dispose()


def test_sidecar_node_shares_the_embedded_chain_between_processes(settings: Settings) -> None:
    from healthledger.ledger.backends.sidecar import chain_node_sidecar
    from healthledger.ledger.chain import chain_for

    keys = LocalFileKeyProvider(settings.keys_dir)
    with chain_node_sidecar(settings) as url:
        assert url is not None and url.startswith("http://127.0.0.1:")
        with pytest.raises(ConfigurationError, match="chain node"):
            embedded_chain(settings.data_dir, keys)  # the node holds it
        through_node = chain_for(settings, keys)  # falls back to the advertised node
        assert through_node.chain_id == EMBEDDED_CHAIN_ID
        records = deploy_contracts(through_node)
        head = through_node.head()
    assert not (settings.data_dir / "chain" / "node.json").exists()
    direct = chain_for(settings, keys)  # node stopped: this process opens the chain itself
    try:
        assert direct.head() == head
        verify_deployment(direct, records)
    finally:
        direct.close()
    with chain_node_sidecar(settings.model_copy(update={"chain_url": "http://127.0.0.1:1"})) as none:
        assert none is None  # an external node is configured: nothing to start


_CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.chain import embedded_chain
data_dir = Path(sys.argv[1])
chain = embedded_chain(data_dir, LocalFileKeyProvider(data_dir / "keys"))
address, receipt = chain.deploy("AccessLogAnchor", chain.operator.address)
print(address, receipt["blockNumber"], flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no clean shutdown
"""


def test_a_killed_process_loses_no_mined_block(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr[-500:]
    address, block = done.stdout.split()
    chain = embedded_chain(
        tmp_path, LocalFileKeyProvider(tmp_path / "keys")
    )  # the lock died with the process
    try:
        assert chain.head() == int(block)
        chain.register("AccessLogAnchor", address)
        assert chain.call(chain.contract("AccessLogAnchor").functions.admin()) == chain.operator.address
    finally:
        chain.close()


def test_deploy_and_status_commands(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from healthledger.cli import cli

    env = {"HEALTHLEDGER_DATA_DIR": str(tmp_path / "var"), "HEALTHLEDGER_LOAD_DEMO_DATA": "false"}
    runner = CliRunner(env=env)
    first = runner.invoke(cli, ["chain", "deploy"])
    assert first.exit_code == 0, first.output
    assert "ConsentRegistry" in first.output and "AccessLogAnchor" in first.output
    again = runner.invoke(cli, ["chain", "deploy"])
    assert again.exit_code == 0 and "already deployed" in again.output
    status = runner.invoke(cli, ["chain", "status"])
    assert status.exit_code == 0 and "contracts: verified" in status.output
    unreachable = runner.invoke(
        cli, ["chain", "status"], env={**env, "HEALTHLEDGER_CHAIN_URL": f"http://127.0.0.1:{free_port()}"}
    )
    assert unreachable.exit_code == 1 and "unreachable" in unreachable.output
    assert "Traceback" not in unreachable.output


def test_start_up_check_deploys_on_a_fresh_embedded_chain_only(tmp_path: Path, anvil_url: str) -> None:
    from healthledger.ledger.deploy import ensure_deployment

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    upgrade(engine)
    keys = LocalFileKeyProvider(tmp_path / "keys")
    try:
        chain = embedded_chain(tmp_path, keys)
        try:
            with Session(engine) as session:
                first = ensure_deployment(chain, session, embedded=True, now=datetime.now(UTC))
                assert (
                    ensure_deployment(chain, session, embedded=True, now=datetime.now(UTC)) == first
                )  # no redeploy
        finally:
            chain.close()
        external = rpc_chain(anvil_url, keys, keys_dir=tmp_path / "keys")
        with Session(engine) as session, pytest.raises(ConfigurationError, match="chain deploy"):
            ensure_deployment(external, session, embedded=False, now=datetime.now(UTC))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_deployment_records_on_postgresql(postgres_schema_url: tuple[str, str]) -> None:
    url, _schema = postgres_schema_url
    engine = make_engine(url)
    try:
        upgrade(engine)
        record = DeploymentRecord(
            EMBEDDED_CHAIN_ID, "ConsentRegistry", Account.create().address, 2**40, "0x" + "ab" * 32
        )
        with Session(engine) as session:
            save_deployments(session, [record], now=datetime.now(UTC))
            session.commit()
            moved = DeploymentRecord(**{**record.__dict__, "address": Account.create().address})
            save_deployments(session, [moved], now=datetime.now(UTC))  # redeploy replaces the row
            session.commit()
            assert load_deployments(session, EMBEDDED_CHAIN_ID) == [moved]
    finally:
        engine.dispose()


def test_role_and_pause_commands(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from eth_utils import keccak

    from healthledger.cli import cli

    env = {"HEALTHLEDGER_DATA_DIR": str(tmp_path / "var"), "HEALTHLEDGER_LOAD_DEMO_DATA": "false"}
    runner = CliRunner(env=env)
    assert runner.invoke(cli, ["chain", "deploy"]).exit_code == 0
    relayer = Account.create().address
    granted = runner.invoke(cli, ["chain", "role", "grant", "relayer", relayer])
    assert granted.exit_code == 0 and "ConsentRegistry" in granted.output, granted.output
    assert runner.invoke(cli, ["chain", "role", "grant", "AUDITOR", relayer]).exit_code == 2  # which contract?
    assert runner.invoke(cli, ["chain", "role", "grant", "RELAYER", "0x1234"]).exit_code == 2
    paused = runner.invoke(cli, ["chain", "pause"])
    assert paused.exit_code == 0 and paused.output.count("paused") == len(SERVICE_CONTRACTS), paused.output
    assert "already paused" in runner.invoke(cli, ["chain", "pause", "--contract", "AccessLogAnchor"]).output
    assert runner.invoke(cli, ["chain", "pause", "--resume"]).exit_code == 0

    chain = embedded_chain(tmp_path / "var", LocalFileKeyProvider(tmp_path / "var" / "keys"))
    try:
        engine = make_engine(f"sqlite:///{(tmp_path / 'var' / 'healthledger.db').resolve()}")
        with Session(engine) as session:
            attach_deployments(chain, session)
        engine.dispose()
        registry, anchor = chain.contract("ConsentRegistry"), chain.contract("AccessLogAnchor")
        assert chain.call(registry.functions.hasRole(keccak(text="RELAYER"), relayer))
        assert not chain.call(registry.functions.paused()) and not chain.call(anchor.functions.paused())
    finally:
        chain.close()
    revoked = runner.invoke(cli, ["chain", "role", "revoke", "RELAYER", relayer])
    assert revoked.exit_code == 0, revoked.output
