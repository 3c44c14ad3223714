"""Key rotation outside the store: every registered wrapped key file is rewrapped, and retirement waits for it."""

from __future__ import annotations

import json
from pathlib import Path

from healthledger.auth.tokens import TokenSigner
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.federation.keys import MemberKeys
from healthledger.key_rotation import rewrap_outside_store
from healthledger.keys import KEY_FILES, WEB_SESSION_SECRET, LocalFileKeyProvider
from healthledger.ledger.chain import load_or_create_operator
from healthledger.store import maintenance
from healthledger.store.repository import store_for_settings
from healthledger.web.sessions import SessionSecret


def test_rotation_rewraps_every_registered_key_file_and_then_retires(tmp_path: Path, migrated_sqlite_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    keys = settings.keys_dir
    provider = LocalFileKeyProvider(keys)
    operator = load_or_create_operator(keys, provider)
    signer = TokenSigner.load_or_create(keys, provider)
    secret = SessionSecret.load_or_create(keys, provider)
    MemberKeys.load_or_create(keys, provider)
    # One of them as an older release wrote it.
    legacy = KEY_FILES.file(keys, WEB_SESSION_SECRET)
    contents = legacy.read()
    assert contents is not None
    legacy.path.write_text(json.dumps({"kek_id": contents.wrapped.kek_id, "blob": contents.wrapped.blob.hex()}))
    engine = make_engine(migrated_sqlite_url)
    store = store_for_settings(engine, provider, settings)
    try:
        old_kek = provider.active_kek_id()
        report = maintenance.rotate_keys(store)
        # Retiring before the files moved is refused, naming each of them.
        refused = maintenance.rotate_keys(store, retire_old=True, rotate=False)
        assert refused.retired == [] and old_kek in provider.kek_ids()
        assert refused.blocked_by == [f"key file {kind.file_name}" for kind in KEY_FILES]

        done = rewrap_outside_store(settings, provider, session_factory(engine))
        assert done == [kind.label for kind in KEY_FILES]
        for key_file in KEY_FILES.files(keys):
            contents = key_file.read()
            assert contents is not None and contents.wrapped.kek_id == report.new_kek_id and not contents.legacy_shape
        assert rewrap_outside_store(settings, provider, session_factory(engine)) == []  # nothing left to move

        retired = maintenance.rotate_keys(store, retire_old=True, rotate=False)
        assert retired.retired == [old_kek] and retired.blocked_by == []
    finally:
        engine.dispose()
    fresh = LocalFileKeyProvider(keys)
    assert old_kek not in fresh.kek_ids()
    assert load_or_create_operator(keys, fresh).address == operator.address
    assert TokenSigner.load_or_create(keys, fresh).key.thumbprint() == signer.key.thumbprint()
    assert SessionSecret.load_or_create(keys, fresh) == secret
