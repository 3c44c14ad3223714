"""Key-encryption keys (KEKs) behind a provider interface: a local file now, a KMS/HSM later.

A KEK never leaves its provider in a real KMS, so the interface is wrap/unwrap, not "get key".
Data keys (per patient compartment, operator keys, ...) are stored wrapped, with the id of the KEK
that wrapped them, so rotation rewraps them and old KEKs can be retired afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from healthledger import crypto
from healthledger.data_dir import private_dir, tighten
from healthledger.errors import ConfigurationError, DecryptionError

_WRAP_AAD = b"healthledger/kek-wrap/v1:"


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
        if self._path.exists():
            tighten(self._path)  # a key file left readable by others (an older release, a restore): fixed
            try:
                return json.loads(self._path.read_text())  # type: ignore[no-any-return]
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"key file {self._path} is unreadable") from exc
        kek_id = _new_kek_id()
        state: dict[str, object] = {"active": kek_id, "keys": {kek_id: crypto.new_key().hex()}}
        self._write(state)
        return state

    def _write(self, state: dict[str, object]) -> None:
        private_dir(self._path.parent)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
        os.chmod(self._path, 0o600)

    def _reload(self) -> None:
        # Another process (a rotate-keys run) may have changed the file; re-read it.
        self._state = self._load_or_create()

    def _kek(self, kek_id: str) -> bytes:
        keys: dict[str, str] = self._state["keys"]  # type: ignore[assignment]
        if kek_id not in keys:
            self._reload()
            keys = self._state["keys"]  # type: ignore[assignment]
        if kek_id not in keys:
            raise DecryptionError("data key was wrapped by an unknown or retired key-encryption key")
        return bytes.fromhex(keys[kek_id])

    # -- KeyProvider ---------------------------------------------------------------------
    def active_kek_id(self) -> str:
        return str(self._state["active"])

    def kek_ids(self) -> list[str]:
        return list(self._state["keys"])  # type: ignore[call-overload]

    def wrap(self, key: bytes, context: bytes = b"") -> WrappedKey:
        kek_id = self.active_kek_id()
        return WrappedKey(kek_id, crypto.seal(self._kek(kek_id), key, _WRAP_AAD + kek_id.encode() + b":" + context))

    def unwrap(self, wrapped: WrappedKey, context: bytes = b"") -> bytes:
        aad = _WRAP_AAD + wrapped.kek_id.encode() + b":" + context
        return crypto.open_(self._kek(wrapped.kek_id), wrapped.blob, aad)

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


def key_provider_for(kind: str, keys_dir: Path) -> KeyProvider:
    if kind == "file":
        return LocalFileKeyProvider(keys_dir)
    raise ConfigurationError(f"unknown key provider {kind!r} (supported: 'file')")
