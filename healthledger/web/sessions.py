"""Sign-in sessions for people in the web app (/app): the session record and its lifetime, sign-in and
sign-out, CSRF, and the signed-in principal of a request.

The session is Flask's signed cookie (itsdangerous HMAC under `SessionSecret`), HttpOnly, SameSite=Lax,
Secure in production. It holds only a random session id (256 bits) and Flask-WTF's CSRF secret: never a
user id, a username, a password or anything about a patient. The cookie alone authenticates nothing:
every use looks the session up server-side (`web_sessions`, by the SHA-256 of its id: one primary-key
lookup joined to the user row), so that (OWASP ASVS 4.0.3 V3.3):
- signing out deletes the record: a copy of the cookie taken before then is refused (V3.3.1);
- lifetimes are enforced from the record's issued-at and last-seen on every use (V3.3.2, level 2:
  30 minutes idle, 12 hours absolute), not left to the browser;
- a disabled account, or one whose password hash changed since sign-in (a new password, by any path),
  ends every session at its next use (V3.3.3, V3.3.4), and the record is deleted then;
- expired records are pruned at every sign-in (an indexed delete).
Last-seen is written at most once a minute per session, so an active page costs one read per request.
Signing in clears the old session (and deletes its record) and starts a new one (ASVS V3.2.1, session
fixation); the CSRF secret goes with it.

CSRF is a property of how a request is *authenticated*, not of which URL it hits. A browser attaches
the session cookie to every request to our origin on its own, so any unsafe request (RFC 9110 §9.2.1)
the cookie could authorise must prove it came from our pages with a valid token (form field
`csrf_token` or header `X-CSRFToken`). A bearer token (RFC 6750) is never attached by a browser on its
own: a request that carries one was composed deliberately by a client, cannot be forged cross-site
(Authorization is not a CORS-safelisted header), and is authenticated by that token alone:
`session_principal` ignores the cookie on such a request. That makes the rule in `csrf_required`:

- under /app: always (the web app is only ever cookie-authenticated; at sign-in this stops login CSRF);
- under /auth/token, /auth/jwks, /.well-known and /cds-services: never; they authenticate with what
  the request itself carries (a client assertion or secret, a CDS Hooks JWT) and never read the session;
- anywhere else, /fhir included: when the request carries the session cookie and no bearer token.

So a blanket exemption of the /fhir blueprint, which would let a cookie-authenticated write through
unchecked once the web app calls /fhir with `fetch`, is not needed, and bearer clients need nothing.
SameSite=Lax already keeps the cookie off cross-site POSTs in current browsers; the token is the
defence that does not depend on the browser (and covers same-site attackers on sibling subdomains).

The pages that sign people in and out are `healthledger.web.account`'s; this module is what they and the
API share: the session secret, the session record and its lifetime, the CSRF rule, and who is signed in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask, current_app, g, request, session
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from healthledger.auth.models import User
from healthledger.auth.scopes import parse_scopes
from healthledger.auth.users import AccountNames, LockoutPolicy, LoginFailed, authenticate
from healthledger.errors import ConfigurationError
from healthledger.keys import KEY_FILES, WEB_SESSION_SECRET, KeyProvider
from healthledger.principal import HRESCH, TREAT, Principal
from healthledger.web.models import WebSession

WEB_PREFIX = "/app"
# Endpoints that authenticate with what the request carries and never read the session (see above).
COOKIELESS_PATHS = ("/auth/token", "/auth/jwks", "/.well-known", "/cds-services")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1

# What the session cookie holds besides Flask-WTF's "csrf_token".
_SESSION_ID = "sid"
_SESSION_ID_BYTES = 32
# Last-seen is rewritten at most this often, so an active page does not write to the database per request.
_SEEN_RESOLUTION = 60  # seconds
# Domain separation of the digest of a user's password hash kept with each of their sessions.
_CREDENTIAL_STAMP_TAG = b"healthledger/web-session/credential-stamp/v1|"
_STATE = "healthledger.web"
_PRINCIPAL_CACHE = "_healthledger_session_principal"

# Role -> (SMART scope context, scopes, purpose of use). Researchers act for research (HL7 v3 HRESCH),
# which makes the consent engine de-identify what they see.
_ROLE_ACCESS: dict[str, tuple[str, str, str]] = {
    "patient": ("patient", "patient/*.cruds", TREAT),
    "clinician": ("user", "user/*.cruds", TREAT),
    "researcher": ("user", "user/*.rs", HRESCH),
    "auditor": ("user", "user/*.rs", TREAT),
}


def system_clock() -> datetime:
    """The default clock of session lifetimes: now, in UTC."""
    return datetime.now(UTC)


# -- the session secret -----------------------------------------------------------------------------


class SessionSecret:
    """The key that signs session cookies and CSRF tokens: 32 random bytes, created on first use and
    stored wrapped by the key provider (`healthledger.keys.WEB_SESSION_SECRET`; key rotation rewraps it).
    Workers starting at once end up with one secret: the key file recipe lets one of them create it."""

    FILE_NAME = WEB_SESSION_SECRET.file_name
    SIZE = 32

    @classmethod
    def load_or_create(cls, keys_dir: Path, provider: KeyProvider) -> bytes:
        key_file = KEY_FILES.file(keys_dir, WEB_SESSION_SECRET)
        secret = key_file.load_or_create(provider, lambda: secrets.token_bytes(cls.SIZE))
        if len(secret) != cls.SIZE:
            raise ConfigurationError(f"session secret in {key_file.path} has the wrong length")
        return secret


# -- pure rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionLifetime:
    """How long a session lives: `idle` since its last use, `absolute` since sign-in."""

    idle: timedelta = timedelta(minutes=30)
    absolute: timedelta = timedelta(hours=12)

    def expires_at(self, issued_at: int, last_seen: int) -> int:
        """The last second (epoch) a session is alive: the earlier of its idle and absolute deadlines."""
        return min(issued_at + int(self.absolute.total_seconds()), last_seen + int(self.idle.total_seconds()))

    def alive(self, issued_at: int, last_seen: int, now: int) -> bool:
        return now <= self.expires_at(issued_at, last_seen)


def session_id_hash(session_id: str) -> bytes:
    """What the sessions table keeps of a session id: SHA-256. The id is 256 random bits, so neither a salt
    nor a slow hash would add anything; the table alone cannot be turned back into a cookie."""
    return hashlib.sha256(session_id.encode()).digest()


def credential_stamp(password_hash: str) -> bytes:
    """A digest of a user's password hash (argon2 PHC string, freshly salted at every change)."""
    return hashlib.sha256(_CREDENTIAL_STAMP_TAG + password_hash.encode()).digest()


@dataclass(frozen=True)
class StoredSession:
    """A session's record joined with its user's row: all that one use of the session reads."""

    user_id: str
    credential_stamp: bytes
    issued_at: int
    last_seen: int
    role: str
    organization: str
    patient_id: str
    disabled: bool
    password_hash: str


def session_valid(stored: StoredSession, lifetime: SessionLifetime, now: int) -> bool:
    """Is a stored session still good? Within both timeouts, and begun with the user's current password
    (whether the account may sign in at all, disabled or not, is `principal_for`'s question)."""
    return lifetime.alive(stored.issued_at, stored.last_seen, now) and hmac.compare_digest(
        stored.credential_stamp, credential_stamp(stored.password_hash)
    )


def under(path: str, prefix: str) -> bool:
    """Is `path` the path `prefix` or below it?"""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def is_bearer(authorization: str) -> bool:
    return authorization[:7].lower() == "bearer " and bool(authorization[7:].strip())


def csrf_required(method: str, path: str, *, bearer: bool, session_cookie: bool) -> bool:
    """Must this request carry a CSRF token? Yes when the session cookie could authorise it (module doc)."""
    if method.upper() in SAFE_METHODS:
        return False
    if under(path, WEB_PREFIX):
        return True
    if any(under(path, prefix) for prefix in COOKIELESS_PATHS):
        return False
    return session_cookie and not bearer


def principal_for(user: User | StoredSession) -> Principal | None:
    """The signed-in person as a principal; None for a disabled account or a role without web access."""
    access = _ROLE_ACCESS.get(user.role)
    if access is None or user.disabled:
        return None
    context, scopes, purpose = access
    return Principal(
        actor_id=f"user:{user.user_id}",
        role=user.role,
        organization=user.organization,
        purpose=purpose,
        patient_id=user.patient_id if user.role == "patient" else "",
        references=frozenset(),
        scopes=tuple(parse_scopes(scopes)),
        scope_context=context,
        via="web",
    )


# -- the Flask shell --------------------------------------------------------------------------------


@dataclass
class _WebState:
    """Per-app session settings: lifetime from init_web, clock from set_clock (the web app's blueprint)."""

    lifetime: SessionLifetime | None = None
    clock: Callable[[], datetime] = system_clock


def _state(app: Flask) -> _WebState:
    state = app.extensions.setdefault(_STATE, _WebState())
    assert isinstance(state, _WebState)
    return state


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def init_web(
    app: Flask, *, secret_key: bytes, secure_cookies: bool, lifetime: SessionLifetime = SessionLifetime()
) -> None:
    """Session cookie settings and CSRF protection for the whole app (call before serving)."""
    if len(secret_key) < SessionSecret.SIZE:
        raise ConfigurationError("the session secret must have at least 32 bytes")
    app.config.update(
        SECRET_KEY=secret_key,
        # "__Host-" (RFC 6265bis §4.1.3.2): Secure, Path=/ and no Domain, so no subdomain can set or shadow it.
        SESSION_COOKIE_NAME="__Host-healthledger" if secure_cookies else "healthledger_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        PERMANENT_SESSION_LIFETIME=lifetime.absolute,
        SESSION_REFRESH_EACH_REQUEST=False,
        WTF_CSRF_CHECK_DEFAULT=False,  # our before_request decides (csrf_required)
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its session, which has its own limits
        WTF_CSRF_SSL_STRICT=True,  # over HTTPS, also require a same-origin Referer
    )
    csrf = CSRFProtect(app)
    _state(app).lifetime = lifetime

    @app.before_request
    def _csrf_for_cookie_requests() -> None:
        if csrf_required(
            request.method,
            request.path,
            bearer=is_bearer(request.headers.get("Authorization", "")),
            session_cookie=app.config["SESSION_COOKIE_NAME"] in request.cookies,
        ):
            csrf.protect(apply_exemptions=True)  # skips only unrouted requests (they 404 anyway)


def set_clock(app: Flask, clock: Callable[[], datetime]) -> None:
    """The clock that session lifetimes are measured by in `app` (default: the system's, UTC)."""
    _state(app).clock = clock


def session_principal(sessions: sessionmaker[Session]) -> Principal | None:
    """The signed-in person for the current request, or None: not signed in, session expired, account
    disabled since sign-in, or the request carries a bearer token (then the cookie counts for nothing).

    Each call that finds a live session counts as activity for the idle timeout.
    """
    if _PRINCIPAL_CACHE in g:
        cached: Principal | None = g.get(_PRINCIPAL_CACHE)
        return cached
    principal = _session_principal(sessions)
    setattr(g, _PRINCIPAL_CACHE, principal)
    return principal


# One primary-key lookup joined to the user's row (Core, not the ORM: it runs on every cookie request).
_STORED_SESSION = (
    select(
        WebSession.user_id, WebSession.credential_stamp, WebSession.issued_at, WebSession.last_seen,
        User.role, User.organization, User.patient_id, User.disabled, User.password_hash,
    )
    .join(User, User.user_id == WebSession.user_id)
    .where(WebSession.id_hash == bindparam("id_hash"))
)


def _lifetime() -> SessionLifetime:
    lifetime = _state(current_app).lifetime
    if lifetime is None:
        raise ConfigurationError("init_web(app, ...) must run before sessions are used")
    return lifetime


def _session_principal(sessions: sessionmaker[Session]) -> Principal | None:
    lifetime = _lifetime()
    if is_bearer(request.headers.get("Authorization", "")):
        return None
    session_id = session.get(_SESSION_ID)
    if not isinstance(session_id, str):
        return None
    now = _epoch(_state(current_app).clock())
    id_hash = session_id_hash(session_id)
    engine = sessions.kw["bind"]
    with engine.connect() as conn:
        row = conn.execute(_STORED_SESSION, {"id_hash": id_hash}).first()
    stored = StoredSession(**row._mapping) if row is not None else None
    principal = principal_for(stored) if stored is not None and session_valid(stored, lifetime, now) else None
    this_session = WebSession.id_hash == id_hash
    if stored is not None and principal is None:
        with engine.begin() as conn:  # timed out, account disabled or password changed: revoked for good
            conn.execute(delete(WebSession).where(this_session))
    elif stored is not None and now - stored.last_seen >= _SEEN_RESOLUTION:
        with engine.begin() as conn:
            conn.execute(update(WebSession).where(this_session).values(
                last_seen=now, expires_at=lifetime.expires_at(stored.issued_at, now)
            ))
    if principal is None:
        session.clear()  # signed out elsewhere, revoked or expired: drop the dead cookie from the browser
    return principal


def _start_session(db: Session, user: User, lifetime: SessionLifetime, now: int) -> str:
    """Record a new session for `user` (and prune expired ones); returns its id, for the cookie only."""
    db.execute(delete(WebSession).where(WebSession.expires_at < now))
    session_id = secrets.token_urlsafe(_SESSION_ID_BYTES)
    db.add(WebSession(
        id_hash=session_id_hash(session_id), user_id=user.user_id, credential_stamp=credential_stamp(user.password_hash),
        issued_at=now, last_seen=now, expires_at=lifetime.expires_at(now, now),
    ))
    return session_id


def _end_session(db: Session) -> None:
    """Revoke the session the request's cookie names, if any: its record goes (the caller clears the cookie)."""
    session_id = session.get(_SESSION_ID)
    if isinstance(session_id, str):
        db.execute(delete(WebSession).where(WebSession.id_hash == session_id_hash(session_id)))


def _set_cookie(session_id: str) -> None:
    session.clear()  # drops the pre-login session and its CSRF secret (session fixation)
    session.permanent = True
    session[_SESSION_ID] = session_id
    g.pop(_PRINCIPAL_CACHE, None)


def _clear_cookie() -> None:
    session.clear()
    g.pop(_PRINCIPAL_CACHE, None)


def sign_in(
    sessions: sessionmaker[Session], names: AccountNames, username: str, password: str, *,
    now: datetime, lockout: LockoutPolicy,
) -> str:
    """Check the credentials and start a session (cookie set; the browser's previous session, if any, ended:
    session fixation). Returns the user id. Raises LoginFailed, with the attempt counted all the same."""
    failure: LoginFailed | None = None
    with sessions.begin() as db:  # commits the failure count and lock on a failed attempt too
        try:
            user = authenticate(db, names, username, password, now, lockout)
        except LoginFailed as exc:
            failure = exc
        else:
            user_id = user.user_id
            _end_session(db)  # the session this browser had before, if any (session fixation)
            session_id = _start_session(db, user, _lifetime(), _epoch(now))
    if failure is not None:
        raise failure
    _set_cookie(session_id)  # only once the record is committed
    return user_id


def sign_out(sessions: sessionmaker[Session]) -> None:
    """End the request's session: its record is deleted and the cookie cleared."""
    with sessions.begin() as db:
        _end_session(db)
    _clear_cookie()
