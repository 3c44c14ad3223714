"""Tables of the research workflow: patients' identity commitments, issued credentials, the credential tree,
its roots, published studies and enrolments. Nothing here is plaintext PHI: attributes are sealed, the
tree holds Poseidon hashes, enrolments hold pseudonymous addresses and nullifiers."""

from __future__ import annotations

from sqlalchemy import BigInteger, Double, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

# Field elements (< 2^254) are kept as decimal strings: portable across SQLite and PostgreSQL.
FIELD_CHARS = 78


class IdentityCommitment(Base):
    """A patient's identity commitment Poseidon([secret]); the secret itself comes from their key and is
    never stored (healthledger.research.credentials.identity_secret)."""

    __tablename__ = "research_identities"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_ref: Mapped[str] = mapped_column(String(100), primary_key=True)
    commitment: Mapped[str] = mapped_column(String(FIELD_CHARS))
    created_at: Mapped[float] = mapped_column(Double)


class IssuedCredential(Base):
    """The leaf a patient holds in the tenant's credential tree, with its attributes sealed (AES-GCM under a
    per-patient data key of class `zk-credential`) and a keyed fingerprint to spot changed facts."""

    __tablename__ = "research_credentials"
    __table_args__ = (UniqueConstraint("tenant", "leaf_index", name="uq_research_credentials_leaf"),)

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_ref: Mapped[str] = mapped_column(String(100), primary_key=True)
    leaf_index: Mapped[int] = mapped_column(Integer)
    leaf: Mapped[str] = mapped_column(String(FIELD_CHARS))
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32))
    sealed_attributes: Mapped[bytes] = mapped_column(LargeBinary)
    data_key_id: Mapped[str] = mapped_column(String(40))
    issued_at: Mapped[float] = mapped_column(Double)


class TreeNode(Base):
    """A non-empty node of the tenant's Poseidon credential tree (zk.merkle layout)."""

    __tablename__ = "research_tree_nodes"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary(32))


class TreeRoot(Base):
    """Every root the tree has had, in order, with the outbox item that anchors it on CredentialRegistry."""

    __tablename__ = "research_tree_roots"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    root: Mapped[str] = mapped_column(String(FIELD_CHARS))
    leaf_count: Mapped[int] = mapped_column(Integer)
    anchor_item: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Double)


class PublishedStudy(Base):
    """A study's on-chain side: its field-element id, compiled criteria and the registration write."""

    __tablename__ = "research_studies"
    __table_args__ = (UniqueConstraint("chain_study_id", name="uq_research_studies_chain_study_id"),)

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chain_study_id: Mapped[str] = mapped_column(String(FIELD_CHARS))
    criteria_hash: Mapped[str] = mapped_column(String(FIELD_CHARS))
    circuit: Mapped[str] = mapped_column(Text)  # JSON: the compiled criteria the prover needs (no PHI)
    opens_at: Mapped[int] = mapped_column(BigInteger)
    closes_at: Mapped[int] = mapped_column(BigInteger)  # 0 = open-ended
    max_participants: Mapped[int] = mapped_column(Integer)  # 0 = no limit
    owner_address: Mapped[str] = mapped_column(String(42))
    register_item: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # publishing | active | failed
    published_at: Mapped[float] = mapped_column(Double)


class Enrolment(Base):
    """One enrolment by proof: the study pseudonym, the nullifier, the relayed write and the study consent."""

    __tablename__ = "research_enrolments"
    __table_args__ = (
        UniqueConstraint("nullifier", name="uq_research_enrolments_nullifier"),
        UniqueConstraint("tenant", "study_id", "enrollee", name="uq_research_enrolments_enrollee"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the ResearchSubject id
    tenant: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[str] = mapped_column(String(64), index=True)
    nullifier: Mapped[str] = mapped_column(String(FIELD_CHARS))
    enrollee: Mapped[str] = mapped_column(String(42))
    root: Mapped[str] = mapped_column(String(FIELD_CHARS))
    enrol_item: Mapped[int] = mapped_column(BigInteger)
    consent_id: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[float] = mapped_column(Double)
    left_at: Mapped[float | None] = mapped_column(Double, nullable=True)
