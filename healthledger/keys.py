"""Key-encryption keys (KEKs) behind a provider interface, and the one recipe for key files they wrap.

A KEK never leaves its provider in a real KMS, so the interface is wrap/unwrap, not "get key".
Data keys (per patient compartment, operator keys, ...) are stored wrapped, with the id of the KEK
that wrapped them, so rotation rewraps them and old KEKs can be retired afterwards.

Keys kept in files under keys_dir (the chain operator key, the access-token signing key, the web
session secret) are each a `WrappedKeyFile` of a kind listed in `KEY_FILES`, the registry that key
rotation rewraps and that KEK retirement waits for. One shape on disk, mode 0600:

    {"kek_id": "<KEK id>", "wrapped": "<hex of the wrapped key>", ...public fields (e.g. "address")}

Files of older releases named the blob "blob" (token signing key, session secret); they load as they
are and are rewritten in this shape when next rewrapped (loading never writes: many workers load at
once, and only a rotation should change a key file after it is created).

Writes are atomic and durable: the content goes to a temporary 0600 file in the same directory, is
fsynced, then published under its name (link(2) when creating, so two processes starting at once
cannot both create: the loser reads the winner's file; rename(2) when replacing), and the directory
is fsynced so the name survives a crash.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from healthledger import crypto
from healthledger.data_dir import new_private_file, private_dir, sync_dir, tighten
from healthledger.errors import ConfigurationError, DecryptionError, KeyProviderUnavailable

_WRAP_AAD = b"healthledger/kek-wrap/v1:"


class KeyUnwrapError(KeyProviderUnavailable, DecryptionError):
    """This process's key provider could not unwrap a data key: its key material is not the one that wrapped
    it (key files out of date on this replica, a KEK retired, or a key backup that does not belong to the data).

    A DecryptionError (callers that retry after a concurrent rotation catch it as one) that is also
    KeyProviderUnavailable: the API answers 503 OperationOutcome, also while recording a refusal, never a 500.
    """

    def __init__(self, kek_id: str, message: str | None = None) -> None:
        super().__init__(message or f"key-encryption key {kek_id} did not unwrap a data key it is named on")
        self.kek_id = kek_id


class KekNotHeld(KeyUnwrapError):
    """A data key is wrapped by a KEK this provider does not hold."""

    def __init__(self, kek_id: str) -> None:
        super().__init__(kek_id, f"data key was wrapped by key-encryption key {kek_id}, which this key provider "
                                 "does not hold: its key files are out of date, or that key was retired")


@dataclass(frozen=True)
class WrappedKey:
    kek_id: str
    blob: bytes


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with key-encryption keys it holds."""

    def active_kek_id(self) -> str: ...
    def wrap(self, key: bytes, context: bytes = b"") -> WrappedKey: ...
    def unwrap(self, wrapped: WrappedKey, context: bytes = b"") -> bytes: ...
    def rotate(self) -> str: ...
    def retire(self, kek_id: str) -> None: ...
    def kek_ids(self) -> list[str]: ...


class LocalFileKeyProvider:
    """KEKs in one JSON file (mode 0600) under `keys_dir`, created on first use.

    Trust model: whoever can read the file can unwrap every data key; it is meant for a single
    host with disk encryption. Production deployments plug a KMS/HSM provider in its place.
    """

    FILE_NAME = "kek.json"

    def __init__(self, keys_dir: Path) -> None:
        self._path = Path(keys_dir) / self.FILE_NAME
        self._lock = threading.Lock()
        self._state = self._load_or_create()

    # -- file handling -------------------------------------------------------------------
    def _load_or_create(self) -> dict[str, object]:
        state = self._read()
        if state is not None:
            return state
        kek_id = _new_kek_id()
        state = {"active": kek_id, "keys": {kek_id: crypto.new_key().hex()}}
        if _publish_new(self._path, json.dumps(state)):
            return state
        # Another process created the file first: its KEK is the one everybody wraps with.
        state = self._read()
        if state is None:
            raise ConfigurationError(f"key file {self._path} vanished while it was being created")
        return state

    def _read(self) -> dict[str, object] | None:
        tighten(self._path)  # a key file left readable by others (an older release, a restore): fixed
        try:
            return json.loads(self._path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"key file {self._path} is unreadable") from exc

    def _write(self, state: dict[str, object]) -> None:
        _replace(self._path, json.dumps(state))

    def _reload(self) -> None:
        # Another process (a rotate-keys run) may have changed the file; re-read it.
        self._state = self._load_or_create()

    def _kek(self, kek_id: str) -> bytes:
        keys: dict[str, str] = self._state["keys"]  # type: ignore[assignment]
        if kek_id not in keys:
            self._reload()
            keys = self._state["keys"]  # type: ignore[assignment]
        if kek_id not in keys:
            raise KekNotHeld(kek_id)
        return bytes.fromhex(keys[kek_id])

    # -- KeyProvider ---------------------------------------------------------------------
    def active_kek_id(self) -> str:
        return str(self._state["active"])

    def kek_ids(self) -> list[str]:
        """The KEKs in the file as it is now: one replaced under a running process (a Kubernetes Secret updated
        after a rotation) is read again, so /readyz sees the new keys without a restart."""
        with self._lock:
            self._reload()
        return list(self._state["keys"])  # type: ignore[call-overload]

    def wrap(self, key: bytes, context: bytes = b"") -> WrappedKey:
        kek_id = self.active_kek_id()
        return WrappedKey(kek_id, crypto.seal(self._kek(kek_id), key, _WRAP_AAD + kek_id.encode() + b":" + context))

    def unwrap(self, wrapped: WrappedKey, context: bytes = b"") -> bytes:
        aad = _WRAP_AAD + wrapped.kek_id.encode() + b":" + context
        try:
            return crypto.open_(self._kek(wrapped.kek_id), wrapped.blob, aad)
        except KeyUnwrapError:
            raise
        except DecryptionError:
            raise KeyUnwrapError(wrapped.kek_id) from None

    def rotate(self) -> str:
        """Add a new KEK and make it active; old ones stay until retired (no downtime)."""
        with self._lock:
            self._reload()
            kek_id = _new_kek_id()
            keys: dict[str, str] = dict(self._state["keys"])  # type: ignore[call-overload]
            keys[kek_id] = crypto.new_key().hex()
            self._state = {"active": kek_id, "keys": keys}
            self._write(self._state)
            return kek_id

    def retire(self, kek_id: str) -> None:
        with self._lock:
            self._reload()
            if kek_id == self._state["active"]:
                raise ValueError("cannot retire the active key-encryption key")
            keys: dict[str, str] = dict(self._state["keys"])  # type: ignore[call-overload]
            keys.pop(kek_id, None)
            self._state = {"active": self._state["active"], "keys": keys}
            self._write(self._state)


def _new_kek_id() -> str:
    return "kek-" + secrets.token_hex(8)


def kek_file_ids(keys_dir: Path) -> list[str] | None:
    """The ids of the KEKs a file provider's key file under `keys_dir` holds (a key backup's, a replica's), without
    creating it: None if there is none (a KMS or HSM provider keeps its KEKs itself)."""
    path = Path(keys_dir) / LocalFileKeyProvider.FILE_NAME
    try:
        state = json.loads(path.read_text())
        return [str(kek_id) for kek_id in state["keys"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"key file {path} is unreadable") from exc


def key_provider_for(kind: str, keys_dir: Path) -> KeyProvider:
    if kind == "file":
        return LocalFileKeyProvider(keys_dir)
    raise ConfigurationError(f"unknown key provider {kind!r} (supported: 'file')")


# -- wrapped key files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFileKind:
    """One kind of key kept in a file under keys_dir, wrapped by the key provider."""

    file_name: str  # its name in keys_dir: one file per kind
    label: str  # what it is, as the operator is told ("chain operator key")
    context: bytes  # the wrapping context (bound as AAD): a blob of one kind never unwraps as another


# The registry's entries. Each context is the one its owner used before the registry existed.
CHAIN_OPERATOR_KEY: Final = KeyFileKind(
    "chain-operator.json", "chain operator key", b"healthledger/chain-operator/v1")  # healthledger.ledger.chain
TOKEN_SIGNING_KEY: Final = KeyFileKind(
    "token-signing-key.json", "access-token signing key", b"healthledger/token-signing-key/v1")  # auth.tokens
WEB_SESSION_SECRET: Final = KeyFileKind(
    "web-session-secret.json", "web session secret", b"healthledger/web-session-secret/v1")  # web.sessions
FEDERATION_SIGNING_KEYS: Final = KeyFileKind(
    "federation-signing-keys.json", "federation signing keys", b"healthledger/federation-signing-keys/v1",
)  # healthledger.federation.keys


class KeyFileRegistry:
    """The kinds of wrapped key file there are: every such file is opened through `file`, so rotation
    (`healthledger.key_rotation`) can rewrap each and retirement (`store.maintenance`) can wait for each,
    without guessing which files under keys_dir hold keys."""

    def __init__(self, kinds: Iterable[KeyFileKind]) -> None:
        self._kinds = tuple(kinds)
        names = [kind.file_name for kind in self._kinds]
        contexts = [kind.context for kind in self._kinds]
        if len(set(names)) != len(names) or len(set(contexts)) != len(contexts):
            raise ValueError("each kind of key file needs a file name and a wrapping context of its own")
        for name in names:
            if Path(name).name != name or name.startswith(".") or name == LocalFileKeyProvider.FILE_NAME:
                raise ValueError(f"{name!r} cannot name a key file in keys_dir")

    def __iter__(self) -> Iterator[KeyFileKind]:
        return iter(self._kinds)

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def extended(self, *kinds: KeyFileKind) -> KeyFileRegistry:
        """This registry with more kinds (e.g. a test's)."""
        return KeyFileRegistry((*self._kinds, *kinds))

    def file(self, keys_dir: Path, kind: KeyFileKind) -> WrappedKeyFile:
        """The key file of `kind` under `keys_dir`; a kind not registered here is refused."""
        if kind not in self._kinds:
            raise ValueError(f"{kind.label} is not a registered kind of key file")
        return WrappedKeyFile(Path(keys_dir) / kind.file_name, kind)

    def files(self, keys_dir: Path) -> list[WrappedKeyFile]:
        """Every registered key file under `keys_dir`, in registry order (absent ones included)."""
        return [self.file(keys_dir, kind) for kind in self._kinds]


KEY_FILES: Final = KeyFileRegistry((CHAIN_OPERATOR_KEY, TOKEN_SIGNING_KEY, WEB_SESSION_SECRET, FEDERATION_SIGNING_KEYS))

# Field names: the new shape's, and the blob's name in files of older releases.
_KEK_ID, _WRAPPED, _LEGACY_WRAPPED = "kek_id", "wrapped", "blob"


@dataclass(frozen=True)
class KeyFileContents:
    """What a key file holds: the wrapped key and public fields about it (never secret)."""

    wrapped: WrappedKey
    public: Mapping[str, str] = field(default_factory=dict)
    legacy_shape: bool = False  # written by an older release ("blob"); rewritten at the next rewrap


def _no_public_fields(_key: bytes) -> dict[str, str]:
    return {}


class WrappedKeyFile:
    """One wrapped key file (obtain it from `KeyFileRegistry.file`): created once, read by every process,
    rewritten only to rewrap it under the active KEK."""

    def __init__(self, path: Path, kind: KeyFileKind) -> None:
        self.path = path
        self.kind = kind

    def read(self) -> KeyFileContents | None:
        """The file's contents, or None if it does not exist. Raises ConfigurationError if unreadable."""
        tighten(self.path)  # left readable by others (an older release, a restore): fixed, with a warning
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigurationError(f"{self.kind.label} file {self.path} is unreadable") from exc
        try:
            return _parse(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{self.kind.label} file {self.path} is unreadable") from exc

    def load_or_create(
        self,
        provider: KeyProvider,
        generate: Callable[[], bytes],
        public: Callable[[bytes], Mapping[str, str]] = _no_public_fields,
    ) -> bytes:
        """The key in the file, unwrapped; on first use a key from `generate`, stored wrapped.

        `public` gives the public fields stored beside a key (e.g. the address of an account key); on
        load they are checked against the key. When several processes create the file at once, one
        wins and all return its key.
        """
        contents = self.read()
        if contents is None:
            key = generate()
            if _publish_new(self.path, _dump(provider.wrap(key, self.kind.context), public(key))):
                return key
            contents = self.read()  # another process created it first: everyone must use one key
            if contents is None:
                raise ConfigurationError(f"{self.kind.label} file {self.path} vanished while it was being created")
        key = provider.unwrap(contents.wrapped, self.kind.context)
        for name, value in public(key).items():
            if contents.public.get(name) != value:
                raise ConfigurationError(f"{self.kind.label} file {self.path} does not match its recorded {name}")
        return key

    def replace(self, provider: KeyProvider, key: bytes) -> None:
        """Write a new key over the file (a key that rotates by its owner's decision, e.g. a set of signing keys
        with one added or retired); the file is created if absent. Atomic: readers see the old or the new."""
        if self.path.exists() or not _publish_new(self.path, _dump(provider.wrap(key, self.kind.context), {})):
            _replace(self.path, _dump(provider.wrap(key, self.kind.context), {}))

    def rewrap(self, provider: KeyProvider) -> bool:
        """After a KEK rotation: wrap the key with the active KEK (True if it was rewrapped); an absent
        file is left absent. The file is then in the current shape, public fields kept."""
        contents = self.read()
        if contents is None or contents.wrapped.kek_id == provider.active_kek_id():
            return False
        key = provider.unwrap(contents.wrapped, self.kind.context)
        _replace(self.path, _dump(provider.wrap(key, self.kind.context), contents.public))
        return True


def _parse(text: str) -> KeyFileContents:
    document = json.loads(text)
    if not isinstance(document, dict):
        raise TypeError("a key file holds a JSON object")
    legacy = _WRAPPED not in document
    kek_id, blob = document.pop(_KEK_ID), document.pop(_LEGACY_WRAPPED if legacy else _WRAPPED)
    if _LEGACY_WRAPPED in document:
        raise ValueError("a key file holds one wrapped key")
    if not isinstance(kek_id, str) or not isinstance(blob, str) or not all(
        isinstance(value, str) for value in document.values()
    ):
        raise TypeError("key file fields are strings")
    return KeyFileContents(WrappedKey(kek_id, bytes.fromhex(blob)), document, legacy)


def _dump(wrapped: WrappedKey, public: Mapping[str, str]) -> str:
    if {_KEK_ID, _WRAPPED, _LEGACY_WRAPPED} & set(public):
        raise ValueError("public fields of a key file cannot reuse the names of its key fields")
    return json.dumps({_KEK_ID: wrapped.kek_id, _WRAPPED: wrapped.blob.hex(), **public})


# -- atomic, durable writes -------------------------------------------------------------------------


def _synced_temp(path: Path, text: str) -> Path:
    """`text` in a new 0600 file beside `path` (same directory, so it can be linked or renamed to
    `path`), flushed to disk."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with new_private_file(tmp) as handle:
            handle.write(text.encode())
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _publish_new(path: Path, text: str) -> bool:
    """Create `path` holding `text`, unless it exists: False if another process created it first.

    link(2) publishes the complete, synced temporary file under the name atomically and, unlike
    rename(2), fails on an existing name, so readers never see a partial file and one creator wins.
    """
    tmp = _synced_temp(path, text)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink()
    sync_dir(path.parent)
    return created


def _replace(path: Path, text: str) -> None:
    """Replace `path` with a file holding `text`, atomically (rename(2)) and durably."""
    tmp = _synced_temp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)
