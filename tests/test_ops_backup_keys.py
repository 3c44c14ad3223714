"""Key backups after an erasure: which key-encryption keys a key backup holds, which must be destroyed, and a
restore that refuses key material that cannot open the data before it changes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import invoke_cli

from healthledger.app import bootstrap, create_app
from healthledger.backup import BackupError, backup, restore
from healthledger.config import Settings
from healthledger.keys import kek_file_ids

AUTH = {"Authorization": "Bearer dev-token", "Content-Type": "application/fhir+json"}


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, load_demo_data=False, tenant="ops-keys")



def _live_with_a_patient(data_dir: Path) -> tuple[Settings, str]:
    settings = _settings(data_dir)
    bootstrap(settings)
    app = create_app(settings)
    created = app.test_client().post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Erasable"}]},
                                     headers=AUTH)
    assert created.status_code == 201
    app.extensions["healthledger.engine"].dispose()
    return settings, str(created.json["id"])


def test_after_an_erasure_the_key_backups_holding_the_retired_kek_are_named(tmp_path: Path) -> None:
    live, patient = _live_with_a_patient(tmp_path / "live")
    old_kek = live_kek = (kek_file_ids(live.keys_dir) or [""])[0]
    before = backup(live, tmp_path / "data-1", keys_dest=tmp_path / "vault-1")
    assert before.kek_ids == [live_kek]
    assert json.loads((tmp_path / "vault-1" / "keys-manifest.json").read_text())["kek_ids"] == [live_kek]

    erased = invoke_cli(live, "erase-patient", patient, "--yes")
    assert erased.exit_code == 0, erased.output
    assert live_kek in erased.output and "rotate-keys --retire-old" in erased.output
    assert "key backup made before now" in erased.output
    assert invoke_cli(live, "keys", "check-backup", str(tmp_path / "vault-1")).exit_code == 0  # nothing retired yet

    retired = invoke_cli(live, "rotate-keys", "--retire-old")
    assert retired.exit_code == 0, retired.output
    assert f"retired: {old_kek}" in retired.output and "keys check-backup" in retired.output
    checked = invoke_cli(live, "keys", "check-backup", str(tmp_path / "vault-1"))
    assert checked.exit_code == 1 and f"retired: {old_kek}" in checked.output and "DESTROY" in checked.output

    after = backup(live, tmp_path / "data-2", keys_dest=tmp_path / "vault-2")
    new_kek = after.kek_ids[0]
    assert new_kek != old_kek and kek_file_ids(tmp_path / "vault-2") == [new_kek]
    fresh = invoke_cli(live, "keys", "check-backup", str(tmp_path / "vault-2"))
    assert fresh.exit_code == 0 and "no retired key-encryption key" in fresh.output
    listed = invoke_cli(live, "keys", "list")
    assert listed.exit_code == 0 and listed.output.strip() == f"{new_kek}  (active)"

    # The old pair still opens, the erased patient included: why check-backup says to destroy the old key backup.
    old_pair = _settings(tmp_path / "old-pair")
    assert invoke_cli(old_pair, "restore", str(tmp_path / "data-1"), "--keys", str(tmp_path / "vault-1")).exit_code == 0
    app = create_app(old_pair)
    assert app.test_client().get(f"/fhir/Patient/{patient}", headers=AUTH).status_code == 200
    app.extensions["healthledger.engine"].dispose()
    # Without the old key backup the old data backup opens no more: the new keys cannot unwrap its data keys.
    refused = invoke_cli(_settings(tmp_path / "new-keys"), "restore", str(tmp_path / "data-1"), "--keys",
                   str(tmp_path / "vault-2"))
    assert refused.exit_code == 1 and old_kek in refused.output and "Nothing was changed" in refused.output


def test_restore_refuses_keys_that_cannot_open_the_backup_before_changing_anything(tmp_path: Path) -> None:
    live, _patient = _live_with_a_patient(tmp_path / "live")
    data = backup(live, tmp_path / "data")
    other, _ = _live_with_a_patient(tmp_path / "other-deployment")
    backup(other, tmp_path / "other-data", keys_dest=tmp_path / "other-keys")

    target = _settings(tmp_path / "target")
    with pytest.raises(BackupError, match=f"cannot open this backup's data keys: they are wrapped by {data.kek_ids[0]}"):
        restore(target, data.path, keys_source=tmp_path / "other-keys")
    assert not target.data_dir.exists()  # nothing restored, no key copied
    with pytest.raises(BackupError, match="holds no kek.json; pass the key backup"):
        restore(target, data.path)
    assert not target.data_dir.exists()
    # A backup of an older release names no data keys: a SQLite one is read (read-only) for them instead.
    manifest = json.loads((data.path / "manifest.json").read_text())
    del manifest["data_keys"]
    (data.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=f"wrapped by {data.kek_ids[0]}"):
        restore(target, data.path, keys_source=tmp_path / "other-keys")
    assert not target.data_dir.exists()
