"""The state of an on-chain consent grant, one vocabulary for the chain's indexer and the consent engine."""

from __future__ import annotations

from enum import StrEnum


class GrantStatus(StrEnum):
    """What the chain says of a grant (the indexer), or of a Consent's grants taken together (the index).

    The indexer reports LIVE, NOT_YET_VALID, EXPIRED, REVOKED or UNKNOWN (no event seen) for one grant; a
    Consent signed but not yet mined and indexed is PENDING. Only LIVE permits anything.
    """

    LIVE = "live"
    PENDING = "pending"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
