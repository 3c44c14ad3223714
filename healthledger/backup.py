"""Backups: the database (and an embedded chain's state) in one folder, the key material in another, each with
its own custody.

A backup holds ciphertext and keyed indexes only (no plaintext PHI at rest), so it is useless without the keys;
the keys alone hold no data. Keeping them apart means whoever holds one backup cannot read it.

- SQLite: the online backup API (`sqlite3.Connection.backup`), a consistent copy while writes go on.
- PostgreSQL: `pg_dump --format=custom` (a consistent snapshot: one repeatable-read transaction), restricted
  to the schema the service uses when its URL sets one; restored with `pg_restore --single-transaction`.
- The embedded chain's state is copied before the database: every anchor in the copied chain was made from a
  tree head already in the database, so the restored pair passes `healthledger audit verify`.
- `manifest.json` lists each file's SHA-256; restore checks them first.

- The data manifest names one wrapped data key per KEK the backup's data keys are wrapped with, and the key
  manifest the KEKs a key backup holds: restore tries the keys on those data keys before it changes anything, and
  `healthledger keys check-backup` tells whether a key backup holds a KEK the service has retired.

Crypto-shredding survives restore: an erased patient's data key is destroyed in the database, so a backup taken
after the erasure cannot open their records. Backups taken before it still hold the wrapped key, and every key
backup taken before it holds the KEK that wraps it: the erasure is final once that KEK is retired
(`rotate-keys --retire-old` after `erase-patient`) *and* those key backups are destroyed (`healthledger.key_custody`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from sqlalchemy import make_url

from healthledger.config import Settings
from healthledger.data_dir import private_dir, secure_data_dir
from healthledger.errors import ConfigurationError, HealthLedgerError
from healthledger.key_custody import DataKeySample
from healthledger.keys import kek_file_ids

log = structlog.get_logger("healthledger.backup")

FORMAT = "healthledger-backup/1"
MANIFEST = "manifest.json"
SQLITE_FILE = "database.sqlite3"
PG_FILE = "database.pgdump"
CHAIN_FILE = "chain.sqlite3"
KEYS_MANIFEST = "keys-manifest.json"


class BackupError(HealthLedgerError):
    status = 500
    code = "exception"


@dataclass(frozen=True)
class BackupReport:
    path: Path
    database: str
    files: dict[str, str]  # name -> sha256
    keys_path: Path | None
    kek_ids: list[str]  # the KEKs the backup's data keys are wrapped with: any copy of one opens the backup


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ConfigurationError("an in-memory database cannot be backed up")
    return Path(database)


def _online_copy(source: Path, target: Path) -> None:
    """SQLite's online backup: one consistent snapshot, however many writers are at work."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    os.chmod(target, 0o600)


def libpq_url(url: str) -> tuple[str, str | None]:
    """(a URL pg_dump understands, the schema the service's search_path names or None)."""
    parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://", 1))
    schema = None
    for option in parse_qs(parts.query).get("options", []):
        for word in unquote(option).split():
            if word.startswith("-csearch_path="):
                schema = word.split("=", 1)[1].split(",")[0]
    return parts.geturl(), schema


def _run(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    except FileNotFoundError:
        raise BackupError(f"{command[0]} is not installed (the PostgreSQL client tools are needed)") from None
    if done.returncode != 0:
        # pg_dump's message names objects, never row data; the URL (with a password) is not repeated.
        raise BackupError(f"{command[0]} failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")


def _ingest_spool(database_url: str) -> None:
    from healthledger.audit.spool import ingest
    from healthledger.db import make_engine

    engine = make_engine(database_url)
    try:
        ingest(engine)
    finally:
        engine.dispose()


def _samples(database_url: str, tenant: str) -> list[DataKeySample]:
    """One wrapped data key of `tenant` per KEK, read from the database at `database_url`."""
    from healthledger.db import make_engine
    from healthledger.key_custody import data_key_samples

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return data_key_samples(conn, tenant)
    finally:
        engine.dispose()


def _one_per_kek(*samples: list[DataKeySample]) -> list[DataKeySample]:
    by_kek: dict[str, DataKeySample] = {}
    for sample in (s for found in samples for s in found):
        by_kek.setdefault(sample.kek_id, sample)
    return sorted(by_kek.values(), key=lambda sample: sample.kek_id)


def backup(settings: Settings, dest: Path, *, keys_dest: Path | None = None,
           now: datetime | None = None) -> BackupReport:
    """Write a backup of the configured database (and embedded chain) to the new folder `dest`; the key
    material to `keys_dest` if given, which must lie outside `dest`."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} exists and is not empty")
    if keys_dest is not None and Path(keys_dest).resolve().is_relative_to(dest.resolve()):
        raise BackupError("the keys must not be stored inside the data backup: keep them apart (separate custody)")
    private_dir(dest)
    files: dict[str, str] = {}
    chain_db = settings.data_dir / "chain" / "chain.sqlite3"
    if not settings.chain_url and chain_db.exists():  # the chain first: see the module docstring
        _online_copy(chain_db, dest / CHAIN_FILE)
        files[CHAIN_FILE] = _sha256(dest / CHAIN_FILE)
    if settings.database_url.startswith("sqlite"):
        kind = "sqlite"
        _ingest_spool(settings.database_url)  # reads' access-log entries still in the spool go into the copy
        _online_copy(_sqlite_path(settings.database_url), dest / SQLITE_FILE)
        files[SQLITE_FILE] = _sha256(dest / SQLITE_FILE)
        samples = _copy_samples(dest / SQLITE_FILE, settings.tenant)  # the copy's own data keys
    else:
        kind = "postgresql"
        # The dump's snapshot lies between these two reads: a rotation running meanwhile leaves its keys under the
        # old KEK or the new one, and the samples name both.
        before = _samples(settings.database_url, settings.tenant)
        url, schema = libpq_url(settings.database_url)
        command = ["pg_dump", "--format=custom", "--no-owner", "--file", str(dest / PG_FILE), "--dbname", url]
        if schema:
            command += ["--schema", schema]
        _run(command)
        os.chmod(dest / PG_FILE, 0o600)
        files[PG_FILE] = _sha256(dest / PG_FILE)
        samples = _one_per_kek(before, _samples(settings.database_url, settings.tenant))
    manifest = {
        "format": FORMAT, "created_at": (now or datetime.now(UTC)).isoformat(), "database": kind,
        "tenant": settings.tenant, "files": files, "keys_included": False,
        "data_keys": [sample.as_json() for sample in samples],  # one per KEK: what restore tries the keys on
    }  # fmt: skip
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    os.chmod(dest / MANIFEST, 0o600)
    kek_ids = sorted({sample.kek_id for sample in samples})
    if keys_dest is not None:
        backup_keys(settings, Path(keys_dest), now=now)
    return BackupReport(dest, kind, files, Path(keys_dest) if keys_dest else None, kek_ids)


def backup_keys(settings: Settings, keys_dest: Path, *, now: datetime | None = None) -> dict[str, str]:
    """Copy the key files (KEKs of the file provider, wrapped server keys) to `keys_dest`, its manifest naming the
    KEKs it holds. With a KMS or HSM provider the KEKs stay there (its own backup and custody): only the wrapped
    files are copied."""
    keys_dest = Path(keys_dest)
    if keys_dest.exists() and any(keys_dest.iterdir()):
        raise BackupError(f"{keys_dest} exists and is not empty")
    private_dir(keys_dest)
    files: dict[str, str] = {}
    for path in sorted(settings.keys_dir.glob("*")):
        if path.is_file() and not path.name.endswith(".lock"):
            shutil.copy2(path, keys_dest / path.name)
            os.chmod(keys_dest / path.name, 0o600)
            files[path.name] = _sha256(keys_dest / path.name)
    kek_ids = kek_file_ids(keys_dest)
    manifest = {
        "format": FORMAT, "created_at": (now or datetime.now(UTC)).isoformat(), "files": files,
        # Which KEKs this copy holds: while any is in it, it opens every data backup whose keys they wrap (the data
        # keys of patients erased since included). None: a KMS or HSM holds the KEKs.
        "kek_ids": kek_ids,
    }  # fmt: skip
    (keys_dest / KEYS_MANIFEST).write_text(json.dumps(manifest, indent=2))
    os.chmod(keys_dest / KEYS_MANIFEST, 0o600)
    return files


def _checked(folder: Path, manifest_name: str) -> dict[str, str]:
    try:
        manifest = json.loads((folder / manifest_name).read_text())
    except (OSError, ValueError):
        raise BackupError(f"{folder} has no readable {manifest_name}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{folder} is not a {FORMAT} backup")
    files: dict[str, str] = manifest.get("files", {})
    for name, digest in files.items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise BackupError(f"{folder / name} is missing or does not match the manifest's SHA-256")
    return files


def backup_samples(source: Path) -> list[DataKeySample] | None:
    """The wrapped data keys (one per KEK) of the data backup in `source`: from its manifest, or read from the
    database copy of an older release's SQLite backup; None when they cannot be told (an older PostgreSQL one)."""
    manifest = json.loads((Path(source) / MANIFEST).read_text())
    if "data_keys" in manifest:
        return [DataKeySample.from_json(sample) for sample in manifest["data_keys"]]
    if SQLITE_FILE not in manifest.get("files", {}):
        return None
    return _copy_samples(Path(source) / SQLITE_FILE, str(manifest.get("tenant", "")))


def _copy_samples(copy: Path, tenant: str) -> list[DataKeySample]:
    """`_samples` of a backup's SQLite copy, opened read-only (its SHA-256 is in the manifest)."""
    import sqlalchemy as sa

    from healthledger.key_custody import data_key_samples

    engine = sa.create_engine(f"sqlite:///file:{copy}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            return data_key_samples(conn, tenant)
    finally:
        engine.dispose()


def check_keys_open(settings: Settings, source: Path, keys_source: Path | None) -> None:
    """Refuse (BackupError) unless the key material to be used after the restore, the key backup `keys_source` or
    else the keys in place, unwraps the data keys of the backup in `source`: one sample per KEK, unwrapped."""
    import tempfile

    from healthledger.key_custody import unopenable
    from healthledger.keys import LocalFileKeyProvider, key_provider_for

    samples = backup_samples(source)
    if samples is None:
        log.warning("backup.keys_unchecked", reason="a backup of an older release names no data keys")
        return
    if not samples:
        return
    with tempfile.TemporaryDirectory() as scratch:
        if keys_source is not None and kek_file_ids(Path(keys_source)) is not None:
            # The key backup's KEKs, from a copy: trying them writes nothing where they are kept.
            shutil.copy2(Path(keys_source) / LocalFileKeyProvider.FILE_NAME, Path(scratch) / LocalFileKeyProvider.FILE_NAME)
            provider = key_provider_for("file", Path(scratch))
            where = f"the key backup {keys_source}"
        elif settings.key_provider == "file" and kek_file_ids(settings.keys_dir) is None:
            raise BackupError(f"no key-encryption key to open this backup with: {settings.keys_dir} holds no "
                              f"{LocalFileKeyProvider.FILE_NAME}; pass the key backup made with it (--keys DIR)")
        else:
            provider = key_provider_for(settings.key_provider, settings.keys_dir)
            where = f"the key provider's keys ({settings.keys_dir})" if keys_source is None else "the key provider"
        failed = unopenable(provider, samples)
        held = provider.kek_ids()
    if failed:
        raise BackupError(
            f"{where} cannot open this backup's data keys: they are wrapped by {', '.join(failed)}, which it does not "
            f"hold (it holds {', '.join(held) or 'none'}); use the key backup made with this data backup or after it, "
            "before a `rotate-keys --retire-old` (`healthledger keys check-backup DIR` lists what a key backup "
            "holds). Nothing was changed")


def restore(settings: Settings, source: Path, *, keys_source: Path | None = None, force: bool = False) -> str:
    """Restore a backup into the configured database and data directory (the keys from `keys_source`). Refuses
    to overwrite an existing SQLite database or key files unless `force`. Returns the database kind."""
    source = Path(source)
    files = _checked(source, MANIFEST)
    key_files = _checked(Path(keys_source), KEYS_MANIFEST) if keys_source is not None else {}
    check_keys_open(settings, source, keys_source)  # before anything is changed
    secure_data_dir(settings.data_dir)
    if keys_source is not None:
        private_dir(settings.keys_dir)
        clashes = [n for n in key_files if (settings.keys_dir / n).exists()]
        if clashes and not force:
            raise BackupError(f"key files exist in {settings.keys_dir} ({', '.join(clashes)}): use --force to replace them")
        for name in key_files:
            shutil.copy2(Path(keys_source) / name, settings.keys_dir / name)
            os.chmod(settings.keys_dir / name, 0o600)
    if CHAIN_FILE in files and not settings.chain_url:
        chain_dir = private_dir(settings.data_dir / "chain")
        target = chain_dir / "chain.sqlite3"
        if target.exists() and not force:
            raise BackupError(f"{target} exists: use --force to replace the embedded chain's state")
        for stale in chain_dir.glob("chain.sqlite3*"):
            stale.unlink()
        shutil.copy2(source / CHAIN_FILE, target)
        os.chmod(target, 0o600)
    if SQLITE_FILE in files:
        if not settings.database_url.startswith("sqlite"):
            raise BackupError("this backup is of a SQLite database; the configured database is PostgreSQL")
        target = _sqlite_path(settings.database_url)
        if target.exists() and not force:
            raise BackupError(f"{target} exists: use --force to replace it")
        for suffix in ("-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        shutil.copy2(source / SQLITE_FILE, target)
        os.chmod(target, 0o600)
        return "sqlite"
    if settings.database_url.startswith("sqlite"):
        raise BackupError("this backup is of a PostgreSQL database; the configured database is SQLite")
    url, _schema = libpq_url(settings.database_url)
    command = ["pg_restore", "--no-owner", "--single-transaction", "--exit-on-error", "--dbname", url]
    if force:
        command += ["--clean", "--if-exists"]
    _run([*command, str(source / PG_FILE)])
    return "postgresql"
