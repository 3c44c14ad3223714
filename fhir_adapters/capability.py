"""The server's CapabilityStatement (R4 capabilitystatement.html), built from what the code really supports.

It declares `fhirVersion` 4.0.1: clients speak R4 JSON, and that is what we accept and return. Resources are
checked with the R4B (4.3.0) models because `fhir.resources` ships none for 4.0.1; R4B's normative parts are
R4's, and the differences that matter to clients are listed in docs/fhir-r4b.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fhir_adapters.operation_definitions import BULK_GROUP_EXPORT, OPERATION_BASE
from fhir_adapters.search.parameters import (
    COMMON_PARAMETERS,
    SEARCH_PARAMETERS,
    SearchParamDef,
    search_parameters,
)
from fhir_adapters.validation import RESOURCE_TYPES

FHIR_VERSION: Final = "4.0.1"
VALIDATED_WITH: Final = "4.3.0"  # R4B models of fhir.resources
TYPE_INTERACTIONS: Final = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
)
SYSTEM_INTERACTIONS: Final = frozenset({"transaction", "batch", "search-system", "history-system"})
_VERSIONED: Final = TYPE_INTERACTIONS - {"read", "search-type"}
# Operations' canonical definitions (CapabilityStatement.rest.resource.operation.definition, 1..1); every
# operation is listed in fhir_adapters/operation_definitions.py.
GROUP_EXPORT: Final = BULK_GROUP_EXPORT
RESEARCH_FEASIBILITY: Final = OPERATION_BASE + "ResearchStudy-feasibility"


@dataclass(frozen=True)
class TypeCapability:
    """What one type supports when it differs from the interactions every type has.

    `interactions`: its TypeRestfulInteraction codes; `notes`: documentation of some of them (who may, how);
    `search`: its search parameters as (name, type, documentation), or None for those of SEARCH_PARAMETERS;
    `conditional`: whether its create, update and delete take the server's conditional forms (and its read, the
    conditional read, when the statement declares one).
    """

    interactions: tuple[str, ...]
    notes: Mapping[str, str] = field(default_factory=dict)
    search: tuple[tuple[str, str, str], ...] | None = None
    conditional: bool = False
    documentation: str = ""
_CORE_DEFINITIONS: Final[Mapping[str, str]] = {
    "_id": "http://hl7.org/fhir/SearchParameter/Resource-id",
    "_lastUpdated": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
}
_MODIFIERS_DOC: Final[Mapping[str, str]] = {
    "string": "case- and accent-insensitive starts-with; :exact, :contains, :missing",
    "token": "[system]|[code], |code, system|; :not, :missing",
    "date": "prefixes eq ne lt le gt ge sa eb ap with the implicit range of partial dates; :missing",
    "reference": "Type/id, bare id, absolute URL; :Type, :missing",
    "quantity": "[prefix]number[|system|code]; :missing",
    "number": "[prefix]number; :missing",
    "uri": "exact match; :missing",
}


def capability_statement(
    *,
    interactions: Iterable[str],
    system_interactions: Iterable[str] = (),
    formats: Iterable[str] = ("application/fhir+json", "application/json"),
    software_name: str = "HealthLedger",
    software_version: str | None = None,
    date: str = "2026-11-23",
    resource_types: Iterable[str] | None = None,
    base_url: str | None = None,
    conditional_create: bool = False,
    conditional_update: bool = False,
    conditional_delete: str = "not-supported",
    conditional_read: str = "not-supported",
    versioning: str = "versioned",
    update_create: bool = False,
    security_description: str | None = None,
    oauth_token_url: str | None = None,
    oauth_uris: Mapping[str, str] | None = None,
    read_only: Mapping[str, Iterable[tuple[str, str]]] | None = None,
    overrides: Mapping[str, TypeCapability] | None = None,
    operations: Mapping[str, Iterable[tuple[str, ...]]] | None = None,
    system_operations: Iterable[tuple[str, ...]] = (),
) -> dict[str, Any]:
    """A CapabilityStatement (kind `instance`) listing exactly the interactions and search parameters given.

    `interactions` are the type/instance interaction codes the API implements for every type listed in
    `resource_types` (default: every type we serve, validation.RESOURCE_TYPES: R4 types only); search
    parameters come from SEARCH_PARAMETERS.
    `date` is when this capability was last changed (a parameter: the core reads no clock).
    `oauth_token_url` declares SMART on FHIR security (App Launch 2.0 §Conformance: the
    restful-security-service code and the oauth-uris extension), `oauth_uris` the extension's other URIs
    (authorize, manage, ...) for clients that read them there rather than from .well-known. `read_only` maps types served read-only
    (read and search-type) to their search parameters as (name, type), e.g. {"AuditEvent": [("date", "date")]};
    `overrides` gives, per type, exactly what that type supports instead (TypeCapability).
    `operations` maps types to the operations they support as (name without `$`, canonical definition[,
    documentation]), e.g. {"Group": [("export", GROUP_EXPORT)]}; a type not in `resource_types` is not listed.
    `system_operations` are the system-level ones (`rest.operation`), in the same form.
    `conditional_read`: R4 ConditionalReadStatus (not-supported | modified-since | not-match | full-support),
    declared for every type that has read and is not `overrides`' without `conditional`.
    """
    type_codes = sorted(set(interactions))
    unknown = set(type_codes) - TYPE_INTERACTIONS
    if unknown:
        raise ValueError(f"unknown TypeRestfulInteraction codes: {sorted(unknown)}")
    system_codes = sorted(set(system_interactions))
    if set(system_codes) - SYSTEM_INTERACTIONS:
        raise ValueError(
            f"unknown SystemRestfulInteraction codes: {sorted(set(system_codes) - SYSTEM_INTERACTIONS)}"
        )
    types = sorted(RESOURCE_TYPES if resource_types is None else set(resource_types))
    resources = []
    special = {t: TypeCapability(("read", "search-type"), search=tuple((n, k, "") for n, k in params))
               for t, params in (read_only or {}).items()}
    special.update(overrides or {})
    for resource_type in types:
        override = special.get(resource_type)
        if override is not None and set(override.interactions) - TYPE_INTERACTIONS:
            raise ValueError(f"unknown TypeRestfulInteraction codes for {resource_type}: "
                             f"{sorted(set(override.interactions) - TYPE_INTERACTIONS)}")
        codes = type_codes if override is None else sorted(set(override.interactions))
        conditional = override is None or override.conditional
        entry: dict[str, Any] = {"type": resource_type}
        if override is not None and override.documentation:
            entry["documentation"] = override.documentation
        notes = {} if override is None else override.notes
        entry["interaction"] = [{"code": code, **({"documentation": notes[code]} if code in notes else {})}
                                for code in codes]
        if override is None or set(codes) & _VERSIONED:  # a read-only view has no versions or writes to describe
            entry.update({
                # versioned-update promises If-Match on update (R4 ResourceVersionPolicy): not for a type without it
                "versioning": "versioned" if versioning == "versioned-update" and "update" not in codes else versioning,
                "readHistory": "vread" in codes,
                "updateCreate": update_create and "update" in codes,
                "conditionalCreate": conditional_create and conditional and "create" in codes,
                "conditionalUpdate": conditional_update and conditional and "update" in codes,
                "conditionalDelete": conditional_delete if conditional and "delete" in codes else "not-supported",
            })
        if "read" in codes and conditional and conditional_read != "not-supported":
            entry["conditionalRead"] = conditional_read
        if override is not None and override.search is not None:
            entry["searchParam"] = [{"name": name, "type": kind, **({"documentation": doc} if doc else {})}
                                    for name, kind, doc in override.search]
        elif "search-type" in codes:
            params = search_parameters(resource_type)
            entry["searchParam"] = [_search_param(d) for d in _ordered(params)]
            # _include / _revinclude (R4 3.1.1.5.4): along the reference parameters, one level.
            includes = [f"{resource_type}:{d.name}" for d in params.values() if d.type == "reference"]
            revincludes = [
                f"{source}:{d.name}" for source, source_params in SEARCH_PARAMETERS.items()
                for d in source_params.values() if d.type == "reference" and resource_type in d.targets
            ]
            if includes:
                entry["searchInclude"] = includes
            if revincludes:
                entry["searchRevInclude"] = revincludes
        resources.append(entry)
    declared_operations: dict[str, Iterable[tuple[str, ...]]] = dict(operations or {})
    for entry in resources:
        declared = [_operation(op) for op in declared_operations.get(str(entry["type"]), ())]
        if declared:
            entry["operation"] = declared
    rest: dict[str, Any] = {"mode": "server", "resource": resources}
    security: dict[str, Any] = {}
    if oauth_token_url:
        security["extension"] = [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": oauth_token_url}]
            + [{"url": name, "valueUri": uri} for name, uri in (oauth_uris or {}).items()],
        }]
        security["service"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR",
        }]}]
    if security_description:
        security["description"] = security_description
    if security:
        rest["security"] = security
    if system_codes:
        rest["interaction"] = [{"code": code} for code in system_codes]
    system_declared = [_operation(op) for op in system_operations]
    if system_declared:
        rest["operation"] = system_declared
    implementation: dict[str, Any] = {
        "description": f"{software_name} FHIR R4 ({FHIR_VERSION}) API; resources validated with FHIR "
        f"{VALIDATED_WITH} (R4B) structure definitions"
    }
    if base_url:
        implementation["url"] = base_url
    software: dict[str, Any] = {"name": software_name}
    if software_version:
        software["version"] = software_version
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "software": software,
        "implementation": implementation,
        "fhirVersion": FHIR_VERSION,
        "format": list(formats),
        **({"patchFormat": ["application/json-patch+json"]}
           if "patch" in type_codes or any("patch" in o.interactions for o in special.values()) else {}),
        "rest": [rest],
    }


def _operation(declared: tuple[str, ...]) -> dict[str, Any]:
    """rest.resource.operation / rest.operation: (name, definition[, documentation])."""
    name, definition, *documentation = declared
    return {"name": name, "definition": definition, **({"documentation": documentation[0]} if documentation else {})}


def _ordered(params: Mapping[str, SearchParamDef]) -> list[SearchParamDef]:
    common = [params[name] for name in COMMON_PARAMETERS if name in params]
    return common + [d for name, d in params.items() if name not in COMMON_PARAMETERS]


def _search_param(definition: SearchParamDef) -> dict[str, Any]:
    where = "resource metadata" if definition.name in COMMON_PARAMETERS else ", ".join(definition.paths)
    targets = (
        f" (to {', '.join(definition.targets)})"
        if definition.targets and definition.type == "reference"
        else ""
    )
    how = (
        "logical id, comma-separated for any of several"
        if definition.name == "_id"
        else _MODIFIERS_DOC[definition.type]
    )
    param: dict[str, Any] = {
        "name": definition.name,
        "type": definition.type,
        "documentation": f"{where}{targets}: {how}",
    }
    if definition.name in _CORE_DEFINITIONS:
        param["definition"] = _CORE_DEFINITIONS[definition.name]
    return param
