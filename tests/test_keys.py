"""LocalFileKeyProvider: file mode, wrap/unwrap with context, rotation and retirement."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from healthledger import crypto
from healthledger.errors import ConfigurationError, DecryptionError
from healthledger.keys import LocalFileKeyProvider, key_provider_for


def test_key_file_created_with_mode_0600(tmp_path: Path) -> None:
    LocalFileKeyProvider(tmp_path / "keys")
    path = tmp_path / "keys" / LocalFileKeyProvider.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_wrap_unwrap_binds_context(tmp_path: Path) -> None:
    provider = LocalFileKeyProvider(tmp_path)
    key = crypto.new_key()
    wrapped = provider.wrap(key, b"row-1")
    assert wrapped.kek_id == provider.active_kek_id()
    assert key not in wrapped.blob
    assert provider.unwrap(wrapped, b"row-1") == key
    with pytest.raises(DecryptionError):
        provider.unwrap(wrapped, b"row-2")


def test_same_file_reopened_unwraps(tmp_path: Path) -> None:
    key = crypto.new_key()
    wrapped = LocalFileKeyProvider(tmp_path).wrap(key)
    assert LocalFileKeyProvider(tmp_path).unwrap(wrapped) == key


def test_rotate_keeps_old_until_retired(tmp_path: Path) -> None:
    provider = LocalFileKeyProvider(tmp_path)
    key = crypto.new_key()
    old = provider.wrap(key)
    new_id = provider.rotate()
    assert provider.active_kek_id() == new_id != old.kek_id
    assert provider.unwrap(old) == key  # still readable mid-rotation
    rewrapped = provider.wrap(provider.unwrap(old))
    assert rewrapped.kek_id == new_id
    with pytest.raises(ValueError):
        provider.retire(new_id)
    provider.retire(old.kek_id)
    assert old.kek_id not in provider.kek_ids()
    with pytest.raises(DecryptionError):
        provider.unwrap(old)
    assert provider.unwrap(rewrapped) == key
    # another process sees the rotation through the file
    assert LocalFileKeyProvider(tmp_path).unwrap(rewrapped) == key


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / LocalFileKeyProvider.FILE_NAME).write_text("{not json")
    with pytest.raises(ConfigurationError):
        LocalFileKeyProvider(tmp_path)


def test_unknown_provider_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        key_provider_for("kms", tmp_path)
