"""Required terminology bindings that the `fhir.resources` models do not enforce (they accept any `code`).

Only `code` elements with a *required* binding in R4 (identical in R4B) that clients commonly send are listed;
the value sets are quoted from the R4 resource pages (e.g. http://hl7.org/fhir/R4/valueset-administrative-gender.html).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from fhir_adapters.errors import InvalidResource

_GENDER: Final = frozenset({"male", "female", "other", "unknown"})
_NAME_USE: Final = frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"})
_IDENTIFIER_USE: Final = frozenset({"usual", "official", "temp", "secondary", "old"})
_CONTACT_SYSTEM: Final = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_CONTACT_USE: Final = frozenset({"home", "work", "temp", "old", "mobile"})
_ADDRESS_USE: Final = frozenset({"home", "work", "temp", "old", "billing"})
_ADDRESS_TYPE: Final = frozenset({"postal", "physical", "both"})
_PERSON: Final[Mapping[str, frozenset[str]]] = {
    "gender": _GENDER,
    "name.use": _NAME_USE,
    "telecom.system": _CONTACT_SYSTEM,
    "telecom.use": _CONTACT_USE,
    "address.use": _ADDRESS_USE,
    "address.type": _ADDRESS_TYPE,
}
ANY_RESOURCE: Final[Mapping[str, frozenset[str]]] = {
    "text.status": frozenset({"generated", "extensions", "additional", "empty"}),  # Narrative.status
    "identifier.use": _IDENTIFIER_USE,
}
REQUIRED_CODES: Final[Mapping[str, Mapping[str, frozenset[str]]]] = {
    "Patient": {
        **_PERSON,
        "contact.gender": _GENDER,
        "link.type": frozenset({"replaced-by", "replaces", "refer", "seealso"}),
    },
    "Practitioner": _PERSON,
    "RelatedPerson": _PERSON,
    "Person": _PERSON,
    "Observation": {
        "status": frozenset(
            {
                "registered",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "Encounter": {
        "status": frozenset(
            {
                "planned",
                "arrived",
                "triaged",
                "in-progress",
                "onleave",
                "finished",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "MedicationRequest": {
        "status": frozenset(
            {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}
        ),
        "intent": frozenset(
            {
                "proposal",
                "plan",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            }
        ),
    },
    "Consent": {
        "status": frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})
    },
    "AuditEvent": {
        "action": frozenset({"C", "R", "U", "D", "E"}),
        "outcome": frozenset({"0", "4", "8", "12"}),
    },
    "Procedure": {
        "status": frozenset(
            {
                "preparation",
                "in-progress",
                "not-done",
                "on-hold",
                "stopped",
                "completed",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "Immunization": {"status": frozenset({"completed", "entered-in-error", "not-done"})},
    "DiagnosticReport": {
        "status": frozenset(
            {
                "registered",
                "partial",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "appended",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "AllergyIntolerance": {
        "type": frozenset({"allergy", "intolerance"}),
        "criticality": frozenset({"low", "high", "unable-to-assess"}),
        "category": frozenset({"food", "medication", "environment", "biologic"}),
    },
    "Bundle": {
        "type": frozenset(
            {
                "document",
                "message",
                "transaction",
                "transaction-response",
                "batch",
                "batch-response",
                "history",
                "searchset",
                "collection",
            }
        ),
        "entry.request.method": frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"}),
        "entry.search.mode": frozenset({"match", "include", "outcome"}),
    },
}


def check_required_codes(resource: Mapping[str, Any], path: str | None = None) -> None:
    """Raise InvalidResource (naming the path, not the value) for a code outside its required value set.

    Nested resources (`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`) are checked too.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return
    root = path or resource_type
    for element_path, codes in (*ANY_RESOURCE.items(), *REQUIRED_CODES.get(resource_type, {}).items()):
        for where, value in _values(resource, element_path.split("."), root):
            if isinstance(value, str) and value not in codes:
                raise InvalidResource(
                    f"Invalid {resource_type} at {where}: not a code of the required value set",
                    expression=where,
                )
    for where, nested in _nested_resources(resource, root):
        check_required_codes(nested, where)


def _values(node: Any, segments: list[str], path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _values(item, segments, f"{path}[{i}]")
        return
    if not segments:
        yield path, node
        return
    if isinstance(node, Mapping) and segments[0] in node:
        yield from _values(node[segments[0]], segments[1:], f"{path}.{segments[0]}")


def _nested_resources(resource: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("contained",):
        for i, item in enumerate(resource.get(key) or ()):
            if isinstance(item, Mapping):
                yield f"{path}.{key}[{i}]", item
    for i, entry in enumerate(resource.get("entry") or ()):
        if isinstance(entry, Mapping) and isinstance(entry.get("resource"), Mapping):
            yield f"{path}.entry[{i}].resource", entry["resource"]
    for i, parameter in enumerate(resource.get("parameter") or ()):
        if isinstance(parameter, Mapping) and isinstance(parameter.get("resource"), Mapping):
            yield f"{path}.parameter[{i}].resource", parameter["resource"]
