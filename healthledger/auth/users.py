"""People and their passwords: argon2id hashes, and a lockout that slows guessing without letting
anyone lock a patient out for long.

Lockout (OWASP ASVS 4.0 §2.2.1 "soft lockout"): after `free_attempts` consecutive failures each further
failure locks the account for a delay that doubles, capped at `max_lock`; a success resets the count.
A guesser gets a handful of tries per quarter hour, and an attacker who fails on purpose delays the
real patient by at most `max_lock`. Per-address rate limiting sits in front of this at the web layer.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthledger import crypto
from healthledger.auth.models import User
from healthledger.errors import BadRequest, Conflict, NotFound, Unauthorized
from healthledger.store.repository import ResourceStore

ROLES = ("patient", "clinician", "researcher", "auditor")
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; this bounds the work an attacker can ask for

_hasher = PasswordHasher()  # argon2id, the library's defaults (RFC 9106 second recommended option)
# Verified against when the username is unknown, so both paths cost one argon2 evaluation.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class LockoutPolicy:
    free_attempts: int = 5
    first_lock: timedelta = timedelta(seconds=30)
    max_lock: timedelta = timedelta(minutes=15)

    def lock_for(self, failures: int) -> timedelta:
        if failures < self.free_attempts:
            return timedelta(0)
        return min(self.first_lock * 2 ** (failures - self.free_attempts), self.max_lock)


class LoginFailed(Unauthorized):
    """One answer for every failed login (unknown user, wrong password, locked, disabled)."""

    def __init__(self) -> None:
        super().__init__("sign-in failed: check the username and password, or try again in a few minutes")


class AccountNames:
    """Usernames without plaintext at rest, on the store's key machinery (rotated and rewrapped with it):
    a blind-index term under the index key of ("Account", "username") for sign-in, and a ciphertext
    under the tenant's "accounts" data key for listing."""

    KEY_CLASS = "accounts"

    def __init__(self, store: ResourceStore) -> None:
        self._store = store

    def index(self, name: str) -> bytes:
        indexer = self._store.indexer
        return indexer.term(indexer.key("Account", "username"), name)

    def seal(self, session: Session, user_id: str, name: str) -> bytes:
        return crypto.seal(self._key(session), name.encode(), self._aad(user_id))

    def open(self, session: Session, user: User) -> str:
        return crypto.open_(self._key(session), user.username_sealed, self._aad(user.user_id)).decode()

    def seal_display_name(self, session: Session, user_id: str, display_name: str) -> bytes:
        return crypto.seal(self._key(session), display_name.encode(), self._aad(user_id, "account-display-name"))

    def display_name(self, session: Session, user: User) -> str:
        """The name patients see for this person ("" when none was given)."""
        if not user.display_name_sealed:
            return ""
        return crypto.open_(
            self._key(session), user.display_name_sealed, self._aad(user.user_id, "account-display-name")
        ).decode()

    def _key(self, session: Session) -> bytes:
        return self._store.keyring.key_for_scope(session.connection(), self.KEY_CLASS, b"").key

    def _aad(self, user_id: str, field: str = "account-username") -> bytes:
        return f"healthledger/{field}/v1|{self._store.tenant}|{user_id}".encode()


MAX_DISPLAY_NAME_CHARS = 120


def _normalise(username: str) -> str:
    name = username.strip().casefold()
    if not 3 <= len(name) <= 120 or any(c.isspace() for c in name):
        raise BadRequest("username must be 3-120 characters without spaces", expression="username")
    return name


def create_user(
    session: Session,
    names: AccountNames,
    *,
    username: str,
    password: str,
    role: str,
    now: datetime,
    organization: str = "",
    patient_id: str = "",
    display_name: str = "",
) -> User:
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    if role == "patient" and not patient_id:
        raise BadRequest("a patient account must be linked to a Patient (--patient)")
    if role in ("clinician", "researcher") and not organization.startswith("Organization/"):
        raise BadRequest("clinicians and researchers act for an organisation: --organization Organization/{id}")
    check_new_password(password)
    display_name = display_name.strip()
    if len(display_name) > MAX_DISPLAY_NAME_CHARS or not display_name.isprintable():
        raise BadRequest(f"a display name is printable text of at most {MAX_DISPLAY_NAME_CHARS} characters")
    name = _normalise(username)
    index = names.index(name)
    if session.scalar(select(User).where(User.username_index == index)) is not None:
        raise Conflict("that username is taken", expression="username")
    user_id = secrets.token_hex(8)
    user = User(
        user_id=user_id, username_index=index, username_sealed=names.seal(session, user_id, name),
        password_hash=_hasher.hash(password), role=role, organization=organization, patient_id=patient_id,
        disabled=False, failed_logins=0, created_at=now,
    )
    if display_name:
        user.display_name_sealed = names.seal_display_name(session, user_id, display_name)
    session.add(user)
    session.flush()
    return user


def check_new_password(password: str) -> None:
    """BadRequest unless `password` is long enough (NIST SP 800-63B §5.1.1.2: length, not composition rules)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadRequest(f"password must have at least {MIN_PASSWORD_CHARS} characters", expression="password")
    if len(password) > MAX_PASSWORD_CHARS:
        raise BadRequest(f"password must have at most {MAX_PASSWORD_CHARS} characters", expression="password")


def find_user(session: Session, names: AccountNames, username: str) -> User | None:
    """The account with this username, or None (also for a name that cannot be a username)."""
    try:
        name = _normalise(username)
    except BadRequest:
        return None
    return session.scalar(select(User).where(User.username_index == names.index(name)))


def password_matches(user: User, password: str) -> bool:
    """Does `password` open this account? One argon2 evaluation; counts nothing (see `authenticate`)."""
    return _verify(user.password_hash, password)


def set_password(user: User, password: str) -> None:
    """A new password for `user` (any path): every session begun before it ends at its next use."""
    check_new_password(password)
    user.password_hash = _hasher.hash(password)
    user.failed_logins = 0
    user.locked_until = None


def authenticate(
    session: Session,
    names: AccountNames,
    username: str,
    password: str,
    now: datetime,
    policy: LockoutPolicy = LockoutPolicy(),
) -> User:
    """The user, or LoginFailed. Records failures and locks per `policy`; the caller commits."""
    try:
        name = _normalise(username)
    except BadRequest:
        name = ""
    user = session.scalar(select(User).where(User.username_index == names.index(name))) if name else None
    if user is None:
        _verify(_DUMMY_HASH, password)
        raise LoginFailed()
    if user.disabled or (user.locked_until is not None and _aware(user.locked_until, now) > now):
        _verify(_DUMMY_HASH, password)  # same cost, and no guess is checked while locked
        raise LoginFailed()
    if not _verify(user.password_hash, password):
        user.failed_logins += 1
        lock = policy.lock_for(user.failed_logins)
        user.locked_until = now + lock if lock else None
        raise LoginFailed()
    user.failed_logins = 0
    user.locked_until = None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _aware(moment: datetime, like: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=like.tzinfo)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.created_at, User.user_id)))


def disable_user(session: Session, names: AccountNames, username: str) -> User:
    user = session.scalar(select(User).where(User.username_index == names.index(_normalise(username))))
    if user is None:
        raise NotFound("no such user")
    user.disabled = True
    return user
