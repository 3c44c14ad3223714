"""The table of web sign-in sessions: what the server knows of each session cookie it has issued."""

from __future__ import annotations

from sqlalchemy import BigInteger, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from healthledger.db import Base


class WebSession(Base):
    """One signed-in session. The cookie carries the random session id; only its SHA-256 is stored here,
    so the table (a backup, a read-only SQL injection) yields nothing that could be replayed as a cookie.

    Times are epoch seconds. `expires_at` is the earlier of the idle and the absolute deadline, kept up
    to date with `last_seen`, so a session's liveness and the pruning of dead ones are one comparison.
    """

    __tablename__ = "web_sessions"

    id_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)  # SHA-256 of the session id
    user_id: Mapped[str] = mapped_column(String(32), index=True)
    # A digest of the user's password hash at sign-in: a new password (any path) ends older sessions.
    credential_stamp: Mapped[bytes] = mapped_column(LargeBinary(32))
    issued_at: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
