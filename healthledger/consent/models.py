"""Tables of consent enforcement: Consents' on-chain grants, requests for access (generation: store/generation.py)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Double, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base

_BigId = BigInteger().with_variant(Integer(), "sqlite")


class ConsentBinding(Base):
    """One on-chain grant backing a Consent: the patient's pseudonym towards one grantee, and the
    keyed scope hash. A permit Consent is live only while every one of its grants is live on-chain."""

    __tablename__ = "consent_bindings"
    __table_args__ = (UniqueConstraint("tenant", "consent_id", "grantee_ref", name="uq_consent_bindings_grant"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    consent_id: Mapped[str] = mapped_column(String(64), index=True)
    grantee_ref: Mapped[str] = mapped_column(String(200))  # Organization/x, Practitioner/y, or "*" (anyone)
    patient_address: Mapped[str] = mapped_column(String(42))  # the patient's pseudonym towards this grantee
    grantee_address: Mapped[str] = mapped_column(String(42))  # keyed address of grantee_ref
    scope_hash: Mapped[str] = mapped_column(String(66))  # keyed hash of the Consent's identity
    grant_id: Mapped[str] = mapped_column(String(66), index=True)  # ConsentRegistry's key
    grant_item: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # outbox item of the grant
    revoke_item: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # outbox item of the revoke
    valid_until: Mapped[int] = mapped_column(BigInteger)
    signed_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class ConsentRequest(Base):
    """A Consent an organisation recorded to ask the patient for access for itself (engine step 3): which
    organisation asked, so that it (and only it) reads the request and the patient's answer, and when, so that
    one organisation's requests per day are bounded. Nothing about the patient: a request to a patient id
    nobody has here is stored the same way."""

    __tablename__ = "consent_requests"
    __table_args__ = (
        UniqueConstraint("tenant", "consent_id", name="uq_consent_requests_consent"),
        Index("ix_consent_requests_organization", "tenant", "organization", "requested_at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    consent_id: Mapped[str] = mapped_column(String(64))
    organization: Mapped[str] = mapped_column(String(200))  # Organization/x, as the requester's registration says
    requested_at: Mapped[float] = mapped_column(Double)
