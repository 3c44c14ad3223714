"""`healthledger audit check-proof`: an inclusion proof checked offline, against the tree head anchored on-chain.

The end-to-end test proves an entry with `audit prove`, then moves the database away: the check uses only the
proof file and the chain. The unit tests take the proof apart (tampered entry, path, root, anchor) against a
small fake chain view.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from healthledger.audit.entries import AccessEntry, encode_entry, entry_leaf_hash
from healthledger.audit.log import record_access
from healthledger.audit.merkle import MerkleFrontier, inclusion_proof
from healthledger.audit.proof_check import (
    AnchoredEvent,
    ChainView,
    ProofFileError,
    check_anchor,
    check_proof,
    parse_proof,
)
from healthledger.cli import cli
from healthledger.db import make_engine, session_factory

T0 = datetime(2026, 11, 23, 9, tzinfo=UTC)
CONTRACT = "0x" + "ab" * 20
TX = "0x" + "11" * 32
BLOCK = "0x" + "22" * 32
LOG_ID = b"\x33" * 32


def entry(i: int) -> AccessEntry:
    return AccessEntry(time=T0 + timedelta(milliseconds=i), actor="ehr", organization="Organization/h1",
                       role="system", purpose="TREAT", action="read", resource_type="Observation",
                       resource_id=f"o{i}", patient_pseudonym="cd" * 16, decision="permit", reason="policy")


def proof_document(size: int = 7, index: int = 3) -> dict[str, Any]:
    bodies = [encode_entry(entry(i)) for i in range(size)]
    frontier = MerkleFrontier()
    nodes: dict[tuple[int, int], bytes] = {}
    for body in bodies:
        for level, idx, h in frontier.append(entry_leaf_hash(body)):
            nodes[(level, idx)] = h
    root = frontier.root()
    path = inclusion_proof(index, size, lambda level, idx: nodes[(level, idx)])
    return {
        "entry": base64.b64encode(bodies[index]).decode(), "leaf_index": index, "tree_size": size,
        "leaf_hash": entry_leaf_hash(bodies[index]).hex(), "root": root.hex(), "path": [h.hex() for h in path],
        "anchor": {"tree_size": size, "root": root.hex(), "block_number": 9, "block_hash": BLOCK,
                   "transaction": TX, "contract": CONTRACT, "chain_id": 1337},
    }


def fake_chain(document: dict[str, Any], **changes: Any) -> ChainView:
    event = AnchoredEvent(CONTRACT, LOG_ID, document["tree_size"], bytes.fromhex(document["root"]))
    receipt = {"status": 1, "blockNumber": 9, "blockHash": BLOCK, "events": [changes.pop("event", event)]}
    receipt.update(changes.pop("receipt", {}))
    canonical = changes.pop("canonical", BLOCK)
    return ChainView(chain_id=lambda: changes.get("chain_id", 1337), head=lambda: 12,
                     block_hash=lambda n: canonical if n == 9 else None,
                     receipt=lambda tx: receipt if tx == TX else None)


def verdict(document: dict[str, Any], chain: ChainView | None = None, log_id: bytes | None = LOG_ID) -> str | None:
    proof = parse_proof(document)
    report = check_proof(proof)
    if report.ok:
        check_anchor(proof, chain or fake_chain(document), contract=CONTRACT, log_id=log_id, report=report)
    return report.problem


def test_a_sound_proof_checks_and_names_its_anchor() -> None:
    document = proof_document()
    proof = parse_proof(document)
    report = check_proof(proof)
    check_anchor(proof, fake_chain(document), contract=CONTRACT, log_id=LOG_ID, report=report)
    assert report.ok, report.problem
    assert "block 9" in report.steps[-1] and "4 confirmations" in report.steps[-1]


def test_the_fhir_parameters_form_reads_the_same() -> None:
    document = proof_document()
    anchor = document["anchor"]
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "entry", "valueBase64Binary": document["entry"]},
        {"name": "leafIndex", "valueInteger": document["leaf_index"]},
        {"name": "treeSize", "valueInteger": document["tree_size"]},
        {"name": "rootHash", "valueString": document["root"]},
        *({"name": "auditPath", "valueString": h} for h in document["path"]),
        {"name": "anchor", "part": [
            {"name": "treeSize", "valueInteger": anchor["tree_size"]},
            {"name": "rootHash", "valueString": anchor["root"]},
            {"name": "blockNumber", "valueInteger": anchor["block_number"]},
            {"name": "blockHash", "valueString": anchor["block_hash"]},
            {"name": "transaction", "valueString": anchor["transaction"]}]},
    ]}
    assert parse_proof(params) == replace(parse_proof(document), anchor=replace(
        parse_proof(document).anchor, contract="", chain_id=None))  # type: ignore[arg-type]
    assert verdict(params, fake_chain(document)) is None


def test_a_changed_entry_path_or_root_is_caught() -> None:
    document = proof_document()
    other = encode_entry(replace(entry(3), decision="deny"))
    assert "do not hash" in verdict(document | {"entry": base64.b64encode(other).decode()})  # type: ignore[operator]
    assert "audit path" in verdict(document | {"path": document["path"][:-1]})  # type: ignore[operator]
    swapped = list(reversed(document["path"]))
    assert "audit path" in verdict(document | {"path": swapped})  # type: ignore[operator]
    assert "audit path" in verdict(document | {"leaf_index": 4})  # type: ignore[operator]
    # A forged head: a consistent proof to a root that is not the anchored one.
    forged = proof_document(size=6, index=3)
    forged["anchor"] = document["anchor"] | {"tree_size": 6, "root": forged["root"]}
    assert "size 6" in verdict(forged, fake_chain(document))  # type: ignore[operator]


def test_the_anchor_must_be_on_chain_as_the_proof_says() -> None:
    document = proof_document()
    assert "no on-chain anchor" in verdict(document | {"anchor": None})  # type: ignore[operator]
    assert "not on this chain" in verdict(document | {"anchor": document["anchor"] | {"transaction": "0x" + "44" * 32}})  # type: ignore[operator]
    assert "failed" in verdict(document, fake_chain(document, receipt={"status": 0}))  # type: ignore[operator]
    assert "canonical" in verdict(document, fake_chain(document, canonical="0x" + "55" * 32))  # type: ignore[operator]
    assert "chain 1" in verdict(document, fake_chain(document, chain_id=1))  # type: ignore[operator]
    stranger = AnchoredEvent("0x" + "cd" * 20, LOG_ID, document["tree_size"], bytes.fromhex(document["root"]))
    assert "no Anchored event of the contract" in verdict(document, fake_chain(document, event=stranger))  # type: ignore[operator]
    other_log = AnchoredEvent(CONTRACT, b"\x44" * 32, document["tree_size"], bytes.fromhex(document["root"]))
    assert "not for this log" in verdict(document, fake_chain(document, event=other_log))  # type: ignore[operator]


@pytest.mark.parametrize("document", [[], {"leaf_index": 1}, {"entry": "***", "path": []},
                                      proof_document() | {"root": "00"}, proof_document() | {"leaf_index": -1}])
def test_malformed_files_are_refused_with_a_reason(document: Any) -> None:
    with pytest.raises(ProofFileError):
        parse_proof(document)


def test_check_proof_needs_only_the_file_and_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "var"
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    runner = CliRunner()
    assert runner.invoke(cli, ["chain", "deploy"]).exit_code == 0
    engine = make_engine(f"sqlite:///{(data_dir / 'healthledger.db').resolve()}")
    with session_factory(engine).begin() as s:
        ids = [record_access(s, entry(i)) for i in range(5)]
    engine.dispose()
    r = runner.invoke(cli, ["anchor"])
    assert r.exit_code == 0 and "confirmed" in r.output, r.output
    assert runner.invoke(cli, ["relay", "work", "--once"]).exit_code == 0  # the indexer reads the anchor
    r = runner.invoke(cli, ["audit", "prove", str(ids[2])])
    assert r.exit_code == 0, r.output
    proof = json.loads(r.output)
    assert proof["anchor"]["tree_size"] == 5 and proof["anchor"]["contract"].startswith("0x")
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof))

    # Without the database: only the proof file and the chain.
    (data_dir / "healthledger.db").rename(tmp_path / "elsewhere.db")
    r = runner.invoke(cli, ["audit", "check-proof", str(proof_file)])
    assert r.exit_code == 0, r.output
    assert "VALID:" in r.output and "ehr" in r.output and "Observation/o2" in r.output
    assert not (data_dir / "healthledger.db").exists() or (data_dir / "healthledger.db").stat().st_size == 0

    tampered = proof | {"entry": base64.b64encode(encode_entry(replace(entry(2), decision="deny"))).decode()}
    proof_file.write_text(json.dumps(tampered))
    r = runner.invoke(cli, ["audit", "check-proof", str(proof_file)])
    assert r.exit_code == 1 and "NOT VALID" in r.output, r.output
    proof_file.write_text("not json")
    r = runner.invoke(cli, ["audit", "check-proof", str(proof_file)])
    assert r.exit_code == 2 and "not a proof" in r.output, r.output
