"""Access-log entries and their canonical encoding (the bytes a Merkle leaf commits to).

An entry names who did what to which resource and what was decided. It holds identifiers (client and
user ids, resource ids, a patient *pseudonym*), never names, dates of birth, codes or free text in the
clear: the one free-text field (a break-the-glass reason) is sealed by the caller before it gets here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime

from healthledger.actions import LOGGED_ACTIONS
from healthledger.audit.merkle import leaf_hash

ENCODING_VERSION = 1

DECISIONS = frozenset({"permit", "deny", "error"})


@dataclass(frozen=True)
class AccessEntry:
    """One access attempt, permitted or not."""

    time: datetime  # timezone-aware; stored and encoded in UTC, microsecond precision
    actor: str  # client id or user id
    organization: str
    role: str
    purpose: str  # HL7 v3 PurposeOfUse code, e.g. TREAT, ETREAT, HRESCH
    action: str
    resource_type: str
    resource_id: str  # empty for searches and type-level history
    patient_pseudonym: str  # keyed hash of the patient id, hex; empty when no compartment
    decision: str
    reason: str  # machine reason: consent/provision id, policy rule, or error code
    break_glass: bool = False
    sealed_note: bytes = b""  # e.g. a break-the-glass justification, sealed by the caller

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise ValueError("access entry time must be timezone-aware")
        if self.decision not in DECISIONS:
            raise ValueError(f"unknown decision {self.decision!r}")
        if self.action not in LOGGED_ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")


_FIELDS = tuple(f.name for f in dataclass_fields(AccessEntry))


def encode_entry(entry: AccessEntry) -> bytes:
    """Canonical bytes: JSON with sorted keys, no spaces, UTC times, the sealed note in base64.

    The encoding is versioned; any change to it is a new ENCODING_VERSION so old leaves still verify.
    """
    fields = {name: getattr(entry, name) for name in _FIELDS}  # dataclasses.asdict deep-copies: 10x slower
    fields["time"] = entry.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields["sealed_note"] = base64.b64encode(entry.sealed_note).decode()
    fields["v"] = ENCODING_VERSION
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def decode_entry(body: bytes) -> AccessEntry:
    fields = json.loads(body)
    if fields.pop("v", None) != ENCODING_VERSION:
        raise ValueError("unsupported access-log entry encoding")
    fields["time"] = datetime.strptime(fields["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    fields["sealed_note"] = base64.b64decode(fields["sealed_note"])
    return AccessEntry(**fields)


def entry_leaf_hash(body: bytes) -> bytes:
    """The Merkle leaf of an entry: RFC 6962 leaf hash of its canonical encoding."""
    return leaf_hash(body)
