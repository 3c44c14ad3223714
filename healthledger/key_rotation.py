"""Rewrapping the keys that live outside the encrypted store when the key-encryption key rotates.

The store rewraps its own data keys (`healthledger.store.maintenance.rotate_keys`); the chain operator
key, the access-token signing key and patients' recovery wraps belong to other packages, each of which
knows its own wrapping context. Old KEKs can be retired only once all of these have moved.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from healthledger.auth.tokens import TokenSigner
from healthledger.config import Settings
from healthledger.keys import KeyProvider
from healthledger.ledger.chain import rewrap_operator_key
from healthledger.ledger.models import PatientKeyRecord
from healthledger.ledger.patient_keys import rewrap_recovery
from healthledger.web.sessions import SessionSecret


def rewrap_outside_store(settings: Settings, provider: KeyProvider, sessions: sessionmaker[Session]) -> list[str]:
    """Move every non-store key to the active KEK; returns what was rewrapped (for the operator)."""
    done: list[str] = []
    if rewrap_operator_key(settings.keys_dir, provider):
        done.append("chain operator key")
    if TokenSigner.rewrap(settings.keys_dir, provider):
        done.append("access-token signing key")
    if SessionSecret.rewrap(settings.keys_dir, provider):
        done.append("web session secret")
    active = provider.active_kek_id()
    with sessions.begin() as session:
        refs = session.scalars(
            select(PatientKeyRecord.patient_ref).where(PatientKeyRecord.recovery_kek_id != active)
        ).all()
        moved = sum(rewrap_recovery(session, ref, provider) for ref in refs)
    if moved:
        done.append(f"{moved} patient recovery wrap(s)")
    return done
