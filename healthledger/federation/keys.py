"""A member's signing keys: the ES384 keys its servers sign client assertions with (the newest, and after a
rotation the previous one, kept until the next rotation: a server signs with the key its copy of the directory
lists), wrapped by the key provider; the directory holds their RFC 7638 thumbprints."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from healthledger.errors import ConfigurationError
from healthledger.keys import FEDERATION_SIGNING_KEYS, KEY_FILES, KeyProvider

ASSERTION_ALGORITHM = "ES384"  # SMART Backend Services: servers SHALL support ES384 (and RS384)
CURVE = "P-384"


def thumbprint_bytes(key: ECKey) -> bytes:
    """RFC 7638 §3: SHA-256 over the canonical JSON of the required public members (32 bytes)."""
    text = key.thumbprint()  # base64url, no padding
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint_hex(key: ECKey) -> str:
    return "0x" + thumbprint_bytes(key).hex()


def public_jwk(key: ECKey) -> dict[str, Any]:
    return dict(key.as_dict(private=False))


def new_key() -> ECKey:
    key = ECKey.generate_key(CURVE, parameters={"use": "sig", "alg": ASSERTION_ALGORITHM}, private=True)
    return ECKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})


@dataclass(frozen=True)
class MemberKeys:
    """The keys on file, oldest first; `current` signs unless the directory names another of them."""

    keys: tuple[ECKey, ...]

    @classmethod
    def load_or_create(cls, keys_dir: Path, provider: KeyProvider) -> MemberKeys:
        def generate() -> bytes:
            return _dump([new_key()])

        return cls(_load(KEY_FILES.file(keys_dir, FEDERATION_SIGNING_KEYS).load_or_create(provider, generate)))

    @property
    def current(self) -> ECKey:
        return self.keys[-1]

    def by_thumbprint(self, thumbprint: str) -> ECKey | None:
        """The key whose thumbprint (0x hex) the directory holds, if it is on file."""
        for key in self.keys:
            if thumbprint_hex(key) == thumbprint.lower():
                return key
        return None

    def signing_key(self, directory_thumbprint: str | None) -> ECKey:
        """The key the directory lists for us (during a rotation: old until the change is indexed), else current."""
        found = self.by_thumbprint(directory_thumbprint) if directory_thumbprint else None
        return found or self.current

    def with_new_key(self, keys_dir: Path, provider: KeyProvider) -> MemberKeys:
        """Add a new key (first step of a rotation: written before the directory is told)."""
        out = MemberKeys((*self.keys, new_key()))
        KEY_FILES.file(keys_dir, FEDERATION_SIGNING_KEYS).replace(provider, _dump(list(out.keys)))
        return out

    def keep_only(self, thumbprint: str, keys_dir: Path, provider: KeyProvider) -> MemberKeys:
        """Drop every key but this one (at the start of the next rotation: the key the directory lists now)."""
        key = self.by_thumbprint(thumbprint)
        if key is None:
            raise ConfigurationError("the directory's key for this member is not among the keys on file")
        out = MemberKeys((key,))
        KEY_FILES.file(keys_dir, FEDERATION_SIGNING_KEYS).replace(provider, _dump(list(out.keys)))
        return out


def _dump(keys: list[ECKey]) -> bytes:
    return json.dumps({"keys": [k.as_dict(private=True) for k in keys]}).encode()


def _load(raw: bytes) -> tuple[ECKey, ...]:
    try:
        keys = tuple(ECKey.import_key(k) for k in json.loads(raw)["keys"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError("the federation signing keys file is unreadable") from exc
    if not keys:
        raise ConfigurationError("the federation signing keys file holds no key")
    return keys
