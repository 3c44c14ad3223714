"""Rewrapping the keys that live outside the encrypted store when the key-encryption key rotates.

The store rewraps its own data keys (`healthledger.store.maintenance.rotate_keys`). Outside it there are
the wrapped key files under keys_dir, every one a kind in the registry `healthledger.keys.KEY_FILES`
(chain operator key, access-token signing key, web session secret), and patients' recovery wraps in the
database, whose wrapping context the ledger package knows. Old KEKs can be retired only once all of these
have moved.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from healthledger.config import Settings
from healthledger.keys import KEY_FILES, KeyProvider
from healthledger.ledger.models import PatientKeyRecord
from healthledger.ledger.patient_keys import rewrap_recovery


def rewrap_outside_store(settings: Settings, provider: KeyProvider, sessions: sessionmaker[Session]) -> list[str]:
    """Move every non-store key to the active KEK; returns what was rewrapped (for the operator)."""
    done = [key_file.kind.label for key_file in KEY_FILES.files(settings.keys_dir) if key_file.rewrap(provider)]
    active = provider.active_kek_id()
    with sessions.begin() as session:
        refs = session.scalars(
            select(PatientKeyRecord.patient_ref).where(PatientKeyRecord.recovery_kek_id != active)
        ).all()
        moved = sum(rewrap_recovery(session, ref, provider) for ref in refs)
    if moved:
        done.append(f"{moved} patient recovery wrap(s)")
    return done
