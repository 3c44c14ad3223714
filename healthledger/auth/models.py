"""Tables of API client registrations and of client-assertion ids seen (replay protection)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, LargeBinary, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base


class ApiClient(Base):
    """A registered API client (hospital system, research tool)."""

    __tablename__ = "api_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[str] = mapped_column(Text)  # space-separated SMART scopes it may be granted
    auth_method: Mapped[str] = mapped_column(String(32))  # private_key_jwt | client_secret
    jwks: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON Web Key Set (public keys)
    jwks_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    secret_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)  # argon2id
    role: Mapped[str] = mapped_column(String(32))  # system | researcher | auditor | clinician
    organization: Mapped[str] = mapped_column(String(200), default="")  # Organization/{id}
    default_purpose: Mapped[str] = mapped_column(String(16), default="TREAT")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # May name other actors in CDS Hooks `context.actor` (a consent-decision broker); otherwise a client
    # asks only as itself (docs/consent-semantics.md, "CDS Hooks: who may ask").
    consult_for_others: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # SMART App Launch: the redirect URIs of an app (JSON list; None for backend clients). An app's
    # `auth_method` is `none` (public client, PKCE only), `client_secret` or `private_key_jwt`.
    redirect_uris: Mapped[str | None] = mapped_column(Text, nullable=True)


class SeenAssertion(Base):
    """A client assertion's `jti`, kept until the assertion expires (RFC 7523 §3 item 7)."""

    __tablename__ = "auth_seen_assertions"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class User(Base):
    """A person: patient, clinician, researcher or auditor. Patients are linked to their Patient resource."""

    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # A username may be a person's name or e-mail: stored only as a blind index (for sign-in) and
    # sealed under the store's "accounts" data key (for listing), never in the clear.
    username_index: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    username_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2id, PHC string
    role: Mapped[str] = mapped_column(String(32))
    organization: Mapped[str] = mapped_column(String(200), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")  # for patients: the Patient resource id
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The name patients see for this person in their access history (staff), sealed like the username.
    display_name_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class EnrolmentCode(Base):
    """A one-time code the hospital hands a patient (`healthledger users invite`) to create their web account.

    Only a keyed hash of the code is stored (a blind-index term under the store's keys), so the table gives
    nothing a thief could redeem; the code names its Patient, so a patient never types an MRN.
    """

    __tablename__ = "enrolment_codes"

    code_index: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AppAuthorization(Base):
    """A patient's authorisation of a third-party app (SMART App Launch): what it may do, until revoked."""

    __tablename__ = "app_authorizations"

    authorization_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(32), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(Text)  # granted, space-separated, as the app asked for them
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuthorizationCode(Base):
    """A one-time authorization code (RFC 6749 §4.1.2), kept as its SHA-256 with the PKCE challenge (RFC 7636)."""

    __tablename__ = "app_authorization_codes"

    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    authorization_id: Mapped[str] = mapped_column(String(32), index=True)
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(255), default="")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RefreshToken(Base):
    """A refresh token (kept as its SHA-256), rotated at every use; reusing a spent one revokes the
    authorisation (OAuth 2.0 Security BCP, RFC 9700 §4.14.2)."""

    __tablename__ = "app_refresh_tokens"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    authorization_id: Mapped[str] = mapped_column(String(32), index=True)
    scopes: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
