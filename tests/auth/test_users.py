"""People accounts: argon2id passwords, one answer for every failure, bounded lockout, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from healthledger.auth.models import User
from healthledger.auth.users import (
    AccountNames,
    LockoutPolicy,
    LoginFailed,
    authenticate,
    create_user,
    disable_user,
)
from healthledger.cli import cli
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.errors import BadRequest, Conflict
from healthledger.keys import LocalFileKeyProvider
from healthledger.store.repository import store_for_settings

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
PW = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch):
    """argon2id at minimum cost: these tests are about the protocol, not the work factor."""
    from argon2 import PasswordHasher

    from healthledger.auth import users

    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(users, "_hasher", cheap)
    monkeypatch.setattr(users, "_DUMMY_HASH", cheap.hash("dummy"))


@pytest.fixture()
def store(migrated_sqlite_url, tmp_path):
    engine = make_engine(migrated_sqlite_url)
    yield store_for_settings(engine, LocalFileKeyProvider(tmp_path / "keys"), Settings(data_dir=tmp_path))
    engine.dispose()


@pytest.fixture()
def sessions(store):
    return session_factory(store.engine)


@pytest.fixture()
def names(store):
    return AccountNames(store)


def test_login_and_uniform_failures(sessions, names) -> None:
    with sessions.begin() as s:
        create_user(s, names, username="Alice.Smith", password=PW, role="clinician", now=NOW, organization="Organization/h1")
    with sessions.begin() as s:
        assert authenticate(s, names, "  alice.smith ", PW, NOW).role == "clinician"  # case-folded, trimmed
        stored = s.scalars(select(User)).one()
        assert stored.password_hash.startswith("$argon2id$") and PW not in stored.password_hash
    messages = set()
    for username, password in (("alice.smith", "wrong password!"), ("nobody", PW), ("", PW)):
        with sessions.begin() as s, pytest.raises(LoginFailed) as err:
            authenticate(s, names, username, password, NOW)
        messages.add(err.value.message)
    assert len(messages) == 1 and err.value.status == 401


def test_lockout_is_bounded(sessions, names) -> None:
    policy = LockoutPolicy(free_attempts=3, first_lock=timedelta(seconds=30), max_lock=timedelta(minutes=15))
    with sessions.begin() as s:
        create_user(s, names, username="pat", password=PW, role="patient", now=NOW, patient_id="p1")
    t = NOW
    for _ in range(12):  # an attacker keeps failing on purpose
        with sessions.begin() as s, pytest.raises(LoginFailed):
            authenticate(s, names, "pat", "not the password", t, policy)
        t += timedelta(seconds=1)
    # Locked now: even the right password is refused...
    with sessions.begin() as s, pytest.raises(LoginFailed):
        authenticate(s, names, "pat", PW, t, policy)
    # ...but never for longer than max_lock after the last failure.
    with sessions.begin() as s:
        assert names.open(s, authenticate(s, names, "pat", PW, t + timedelta(minutes=15, seconds=1), policy)) == "pat"
    assert policy.lock_for(2) == timedelta(0) and policy.lock_for(3) == timedelta(seconds=30)
    assert policy.lock_for(4) == timedelta(seconds=60) and policy.lock_for(40) == timedelta(minutes=15)


def test_account_rules(sessions, names) -> None:
    with sessions.begin() as s:
        with pytest.raises(BadRequest):
            create_user(s, names, username="p", password=PW, role="patient", now=NOW, patient_id="p1")  # too short
        with pytest.raises(BadRequest):
            create_user(s, names, username="pat2", password="short", role="patient", now=NOW, patient_id="p1")
        with pytest.raises(BadRequest):
            create_user(s, names, username="pat3", password=PW, role="patient", now=NOW)  # no Patient link
        with pytest.raises(BadRequest):
            create_user(s, names, username="doc", password=PW, role="clinician", now=NOW)  # no organisation
        with pytest.raises(BadRequest):
            create_user(s, names, username="boss", password=PW, role="admin", now=NOW)
        create_user(s, names, username="aud", password=PW, role="auditor", now=NOW)
        with pytest.raises(Conflict):
            create_user(s, names, username="AUD", password=PW, role="auditor", now=NOW)
        disable_user(s, names, "aud")
    with sessions.begin() as s, pytest.raises(LoginFailed):
        authenticate(s, names, "aud", PW, NOW)


def test_users_cli(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    runner = CliRunner()
    r = runner.invoke(cli, ["users", "add", "pat", "--role", "patient", "--patient", "p1", "--json"])
    assert r.exit_code == 0, r.output
    created = json.loads(r.output)
    assert created["role"] == "patient" and len(created["password"]) >= 12 and created["recovery_code"]
    r = runner.invoke(cli, ["users", "add", "doc", "--role", "clinician", "--organization", "Organization/h1",
                            "--password-stdin", "--json"], input=PW + "\n")
    assert r.exit_code == 0 and "password" not in json.loads(r.output)
    r = runner.invoke(cli, ["users", "add", "doc2", "--role", "clinician", "--password-stdin"], input=PW + "\n")
    assert r.exit_code == 1 and "organisation" in r.output
    assert runner.invoke(cli, ["users", "disable", "doc"]).exit_code == 0
    listed = json.loads(runner.invoke(cli, ["users", "list", "--json"]).output)
    assert [(u["username"], u["disabled"]) for u in listed] == [("pat", False), ("doc", True)]
    # The patient's key opens with the password it was created with.
    from healthledger.ledger.patient_keys import unlock
    engine = make_engine(f"sqlite:///{(tmp_path / 'var' / 'healthledger.db').resolve()}")
    with session_factory(engine)() as s:
        assert len(unlock(s, "Patient/p1", created["password"])) == 32
    engine.dispose()


def test_usernames_are_not_stored_in_the_clear(sessions, names, migrated_sqlite_url) -> None:
    """A username can be a name or an e-mail address: only a keyed index and a ciphertext are stored."""
    with sessions.begin() as s:
        user = create_user(s, names, username="Alice.Smith@example.org", password=PW, role="patient", now=NOW,
                           patient_id="p1")
    with sessions() as s:
        assert names.open(s, s.get(User, user.user_id)) == "alice.smith@example.org"
    sessions.kw["bind"].dispose()
    path = Path(migrated_sqlite_url.removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    for needle in (b"alice.smith", b"Alice.Smith", b"example.org"):
        assert needle not in raw
