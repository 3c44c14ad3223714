"""The server's CapabilityStatement (R4 capabilitystatement.html), built from what the code really supports.

It declares `fhirVersion` 4.0.1: clients speak R4 JSON, and that is what we accept and return. Resources are
checked with the R4B (4.3.0) models because `fhir.resources` ships none for 4.0.1; R4B's normative parts are
R4's, and the differences that matter to clients are listed in docs/fhir-r4b.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

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
# Operations' canonical definitions (CapabilityStatement.rest.resource.operation.definition, 1..1).
GROUP_EXPORT: Final = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"  # Bulk Data IG 2.0
RESEARCH_FEASIBILITY: Final = "https://healthledger.dev/fhir/OperationDefinition/ResearchStudy-feasibility"
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
    versioning: str = "versioned",
    update_create: bool = False,
    security_description: str | None = None,
    oauth_token_url: str | None = None,
    read_only: Mapping[str, Iterable[tuple[str, str]]] | None = None,
    operations: Mapping[str, Iterable[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """A CapabilityStatement (kind `instance`) listing exactly the interactions and search parameters given.

    `interactions` are the type/instance interaction codes the API implements for every type listed in
    `resource_types` (default: every R4B resource type); search parameters come from SEARCH_PARAMETERS.
    `date` is when this capability was last changed (a parameter: the core reads no clock).
    `oauth_token_url` declares SMART on FHIR security (App Launch 2.0 §Conformance: the
    restful-security-service code and the oauth-uris extension). `read_only` maps types served read-only
    (read and search-type) to their search parameters as (name, type), e.g. {"AuditEvent": [("date", "date")]}.
    `operations` maps types to the operations they support as (name without `$`, canonical definition), e.g.
    {"Group": [("export", GROUP_EXPORT)]}; a type not in `resource_types` is not listed.
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
    searchable = "search-type" in type_codes
    resources = []
    read_only = dict(read_only or {})
    for resource_type in types:
        if resource_type in read_only:
            resources.append({
                "type": resource_type,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [{"name": name, "type": kind} for name, kind in read_only[resource_type]],
            })
            continue
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in type_codes],
            "versioning": versioning,
            "readHistory": "vread" in type_codes,
            "updateCreate": update_create,
            "conditionalCreate": conditional_create,
            "conditionalUpdate": conditional_update,
            "conditionalDelete": conditional_delete,
        }
        if searchable:
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
    declared_operations: dict[str, Iterable[tuple[str, str]]] = dict(operations or {})
    for entry in resources:
        declared = [{"name": name, "definition": definition}
                    for name, definition in declared_operations.get(str(entry["type"]), ())]
        if declared:
            entry["operation"] = declared
    rest: dict[str, Any] = {"mode": "server", "resource": resources}
    security: dict[str, Any] = {}
    if oauth_token_url:
        security["extension"] = [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": oauth_token_url}],
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
        **({"patchFormat": ["application/json-patch+json"]} if "patch" in type_codes else {}),
        "rest": [rest],
    }


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
