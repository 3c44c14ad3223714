"""Anchoring the access log on the embedded chain through the outbox, and `audit verify` against it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from healthledger.audit.anchoring import anchor_batch, anchors_on_chain, chain_log_id
from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_access, tree_head, verify_log
from healthledger.audit.models import AccessLogEntry
from healthledger.cli import cli
from healthledger.db import make_engine, session_factory, upgrade
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.chain import embedded_chain
from healthledger.ledger.deploy import deploy_contracts
from healthledger.ledger.outbox import drain, status

T0 = datetime(2026, 11, 23, 9, tzinfo=UTC)


def entry(i: int) -> AccessEntry:
    return AccessEntry(time=T0 + timedelta(milliseconds=i), actor="ehr", organization="Organization/h1",
                       role="system", purpose="TREAT", action="read", resource_type="Observation",
                       resource_id=f"o{i}", patient_pseudonym="cd" * 16, decision="permit", reason="policy")


def _anchor(sessions, chain, now: datetime) -> tuple[int, dict]:
    with sessions.begin() as s:
        cp = anchor_batch(s, now, tenant="t1")
        assert cp is not None
        size, item = cp.size, int(cp.outbox_item)
    drain(sessions, chain, lambda: now.timestamp(), max_passes=50)
    with sessions() as s:
        st = status(s, item)
    assert st.state == "confirmed", st
    return size, chain.w3.eth.get_transaction_receipt(st.tx_hash)


def test_batch_of_1024_anchors_under_50_gas_per_entry(tmp_path) -> None:
    """Issue 4's budget: at most 50 gas per entry amortised at batch size 1,024 (steady state:
    the first head of a log also pays for creating its storage, see benchmarks/gas.py)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    sessions = session_factory(engine)
    chain = embedded_chain(tmp_path / "var", LocalFileKeyProvider(tmp_path / "var" / "keys"))
    try:
        for r in deploy_contracts(chain):
            chain.register(r.name, r.address)
        with sessions.begin() as s:
            record_access(s, entry(0))
        assert _anchor(sessions, chain, T0)[0] == 1
        with sessions.begin() as s:
            for i in range(1, 1025):
                record_access(s, entry(i))
        size, receipt = _anchor(sessions, chain, T0 + timedelta(minutes=1))
        assert size == 1025
        assert receipt["gasUsed"] / 1024 <= 50, receipt["gasUsed"]
        with sessions() as s:
            anchors = anchors_on_chain(chain, tenant="t1")
            assert [a.size for a in anchors] == [1, 1025] and anchors[-1].root == tree_head(s).root
            assert anchors_on_chain(chain, tenant="another-tenant") == []
            assert verify_log(s, anchors).ok
        with sessions.begin() as s:
            s.execute(update(AccessLogEntry).where(AccessLogEntry.leaf_index == 700).values(body=b"{}"))
        with sessions() as s:
            report = verify_log(s, anchors_on_chain(chain, tenant="t1"))
            assert not report.ok and report.problem.leaf_index == 700 and "block" in report.problem.message
    finally:
        chain.close()
        engine.dispose()


def test_log_id_is_tenant_scoped_and_opaque() -> None:
    assert chain_log_id("a") != chain_log_id("b") and len(chain_log_id("a")) == 32
    assert b"a/access" not in chain_log_id("a")


@pytest.mark.slow
def test_cli_anchor_and_verify(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    runner = CliRunner()
    assert runner.invoke(cli, ["chain", "deploy"]).exit_code == 0
    r = runner.invoke(cli, ["anchor"])
    assert r.exit_code == 0 and "nothing new to anchor" in r.output
    engine = make_engine(f"sqlite:///{(tmp_path / 'var' / 'healthledger.db').resolve()}")
    sessions = session_factory(engine)
    with sessions.begin() as s:
        ids = [record_access(s, entry(i)) for i in range(5)]
    r = runner.invoke(cli, ["anchor"])
    assert r.exit_code == 0 and "size 5" in r.output and "confirmed" in r.output, r.output
    with sessions.begin() as s:
        record_access(s, entry(5))
    r = runner.invoke(cli, ["anchor"])
    assert r.exit_code == 0 and "size 6" in r.output, r.output
    r = runner.invoke(cli, ["audit", "verify", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) | {"problem": None} == {"intact": True, "entries_checked": 6, "anchors_checked": 2,
                                                         "problem": None}
    proof = json.loads(runner.invoke(cli, ["audit", "prove", str(ids[2])]).output)
    assert proof["leaf_index"] == 2 and proof["tree_size"] == 6
    with sessions.begin() as s:
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == ids[3]).values(body=b"{}"))
    r = runner.invoke(cli, ["audit", "verify"])
    assert r.exit_code == 1 and "NOT INTACT (altered)" in r.output and "size 5" in r.output, r.output
    engine.dispose()


def test_the_worker_sequences_a_backlog_larger_than_one_batch(migrated_sqlite_url) -> None:
    from healthledger.audit.log import record_accesses
    from healthledger.ledger import relay_commands

    engine = make_engine(migrated_sqlite_url)
    sessions = session_factory(engine)
    backlog = relay_commands.SEQUENCE_BATCH * 2 + 7
    with sessions.begin() as s:
        record_accesses(s, [entry(i) for i in range(backlog)])
    assert relay_commands._sequence_log(sessions) == backlog
    with sessions() as s:
        assert tree_head(s).size == backlog
        assert verify_log(s, []).ok
    assert relay_commands._sequence_log(sessions) == 0
    engine.dispose()
