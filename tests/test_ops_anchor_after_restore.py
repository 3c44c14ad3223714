"""A database restored from a backup older than the last anchor: restore warns, `anchor` refuses in words and exits
1 (no outbox item left failing), the ledger worker queues nothing; a refused anchor is explained in words."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sqlalchemy as sa
from support import invoke_cli

from healthledger.app import bootstrap, create_app
from healthledger.audit.anchoring import anchor_failure_words
from healthledger.backup import backup
from healthledger.config import Settings
from healthledger.db import make_engine
from healthledger.ledger.service import check_contracts

AUTH = {"Authorization": "Bearer dev-token", "Content-Type": "application/fhir+json"}


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, load_demo_data=False, tenant="ops-anchor")



def _reads(settings: Settings, n: int) -> None:
    app = create_app(settings)
    client = app.test_client()
    for i in range(n):
        assert client.get(f"/fhir/Patient/nobody-{i}", headers=AUTH).status_code == 404  # one access-log entry each
    app.extensions["healthledger.engine"].dispose()


def test_a_restore_older_than_the_last_anchor_is_named_and_anchor_exits_1(tmp_path: Path) -> None:
    live = _settings(tmp_path / "live")
    bootstrap(live)
    check_contracts(live, embedded=True)
    _reads(live, 3)
    assert invoke_cli(live, "anchor").exit_code == 0
    backup(live, tmp_path / "data", keys_dest=tmp_path / "keys")
    _reads(live, 6)
    assert invoke_cli(live, "anchor").exit_code == 0  # the chain goes past the backup

    # The chain went on past the backup; it is not restored with the database (an external chain: here the backup
    # without its embedded chain's state, restored beside the live chain's).
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    del manifest["files"]["chain.sqlite3"]
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "data" / "chain.sqlite3").unlink()
    target = _settings(tmp_path / "restored")
    (target.data_dir / "chain").mkdir(parents=True)
    shutil.copy2(live.data_dir / "chain" / "chain.sqlite3", target.data_dir / "chain" / "chain.sqlite3")
    restored = invoke_cli(target, "restore", str(tmp_path / "data"), "--keys", str(tmp_path / "keys"))
    assert restored.exit_code == 0, restored.output
    assert "WARNING: the chain already holds an anchor of this access log at tree size" in restored.output
    assert "restored from a backup older than the last anchor" in restored.output

    anchored = invoke_cli(target, "anchor")
    assert anchored.exit_code == 1
    assert "restored from a backup older than the last anchor" in anchored.output
    assert "docs/operations.md" in anchored.output
    engine = make_engine(target.database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from chain_outbox where state = 'failed'")).scalar_one() == 0
    engine.dispose()
    verified = invoke_cli(target, "audit", "verify")
    assert verified.exit_code == 1 and "NOT INTACT (truncated)" in verified.output
    assert "the record of what the restore lost" in verified.output


def test_a_refused_anchor_is_explained_in_words() -> None:
    words = anchor_failure_words("contract refused the call: TreeSizeNotIncreasing(5889, 5060)")
    assert "anchor of this access log at tree size 5889" in words and "has 5060 entries" in words
    assert "older than the last anchor" in words and words.endswith("TreeSizeNotIncreasing(5889, 5060))")
    assert anchor_failure_words("contract refused the call: EmptyRoot()").startswith("the chain refused the anchor")
