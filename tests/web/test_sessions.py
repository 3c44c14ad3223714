"""Web sign-in sessions: login, logout, fixation, lifetimes, CSRF by authentication, rate limit, lockout."""

from __future__ import annotations

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
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from healthledger.auth.scopes import parse_scopes
from healthledger.auth.users import AccountNames, LockoutPolicy, create_user, disable_user
from healthledger.config import Settings
from healthledger.db import make_engine, session_factory
from healthledger.errors import ConfigurationError
from healthledger.keys import LocalFileKeyProvider
from healthledger.principal import HRESCH, TREAT, Principal
from healthledger.store.repository import ResourceStore
from healthledger.web.sessions import (
    SessionSecret,
    csrf_required,
    init_web,
    session_principal,
    web_blueprint,
)

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


@pytest.fixture()
def store(migrated_sqlite_url: str, tmp_path: Path) -> Iterator[ResourceStore]:
    engine = make_engine(migrated_sqlite_url)
    yield ResourceStore(engine, LocalFileKeyProvider(tmp_path / "keys"), Settings(data_dir=tmp_path))
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
        for token in set(re.findall(rb'(?:value|content)="([A-Za-z0-9._-]{40,})"', body)):
            body = body.replace(token, b"TOKEN")
        # Rate-limit headers count down with the clock (Retry-After: 60, then 59 a second later).
        headers = {k: v for k, v in response.headers.items() if not k.startswith(("X-RateLimit", "Retry-After"))}
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
    assert blocked.status_code == 429 and b"Too many sign-in attempts" in blocked.data
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
        create_user(s, names, username="Alice.Smith@example.org", password=PW, role="patient", now=NOW, patient_id="p9")
    client = app.test_client()
    sign_in(client, "Alice.Smith@example.org")
    page_token(client)  # the home page adds the CSRF secret
    raw = cookie_value(client) or ""
    decoded = decoded_cookie(app, client)
    assert set(decoded) == {"uid", "sid", "iat", "seen", "csrf_token", "_permanent"}  # _permanent: Flask's
    assert decoded["iat"] == int(NOW.timestamp())
    text = raw + json.dumps(decoded) + client.get("/app/").get_data(as_text=True)
    for needle in ("alice", "Alice", "example.org", PW, "p9"):
        assert needle not in text  # nor is the username (maybe a name) shown on the page


def test_session_secret_is_wrapped_0600_stable_and_rewrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    provider = LocalFileKeyProvider(keys)
    secret = SessionSecret.load_or_create(keys, provider)
    path = keys / SessionSecret.FILE_NAME
    assert len(secret) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert secret.hex() not in path.read_text()
    assert SessionSecret.load_or_create(keys, LocalFileKeyProvider(keys)) == secret  # survives a restart
    assert not SessionSecret.rewrap(keys, provider)
    old_kek = provider.active_kek_id()
    provider.rotate()
    assert SessionSecret.rewrap(keys, provider) and not SessionSecret.rewrap(keys, provider)
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


def test_session_principal_per_role(app: Flask) -> None:
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
        user_id = decoded_cookie(app, client)["uid"]
        client.get("/probe")
        assert probes.pop() == Principal(
            actor_id=f"user:{user_id}", role=role, organization=organization, purpose=purpose,
            patient_id=patient_id, references=frozenset(), scopes=tuple(parse_scopes(scopes)),
            scope_context=context, via="web",
        )
        client.get("/probe", headers={"Authorization": "Bearer some-token"})
        assert probes.pop() is None  # a bearer request is never authenticated by the cookie


def test_csrf_follows_the_cookie_not_the_path(app: Flask) -> None:
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
    assert accepted.status_code == 201 and accepted.json == {"actor": f"user:{decoded_cookie(app, browser)['uid']}"}
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
