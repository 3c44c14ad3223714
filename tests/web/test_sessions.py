"""Web sign-in sessions: login, logout, fixation, lifetimes, CSRF by authentication, rate limit, lockout."""

from __future__ import annotations

import hashlib
import html
import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from healthledger.auth.models import User
from healthledger.auth.scopes import parse_scopes
from healthledger.auth.users import AccountNames, LockoutPolicy, create_user, disable_user
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory, upgrade
from healthledger.errors import ConfigurationError
from healthledger.keys import KEY_FILES, WEB_SESSION_SECRET, LocalFileKeyProvider
from healthledger.principal import HRESCH, TREAT, Principal
from healthledger.store.repository import ResourceStore, store_for_settings
from healthledger.web.models import WebSession
from healthledger.web.pages import web_blueprint
from healthledger.web.sessions import SessionSecret, csrf_required, init_web, session_principal

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
PW = "correct horse battery"
COOKIE = "healthledger_session"
USERS = {  # username -> (role, organization, patient_id)
    "pat": ("patient", "", "p1"),
    "doc": ("clinician", "Organization/h1", ""),
    "res": ("researcher", "Organization/u1", ""),
    "aud": ("auditor", "", ""),
}


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at minimum cost: these tests are about sessions, not the work factor."""
    from argon2 import PasswordHasher

    from healthledger.auth import users

    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(users, "_hasher", cheap)
    monkeypatch.setattr(users, "_DUMMY_HASH", cheap.hash("dummy"))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A migrated database: a fresh SQLite file, or the run's PostgreSQL schema (each test its own tenant)."""
    if backend == "sqlite":
        return str(request.getfixturevalue("migrated_sqlite_url"))
    url, _schema = request.getfixturevalue("postgres_schema_url")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return str(url)


@pytest.fixture()
def store(database_url: str, tmp_path: Path) -> Iterator[ResourceStore]:
    engine = make_engine(database_url)
    settings = Settings(data_dir=tmp_path, tenant="web-" + secrets.token_hex(4))
    yield store_for_settings(engine, LocalFileKeyProvider(tmp_path / "keys"), settings)
    engine.dispose()


@pytest.fixture()
def sessions(store: ResourceStore) -> sessionmaker[Session]:
    return session_factory(store.engine)


@pytest.fixture()
def names(store: ResourceStore) -> AccountNames:
    names = AccountNames(store)
    with session_factory(store.engine).begin() as s:
        for username, (role, organization, patient_id) in USERS.items():
            create_user(s, names, username=username, password=PW, role=role, now=NOW,
                        organization=organization, patient_id=patient_id)
    return names


@pytest.fixture()
def clock() -> Clock:
    return Clock()


def build_app(sessions: sessionmaker[Session], names: AccountNames, clock: Clock, **options: Any) -> Flask:
    app = Flask(__name__)
    init_web(app, secret_key=secrets.token_bytes(32), secure_cookies=False)
    app.register_blueprint(web_blueprint(sessions=sessions, names=names, clock=clock, **options))
    probes: list[Principal | None] = []
    app.extensions["probes"] = probes

    @app.post("/fhir/Observation")  # stands for any API write: cookie- or bearer-authenticated
    def fhir_write() -> tuple[dict[str, Any], int]:
        principal = session_principal(sessions)
        return {"actor": principal.actor_id if principal else None}, 201

    @app.post("/auth/token")  # a credential endpoint: never reads the session
    def token() -> dict[str, str]:
        return {"access_token": "t"}

    @app.get("/probe")
    def probe() -> tuple[str, int]:
        probes.append(session_principal(sessions))
        return "", 204

    return app


@pytest.fixture()
def app(sessions: sessionmaker[Session], names: AccountNames, clock: Clock) -> Flask:
    return build_app(sessions, names, clock)


def csrf_token(html: bytes) -> str:
    match = re.search(rb'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1).decode()


def sign_in(client: FlaskClient, username: str, password: str = PW) -> TestResponse:
    token = csrf_token(client.get("/app/login").data)
    return client.post("/app/login", data={"username": username, "password": password, "csrf_token": token})


def page_token(client: FlaskClient) -> str:
    return csrf_token(client.get("/app/").data)


def cookie_value(client: FlaskClient) -> str | None:
    cookie = client.get_cookie(COOKIE)
    return cookie.value if cookie else None


def decoded_cookie(app: Flask, client: FlaskClient) -> dict[str, Any]:
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return dict(serializer.loads(cookie_value(client)))


def signed_in(client: FlaskClient) -> bool:
    return client.get("/app/").status_code == 200


def user_id_of(sessions: sessionmaker[Session], names: AccountNames, username: str) -> str:
    with sessions() as s:
        user_id = s.scalar(select(User.user_id).where(User.username_index == names.index(username)))
    assert user_id
    return user_id


def test_sign_in_starts_a_session_and_home_shows_the_role(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/app/").headers["Location"] == "/app/login"
    login_page = client.get("/app/login")
    assert login_page.status_code == 200 and login_page.headers["Cache-Control"] == "no-store"
    assert b'autocomplete="current-password"' in login_page.data and b'<label for="username">' in login_page.data
    response = sign_in(client, "doc")
    assert response.status_code == 303 and response.headers["Location"] == "/app/"
    home = client.get("/app/")
    assert home.status_code == 200 and b"clinician" in home.data and b"Organization/h1" in home.data
    assert "frame-ancestors 'none'" in home.headers["Content-Security-Policy"]
    assert client.get("/app/login").headers["Location"] == "/app/"  # already signed in


def test_wrong_password_and_unknown_user_look_the_same(app: Flask) -> None:
    def attempt(username: str, password: str) -> tuple[int, dict[str, str], bytes]:
        client = app.test_client()
        response = sign_in(client, username, password)
        body = response.data
        # The form keeps the username typed (the caller's own input, so it tells them nothing): set aside.
        typed = f'value="{html.escape(username)}"'.encode()
        assert body.count(typed) == 1
        body = body.replace(typed, b'value="TYPED"')
        for token in set(re.findall(rb'(?:value|content)="([A-Za-z0-9._-]{40,})"', body)):
            body = body.replace(token, b"TOKEN")
        headers_kept = {k: v for k, v in response.headers.items() if k != "Content-Length"}
        # Rate-limit headers count down with the clock (Retry-After: 60, then 59 a second later).
        headers = {k: v for k, v in headers_kept.items() if not k.startswith(("X-RateLimit", "Retry-After"))}
        return response.status_code, headers, body

    wrong_password = attempt("doc", "not the password")
    assert wrong_password[0] == 401 and b"sign-in failed" in wrong_password[2]
    assert attempt("nobody", PW) == wrong_password
    assert attempt("", "") == wrong_password
    assert attempt("x" * 500, PW) == wrong_password


def test_posts_without_a_csrf_token_are_refused(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/app/login", data={"username": "doc", "password": PW}).status_code == 400  # no session
    client.get("/app/login")
    refused = client.post("/app/login", data={"username": "doc", "password": PW})
    assert refused.status_code == 400 and b"The form has expired" in refused.data
    forged = client.post("/app/login", data={"username": "doc", "password": PW, "csrf_token": "forged"})
    assert forged.status_code == 400 and not signed_in(client)
    assert sign_in(client, "doc").status_code == 303
    assert client.post("/app/logout").status_code == 400 and signed_in(client)  # no forced sign-out either


def test_session_fixation_a_new_session_at_sign_in(app: Flask) -> None:
    victim = app.test_client()
    old_token = csrf_token(victim.get("/app/login").data)
    planted = cookie_value(victim)
    sign_in(victim, "doc")
    fresh = cookie_value(victim)
    assert planted and fresh and fresh != planted
    assert decoded_cookie(app, victim)["sid"]
    attacker = app.test_client()
    attacker.set_cookie(COOKIE, planted)
    assert not signed_in(attacker)  # the pre-login cookie gained nothing
    # The CSRF secret was replaced too: a token from before sign-in no longer works.
    assert victim.post("/app/logout", data={"csrf_token": old_token}).status_code == 400
    first_sid = decoded_cookie(app, victim)["sid"]
    again = victim.post("/app/login", data={"username": "doc", "password": PW, "csrf_token": page_token(victim)})
    assert again.status_code == 303 and decoded_cookie(app, victim)["sid"] != first_sid


def test_sign_out_clears_the_session(app: Flask) -> None:
    client = app.test_client()
    sign_in(client, "pat")
    response = client.post("/app/logout", data={"csrf_token": page_token(client)})
    assert response.status_code == 303 and response.headers["Location"] == "/app/login"
    assert cookie_value(client) is None and not signed_in(client)


def test_a_disabled_users_session_stops_at_once(app: Flask, sessions: sessionmaker[Session], names: AccountNames) -> None:
    client = app.test_client()
    sign_in(client, "doc")
    assert signed_in(client)
    with sessions.begin() as s:
        disable_user(s, names, "doc")
    assert not signed_in(client)
    assert cookie_value(client) is None  # and the dead session is dropped from the browser


def test_idle_and_absolute_timeouts(app: Flask, clock: Clock) -> None:
    client = app.test_client()
    sign_in(client, "doc")
    clock.advance(minutes=29)
    assert signed_in(client)  # activity resets the idle timer...
    clock.advance(minutes=29)
    assert signed_in(client)
    clock.advance(minutes=31)
    assert not signed_in(client)  # ...and 30 minutes without any ends the session

    sign_in(client, "doc")
    for _ in range(12 * 60 // 25):
        clock.advance(minutes=25)
        assert signed_in(client)
    clock.advance(minutes=25)  # 12 h 5 min after sign-in, however active
    assert not signed_in(client)


def test_sign_in_attempts_are_rate_limited_per_address(app: Flask) -> None:
    client = app.test_client()
    token = csrf_token(client.get("/app/login").data)
    for _ in range(10):
        response = client.post("/app/login", data={"username": "doc", "password": "guess guess guess", "csrf_token": token})
        assert response.status_code == 401
    blocked = client.post("/app/login", data={"username": "doc", "password": PW, "csrf_token": token})
    assert blocked.status_code == 429 and b"Too many attempts" in blocked.data
    assert int(blocked.headers["Retry-After"]) > 0 and blocked.headers["Cache-Control"] == "no-store"
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert sign_in(other, "pat").status_code == 303  # another address has its own budget
    third = app.test_client()
    third.environ_base["REMOTE_ADDR"] = "192.0.2.8"
    assert sign_in(third, "doc").status_code == 401  # (while "doc" itself is now locked by the guesses)


def test_account_lockout_still_applies(sessions: sessionmaker[Session], names: AccountNames, clock: Clock) -> None:
    app = build_app(sessions, names, clock, login_limit="100 per minute",
                    lockout=LockoutPolicy(free_attempts=3, first_lock=timedelta(seconds=30)))
    client = app.test_client()
    for _ in range(3):
        assert sign_in(client, "doc", "guess guess guess").status_code == 401
    locked = sign_in(client, "doc")
    assert locked.status_code == 401 and b"sign-in failed" in locked.data  # the right password, refused
    clock.advance(seconds=31)
    assert sign_in(client, "doc").status_code == 303


def test_the_cookie_holds_no_username_or_password(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames
) -> None:
    with sessions.begin() as s:
        # A patient id with '.', which no base64url session id or signature can hold by chance.
        create_user(s, names, username="Alice.Smith@example.org", password=PW, role="patient", now=NOW,
                    patient_id="pt.9.x")
    client = app.test_client()
    sign_in(client, "Alice.Smith@example.org")
    page_token(client)  # the home page adds the CSRF secret
    # The cookie's payload; the rest of the cookie is a signature, where a short needle could occur by chance.
    decoded = decoded_cookie(app, client)
    assert set(decoded) == {"sid", "csrf_token", "_permanent"}  # _permanent: Flask's
    text = json.dumps(decoded)
    assert user_id_of(sessions, names, "alice.smith@example.org") not in text  # the server knows whose it is
    text += client.get("/app/").get_data(as_text=True)
    for needle in ("alice", "Alice", "example.org", PW, "pt.9.x"):
        assert needle not in text  # nor is the username (maybe a name) shown on the page


def test_session_secret_is_wrapped_0600_stable_and_rewrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    provider = LocalFileKeyProvider(keys)
    secret = SessionSecret.load_or_create(keys, provider)
    path = keys / SessionSecret.FILE_NAME
    assert len(secret) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert secret.hex() not in path.read_text()
    assert SessionSecret.load_or_create(keys, LocalFileKeyProvider(keys)) == secret  # survives a restart
    key_file = KEY_FILES.file(keys, WEB_SESSION_SECRET)  # what key rotation rewraps
    assert not key_file.rewrap(provider)
    old_kek = provider.active_kek_id()
    provider.rotate()
    assert key_file.rewrap(provider) and not key_file.rewrap(provider)
    provider.retire(old_kek)
    assert SessionSecret.load_or_create(keys, provider) == secret
    assert path.stat().st_mode & 0o777 == 0o600 and sorted(p.name for p in keys.iterdir()) == sorted(
        ["kek.json", SessionSecret.FILE_NAME]
    )
    # Two workers starting at once: the one that loses the race uses the winner's secret.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    assert SessionSecret.load_or_create(keys, provider) == secret


def test_production_cookie_attributes_and_https_referer_check(
    sessions: sessionmaker[Session], names: AccountNames, clock: Clock
) -> None:
    app = Flask(__name__)
    init_web(app, secret_key=secrets.token_bytes(32), secure_cookies=True)
    app.register_blueprint(web_blueprint(sessions=sessions, names=names, clock=clock))
    client = app.test_client()
    page = client.get("/app/login", base_url="https://hl.example")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("__Host-healthledger=")
    for attribute in ("Secure", "HttpOnly", "Path=/", "SameSite=Lax"):
        assert attribute in cookie
    assert "Domain" not in cookie and "Expires" not in cookie  # a browser-session cookie until sign-in
    form = {"username": "doc", "password": PW, "csrf_token": csrf_token(page.data)}
    # Over HTTPS the form must also come from our own origin (Flask-WTF's strict Referer check).
    assert client.post("/app/login", data=form, base_url="https://hl.example").status_code == 400
    assert client.post("/app/login", data=form, base_url="https://hl.example",
                       headers={"Referer": "https://evil.example/"}).status_code == 400
    signed = client.post("/app/login", data=form, base_url="https://hl.example",
                         headers={"Referer": "https://hl.example/app/login"})
    assert signed.status_code == 303 and "Expires" in signed.headers["Set-Cookie"]  # 12 h at most


def test_init_web_refuses_a_short_secret() -> None:
    with pytest.raises(ConfigurationError):
        init_web(Flask(__name__), secret_key=b"short", secure_cookies=True)


def test_session_principal_per_role(app: Flask, sessions: sessionmaker[Session], names: AccountNames) -> None:
    expected = {
        "pat": ("patient", "", "p1", "patient", "patient/*.cruds", TREAT),
        "doc": ("clinician", "Organization/h1", "", "user", "user/*.cruds", TREAT),
        "res": ("researcher", "Organization/u1", "", "user", "user/*.rs", HRESCH),
        "aud": ("auditor", "", "", "user", "user/*.rs", TREAT),
    }
    probes: list[Principal | None] = app.extensions["probes"]
    for username, (role, organization, patient_id, context, scopes, purpose) in expected.items():
        client = app.test_client()
        client.get("/probe")
        assert probes.pop() is None  # not signed in
        sign_in(client, username)
        user_id = user_id_of(sessions, names, username)
        client.get("/probe")
        assert probes.pop() == Principal(
            actor_id=f"user:{user_id}", role=role, organization=organization, purpose=purpose,
            patient_id=patient_id, references=frozenset(), scopes=tuple(parse_scopes(scopes)),
            scope_context=context, via="web",
        )
        client.get("/probe", headers={"Authorization": "Bearer some-token"})
        assert probes.pop() is None  # a bearer request is never authenticated by the cookie


def test_csrf_follows_the_cookie_not_the_path(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames
) -> None:
    """Cookie-authenticated writes anywhere (here /fhir) need the token; bearer requests do not."""
    anonymous = app.test_client()
    assert anonymous.post("/fhir/Observation", json={}).status_code == 201  # no cookie: nothing to forge
    assert anonymous.post("/fhir/Observation", headers={"Authorization": "Bearer t"}).status_code == 201

    browser = app.test_client()
    sign_in(browser, "doc")
    token = page_token(browser)
    assert browser.post("/fhir/Observation", json={}).status_code == 400
    assert browser.post("/fhir/Observation", json={}, headers={"Authorization": "Basic ZG9jOng="}).status_code == 400
    accepted = browser.post("/fhir/Observation", json={}, headers={"X-CSRFToken": token})
    assert accepted.status_code == 201 and accepted.json == {"actor": f"user:{user_id_of(sessions, names, 'doc')}"}
    bearer = browser.post("/fhir/Observation", json={}, headers={"Authorization": "Bearer t"})
    assert bearer.status_code == 201 and bearer.json == {"actor": None}  # the cookie lent it nothing
    assert browser.post("/auth/token", data={"grant_type": "client_credentials"}).status_code == 200
    assert browser.get("/fhir/Observation").status_code == 405  # safe methods are never checked


@pytest.mark.parametrize(
    ("method", "path", "bearer", "cookie", "required"),
    [
        ("GET", "/app/", False, True, False),
        ("HEAD", "/fhir/Patient", False, True, False),
        ("POST", "/app/login", False, False, True),
        ("POST", "/app/logout", True, True, True),  # the web app never takes bearer tokens
        ("POST", "/fhir/Patient", False, True, True),
        ("PUT", "/fhir/Patient/1", False, True, True),
        ("DELETE", "/fhir/Patient/1", False, True, True),
        ("POST", "/fhir/Patient", True, True, False),
        ("POST", "/fhir/Patient", False, False, False),
        ("POST", "/auth/token", False, True, False),
        ("POST", "/auth/tokens-elsewhere", False, True, True),
        ("POST", "/cds-services/patient-view", False, True, False),
        ("POST", "/application", False, True, True),
        ("POST", "/application", False, False, False),
    ],
)
def test_csrf_rule(method: str, path: str, bearer: bool, cookie: bool, required: bool) -> None:
    assert csrf_required(method, path, bearer=bearer, session_cookie=cookie) is required


# -- server-side sessions: the cookie is only a handle on a record -------------------------------------------
def session_records(sessions: sessionmaker[Session], names: AccountNames) -> list[WebSession]:
    """This test's session records (on PostgreSQL the schema is shared with the run's other tests)."""
    ours = [user_id_of(sessions, names, username) for username in USERS]
    with sessions() as s:
        return list(s.scalars(select(WebSession).where(WebSession.user_id.in_(ours)).order_by(WebSession.user_id)))


def test_a_copied_cookie_is_refused_after_sign_out(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames
) -> None:
    browser = app.test_client()
    sign_in(browser, "doc")
    copied = cookie_value(browser)
    assert copied and len(session_records(sessions, names)) == 1
    browser.post("/app/logout", data={"csrf_token": page_token(browser)})
    assert session_records(sessions, names) == []

    thief = app.test_client()
    thief.set_cookie(COOKIE, copied)
    assert thief.get("/app/").headers["Location"] == "/app/login"
    assert cookie_value(thief) is None  # the dead cookie is dropped
    thief.set_cookie(COOKIE, copied)
    app.extensions["probes"].clear()
    thief.get("/probe")
    assert app.extensions["probes"] == [None]


def test_the_table_holds_only_a_hash_of_the_session_id(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames
) -> None:
    client = app.test_client()
    sign_in(client, "doc")
    session_id = decoded_cookie(app, client)["sid"]
    assert len(session_id) >= 43  # 256 random bits, base64url
    [record] = session_records(sessions, names)
    assert record.id_hash == hashlib.sha256(session_id.encode()).digest()
    assert record.user_id == user_id_of(sessions, names, "doc")
    assert (record.issued_at, record.last_seen) == (int(NOW.timestamp()),) * 2
    assert record.expires_at == int(NOW.timestamp()) + 30 * 60
    stored = b"".join(str(getattr(record, c.key)).encode() for c in WebSession.__table__.columns)
    assert session_id.encode() not in stored and session_id.encode() not in record.id_hash


def test_timeouts_are_enforced_from_the_record(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames, clock: Clock
) -> None:
    client = app.test_client()
    sign_in(client, "doc")
    page_token(client)  # the first page adds the CSRF secret to the cookie
    copied = cookie_value(client)
    clock.advance(minutes=10)
    assert signed_in(client)
    [record] = session_records(sessions, names)
    assert record.last_seen == int(clock.now.timestamp())  # activity is recorded server-side...
    assert record.expires_at == record.last_seen + 30 * 60
    assert cookie_value(client) == copied  # ...and the cookie is not re-issued for it
    clock.advance(minutes=31)
    other = app.test_client()
    other.set_cookie(COOKIE, copied or "")
    assert not signed_in(other)  # idle: refused, whoever holds the cookie
    assert session_records(sessions, names) == []  # and the record is gone


def test_disabling_a_user_ends_all_their_sessions(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames
) -> None:
    laptop, phone, colleague = app.test_client(), app.test_client(), app.test_client()
    for client, username in ((laptop, "doc"), (phone, "doc"), (colleague, "res")):
        sign_in(client, username)
    with sessions.begin() as s:
        disable_user(s, names, "doc")
    assert not signed_in(laptop) and not signed_in(phone)
    assert signed_in(colleague)
    assert [r.user_id for r in session_records(sessions, names)] == [user_id_of(sessions, names, "res")]


def test_a_new_password_ends_all_sessions_begun_before_it(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames
) -> None:
    from healthledger.auth import users

    laptop, phone = app.test_client(), app.test_client()
    sign_in(laptop, "doc")
    sign_in(phone, "doc")
    copied = cookie_value(phone)
    with sessions.begin() as s:  # what any password change does: a new, freshly salted hash
        user = s.get(User, user_id_of(sessions, names, "doc"))
        assert user is not None
        user.password_hash = users._hasher.hash("a brand new passphrase")
    assert not signed_in(laptop) and not signed_in(phone)
    thief = app.test_client()
    thief.set_cookie(COOKIE, copied or "")
    assert not signed_in(thief)
    assert sign_in(laptop, "doc", "a brand new passphrase").status_code == 303 and signed_in(laptop)
    assert len(session_records(sessions, names)) == 1


def test_signing_in_again_revokes_the_browsers_previous_session(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames
) -> None:
    client = app.test_client()
    sign_in(client, "doc")
    first = cookie_value(client)
    assert client.post("/app/login", data={"username": "doc", "password": PW,
                                           "csrf_token": page_token(client)}).status_code == 303
    assert len(session_records(sessions, names)) == 1
    replay = app.test_client()
    replay.set_cookie(COOKIE, first or "")
    assert not signed_in(replay)


def test_expired_records_are_pruned_at_sign_in(
    app: Flask, sessions: sessionmaker[Session], names: AccountNames, clock: Clock
) -> None:
    for username in ("doc", "res", "aud"):
        sign_in(app.test_client(), username)
    assert len(session_records(sessions, names)) == 3
    clock.advance(minutes=31)
    fresh = app.test_client()
    sign_in(fresh, "pat")
    assert [r.issued_at for r in session_records(sessions, names)] == [int(clock.now.timestamp())]


def test_a_copied_cookie_is_refused_on_the_fhir_api_after_sign_out(backend: str, database_url: str,
                                                                  tmp_path: Path) -> None:
    """The real app: a signed-in browser reads /fhir; after sign-out its copied cookie gets 401 and the login page."""
    from fhir_api_support import api_settings, dispose
    from fhir_api_support import build_app as build_api_app

    app = build_api_app(api_settings(tmp_path / "var", "" if backend == "sqlite" else database_url))
    try:
        store = app.extensions["healthledger.store"]
        with session_factory(store.engine).begin() as s:
            create_user(s, AccountNames(store), username="dr.b", password=PW, role="clinician", now=datetime.now(UTC),
                        organization="Organization/h1")
        browser = app.test_client()
        assert sign_in(browser, "dr.b").status_code == 303
        assert browser.get("/fhir/Patient?_count=1").status_code == 200
        copied = browser.get_cookie(COOKIE)
        assert copied is not None
        assert browser.post("/app/logout", data={"csrf_token": page_token(browser)}).status_code == 303

        replay = app.test_client()
        replay.set_cookie(COOKIE, copied.value)
        refused = replay.get("/fhir/Patient?_count=1")
        assert refused.status_code == 401
        assert refused.get_json()["resourceType"] == "OperationOutcome"
        replay.set_cookie(COOKIE, copied.value)
        assert replay.get("/app/").headers["Location"] == "/app/login"
    finally:
        dispose(app)


def test_the_documented_sign_in_limit_holds_across_worker_processes() -> None:
    """memory:// counts in each worker process alone: each enforces its share, so an address gets no more than the
    limit from all workers together; a shared storage counts once and keeps the limit as given."""
    from healthledger.web.pages import per_process_limit

    assert per_process_limit("10 per minute", "memory://", 2) == "5 per 1 minute"
    assert per_process_limit("10/minute;101/hour", "memory://", 3) == "4 per 1 minute; 34 per 1 hour"
    assert per_process_limit("10 per minute", "memory://", 1) == "10 per minute"
    assert per_process_limit("10 per minute", "redis://127.0.0.1:6379", 2) == "10 per minute"
