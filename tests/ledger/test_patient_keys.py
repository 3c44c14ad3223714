"""Patient master keys: password wrap, 2-of-2 recovery, password change, per-grantee pseudonyms."""
# ruff: noqa: F401, F811  (pytest fixtures imported from fixtures_relay are used as arguments)

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from healthledger.db import make_engine, upgrade
from healthledger.errors import BadRequest
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import patient_keys as pk
from healthledger.ledger.models import PatientKeyRecord, PatientPseudonym
from tests.ledger.fixtures_relay import key_provider, relay_db

# Cheap argon2id parameters for tests only; production uses pk.DEFAULT_ARGON2 (RFC 9106 §4).
FAST = pk.Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)
NOW = 1_790_000_000.0


def _create(session, provider, ref="patient-1", password="correct horse"):  # type: ignore[no-untyped-def]
    return pk.create_patient_key(session, ref, password, provider, now=NOW, params=FAST)


def test_password_unlocks_and_wrong_password_is_one_opaque_error(relay_db, key_provider) -> None:
    with relay_db.begin() as s:
        _create(s, key_provider)
    with relay_db() as s:
        master = pk.unlock(s, "patient-1", "correct horse")
        assert 1 <= int.from_bytes(master, "big") < pk.SECP256K1_N
        with pytest.raises(pk.KeyUnlockError) as wrong:
            pk.unlock(s, "patient-1", "wrong horse!")
        with pytest.raises(pk.KeyUnlockError) as unknown:
            pk.unlock(s, "nobody", "correct horse")
        assert str(wrong.value) == str(unknown.value)
        assert "horse" not in str(wrong.value)


def test_stored_record_holds_no_key_material_in_clear(relay_db, key_provider) -> None:
    with relay_db.begin() as s:
        _create(s, key_provider)
    with relay_db() as s:
        master = pk.unlock(s, "patient-1", "correct horse")
        rec = s.get(PatientKeyRecord, "patient-1")
        assert rec is not None
        for blob in (rec.password_wrap, rec.recovery_wrap, rec.salt):
            assert master not in blob
        assert (rec.kdf_time_cost, rec.kdf_memory_kib, rec.kdf_parallelism) == (1, 1024, 1)


def test_password_change_rewraps_same_key(relay_db, key_provider) -> None:
    with relay_db.begin() as s:
        _create(s, key_provider)
        before = pk.unlock(s, "patient-1", "correct horse")
        old_salt = s.get(PatientKeyRecord, "patient-1").salt  # type: ignore[union-attr]
        pk.change_password(s, "patient-1", "correct horse", "battery staple", now=NOW + 1, params=FAST)
        assert s.get(PatientKeyRecord, "patient-1").salt != old_salt  # type: ignore[union-attr]
    with relay_db() as s:
        assert pk.unlock(s, "patient-1", "battery staple") == before
        with pytest.raises(pk.KeyUnlockError):
            pk.unlock(s, "patient-1", "correct horse")
        with pytest.raises(pk.KeyUnlockError):
            pk.change_password(s, "patient-1", "not the password", "another one", now=NOW, params=FAST)
        with pytest.raises(BadRequest):
            pk.change_password(s, "patient-1", "battery staple", "short", now=NOW, params=FAST)


def test_recovery_needs_both_the_code_and_the_hospital_kek(relay_db, key_provider, tmp_path: Path) -> None:
    with relay_db.begin() as s:
        code = _create(s, key_provider)
        master = pk.unlock(s, "patient-1", "correct horse")
    assert len(code.replace("-", "")) == 32
    rec_blob = None
    with relay_db() as s:
        rec = s.get(PatientKeyRecord, "patient-1")
        assert rec is not None
        rec_blob = rec.recovery_wrap
    # The code alone: without the hospital's KEK the outer layer does not open.
    other_hospital = LocalFileKeyProvider(tmp_path / "other-keys")
    with relay_db() as s, pytest.raises(pk.KeyUnlockError):
        pk.recover(s, "patient-1", code, "new password 1", other_hospital, now=NOW, params=FAST)
    # The hospital alone: KEK + database but a wrong code.
    wrong_code = pk.new_recovery_code()
    with relay_db() as s:
        for bad in (wrong_code, "not base32 !!", code[:-5]):
            with pytest.raises(pk.KeyUnlockError):
                pk.recover(s, "patient-1", bad, "new password 1", key_provider, now=NOW, params=FAST)
    # Both: the same key comes back, a new password works, and the old code is replaced.
    with relay_db.begin() as s:
        new_code = pk.recover(
            s, "patient-1", code.lower(), "new password 1", key_provider, now=NOW, params=FAST
        )
        assert new_code != code
        assert s.get(PatientKeyRecord, "patient-1").recovery_wrap != rec_blob  # type: ignore[union-attr]
    with relay_db() as s:
        assert pk.unlock(s, "patient-1", "new password 1") == master
        with pytest.raises(pk.KeyUnlockError):
            pk.recover(s, "patient-1", code, "new password 2", key_provider, now=NOW, params=FAST)


def test_recovery_wrap_survives_kek_rotation(relay_db, key_provider) -> None:
    with relay_db.begin() as s:
        code = _create(s, key_provider)
    old = key_provider.active_kek_id()
    key_provider.rotate()
    with relay_db.begin() as s:
        assert pk.rewrap_recovery(s, "patient-1", key_provider) is True
        assert pk.rewrap_recovery(s, "patient-1", key_provider) is False
    key_provider.retire(old)
    with relay_db.begin() as s:
        pk.recover(s, "patient-1", code, "new password 1", key_provider, now=NOW, params=FAST)


def test_create_rejects_short_password_and_duplicates(relay_db, key_provider) -> None:
    with relay_db.begin() as s:
        with pytest.raises(BadRequest):
            _create(s, key_provider, password="short")
        _create(s, key_provider)
        with pytest.raises(BadRequest):
            _create(s, key_provider)


def test_pseudonyms_per_grantee_recorded_and_reverse_mapped(relay_db, key_provider) -> None:
    with relay_db.begin() as s:
        _create(s, key_provider)
        master = pk.unlock(s, "patient-1", "correct horse")
        a = pk.pseudonym_account(s, "patient-1", master, "org:hospital-a", now=NOW)
        b = pk.pseudonym_account(s, "patient-1", master, "study:42", now=NOW)
        again = pk.pseudonym_account(s, "patient-1", master, "org:hospital-a", now=NOW)
        assert a.address == again.address != b.address
        # A different master key presented for the same patient is refused.
        with pytest.raises(pk.KeyUnlockError):
            pk.pseudonym_account(s, "patient-1", pk.new_master_key(), "org:hospital-a", now=NOW)
    with relay_db() as s:
        rows = s.scalars(select(PatientPseudonym)).all()
        assert {(r.grantee, r.address) for r in rows} == {
            ("org:hospital-a", a.address),
            ("study:42", b.address),
        }
        assert pk.pseudonym_address(s, "patient-1", "study:42") == b.address
        assert pk.pseudonym_address(s, "patient-1", "unknown") is None
        assert pk.patient_for_pseudonym(s, a.address.lower()) == "patient-1"
        assert pk.patient_for_pseudonym(s, "0x" + "11" * 20) is None
        with pytest.raises(BadRequest):
            pk.patient_for_pseudonym(s, "not an address")


def test_pseudonym_known_answer() -> None:
    # Pins the derivation (tag, HKDF length, reduction): changing it would orphan every pseudonym on-chain.
    master = bytes.fromhex("01" * 32)
    scalar = pk.scalar_from_bytes(pk.crypto.derive_key(master, pk.PSEUDONYM_INFO + b"org:a", length=48))
    assert pk.pseudonym_key(master, "org:a") == scalar.to_bytes(32, "big")
    assert pk.pseudonym_for(master, "org:a").address == pk.pseudonym_for(master, "org:a").address
    with pytest.raises(BadRequest):
        pk.pseudonym_for(master, "")


@settings(max_examples=60, deadline=None)
@given(
    master=st.binary(min_size=32, max_size=32),
    g1=st.text(min_size=1, max_size=40),
    g2=st.text(min_size=1, max_size=40),
)
def test_pseudonym_derivation_properties(master: bytes, g1: str, g2: str) -> None:
    k1 = int.from_bytes(pk.pseudonym_key(master, g1), "big")
    assert 1 <= k1 < pk.SECP256K1_N
    assert pk.pseudonym_key(master, g1) == pk.pseudonym_key(master, g1)
    if g1 != g2:
        assert pk.pseudonym_key(master, g1) != pk.pseudonym_key(master, g2)
    other = bytes(b ^ 0xFF for b in master)
    assert pk.pseudonym_key(other, g1) != pk.pseudonym_key(master, g1)


@given(material=st.binary(min_size=40, max_size=80))
def test_scalar_reduction_always_in_range(material: bytes) -> None:
    assert 1 <= pk.scalar_from_bytes(material) < pk.SECP256K1_N


def test_master_keys_are_fresh_and_in_range() -> None:
    keys = {pk.new_master_key() for _ in range(20)}
    assert len(keys) == 20
    assert pk.new_master_key(lambda n: b"\xff" * n) != (pk.SECP256K1_N).to_bytes(32, "big")
    assert 1 <= int.from_bytes(pk.new_master_key(lambda n: b"\x00" * n), "big")
    with pytest.raises(ValueError):
        pk.scalar_from_bytes(os.urandom(32))


def test_default_argon2_parameters_are_rfc9106_second_option() -> None:
    assert pk.DEFAULT_ARGON2 == pk.Argon2Params(time_cost=3, memory_kib=65536, parallelism=4)


def test_migration_creates_relay_tables(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    from sqlalchemy import inspect

    names = set(inspect(engine).get_table_names())
    assert {
        "patient_keys",
        "patient_pseudonyms",
        "chain_outbox",
        "chain_nonces",
        "consent_grants",
        "log_anchors",
        "indexer_cursor",
        "indexer_blocks",
    } <= names
    engine.dispose()


@pytest.mark.postgres
def test_keys_and_pseudonyms_on_postgresql(postgres_schema_url: tuple[str, str], key_provider) -> None:
    from healthledger.db import session_factory
    from tests.ledger.fixtures_relay import relay_engine

    engine = relay_engine(postgres_schema_url[0])
    db = session_factory(engine)
    ref = "Patient/" + "a" * 64  # the longest FHIR logical id
    try:
        with db.begin() as s:
            pk.create_patient_key(s, ref, "correct horse", key_provider, now=NOW, params=FAST)
            master = pk.unlock(s, ref, "correct horse")
            address = pk.pseudonym_account(s, ref, master, "org:pg", now=NOW).address
        with db() as s:
            assert pk.patient_for_pseudonym(s, address) == ref
            with pytest.raises(pk.KeyUnlockError):
                pk.unlock(s, ref, "wrong horse!")
    finally:
        engine.dispose()
