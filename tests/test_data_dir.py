"""The data directory is private: every directory 0700 and every file 0600 under a umask of 022, looser modes
found at start tightened with a warning, nothing outside it (symlink targets, a database's parent) touched."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import ROOT

from healthledger.app import bootstrap
from healthledger.config import Settings
from healthledger.data_dir import private_dir, private_file, secure_data_dir
from healthledger.db import make_engine


def modes(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under `root` (and `root` itself, as "."): its kind and permission bits."""
    found: dict[str, tuple[str, int]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "link" if stat.S_ISLNK(info.st_mode) else "file"
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode))
    return found


def assert_private(found: dict[str, tuple[str, int]]) -> None:
    loose = {p: f"{kind} {mode:o}" for p, (kind, mode) in found.items()
             if mode != {"dir": 0o700, "file": 0o600}.get(kind)}
    assert not loose, loose


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.slow
def test_a_running_service_keeps_its_data_dir_private_under_umask_022(tmp_path: Path) -> None:
    """bootstrap, the embedded chain node, contract deployment, the ledger worker and the app serving requests,
    in a process whose umask is 022; the tree is walked while everything is open (SQLite's -wal and -shm)."""
    data_dir = tmp_path / "var"
    code = textwrap.dedent(f"""
        import json, os, stat, sys
        from pathlib import Path
        os.umask(0o022)
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from fhir_api_support import JSON_HEADERS, api_settings
        from healthledger.app import bootstrap, create_app
        from healthledger.ledger.service import ledger_sidecars
        settings = api_settings(Path({str(data_dir)!r}))
        bootstrap(settings)
        with ledger_sidecars(settings) as run:
            app = create_app(run)
            client = app.test_client()
            created = client.post("/fhir/Patient", json={{"resourceType": "Patient"}}, headers=JSON_HEADERS)
            assert created.status_code == 201, created.data
            found = {{}}
            for path in [run.data_dir, *run.data_dir.rglob("*")]:
                info = path.lstat()
                found[str(path.relative_to(run.data_dir))] = [stat.S_ISDIR(info.st_mode), stat.S_IMODE(info.st_mode)]
            print(json.dumps(found))
            app.extensions["healthledger.engine"].dispose()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    while_open = {path: ("dir" if is_dir else "file", mode)
                  for path, (is_dir, mode) in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    for expected in ("healthledger.db", "healthledger.db-wal", "healthledger.db-shm", "keys/kek.json",
                     "keys/token-signing-key.json", "keys/web-session-secret.json", "keys/chain-operator.json",
                     "chain/chain.sqlite3", "chain/chain.sqlite3-wal", "chain/node.json", "chain/LOCK"):
        assert expected in while_open, sorted(while_open)
    assert any(p.startswith("chain/nonce-") for p in while_open)
    assert_private(while_open)
    assert_private(modes(data_dir))  # and after everything closed


def test_bootstrap_and_the_database_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    bootstrap(settings)
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:  # WAL mode: -wal and -shm exist while a connection is open
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS probe (x)")
        conn.commit()
        found = modes(settings.data_dir)
        assert {"healthledger.db-wal", "healthledger.db-shm"} <= set(found)
        assert_private(found)
    engine.dispose()
    assert_private(modes(settings.data_dir))


def test_looser_modes_are_tightened_at_start_with_a_warning(tmp_path: Path, umask_022: None) -> None:
    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    bootstrap(settings)
    (settings.data_dir / "healthledger.db-wal").write_bytes(b"")  # left by an older release
    for path in [settings.data_dir, *settings.data_dir.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    with capture_logs() as logs:
        bootstrap(settings)
    assert_private(modes(settings.data_dir))
    tightened = {entry["path"]: (entry["was"], entry["now"]) for entry in logs
                 if entry["event"] == "data_dir.mode_tightened" and entry["log_level"] == "warning"}
    assert tightened[str(settings.data_dir)] == ("755", "700")
    assert tightened[str(settings.keys_dir / "kek.json")] == ("644", "600")
    assert tightened[str(settings.data_dir / "healthledger.db-wal")] == ("644", "600")
    with capture_logs() as logs:
        bootstrap(settings)
    assert not [entry for entry in logs if entry["event"] == "data_dir.mode_tightened"]  # once only


def test_nothing_outside_the_data_dir_is_changed(tmp_path: Path, umask_022: None) -> None:
    outside = tmp_path / "shared"
    outside.mkdir(mode=0o755)
    target = outside / "notes.txt"
    target.write_text("not ours")
    data_dir = private_dir(tmp_path / "var")
    (data_dir / "link").symlink_to(target)
    secure_data_dir(data_dir)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # a symlink's target is not the data dir's
    make_engine(f"sqlite:///{outside / 'elsewhere.db'}").dispose()  # a database outside the data dir
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755
    assert stat.S_IMODE((outside / "elsewhere.db").stat().st_mode) == 0o600


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        made = private_file(tmp_path / "a" / "b" / "file")
        nested = private_dir(tmp_path / "c" / "d")
    finally:
        os.umask(previous)
    assert_private(modes(tmp_path / "a"))
    assert_private(modes(tmp_path / "c"))
    assert made.read_bytes() == b"" and nested.is_dir()


_SECRET_VOLUME = r"""
set -e
keys="$1"; shift
mkdir -p "$keys.src"; cp -a "$keys"/. "$keys.src"/
mount -t tmpfs -o mode=0755 secret "$keys"
# A Kubernetes Secret volume's layout: files in a timestamped directory, reached through ..data
mkdir -m 0755 "$keys/..2026_12_02_00_00_00.000000001"
for f in "$keys.src"/*; do
  install -m 0400 "$f" "$keys/..2026_12_02_00_00_00.000000001/$(basename "$f")"
  ln -s "..data/$(basename "$f")" "$keys/$(basename "$f")"
done
ln -s ..2026_12_02_00_00_00.000000001 "$keys/..data"
mount -o remount,ro "$keys"
exec "$@"
"""
_START_ON_IT = """
import json, sys
from pathlib import Path
from structlog.testing import capture_logs
from healthledger.app import bootstrap
from healthledger.config import Settings

with capture_logs() as logs:
    bootstrap(Settings(data_dir=Path(sys.argv[1]), load_demo_data=False))
print(json.dumps([{k: str(v) for k, v in e.items()} for e in logs if e["event"].startswith("data_dir.")]))
"""


def test_a_read_only_secret_mount_of_the_keys_is_left_as_it_is_with_a_warning(tmp_path: Path) -> None:
    """The keys as Kubernetes mounts a Secret (read-only, directories 0755 the process may not change): the
    service starts on them, says what it could not tighten, and still tightens the rest of the data dir."""
    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs unshare (a private mount namespace) to mount a read-only file system")
    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    bootstrap(settings)  # the key material, made once outside the cluster (deploy/README.md)
    loose = settings.data_dir / "left-by-an-older-release"
    loose.write_bytes(b"")
    os.chmod(loose, 0o644)
    started = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", _SECRET_VOLUME, "sh", str(settings.keys_dir),
         sys.executable, "-c", _START_ON_IT, str(settings.data_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    events = json.loads(started.stdout.strip().splitlines()[-1])
    left = {e["path"]: e["reason"] for e in events if e["event"] == "data_dir.mode_left"}
    assert left == {str(settings.keys_dir): "EROFS",
                    str(settings.keys_dir / "..2026_12_02_00_00_00.000000001"): "EROFS"}
    tightened = {e["path"] for e in events if e["event"] == "data_dir.mode_tightened"}
    assert tightened == {str(loose)}
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
