"""Patient secp256k1 master keys (password-wrapped, 2-of-2 recovery) and per-grantee pseudonyms.

Trust model (also in docs/trust-model.md). The master key is stored only wrapped, twice:
- password wrap: AES-256-GCM (`crypto.seal`) under argon2id(password, per-patient salt). Only the
  patient's password opens it, so the server can use the key only while the patient supplies the
  password (at sign-in or when confirming a consent). While the key is unlocked it is in the server's
  memory: a server compromised during that window can sign as that patient's pseudonyms.
- recovery wrap (2-of-2): the key sealed under a random recovery code printed once for the patient,
  and that ciphertext wrapped again by the hospital's key-encryption key (`KeyProvider`). The hospital
  alone (KEK + database) lacks the recovery code; the code alone lacks the KEK-held layer. Recovery runs
  at the hospital with the patient present, sets a new password and prints a new recovery code.
- A database thief sees argon2 parameters, salts and ciphertexts: every password guess costs one
  argon2id evaluation (64 MiB); the recovery wrap is useless without both the KEK and the code. A weak
  password remains guessable offline by someone with the database: a limitation we state, not hide.
- Pseudonyms: `pseudonym_for(master, grantee)` is HKDF(master, tag || grantee) reduced to a scalar, so
  addresses for two grantees are unlinkable on-chain without the master key. The service stores the
  (patient, grantee) -> address mapping: whoever reads the database can link a patient's pseudonyms.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthledger import crypto
from healthledger.errors import BadRequest, DecryptionError, NotFound, Unauthorized
from healthledger.keys import KeyProvider, WrappedKey
from healthledger.ledger.models import PatientKeyRecord, PatientPseudonym

# SEC 2 v2 §2.4.1: the order n of secp256k1's base point.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# Domain-separation tags (one per use of a key or derivation).
PASSWORD_WRAP_AAD = b"healthledger/patient-key/password-wrap/v1:"
RECOVERY_WRAP_AAD = b"healthledger/patient-key/recovery-wrap/v1:"
RECOVERY_KEK_CONTEXT = b"healthledger/patient-key/recovery-kek/v1:"
RECOVERY_CODE_INFO = b"healthledger/patient-key/recovery-code/v1"
PSEUDONYM_INFO = b"healthledger/pseudonym/v1:"

SALT_BYTES = 16  # RFC 9106 §3.1: 128-bit salt
RECOVERY_CODE_BYTES = 20  # 160 bits: far beyond offline guessing, so HKDF (not a slow KDF) suffices
MIN_PASSWORD_CHARS = 8

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class Argon2Params:
    """argon2id cost parameters, stored beside each wrap so they can be raised later.

    Default: RFC 9106 §4, second recommended option (t=3, m=64 MiB, p=4): ~0.4 s on this 2-core host.
    """

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4


DEFAULT_ARGON2 = Argon2Params()


class KeyUnlockError(Unauthorized):
    """Opaque: the password or recovery code did not open the patient's key (which one is not said)."""

    def __init__(self) -> None:
        super().__init__("the patient key could not be unlocked with the given secret")


# ---- pure core -------------------------------------------------------------------------------


def scalar_from_bytes(material: bytes) -> int:
    """FIPS 186-5 A.2.1 style: at least 64 extra bits reduced mod (n - 1), plus 1, so 1 <= k < n."""
    if len(material) < 40:
        raise ValueError("need at least 40 bytes (256 + 64 bits) for an unbiased scalar")
    return int.from_bytes(material, "big") % (SECP256K1_N - 1) + 1


def new_master_key(random_bytes: RandomBytes = os.urandom) -> bytes:
    """A fresh secp256k1 private key (32 bytes, big-endian, 1 <= k < n)."""
    return scalar_from_bytes(random_bytes(48)).to_bytes(32, "big")


def password_key(password: str, salt: bytes, params: Argon2Params) -> bytes:
    """argon2id (RFC 9106) of the password: the 32-byte key that wraps the master key."""
    return hash_secret_raw(
        password.encode("utf-8"),
        salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=crypto.KEY_BYTES,
        type=Type.ID,
    )


def wrap_with_password(
    master: bytes, password: str, salt: bytes, params: Argon2Params, patient_ref: str
) -> bytes:
    return crypto.seal(password_key(password, salt, params), master, PASSWORD_WRAP_AAD + patient_ref.encode())


def unwrap_with_password(
    blob: bytes, password: str, salt: bytes, params: Argon2Params, patient_ref: str
) -> bytes:
    try:
        return crypto.open_(
            password_key(password, salt, params), blob, PASSWORD_WRAP_AAD + patient_ref.encode()
        )
    except DecryptionError:
        raise KeyUnlockError() from None


def new_recovery_code(random_bytes: RandomBytes = os.urandom) -> str:
    """160 random bits as RFC 4648 base32, in groups of four: `ABCD-EFGH-...` (32 characters)."""
    text = base64.b32encode(random_bytes(RECOVERY_CODE_BYTES)).decode("ascii")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def _recovery_code_key(code: str) -> bytes:
    normalised = code.upper().replace("-", "").replace(" ", "")
    try:
        raw = base64.b32decode(normalised)
    except ValueError:
        raise KeyUnlockError() from None
    if len(raw) != RECOVERY_CODE_BYTES:
        raise KeyUnlockError()
    return crypto.derive_key(raw, RECOVERY_CODE_INFO)


def wrap_for_recovery(master: bytes, code: str, patient_ref: str, provider: KeyProvider) -> WrappedKey:
    """2-of-2: sealed under the recovery code, then wrapped by the hospital's KEK."""
    inner = crypto.seal(_recovery_code_key(code), master, RECOVERY_WRAP_AAD + patient_ref.encode())
    return provider.wrap(inner, RECOVERY_KEK_CONTEXT + patient_ref.encode())


def unwrap_for_recovery(wrapped: WrappedKey, code: str, patient_ref: str, provider: KeyProvider) -> bytes:
    try:
        inner = provider.unwrap(wrapped, RECOVERY_KEK_CONTEXT + patient_ref.encode())
        return crypto.open_(_recovery_code_key(code), inner, RECOVERY_WRAP_AAD + patient_ref.encode())
    except DecryptionError:
        raise KeyUnlockError() from None


def pseudonym_key(master: bytes, grantee_id: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the master key with the grantee as info, reduced to a secp256k1 scalar."""
    if not grantee_id:
        raise BadRequest("grantee id must not be empty")
    material = crypto.derive_key(master, PSEUDONYM_INFO + grantee_id.encode("utf-8"), length=48)
    return scalar_from_bytes(material).to_bytes(32, "big")


def pseudonym_for(master: bytes, grantee_id: str) -> LocalAccount:
    """The account a patient uses towards one grantee; stable per grantee, unlinkable across grantees."""
    account: LocalAccount = Account.from_key(pseudonym_key(master, grantee_id))
    return account


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadRequest(f"password must have at least {MIN_PASSWORD_CHARS} characters")


# ---- database shell ----------------------------------------------------------------------------


def _params_of(record: PatientKeyRecord) -> Argon2Params:
    return Argon2Params(record.kdf_time_cost, record.kdf_memory_kib, record.kdf_parallelism)


def _load(session: Session, patient_ref: str) -> PatientKeyRecord:
    record = session.get(PatientKeyRecord, patient_ref)
    if record is None:
        raise NotFound("no key for this patient")
    return record


def _set_password_wrap(
    record: PatientKeyRecord, master: bytes, password: str, params: Argon2Params, random_bytes: RandomBytes
) -> None:
    salt = random_bytes(SALT_BYTES)
    record.salt = salt
    record.kdf_time_cost, record.kdf_memory_kib, record.kdf_parallelism = (
        params.time_cost,
        params.memory_kib,
        params.parallelism,
    )
    record.password_wrap = wrap_with_password(master, password, salt, params, record.patient_ref)


def create_patient_key(
    session: Session,
    patient_ref: str,
    password: str,
    provider: KeyProvider,
    *,
    now: float,
    random_bytes: RandomBytes = os.urandom,
    params: Argon2Params = DEFAULT_ARGON2,
) -> str:
    """Generate and store a patient's master key; returns the recovery code to print once (never stored)."""
    _check_password(password)
    if session.get(PatientKeyRecord, patient_ref) is not None:
        raise BadRequest("this patient already has a key")
    master = new_master_key(random_bytes)
    code = new_recovery_code(random_bytes)
    recovery = wrap_for_recovery(master, code, patient_ref, provider)
    record = PatientKeyRecord(
        patient_ref=patient_ref,
        recovery_kek_id=recovery.kek_id,
        recovery_wrap=recovery.blob,
        created_at=now,
        updated_at=now,
    )
    _set_password_wrap(record, master, password, params, random_bytes)
    session.add(record)
    session.flush()
    return code


def unlock(session: Session, patient_ref: str, password: str) -> bytes:
    """The master key, for the duration of the patient's request; KeyUnlockError on a wrong password."""
    record = session.get(PatientKeyRecord, patient_ref)
    if record is None:
        raise KeyUnlockError()  # same answer as a wrong password: no account enumeration
    return unwrap_with_password(record.password_wrap, password, record.salt, _params_of(record), patient_ref)


def change_password(
    session: Session,
    patient_ref: str,
    old_password: str,
    new_password: str,
    *,
    now: float,
    random_bytes: RandomBytes = os.urandom,
    params: Argon2Params = DEFAULT_ARGON2,
) -> None:
    """Rewrap the master key under the new password (new salt); the key itself and pseudonyms stay."""
    _check_password(new_password)
    master = unlock(session, patient_ref, old_password)
    record = _load(session, patient_ref)
    _set_password_wrap(record, master, new_password, params, random_bytes)
    record.updated_at = now
    session.flush()


def recover(
    session: Session,
    patient_ref: str,
    recovery_code: str,
    new_password: str,
    provider: KeyProvider,
    *,
    now: float,
    random_bytes: RandomBytes = os.urandom,
    params: Argon2Params = DEFAULT_ARGON2,
) -> str:
    """At the hospital, patient present: open with KEK + code, set a new password; returns a NEW code."""
    _check_password(new_password)
    record = session.get(PatientKeyRecord, patient_ref)
    if record is None:
        raise KeyUnlockError()
    master = unwrap_for_recovery(
        WrappedKey(record.recovery_kek_id, record.recovery_wrap), recovery_code, patient_ref, provider
    )
    # The old code was typed in at a desk: replace it.
    code = new_recovery_code(random_bytes)
    recovery = wrap_for_recovery(master, code, patient_ref, provider)
    record.recovery_kek_id, record.recovery_wrap = recovery.kek_id, recovery.blob
    _set_password_wrap(record, master, new_password, params, random_bytes)
    record.updated_at = now
    session.flush()
    return code


def rewrap_recovery(session: Session, patient_ref: str, provider: KeyProvider) -> bool:
    """After a KEK rotation: move the recovery wrap's outer layer to the active KEK (no code needed)."""
    record = _load(session, patient_ref)
    if record.recovery_kek_id == provider.active_kek_id():
        return False
    context = RECOVERY_KEK_CONTEXT + patient_ref.encode()
    inner = provider.unwrap(WrappedKey(record.recovery_kek_id, record.recovery_wrap), context)
    fresh = provider.wrap(inner, context)
    record.recovery_kek_id, record.recovery_wrap = fresh.kek_id, fresh.blob
    session.flush()
    return True


def pseudonym_account(
    session: Session, patient_ref: str, master: bytes, grantee_id: str, *, now: float
) -> LocalAccount:
    """The patient's signing account towards `grantee_id`, recording the mapping on first use."""
    account = pseudonym_for(master, grantee_id)
    existing = session.scalar(
        select(PatientPseudonym).where(
            PatientPseudonym.patient_ref == patient_ref, PatientPseudonym.grantee == grantee_id
        )
    )
    if existing is None:
        session.add(
            PatientPseudonym(
                patient_ref=patient_ref, grantee=grantee_id, address=account.address, created_at=now
            )
        )
        session.flush()
    elif existing.address != account.address:
        # The stored mapping disagrees with the derivation: the master key is not this patient's.
        raise KeyUnlockError()
    return account


def pseudonym_address(session: Session, patient_ref: str, grantee_id: str) -> str | None:
    """The recorded pseudonym for (patient, grantee), without the master key; None if never used."""
    return session.scalar(
        select(PatientPseudonym.address).where(
            PatientPseudonym.patient_ref == patient_ref, PatientPseudonym.grantee == grantee_id
        )
    )


def patient_for_pseudonym(session: Session, address: str) -> str | None:
    """Which patient a pseudonymous address belongs to (the service-side mapping), or None."""
    if not is_address(address):
        raise BadRequest("not an Ethereum address")
    checksummed = to_checksum_address(address)
    return session.scalar(select(PatientPseudonym.patient_ref).where(PatientPseudonym.address == checksummed))
