"""Patient accounts: sign-up with a one-time enrolment code, a new password, recovery with the recovery code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from healthledger.auth.enrolment import (
    EnrolmentCodes,
    EnrolmentFailed,
    RecoveryFailed,
    change_password,
    normalise_code,
    recover_account,
)
from healthledger.auth.models import EnrolmentCode, User
from healthledger.auth.users import AccountNames, authenticate, create_user, find_user, password_matches
from healthledger.cli import cli
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.demo import demo_id
from healthledger.errors import Conflict, Forbidden, HealthLedgerError
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import patient_keys
from healthledger.store.repository import store_for_settings

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
PW = "correct horse battery"
NEW = "purple elephant umbrella"


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at minimum cost for account passwords and patient keys: these tests are about the protocol."""
    from argon2 import PasswordHasher

    from healthledger.auth import users

    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(users, "_hasher", cheap)
    monkeypatch.setattr(users, "_DUMMY_HASH", cheap.hash("dummy"))
    cheap_key = patient_keys.Argon2Params(time_cost=1, memory_kib=64, parallelism=1)
    for name in ("create_patient_key", "change_password", "recover"):  # their `params=DEFAULT_ARGON2` default
        function = getattr(patient_keys, name)
        monkeypatch.setattr(function, "__kwdefaults__", {**function.__kwdefaults__, "params": cheap_key})


@pytest.fixture()
def world(migrated_sqlite_url: str, tmp_path: Path):
    engine = make_engine(migrated_sqlite_url)
    provider = LocalFileKeyProvider(tmp_path / "keys")
    store = store_for_settings(engine, provider, Settings(data_dir=tmp_path))
    names = AccountNames(store)
    yield session_factory(engine), names, EnrolmentCodes(store, names), provider
    engine.dispose()


def test_a_code_creates_the_patients_account_and_key_once(world) -> None:
    sessions, names, codes, provider = world
    with sessions.begin() as s:
        code = codes.issue(s, "p1", now=NOW)
    assert len(normalise_code(code)) == 16 and code.count("-") == 3
    with sessions.begin() as s:
        enrolled = codes.redeem(s, provider, code=code.lower().replace("-", " "), username="Ann", password=PW, now=NOW)
    assert enrolled.patient_id == "p1" and len(enrolled.recovery_code) == 39
    with sessions.begin() as s:
        user = authenticate(s, names, "ann", PW, NOW)
        assert (user.role, user.patient_id) == ("patient", "p1")
        assert patient_keys.unlock(s, "Patient/p1", PW)  # the key opens with the account password
        stored = s.scalars(select(EnrolmentCode)).one()
        assert stored.used_at is not None and code.encode() not in stored.code_index  # only a keyed hash
    with sessions.begin() as s, pytest.raises(EnrolmentFailed):
        codes.redeem(s, provider, code=code, username="ann2", password=PW, now=NOW)
    with sessions.begin() as s, pytest.raises(Conflict):
        codes.issue(s, "p1", now=NOW)  # an account exists: recovery, not a new account


@pytest.mark.parametrize("case", ["unknown", "expired", "replaced"])
def test_codes_that_do_not_work_give_one_answer(world, case: str) -> None:
    sessions, _names, codes, provider = world
    with sessions.begin() as s:
        code = codes.issue(s, "p1", now=NOW, lifetime=timedelta(days=1))
        if case == "replaced":
            codes.issue(s, "p1", now=NOW)
    when = NOW + timedelta(days=2) if case == "expired" else NOW
    attempt = "AAAA-BBBB-CCCC-DDDD" if case == "unknown" else code
    with sessions.begin() as s, pytest.raises(EnrolmentFailed) as failure:
        codes.redeem(s, provider, code=attempt, username="ann", password=PW, now=when)
    assert failure.value.message == EnrolmentFailed().message and failure.value.expression == "code"


def test_bad_usernames_and_passwords_name_their_field(world) -> None:
    sessions, names, codes, provider = world
    with sessions.begin() as s:
        code = codes.issue(s, "p1", now=NOW)
        create_user(s, names, username="taken", password=PW, role="auditor", now=NOW)
    for username, password, field in (("taken", PW, "username"), ("a b", PW, "username"), ("ann", "short", "password")):
        with sessions.begin() as s, pytest.raises(HealthLedgerError) as failure:
            codes.redeem(s, provider, code=code, username=username, password=password, now=NOW)
        assert failure.value.expression == field


def test_a_new_password_rewraps_the_signing_key_and_needs_the_current_one(world) -> None:
    sessions, names, codes, provider = world
    with sessions.begin() as s:
        code = codes.issue(s, "p1", now=NOW)
        codes.redeem(s, provider, code=code, username="ann", password=PW, now=NOW)
    with sessions.begin() as s:
        user = find_user(s, names, "ann")
        assert user is not None
        with pytest.raises(Forbidden) as wrong:
            change_password(s, user, "not my password", NEW, now=NOW)
        assert wrong.value.expression == "current_password"
        change_password(s, user, PW, NEW, now=NOW)
    with sessions.begin() as s:
        user = find_user(s, names, "ann")
        assert user is not None and password_matches(user, NEW) and not password_matches(user, PW)
        assert patient_keys.unlock(s, "Patient/p1", NEW)
        with pytest.raises(patient_keys.KeyUnlockError):
            patient_keys.unlock(s, "Patient/p1", PW)


def test_recovery_with_the_code_sets_a_password_and_replaces_the_code(world) -> None:
    sessions, names, codes, provider = world
    with sessions.begin() as s:
        code = codes.issue(s, "p1", now=NOW)
        enrolled = codes.redeem(s, provider, code=code, username="ann", password=PW, now=NOW)
    with sessions.begin() as s:
        fresh = recover_account(s, names, provider, username="ann", recovery_code=enrolled.recovery_code,
                                new_password=NEW, now=NOW)
    assert fresh != enrolled.recovery_code
    with sessions.begin() as s:
        assert authenticate(s, names, "ann", NEW, NOW).patient_id == "p1"
        assert patient_keys.unlock(s, "Patient/p1", NEW)
    for username, recovery in (("ann", enrolled.recovery_code), ("nobody", fresh), ("ann", "AAAA-" * 7 + "AAAA")):
        with sessions.begin() as s, pytest.raises(RecoveryFailed) as failure:
            recover_account(s, names, provider, username=username, recovery_code=recovery, new_password=NEW, now=NOW)
        assert failure.value.message == RecoveryFailed().message


def test_display_names_are_sealed(world) -> None:
    sessions, names, _codes, _provider = world
    with sessions.begin() as s:
        create_user(s, names, username="dr.b", password=PW, role="clinician", organization="Organization/h1", now=NOW,
                    display_name="Dr Bea Okafor")
    with sessions.begin() as s:
        user = s.scalars(select(User)).one()
        assert b"Okafor" not in (user.display_name_sealed or b"")
        assert names.display_name(s, user) == "Dr Bea Okafor"


def test_the_invite_command_prints_a_code_and_a_link(tmp_path: Path) -> None:
    env = {"HEALTHLEDGER_DATA_DIR": str(tmp_path / "var"), "HEALTHLEDGER_LOAD_DEMO_DATA": "false",
           "HEALTHLEDGER_BASE_URL": "https://patients.example"}
    runner = CliRunner()
    missing = runner.invoke(cli, ["users", "invite", "no-such-patient"], env=env)
    assert missing.exit_code == 1 and "no Patient with id 'no-such-patient'" in missing.output
    env["HEALTHLEDGER_LOAD_DEMO_DATA"] = "true"
    assert runner.invoke(cli, ["init"], env=env).exit_code == 0
    result = runner.invoke(cli, ["users", "invite", demo_id("patient", 0), "--json"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["link"] == f"https://patients.example/app/signup?code={out['code']}" and out["valid_days"] == 14
