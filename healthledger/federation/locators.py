"""Patient-mediated matching: a one-time record locator, made by the patient at A, redeemed once by member B.

No MRN, name or birth date crosses between hospitals. The patient, signed in at hospital A, asks for a locator
for one of their Consents that grants member B (`Consent/{id}/$record-locator`); they hand it to B's intake
(on paper, a QR code, their phone). B records it against B's own patient (`Patient/{id}/$link-record`), and B's
server redeems it at A once (`$redeem-record-locator`, with a token B got under that same Consent): A answers
with the patient's reference at A, and from then on B can fetch.

A locator is `HLRL1.` + base64url(JSON {"org": A's directory id, "consent": "Consent/{id}", "secret": 32 random
bytes, base64url}). A stores only SHA-256 of the secret, with the Consent, the member it is for, the patient, an
expiry and whether it was redeemed. It carries no patient data: a locator read by someone else leads nowhere
without member B's key (the token request) and works once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass

from sqlalchemy import BigInteger, Double, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from healthledger.db import Base
from healthledger.errors import BadRequest

PREFIX = "HLRL1."
LIFETIME_SECONDS = 14 * 86_400  # a referral may take a fortnight to reach B's intake
MAX_LOCATOR_CHARS = 512


class RecordLocatorRow(Base):
    """At A: a locator the patient made (its secret's hash only)."""

    __tablename__ = "federation_record_locators"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 hex of the secret
    tenant: Mapped[str] = mapped_column(String(64))
    consent_id: Mapped[str] = mapped_column(String(64), index=True)
    member: Mapped[str] = mapped_column(String(64))  # the member organisation it is for
    patient_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    redeemed_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class RecordLinkRow(Base):
    """At B: a local patient linked to their record at another member, under one Consent there."""

    __tablename__ = "federation_record_links"
    __table_args__ = (UniqueConstraint("tenant", "source_org", "consent_ref", name="uq_federation_record_links_source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)  # ours
    source_org: Mapped[str] = mapped_column(String(64))  # the member holding the record
    consent_ref: Mapped[str] = mapped_column(String(128))  # "Consent/{id}" at the source
    source_patient: Mapped[str] = mapped_column(String(128))  # "Patient/{id}" at the source
    linked_at: Mapped[float] = mapped_column(Double)
    linked_by: Mapped[str] = mapped_column(String(256))
    last_fetch_at: Mapped[float | None] = mapped_column(Double, nullable=True)  # source's clock, for _lastUpdated
    fetched_count: Mapped[int] = mapped_column(BigInteger, default=0)


@dataclass(frozen=True)
class Locator:
    org: str
    consent: str  # "Consent/{id}"
    secret: str

    def encode(self) -> str:
        body = json.dumps({"org": self.org, "consent": self.consent, "secret": self.secret}, separators=(",", ":"))
        return PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @property
    def secret_hash(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()


def new_locator(org: str, consent_id: str) -> Locator:
    return Locator(org, f"Consent/{consent_id}", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))


def parse_locator(text: str) -> Locator:
    """The locator in `text`, or BadRequest saying what is wrong with it (never echoing it)."""
    text = text.strip()
    if len(text) > MAX_LOCATOR_CHARS or not text.startswith(PREFIX):
        raise BadRequest(f"a record locator starts with {PREFIX} and is at most {MAX_LOCATOR_CHARS} characters")
    raw = text[len(PREFIX):]
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the record locator is damaged (copy it again)") from None
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body.get(k) for k in ("org", "consent", "secret")):
        raise BadRequest("the record locator is damaged (copy it again)")
    consent = body["consent"]
    if not consent.startswith("Consent/") or len(consent) > 80 or len(body["org"]) > 40 or len(body["secret"]) > 64:
        raise BadRequest("the record locator is damaged (copy it again)")
    return Locator(body["org"], consent, body["secret"])


# ---- at A -------------------------------------------------------------------------------------------


def record_locator(
    session: Session, *, tenant: str, org: str, consent_id: str, member: str, patient_id: str, now: float
) -> Locator:
    locator = new_locator(org, consent_id)
    session.add(RecordLocatorRow(
        secret_hash=locator.secret_hash, tenant=tenant, consent_id=consent_id, member=member,
        patient_id=patient_id, created_at=now, expires_at=now + LIFETIME_SECONDS,
    ))  # fmt: skip
    return locator


def redeem(session: Session, *, tenant: str, locator: Locator, member: str, consent_id: str, now: float) -> str | None:
    """The patient id the locator leads to, marking it used; None when it is unknown, used, expired, for
    another member or another Consent (one answer for all)."""
    row = session.get(RecordLocatorRow, locator.secret_hash, with_for_update=True)
    if (
        row is None or row.tenant != tenant or row.redeemed_at is not None or row.expires_at <= now
        or row.member != member or row.consent_id != consent_id or locator.consent != f"Consent/{consent_id}"
    ):
        return None
    row.redeemed_at = now
    return row.patient_id


# ---- at B -------------------------------------------------------------------------------------------


def links_of(session: Session, tenant: str, patient_id: str) -> list[RecordLinkRow]:
    return list(session.scalars(
        select(RecordLinkRow).where(RecordLinkRow.tenant == tenant, RecordLinkRow.patient_id == patient_id)
        .order_by(RecordLinkRow.id)
    ))  # fmt: skip
