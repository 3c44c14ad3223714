"""Importing NDJSON and Bundle files, the `healthledger import / rotate-keys / erase-patient` commands, demo data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from healthledger.cli import cli
from healthledger.demo import demo_resources, load_demo_data
from healthledger.errors import Gone
from healthledger.store.importer import Importer
from healthledger.store.repository import ResourceStore
from tests.store.test_repository import patient

BULK = "bulk-10-patients"


def test_bulk_ndjson_import_in_workers_is_complete_and_idempotent(store: ResourceStore, fixtures_dir: Path) -> None:
    files = [fixtures_dir / BULK / f"{t}.000.ndjson" for t in ("Patient", "Condition", "Organization")]
    lines = {f.name: sum(1 for line in f.read_text().splitlines() if line.strip()) for f in files}
    report = Importer(store, workers=2).import_paths(files)
    assert report.rejected == 0 and report.imported == sum(lines.values())
    assert store.search_params("Condition", [], count=1).total == lines["Condition.000.ndjson"]
    # ids kept, so references between files still hold
    first = json.loads((fixtures_dir / BULK / "Patient.000.ndjson").read_text().splitlines()[0])
    assert store.search_params("Condition", [("patient", first["id"])]).total
    again = Importer(store, workers=0).import_paths(files)
    assert again.imported == 0 and again.skipped == report.imported and not again.failed


def test_bad_lines_are_rejected_with_reasons(store: ResourceStore, tmp_path: Path) -> None:
    good = json.dumps({**patient(), "id": "imp-1"})
    bad_json = '{"resourceType": "Patient", '
    invalid = json.dumps({"resourceType": "Patient", "id": "imp-2", "gender": 7})
    unknown = json.dumps({"resourceType": "Nonsense", "id": "x"})
    (tmp_path / "mixed.ndjson").write_text(f"{good}\n{bad_json}\n\n{invalid}\n{unknown}\n{good}" + "\n")
    report = Importer(store, workers=0).import_paths([tmp_path / "mixed.ndjson"])
    f = report.files[0]
    assert (f.imported, f.skipped, f.rejected) == (1, 1, 3)
    where = {w: (kind, reason) for w, kind, reason in f.problems}
    assert where["line 2"][0] == "rejected" and "JSON" in where["line 2"][1]
    assert "gender" in where["line 4"][1]
    assert where["line 6"][0] == "skipped"
    assert "Quarrington" not in json.dumps(f.problems)  # reasons never echo values


def test_a_definition_under_our_canonical_base_is_not_imported(store: ResourceStore, tmp_path: Path) -> None:
    ours = {"resourceType": "StructureDefinition", "id": "imp-sd", "name": "Impostor", "status": "draft",
            "kind": "complex-type", "abstract": False, "type": "Extension",
            "url": "https://healthledger.dev/fhir/StructureDefinition/consent-chain-state"}
    theirs = {**ours, "id": "imp-sd-2", "url": "https://example.org/fhir/StructureDefinition/imp"}
    (tmp_path / "defs.ndjson").write_text(f"{json.dumps(ours)}\n{json.dumps(theirs)}\n")
    f = Importer(store, workers=0).import_paths([tmp_path / "defs.ndjson"]).files[0]
    assert (f.imported, f.rejected) == (1, 1)
    [(where, kind, reason)] = f.problems
    assert where == "line 1" and kind == "rejected" and "this server's own definition" in reason


def test_bundle_files_and_folders(store: ResourceStore, fixtures_dir: Path, tmp_path: Path) -> None:
    shutil.copy(fixtures_dir / "synthea" / "hospitalInformation1559319163815.json", tmp_path / "a.json")
    (tmp_path / "broken.json").write_text("{nope")
    (tmp_path / "single.json").write_text(json.dumps(patient()))
    report = Importer(store, workers=0).import_paths([tmp_path])
    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["a.json"].imported > 50 and by_name["a.json"].rejected == 0
    assert by_name["broken.json"].unreadable
    assert by_name["single.json"].imported == 1
    assert report.failed  # an unreadable file makes the command exit non-zero


def test_failed_transaction_file_rejects_every_entry(store: ResourceStore, fixtures_dir: Path) -> None:
    path = fixtures_dir / "transaction-bundles" / "Bundle-TransactionForRollBack.json"
    report = Importer(store, workers=0).import_paths([path])
    f = report.files[0]
    assert f.imported == 0 and f.rejected == 2 and report.failed
    [(where, _, reason)] = f.problems  # the bundle-level failure is said once, not once per entry
    assert where == "Bundle" and "rolled back" in reason and "(2 entries)" in reason


def test_bundle_types_and_entries_without_resources(store: ResourceStore, tmp_path: Path) -> None:
    """An invalid Bundle type is refused as POST /fhir refuses it; a container's bad entry says why."""
    entries = [{"resource": {**patient(), "id": "imp-b1"}}, {"request": {"method": "GET", "url": "Patient"}}]
    (tmp_path / "odd.json").write_text(json.dumps({"resourceType": "Bundle", "type": "bag", "entry": entries}))
    (tmp_path / "untyped.json").write_text(json.dumps({"resourceType": "Bundle", "entry": entries}))
    (tmp_path / "collection.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                                          "entry": entries}))
    report = Importer(store, workers=0).import_paths([tmp_path])
    by_name = {Path(f.path).name: f for f in report.files}
    for name in ("odd.json", "untyped.json"):
        f = by_name[name]
        assert (f.imported, f.rejected) == (0, 2)
        [(where, _, reason)] = f.problems
        assert where == "Bundle" and "Bundle.type" in reason
        assert ("'batch' or 'transaction'" if name == "odd.json" else "is missing") in reason
    collection = by_name["collection.json"]
    assert collection.imported == 1 and collection.rejected == 1
    assert collection.problems == [("entry 1", "rejected", "the entry has no resource (Bundle.entry.resource)")]
    assert "unexpected error" not in json.dumps([f.problems for f in report.files])


def test_demo_data_is_deterministic_and_loaded_once(store: ResourceStore) -> None:
    assert demo_resources() == demo_resources()
    written = load_demo_data(store)
    assert written == len(demo_resources()) and written > 20
    assert load_demo_data(store) == 0
    pid = demo_resources()[0]["id"]
    assert store.search_params("Observation", [("patient", pid)]).total == 6


@pytest.fixture()
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("HEALTHLEDGER_DATABASE_URL", raising=False)
    return tmp_path


def test_cli_import_rotate_erase(cli_env: Path, fixtures_dir: Path) -> None:
    runner = CliRunner()
    path = fixtures_dir / BULK / "Patient.000.ndjson"
    pid = json.loads(path.read_text().splitlines()[0])["id"]
    result = runner.invoke(cli, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "Import summary" in result.output and "13" in result.output
    # Not a terminal (CliRunner, CI, a pipe): plain progress lines, no bar redrawn with control characters.
    assert "importing Patient.000.ndjson (1/1" in result.output and "13 imported, 0 skipped" in result.output
    assert "\x1b[" not in result.output and "\r" not in result.output

    result = runner.invoke(cli, ["rotate-keys", "--retire-old"])
    assert result.exit_code == 0, result.output
    assert "data keys rewrapped" in result.output and "retired: kek-" in result.output

    result = runner.invoke(cli, ["erase-patient", pid], input="n\n")
    assert result.exit_code != 0  # declined
    result = runner.invoke(cli, ["erase-patient", pid, "--yes"])
    assert result.exit_code == 0, result.output
    assert "Patient: 1" in result.output and "destroyed" in result.output

    from healthledger.runtime import Runtime

    runtime = Runtime()
    with pytest.raises(Gone):
        runtime.store.read("Patient", pid)
    runtime.close()


def test_cli_errors_are_messages_not_tracebacks(cli_env: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["import", str(tmp_path / "missing.ndjson")])
    assert result.exit_code != 0 and "no such file" in result.output and "Traceback" not in result.output
    (tmp_path / "bad.ndjson").write_text("garbage\n")
    result = runner.invoke(cli, ["import", str(tmp_path / "bad.ndjson")])
    assert result.exit_code != 0 and "nothing was imported" in result.output
    result = runner.invoke(cli, ["erase-patient", "no such id", "--yes"])
    assert result.exit_code != 0 and "resource id" in result.output
    result = runner.invoke(cli, ["erase-patient", "unknown-patient", "--yes"])
    assert result.exit_code != 0 and "no records" in result.output


def test_rotate_keys_moves_keys_outside_the_store_and_retires(tmp_path: Path, monkeypatch) -> None:
    """After `rotate-keys --retire-old` nothing anywhere needs the old KEK: operator key, token key and
    patients' recovery wraps were rewrapped, and each still opens."""
    import json as _json
    import time

    from healthledger.auth.tokens import TokenSigner
    from healthledger.config import Settings
    from healthledger.db import make_engine, session_factory, upgrade
    from healthledger.keys import LocalFileKeyProvider
    from healthledger.ledger.chain import load_or_create_operator
    from healthledger.ledger.patient_keys import create_patient_key, recover

    data = tmp_path / "var"
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(data))
    settings = Settings.load()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    provider = LocalFileKeyProvider(settings.keys_dir)
    old_kek = provider.active_kek_id()
    operator = load_or_create_operator(settings.keys_dir, provider)
    signer = TokenSigner.load_or_create(settings.keys_dir, provider)
    with session_factory(engine).begin() as s:
        code = create_patient_key(s, "Patient/p1", "a long enough password", provider, now=time.time())
    engine.dispose()

    result = CliRunner().invoke(cli, ["rotate-keys", "--retire-old"])
    assert result.exit_code == 0, result.output
    for line in ("rewrapped: chain operator key", "rewrapped: access-token signing key",
                 "rewrapped: 1 patient recovery wrap(s)", f"retired: {old_kek}"):
        assert line in result.output, result.output
    fresh = LocalFileKeyProvider(settings.keys_dir)
    assert old_kek not in fresh.kek_ids()
    assert load_or_create_operator(settings.keys_dir, fresh).address == operator.address
    assert TokenSigner.load_or_create(settings.keys_dir, fresh).key.thumbprint() == signer.key.thumbprint()
    engine = make_engine(settings.database_url)
    with session_factory(engine).begin() as s:
        recover(s, "Patient/p1", code, "another long password", fresh, now=time.time())
    engine.dispose()
    assert all(_json.loads(p.read_text()).get("kek_id") != old_kek for p in settings.keys_dir.glob("*.json")
               if p.name != "kek.json")
