"""An access-log entry, as the FHIR R4 AuditEvent the API renders (`fhir_adapters.audit_event`), in plain
words: who, for what, did what to which kind of data, when, whether it was allowed, and why. Pure.

The "why" comes from the entry's machine reason (`outcomeDesc`): the consent engine's rules
(docs/consent-semantics.md) and the access log's own reading rules, each said in a sentence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_adapters.audit_event import (
    ACT_REASON,
    BREAK_THE_GLASS_EXTENSION,
    LEAF_INDEX_EXTENSION,
    ROLE_SYSTEM,
)
from fhir_adapters.readable.consents import PURPOSES, type_words
from fhir_adapters.readable.text import human_datetime

OUTCOMES: Mapping[str, str] = {"0": "permitted", "4": "denied", "8": "refused"}
ROLES: Mapping[str, str] = {
    "patient": "patient", "clinician": "clinician", "researcher": "researcher", "auditor": "auditor",
    "system": "hospital system", "internal": "the service itself",
}
ACTIONS: Mapping[str, str] = {
    "read": "opened", "vread": "opened an earlier version of", "search-type": "searched",
    "history-instance": "looked at the history of", "history-type": "looked at the history of",
    "create": "added", "update": "changed", "delete": "deleted", "operation": "exported",
}
_CONSENT_REF = re.compile(r"Consent/([A-Za-z0-9\-.]{1,64})")


@dataclass(frozen=True)
class AccessView:
    id: str
    recorded: datetime
    who: str
    who_is_me: bool
    actor_id: str
    role: str
    organization: str  # name (or reference) of the organisation it acted for; "" for none
    purpose: str
    action: str
    what: str
    resource_type: str  # the FHIR type accessed ("" when the entry names none)
    resource: str  # Type/id accessed, "" for a search
    outcome: str  # permitted | denied | refused
    why: str
    consent_id: str  # the Consent the decision rested on ("" for none)
    break_glass: bool
    break_glass_reason: str
    leaf_index: int | None

    @property
    def when(self) -> str:
        return human_datetime(self.recorded)

    @property
    def day(self) -> str:
        return self.recorded.date().isoformat()


def describe_access(event: Mapping[str, Any], me: str = "") -> AccessView:
    """An AuditEvent in words. `me`: the reader's own actor id (`user:...`), shown as "You"."""
    agents = [a for a in event.get("agent") or [] if isinstance(a, Mapping)]
    requestor = next((a for a in agents if a.get("requestor")), agents[0] if agents else {})
    who_ref = requestor.get("who") if isinstance(requestor.get("who"), Mapping) else {}
    assert isinstance(who_ref, Mapping)
    actor_id = str((who_ref.get("identifier") or {}).get("value") or "")
    who_is_me = bool(me) and actor_id == me
    who = "You" if who_is_me else str(who_ref.get("display") or "") or _unnamed(actor_id)
    role = ""
    for concept in requestor.get("role") or []:
        for coding in (concept or {}).get("coding") or []:
            if (coding or {}).get("system") == ROLE_SYSTEM:
                role = ROLES.get(str(coding.get("code")), str(coding.get("code")))
    organization = ""
    for agent in agents:
        if agent is requestor or agent.get("requestor"):
            continue
        org = agent.get("who") if isinstance(agent.get("who"), Mapping) else {}
        assert isinstance(org, Mapping)
        organization = str(org.get("display") or org.get("reference") or (org.get("identifier") or {}).get("value") or "")
    purpose, break_glass_reason = "", ""
    for concept in event.get("purposeOfEvent") or []:
        for coding in (concept or {}).get("coding") or []:
            code = str((coding or {}).get("code") or "")
            if coding.get("system") == ACT_REASON and code == "BTG":
                break_glass_reason = str((concept or {}).get("text") or "")
            elif code and not purpose:
                purpose = PURPOSES.get(code, code)
    subtype = next((str(c.get("code")) for c in event.get("subtype") or [] if isinstance(c, Mapping)), "")
    action = ACTIONS.get(subtype, "asked whether they may see" if not subtype else subtype)
    what, resource, rtype = "", "", ""
    for entity in event.get("entity") or []:
        if not isinstance(entity, Mapping) or (entity.get("role") or {}).get("code") != "4":
            continue
        rtype = str((entity.get("type") or {}).get("code") or "")
        what = type_words(rtype) if rtype else ""
        resource = str((entity.get("what") or {}).get("reference") or "")
    extensions = {str(e.get("url")): e for e in event.get("extension") or [] if isinstance(e, Mapping)}
    leaf = extensions.get(LEAF_INDEX_EXTENSION, {}).get("valueUnsignedInt")
    reason = str(event.get("outcomeDesc") or "")
    consent = _CONSENT_REF.search(reason)
    return AccessView(
        id=str(event.get("id") or ""),
        recorded=_instant(event.get("recorded")),
        who=who,
        who_is_me=who_is_me,
        actor_id=actor_id,
        role=role,
        organization=organization,
        purpose=purpose,
        action=action,
        what=what or "data",
        resource_type=rtype,
        resource=resource,
        outcome=OUTCOMES.get(str(event.get("outcome")), "refused"),
        why=explain(reason, who_is_me=who_is_me),
        consent_id=consent.group(1) if consent and reason.startswith("consent:") else "",
        break_glass=bool(extensions.get(BREAK_THE_GLASS_EXTENSION, {}).get("valueBoolean")),
        break_glass_reason=break_glass_reason,
        leaf_index=int(leaf) if isinstance(leaf, int) else None,
    )


def _unnamed(actor_id: str) -> str:
    if actor_id.startswith("ResearchStudy/"):
        return "A research study"
    kind = actor_id.partition(":")[0]
    return {"client": "A connected system", "user": "A member of staff"}.get(kind, "The service")


def _instant(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except ValueError:
            pass
    return datetime(1970, 1, 1, tzinfo=UTC)


# First matching rule prefix -> the sentence a patient reads.
_REASONS: tuple[tuple[str, str], ...] = (
    ("policy:own-data", "It is your own data."),
    ("policy:treating-organisation", "They care for you, and it was for your treatment."),
    ("policy:access-request-limit", "They asked too many patients for access that day, so this request was refused."),
    ("policy:access-request", "They asked you for access. Nothing is shared unless you approve it under Requests."),
    ("policy:own-request", "They read their own request for access, and your answer to it."),
    ("consent-grant-not-live", "Your consent was not active on the ledger (not yet confirmed, or revoked)."),
    ("consent:", "Your consent allowed it."),
    ("break-glass", "Emergency access (\u201cbreaking the glass\u201d): allowed whatever your consents say, and flagged."),
    ("index-stale", "The ledger could not be checked just then, so access was refused to be safe."),
    ("no-applicable-consent", "No consent of yours allows it."),
    ("scope", "The system was not allowed to do this kind of request."),
    ("not-found", "What was asked for was not there."),
    ("refused", "The request was malformed and refused."),
    ("unresolved-patient", "The record could not be tied to one patient, so it was refused."),
    ("no-match", "Nothing matched the search."),
    ("unrestricted", "A hospital system with full access."),
    ("consult:", "A question about your consents from another system."),
    ("audit:own-entries", "You read your own access history."),
    ("audit:", "A request to read the access history."),
)


def explain(reason: str, *, who_is_me: bool = False) -> str:
    """The machine reason of an entry as a sentence."""
    if who_is_me and reason.startswith("policy:own-data"):
        return "You looked at your own data."
    for prefix, sentence in _REASONS:
        if reason.startswith(prefix):
            return sentence
    return "No reason was recorded." if not reason else f"Reason recorded: {reason}"
