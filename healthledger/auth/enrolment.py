"""Patients' own accounts: sign-up with a one-time enrolment code, a new password, recovery with the
printed recovery code.

- **Enrolment.** The hospital issues a code for a Patient (`healthledger users invite PATIENT_ID`): 80
  random bits, shown once, valid for `DEFAULT_CODE_LIFETIME`, stored only as a keyed hash (a blind-index
  term under the store's keys, so a copy of the table cannot be redeemed or brute-forced without the key).
  Redeeming it creates the patient's account and signing key in one transaction and returns the key's
  recovery code, to be shown once. A patient never types an MRN: the code names the record. A new code for
  the same patient replaces the unused ones; a patient who already has an account cannot enrol again.
- **A new password** needs the current one, which also unlocks the patient's signing key to rewrap it
  (`ledger.patient_keys.change_password`): account password and key password stay one and the same.
- **Recovery** with the recovery code printed at enrolment (or at the previous recovery): the code opens
  the key's recovery wrap together with the hospital's key-encryption key (2-of-2,
  `ledger.patient_keys.recover`), a new password is set for both, and a new recovery code replaces the
  used one. A wrong code, an unknown username and an account without a key give one and the same answer.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from healthledger.auth.models import EnrolmentCode, User
from healthledger.auth.users import (
    AccountNames,
    check_new_password,
    create_user,
    find_user,
    password_matches,
    set_password,
)
from healthledger.errors import BadRequest, Conflict, Forbidden
from healthledger.keys import KeyProvider
from healthledger.ledger import patient_keys
from healthledger.ledger.models import PatientKeyRecord
from healthledger.store.repository import ResourceStore

CODE_BYTES = 10  # 80 bits: online guessing is rate-limited, offline guessing needs the index key
DEFAULT_CODE_LIFETIME = timedelta(days=14)

RandomBytes = Callable[[int], bytes]


class EnrolmentFailed(BadRequest):
    """One answer for a code that is unknown, used, expired or replaced (which one is not said)."""

    def __init__(self) -> None:
        super().__init__("this enrolment code is not valid: check it, or ask the hospital for a new one",
                         expression="code")


class RecoveryFailed(Forbidden):
    """One answer for an unknown username, a wrong recovery code, or an account without a signing key."""

    def __init__(self) -> None:
        super().__init__("the username and recovery code do not match an account", expression="recovery_code")


def new_code(random_bytes: RandomBytes = os.urandom) -> str:
    """80 random bits in RFC 4648 base32, in groups of four: `ABCD-EFGH-IJKL-MNOP`."""
    text = base64.b32encode(random_bytes(CODE_BYTES)).decode("ascii")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def normalise_code(code: str) -> str:
    """What a person may type: any case, spaces or dashes between groups, O/0 and I/1 confused."""
    text = code.upper().replace("-", "").replace(" ", "")
    return text.replace("0", "O").replace("1", "I").replace("8", "B")


class EnrolmentCodes:
    """Issuing and redeeming codes over the store's key machinery (the code's keyed index)."""

    def __init__(self, store: ResourceStore, names: AccountNames) -> None:
        self._store = store
        self._names = names

    def index(self, code: str) -> bytes:
        indexer = self._store.indexer
        return indexer.term(indexer.key("Account", "enrolment-code"), normalise_code(code))

    def issue(
        self, session: Session, patient_id: str, *, now: datetime,
        lifetime: timedelta = DEFAULT_CODE_LIFETIME, random_bytes: RandomBytes = os.urandom,
    ) -> str:
        """A new code for the patient (shown once); the patient's unused codes are withdrawn."""
        if not patient_id:
            raise BadRequest("an enrolment code is for one Patient: give its id")
        code = new_code(random_bytes)
        # Before this transaction writes: the index key may be made on first use, in a transaction of its own,
        # which on SQLite would wait for this one's write lock.
        index = self.index(code)
        if session.scalar(select(User.user_id).where(User.patient_id == patient_id, User.role == "patient")):
            raise Conflict("this patient already has an account: use account recovery instead")
        session.execute(delete(EnrolmentCode).where(EnrolmentCode.patient_id == patient_id,
                                                    EnrolmentCode.used_at.is_(None)))
        session.add(EnrolmentCode(code_index=index, patient_id=patient_id, created_at=now,
                                  expires_at=now + lifetime))
        session.flush()
        return code

    def patient_for(self, session: Session, code: str, now: datetime) -> str:
        """The Patient id a live code names; EnrolmentFailed otherwise."""
        row = session.get(EnrolmentCode, self.index(code)) if normalise_code(code) else None
        if row is None or row.used_at is not None or _aware(row.expires_at, now) <= now:
            raise EnrolmentFailed()
        return row.patient_id

    def redeem(
        self, session: Session, provider: KeyProvider, *, code: str, username: str, password: str, now: datetime,
    ) -> Enrolment:
        """Create the patient's account and signing key (the caller commits); the code is used up."""
        check_new_password(password)
        patient_id = self.patient_for(session, code, now)
        if session.scalar(select(User.user_id).where(User.patient_id == patient_id, User.role == "patient")):
            raise EnrolmentFailed()
        if session.get(PatientKeyRecord, f"Patient/{patient_id}") is not None:
            raise Conflict("this record already has a signing key: ask the hospital to recover the account")
        user = create_user(session, self._names, username=username, password=password, role="patient",
                           now=now, patient_id=patient_id)
        recovery = patient_keys.create_patient_key(session, f"Patient/{patient_id}", password, provider,
                                                   now=now.timestamp())
        row = session.get(EnrolmentCode, self.index(code))
        assert row is not None
        row.used_at = now
        session.flush()
        return Enrolment(user.user_id, patient_id, recovery)


@dataclass(frozen=True)
class Enrolment:
    user_id: str
    patient_id: str
    recovery_code: str  # show once; never stored


def change_password(session: Session, user: User, current: str, new: str, *, now: datetime) -> None:
    """A new password for the account and, for a patient, their signing key (the caller commits)."""
    if not password_matches(user, current):
        raise Forbidden("the current password is not right", expression="current_password")
    check_new_password(new)
    if user.role == "patient" and user.patient_id:
        ref = f"Patient/{user.patient_id}"
        if session.get(PatientKeyRecord, ref) is not None:
            try:
                patient_keys.change_password(session, ref, current, new, now=now.timestamp())
            except patient_keys.KeyUnlockError:
                raise Forbidden("your signing key does not open with this password: ask the hospital for help",
                                expression="current_password") from None
    set_password(user, new)


def recover_account(
    session: Session, names: AccountNames, provider: KeyProvider, *,
    username: str, recovery_code: str, new_password: str, now: datetime,
) -> str:
    """Set a new password with the recovery code; returns the new recovery code (show once)."""
    check_new_password(new_password)
    user = find_user(session, names, username)
    if user is None or user.role != "patient" or not user.patient_id or user.disabled:
        raise RecoveryFailed()  # as fast as a wrong code, which fails before any argon2 evaluation
    try:
        fresh = patient_keys.recover(session, f"Patient/{user.patient_id}", recovery_code, new_password, provider,
                                     now=now.timestamp())
    except patient_keys.KeyUnlockError:
        raise RecoveryFailed() from None
    set_password(user, new_password)
    return fresh


def _aware(moment: datetime, like: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=like.tzinfo)
