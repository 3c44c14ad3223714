"""An access-log entry as a FHIR R4 AuditEvent (http://hl7.org/fhir/R4/auditevent.html). Pure.

The entry comes in as a mapping of the fields of `healthledger.audit.entries.AccessEntry` (what
`dataclasses.asdict` gives), so this module needs nothing from the service. Choices where R4 leaves
room follow the IHE Basic Audit Log Patterns (BALP) where they apply:

- type is DICOM 110110 "Patient Record" (every entry is an access to a patient's data or an attempt);
  subtype is the FHIR RESTful interaction, and `action` its C/R/U/D/E class (a search is E, BALP).
- outcome: permit -> 0 (success), deny -> 4 (minor failure: refused, nothing went wrong), error -> 8.
- The actor is the requesting agent, named by identifier (client or user id: the log holds ids, not
  references) and, when the caller knows it, by display name (a client's registered name, a person's
  display name); the organisation it acts for is a second, non-requesting agent, with its name if known.
- The patient is an entity with role 1 (Patient): a `Patient/{id}` reference when the caller knows the
  id, otherwise only the keyed pseudonym the log stores, as an identifier.
- The sealed note of an entry (a break-the-glass justification) is rendered only when the caller opened it
  for a reader entitled to it (the patient whose data it was, an auditor): as the text of the BTG purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from fhir_adapters.extensions import IDENTIFIER_BASE, extension_url

HEALTHLEDGER_FHIR_BASE: Final = IDENTIFIER_BASE.rstrip("/")  # one base for all our URLs (fhir_adapters/extensions.py)
# Extensions (R4 extensibility.html): absolute URLs under our own base.
BREAK_THE_GLASS_EXTENSION: Final = extension_url("audit-break-the-glass")
LEAF_INDEX_EXTENSION: Final = extension_url("audit-merkle-leaf-index")
# Identifier systems for the values the log holds instead of references.
ACTOR_SYSTEM: Final = f"{HEALTHLEDGER_FHIR_BASE}/sid/actor"
ORGANIZATION_SYSTEM: Final = f"{HEALTHLEDGER_FHIR_BASE}/sid/organization"
PATIENT_PSEUDONYM_SYSTEM: Final = f"{HEALTHLEDGER_FHIR_BASE}/sid/patient-pseudonym"
ROLE_SYSTEM: Final = f"{HEALTHLEDGER_FHIR_BASE}/CodeSystem/principal-role"

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"  # holds the v3 PurposeOfUse codes
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"

AUDIT_TYPE: Final = {"system": DCM, "code": "110110", "display": "Patient Record"}
BREAK_THE_GLASS: Final = {"system": ACT_REASON, "code": "BTG", "display": "break the glass"}
SOURCE_OBSERVER: Final = "HealthLedger"

# Our actions -> (restful-interaction code or None, AuditEventAction). R4 valueset-audit-event-action:
# C create, R read/view, U update, D delete, E execute (a query/search or an operation).
_ACTIONS: Final[Mapping[str, tuple[str | None, str]]] = {
    "read": ("read", "R"),
    "vread": ("vread", "R"),
    "search": ("search-type", "E"),
    "history": ("history-instance", "R"),  # history-type when there is no resource id
    "create": ("create", "C"),
    "update": ("update", "U"),
    "delete": ("delete", "D"),
    "export": ("operation", "E"),  # $export
    "decide": (None, "E"),  # a consent decision on its own is no RESTful interaction
}
# R4 valueset-audit-event-outcome.
_OUTCOMES: Final[Mapping[str, str]] = {"permit": "0", "deny": "4", "error": "8"}
_MAX_UNSIGNED_INT: Final = 2**31 - 1  # FHIR unsignedInt (R4 datatypes.html#unsignedInt)
_REFERENCE: Final = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")  # Type/id, R4 references.html


def audit_event(
    entry: Mapping[str, Any], *, entry_id: int, leaf_index: int | None, patient_ref: str | None,
    actor_display: str = "", organization_display: str = "", break_glass_reason: str = "",
) -> dict[str, Any]:
    """The AuditEvent for one access-log entry.

    `entry_id` is the entry's row id (the AuditEvent id); `leaf_index` its place in the Merkle log, or
    None before it is sequenced; `patient_ref` `Patient/{id}` when the caller knows whose entry this is
    (the log holds only the pseudonym); `actor_display`, `organization_display` and `break_glass_reason`
    are rendered when given (empty: left out). Raises ValueError for an entry this module cannot render (an
    unknown action or decision, a naive time).
    """
    action = str(entry["action"])
    if action not in _ACTIONS:
        raise ValueError(f"unknown access-log action {action!r}")
    decision = str(entry["decision"])
    if decision not in _OUTCOMES:
        raise ValueError(f"unknown access-log decision {decision!r}")
    interaction, action_code = _ACTIONS[action]
    resource_id = str(entry.get("resource_id") or "")
    if action == "history" and not resource_id:
        interaction = "history-type"
    break_glass = bool(entry.get("break_glass"))

    event: dict[str, Any] = {"resourceType": "AuditEvent", "id": str(entry_id)}
    extensions = []
    if break_glass:
        extensions.append({"url": BREAK_THE_GLASS_EXTENSION, "valueBoolean": True})
    if leaf_index is not None:
        if not 0 <= leaf_index <= _MAX_UNSIGNED_INT:
            raise ValueError("leaf index out of the range of a FHIR unsignedInt")
        extensions.append({"url": LEAF_INDEX_EXTENSION, "valueUnsignedInt": leaf_index})
    if extensions:
        event["extension"] = extensions
    event["type"] = dict(AUDIT_TYPE)
    if interaction is not None:
        event["subtype"] = [{"system": RESTFUL_INTERACTION, "code": interaction}]
    event["action"] = action_code
    event["recorded"] = _instant(entry["time"])
    event["outcome"] = _OUTCOMES[decision]
    reason = str(entry.get("reason") or "")
    if reason:
        event["outcomeDesc"] = reason
    purposes = []
    purpose = str(entry.get("purpose") or "")
    if purpose:
        purposes.append({"coding": [{"system": ACT_REASON, "code": purpose}]})
    if break_glass:
        btg: dict[str, Any] = {"coding": [dict(BREAK_THE_GLASS)]}
        if break_glass_reason:
            btg["text"] = break_glass_reason
        purposes.append(btg)
    if purposes:
        event["purposeOfEvent"] = purposes
    event["agent"] = _agents(entry, actor_display, organization_display)
    event["source"] = {
        "observer": {"display": SOURCE_OBSERVER},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities = _entities(entry, resource_id, patient_ref)
    if entities:
        event["entity"] = entities
    return event


def _instant(value: object) -> str:
    """FHIR instant in UTC with the log's microsecond precision."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError("access-log entry time must be a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _agents(entry: Mapping[str, Any], actor_display: str, organization_display: str) -> list[dict[str, Any]]:
    actor: dict[str, Any] = {}
    role = str(entry.get("role") or "")
    if role:
        actor["role"] = [{"coding": [{"system": ROLE_SYSTEM, "code": role}]}]
    actor["who"] = {"identifier": {"system": ACTOR_SYSTEM, "value": str(entry["actor"])}}
    if actor_display:
        actor["who"]["display"] = actor_display
    actor["requestor"] = True
    agents = [actor]
    organization = str(entry.get("organization") or "")
    if organization:
        who: dict[str, Any]
        if _REFERENCE.fullmatch(organization):
            who = {"reference": organization}
        else:  # an organisation named by id only (older entries, system clients)
            who = {"identifier": {"system": ORGANIZATION_SYSTEM, "value": organization}}
        if organization_display:
            who["display"] = organization_display
        agents.append({"who": who, "requestor": False})
    return agents


def _entities(entry: Mapping[str, Any], resource_id: str, patient_ref: str | None) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    resource_type = str(entry.get("resource_type") or "")
    if resource_type:
        accessed: dict[str, Any] = {}
        if resource_id:
            accessed["what"] = {"reference": f"{resource_type}/{resource_id}"}
        accessed["type"] = {"system": RESOURCE_TYPES, "code": resource_type}
        accessed["role"] = {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}
        entities.append(accessed)
    pseudonym = str(entry.get("patient_pseudonym") or "")
    if patient_ref or pseudonym:
        what: dict[str, Any] = (
            {"reference": patient_ref}
            if patient_ref
            else {"identifier": {"system": PATIENT_PSEUDONYM_SYSTEM, "value": pseudonym}}
        )
        entities.append(
            {
                "what": what,
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    return entities
