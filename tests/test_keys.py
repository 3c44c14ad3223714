"""LocalFileKeyProvider (file mode, wrap/unwrap with context, rotation and retirement) and the wrapped key
file recipe (atomic and race-safe creation, 0600, one shape, older shapes loaded, the registry)."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from healthledger import crypto
from healthledger.auth.tokens import TokenSigner
from healthledger.errors import ConfigurationError, DecryptionError
from healthledger.federation.keys import MemberKeys
from healthledger.keys import (
    CHAIN_OPERATOR_KEY,
    FEDERATION_SIGNING_KEYS,
    KEY_FILES,
    TOKEN_SIGNING_KEY,
    WEB_SESSION_SECRET,
    KeyFileKind,
    KeyFileRegistry,
    LocalFileKeyProvider,
    key_provider_for,
)
from healthledger.ledger.chain import load_or_create_operator
from healthledger.web.sessions import SessionSecret


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


# -- wrapped key files ------------------------------------------------------------------------------

KIND = KeyFileKind("test-key.json", "test key", b"healthledger/test-key/v1")
REGISTRY = KEY_FILES.extended(KIND)


def test_key_file_is_created_0600_wrapped_in_one_shape_and_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    provider = LocalFileKeyProvider(keys)
    synced: list[tuple[bool, int]] = []  # (is a directory, inode) of every fsync
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    key_file = REGISTRY.file(keys, KIND)
    key = key_file.load_or_create(provider, lambda: b"s" * 32, public=lambda k: {"fingerprint": k[:2].hex()})
    path = keys / KIND.file_name
    assert key == b"s" * 32 and key_file.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert set(document) == {"kek_id", "wrapped", "fingerprint"} and document["kek_id"] == provider.active_kek_id()
    assert key.hex() not in path.read_text()
    assert (False, path.stat().st_ino) in synced  # the content, before it got its name
    assert (True, keys.stat().st_ino) in synced  # the name
    assert sorted(p.name for p in keys.iterdir()) == ["kek.json", KIND.file_name]  # no temporary file left
    assert REGISTRY.file(keys, KIND).load_or_create(LocalFileKeyProvider(keys), _never) == key


def _never() -> bytes:
    raise AssertionError("the key exists: nothing should be generated")


def test_key_file_creation_and_rewrap_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure between writing and publishing leaves no file (creation) or the old one (rewrap), and no
    temporary file either."""
    provider = LocalFileKeyProvider(tmp_path)
    key_file = REGISTRY.file(tmp_path, KIND)

    def crash(*_args: object) -> None:
        raise OSError("disk gone")

    with monkeypatch.context() as m:
        m.setattr(os, "link", crash)
        with pytest.raises(OSError, match="disk gone"):
            key_file.load_or_create(provider, lambda: b"a" * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek.json"]
    assert key_file.load_or_create(provider, lambda: b"b" * 32) == b"b" * 32
    before = key_file.path.read_bytes()
    provider.rotate()
    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk gone"):
            key_file.rewrap(provider)
    assert key_file.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek.json", KIND.file_name]
    assert key_file.rewrap(provider) and key_file.load_or_create(provider, _never) == b"b" * 32


def _create_in_another_process(keys_dir: str, barrier: Any, results: Any) -> None:
    def generate() -> bytes:
        barrier.wait(timeout=60)  # both processes found no file and are creating one before either writes
        return secrets.token_bytes(32)

    key = REGISTRY.file(Path(keys_dir), KIND).load_or_create(LocalFileKeyProvider(Path(keys_dir)), generate)
    results.put(key.hex())


def test_two_processes_creating_at_once_end_with_one_key(tmp_path: Path) -> None:
    LocalFileKeyProvider(tmp_path)  # the KEK file exists, as after bootstrap
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_create_in_another_process, args=(str(tmp_path), barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    keys = {results.get(timeout=5), results.get(timeout=5)}
    assert len(keys) == 1  # the loser read the winner's file
    assert REGISTRY.file(tmp_path, KIND).load_or_create(LocalFileKeyProvider(tmp_path), _never).hex() in keys
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek.json", KIND.file_name]


def test_key_files_of_older_releases_load_and_take_the_new_shape_at_the_next_rewrap(tmp_path: Path) -> None:
    provider = LocalFileKeyProvider(tmp_path)
    # The token signing key and the session secret were {"kek_id", "blob"}; the operator key {"address",
    # "kek_id", "wrapped"}.
    old = provider.wrap(b"t" * 32, KIND.context)
    (tmp_path / KIND.file_name).write_text(json.dumps({"kek_id": old.kek_id, "blob": old.blob.hex()}))
    key_file = REGISTRY.file(tmp_path, KIND)
    assert key_file.load_or_create(provider, _never) == b"t" * 32
    contents = key_file.read()
    assert contents is not None and contents.legacy_shape and contents.wrapped == old
    assert json.loads(key_file.path.read_text()) == {"kek_id": old.kek_id, "blob": old.blob.hex()}  # loading: no write
    assert not key_file.rewrap(provider)  # already under the active KEK: left as it is
    provider.rotate()
    assert key_file.rewrap(provider)
    assert set(json.loads(key_file.path.read_text())) == {"kek_id", "wrapped"}
    assert key_file.load_or_create(provider, _never) == b"t" * 32

    account = Account.create()
    wrapped = provider.wrap(bytes(account.key), CHAIN_OPERATOR_KEY.context)
    (tmp_path / CHAIN_OPERATOR_KEY.file_name).write_text(json.dumps(
        {"address": account.address, "kek_id": wrapped.kek_id, "wrapped": wrapped.blob.hex()}))
    assert load_or_create_operator(tmp_path, provider).address == account.address


def test_key_file_mismatch_and_damage_are_clear_errors(tmp_path: Path) -> None:
    provider = LocalFileKeyProvider(tmp_path)
    load_or_create_operator(tmp_path, provider)
    path = tmp_path / CHAIN_OPERATOR_KEY.file_name
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "address": Account.create().address}))
    with pytest.raises(ConfigurationError, match="does not match its recorded address"):
        load_or_create_operator(tmp_path, provider)
    for damaged in ("{not json", "[]", json.dumps({"kek_id": "kek-1"}), json.dumps({"kek_id": 1, "wrapped": "00"})):
        path.write_text(damaged)
        with pytest.raises(ConfigurationError, match="chain operator key file .* is unreadable"):
            load_or_create_operator(tmp_path, provider)
    # A blob of one kind never unwraps as another (the kind's context is bound as AAD).
    REGISTRY.file(tmp_path, KIND).load_or_create(provider, lambda: b"x" * 32)
    (tmp_path / TOKEN_SIGNING_KEY.file_name).write_bytes((tmp_path / KIND.file_name).read_bytes())
    with pytest.raises(DecryptionError):
        TokenSigner.load_or_create(tmp_path, provider)


def test_registry_lists_every_key_file_and_refuses_strangers(tmp_path: Path) -> None:
    assert list(KEY_FILES) == [CHAIN_OPERATOR_KEY, TOKEN_SIGNING_KEY, WEB_SESSION_SECRET, FEDERATION_SIGNING_KEYS]
    with pytest.raises(ValueError, match="not a registered kind"):
        KEY_FILES.file(tmp_path, KIND)
    with pytest.raises(ValueError, match="of its own"):
        KEY_FILES.extended(KeyFileKind(TOKEN_SIGNING_KEY.file_name, "clash", b"healthledger/clash/v1"))
    with pytest.raises(ValueError, match="of its own"):
        KEY_FILES.extended(KeyFileKind("clash.json", "clash", TOKEN_SIGNING_KEY.context))
    for name in ("kek.json", "../outside.json", ".hidden.json"):
        with pytest.raises(ValueError, match="cannot name a key file"):
            KeyFileRegistry([KeyFileKind(name, "bad", b"healthledger/bad/v1")])
    # What the service writes under keys_dir is the KEK file and registered key files, nothing else.
    provider = LocalFileKeyProvider(tmp_path)
    load_or_create_operator(tmp_path, provider)
    TokenSigner.load_or_create(tmp_path, provider)
    SessionSecret.load_or_create(tmp_path, provider)
    MemberKeys.load_or_create(tmp_path, provider)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["kek.json", *(k.file_name for k in KEY_FILES)])


def test_kek_file_creation_race_keeps_the_winners_keks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes creating kek.json at once: the loser reads the winner's file, whatever it generated."""
    winner = LocalFileKeyProvider(tmp_path)
    real_read_text = Path.read_text
    first = [True]

    def as_if_absent_once(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == LocalFileKeyProvider.FILE_NAME and first[0]:
            first[0] = False
            raise FileNotFoundError(self)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", as_if_absent_once)
    loser = LocalFileKeyProvider(tmp_path)
    assert loser.kek_ids() == winner.kek_ids() and loser.active_kek_id() == winner.active_kek_id()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek.json"]
