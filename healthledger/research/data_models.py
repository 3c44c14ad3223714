"""Tables of the research data releases (Alembic branch `research_data`): feasibility budgets and releases,
Bulk Data export jobs and their files.

Nothing here holds PHI: a feasibility release keeps only the noisy count it disclosed (or that it was
suppressed), never the exact count; an export job keeps what was asked, its state and the hashes of its
files, whose de-identified contents live under the data directory (research/export.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base


class PrivacyBudget(Base):
    """ε spent by one holder (a study, or a researcher across their studies), in micro-ε (integers: no
    floating-point drift in the sums). Spent only by a conditional UPDATE that keeps spent <= total."""

    __tablename__ = "research_privacy_budgets"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(160), primary_key=True)  # ResearchStudy/{id} | researcher:{actor}
    total_micro: Mapped[int] = mapped_column(BigInteger)
    spent_micro: Mapped[int] = mapped_column(BigInteger)


class FeasibilityRelease(Base):
    """One differentially private answer, released once and repeated from here for the same question."""

    __tablename__ = "research_feasibility_releases"
    __table_args__ = (UniqueConstraint("tenant", "study_id", "question_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[str] = mapped_column(String(64))
    question_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical criteria document
    requested_by: Mapped[str] = mapped_column(String(160))
    epsilon_micro: Mapped[int] = mapped_column(BigInteger)
    reference_date: Mapped[str] = mapped_column(String(10))  # the day ages were computed at
    noisy_count: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: below the threshold
    threshold: Mapped[int] = mapped_column(Integer)
    half_width: Mapped[int] = mapped_column(Integer)  # of the 95 % interval, from the noise scale alone
    released_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExportJob(Base):
    """A Bulk Data export of a study's cohort: what was asked, by whom, and how far it got."""

    __tablename__ = "research_export_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[str] = mapped_column(String(64))
    group_id: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(160))
    request_url: Mapped[str] = mapped_column(Text)
    types: Mapped[str] = mapped_column(Text)  # comma-separated resource types asked for ("" = the study's)
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | complete | failed | cancelled
    progress: Mapped[str] = mapped_column(String(90), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    manifest: Mapped[str] = mapped_column(Text, default="")  # JSON, once complete
    manifest_sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    transaction_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_polled: Mapped[float] = mapped_column(BigInteger, default=0)  # epoch milliseconds
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)


class ExportFile(Base):
    """One NDJSON output file of a job (de-identified resources of one type)."""

    __tablename__ = "research_export_files"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # e.g. Observation.1.ndjson
    resource_type: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)


class ExportFileContent(Base):
    """A file's NDJSON, sealed (AES-256-GCM) under the job's data key: no export is on disk in the clear."""

    __tablename__ = "research_export_file_contents"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
