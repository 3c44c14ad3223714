"""No plaintext PHI at rest: import known patients, then scan the raw SQLite file (and WAL) and a pg_dump.

The same scan run on a store with privacy switched off (benchmark mode) must find the PHI, so this
test is able to fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from healthledger.config import Settings
from healthledger.db import make_engine, upgrade
from healthledger.keys import LocalFileKeyProvider
from healthledger.store.importer import Importer
from healthledger.store.repository import store_for_settings

MIN_LEN = 6  # shorter strings could occur by chance in megabytes of ciphertext


def _phi_of(resource: dict) -> set[str]:
    if resource.get("resourceType") != "Patient":
        return set()
    out: set[str] = set()
    for name in resource.get("name", []):
        out.update([name.get("family", "")] + name.get("given", []))
    for ident in resource.get("identifier", []):
        # Synthea repeats the resource id as an identifier; resource ids are stored in clear by design
        # (random UUIDs chosen by the client or the server, needed to address the resource), so an
        # identifier equal to the id is not scanned. MRN, SSN, driver's licence and passport numbers are.
        if ident.get("value") != resource.get("id"):
            out.add(str(ident.get("value", "")))
    out.add(resource.get("birthDate", ""))
    return {v for v in out if len(v) >= MIN_LEN}


def _inputs(fixtures_dir: Path) -> tuple[list[Path], set[str]]:
    bundles = sorted(p for p in (fixtures_dir / "synthea").glob("*.json") if "Information" not in p.name)
    ndjson = fixtures_dir / "bulk-10-patients" / "Patient.000.ndjson"
    phi: set[str] = set()
    for path in bundles:
        for entry in json.loads(path.read_text())["entry"]:
            phi |= _phi_of(entry["resource"])
    for line in ndjson.read_text().splitlines():
        if line.strip():
            phi |= _phi_of(json.loads(line))
    hospital = sorted((fixtures_dir / "synthea").glob("*Information*.json"))
    return hospital + bundles + [ndjson], phi


def _import(url: str, data_dir: Path, paths: list[Path], *, privacy: bool = True, expect: int = 500) -> None:
    settings = Settings(
        data_dir=data_dir, database_url=url, privacy_off_for_benchmark=not privacy, load_demo_data=False,
        tenant=f"phi-scan-{data_dir.parent.name[-16:]}",  # the PostgreSQL schema is shared by the run
    )
    engine = make_engine(url)
    upgrade(engine)
    store = store_for_settings(engine, LocalFileKeyProvider(settings.keys_dir), settings)
    report = Importer(store).import_paths(paths)
    assert report.imported >= expect and report.rejected == 0, [f.problems[:3] for f in report.files]
    # exercise search and update too, so their writes are scanned as well
    store.search_params("Patient", [("family", "hoeger")])
    engine.dispose()


def _found(blob: bytes, phi: set[str]) -> set[str]:
    """PHI values present as text, lower-cased text, or hex text (pg_dump writes bytea as hex)."""
    blob_lower = blob.lower()
    return {
        v for v in phi
        if v.encode() in blob or v.lower().encode() in blob_lower or v.encode().hex().encode() in blob_lower
    }


def _sqlite_bytes(data_dir: Path) -> bytes:
    files = [p for p in data_dir.iterdir() if p.name.startswith("store.db")]
    assert files
    return b"".join(p.read_bytes() for p in files)


@pytest.fixture(scope="module")
def inputs(fixtures_dir: Path) -> tuple[list[Path], set[str]]:
    paths, phi = _inputs(fixtures_dir)
    assert len(phi) >= 30  # names, identifiers and birth dates of 15 patients
    return paths, phi


def test_sqlite_file_holds_no_phi(tmp_path: Path, inputs: tuple[list[Path], set[str]]) -> None:
    paths, phi = inputs
    data_dir = tmp_path / "private"
    _import(f"sqlite:///{data_dir / 'store.db'}", data_dir, paths)
    assert _found(_sqlite_bytes(data_dir), phi) == set()


def test_scan_finds_phi_when_privacy_is_off(tmp_path: Path, inputs: tuple[list[Path], set[str]]) -> None:
    paths, _phi = inputs
    data_dir = tmp_path / "plain"
    _import(f"sqlite:///{data_dir / 'store.db'}", data_dir, paths[-1:], privacy=False, expect=10)
    ndjson_phi = set().union(*(_phi_of(json.loads(line)) for line in paths[-1].read_text().splitlines() if line.strip()))
    assert _found(_sqlite_bytes(data_dir), ndjson_phi) == ndjson_phi


@pytest.mark.postgres
def test_pg_dump_holds_no_phi(tmp_path: Path, inputs: tuple[list[Path], set[str]], postgres_schema_url: tuple[str, str]) -> None:
    if shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is required (Debian package postgresql-client)")
    paths, phi = inputs
    url, schema = postgres_schema_url
    _import(url, tmp_path / "pg", paths)
    dump = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-n", schema, "--data-only"],
        check=True, capture_output=True, timeout=120,
    ).stdout
    assert b"store_resources" in dump and len(dump) > 100_000
    assert _found(dump, phi) == set()
