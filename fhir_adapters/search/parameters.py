"""The search parameters of each resource type (R4 SearchParameter resources): FHIR type and element paths."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

ParamType = Literal["token", "string", "date", "reference", "quantity", "uri", "number"]


@dataclass(frozen=True)
class SearchParamDef:
    """One search parameter: its FHIR type and the element paths it reads (R4 SearchParameter.expression).

    `paths` are dotted element names from the resource root; a segment `name[x]` is a choice element
    (`effective[x]` reads effectiveDateTime, effectivePeriod, ...). `targets` restricts reference types
    (`patient` reads `subject` but only references to Patient). `system` is the implicit code system of a
    `code` element (Patient.gender), `single` says the element holds at most one value (lets AND-ed date
    criteria narrow together).
    """

    name: str
    type: ParamType
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    system: str | None = None
    single: bool = False
    description: str = ""


def _p(name: str, type_: ParamType, *paths: str, **kw: Any) -> tuple[str, SearchParamDef]:
    return name, SearchParamDef(name, type_, paths, **kw)


_SUBJECT_TARGETS = ("Patient", "Group", "Device", "Location")
ID_PARAM: Final = SearchParamDef(
    "_id", "token", ("id",), single=True, description="Logical id of the resource"
)
LAST_UPDATED_PARAM: Final = SearchParamDef(
    "_lastUpdated",
    "date",
    ("meta.lastUpdated",),
    single=True,
    description="When the resource version was stored",
)
COMMON_PARAMETERS: Final[Mapping[str, SearchParamDef]] = {"_id": ID_PARAM, "_lastUpdated": LAST_UPDATED_PARAM}

_GENDER = "http://hl7.org/fhir/administrative-gender"

_TYPE_PARAMETERS: dict[str, dict[str, SearchParamDef]] = {
    "Patient": dict(
        [
            _p("identifier", "token", "identifier"),
            _p("name", "string", "name"),
            _p("family", "string", "name.family"),
            _p("given", "string", "name.given"),
            _p("birthdate", "date", "birthDate", single=True),
            _p("gender", "token", "gender", system=_GENDER, single=True),
            _p("active", "token", "active", single=True),
            _p("address", "string", "address"),
            _p("address-city", "string", "address.city"),
            _p("address-postalcode", "string", "address.postalCode"),
            _p("telecom", "token", "telecom"),
            _p("general-practitioner", "reference", "generalPractitioner"),
            _p("organization", "reference", "managingOrganization", targets=("Organization",)),
        ]
    ),
    "Observation": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=_SUBJECT_TARGETS),
            _p("encounter", "reference", "encounter", targets=("Encounter",)),
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "effective[x]", single=True),
            _p("value-quantity", "quantity", "valueQuantity", single=True),
            _p("component-code", "token", "component.code"),
        ]
    ),
    "Condition": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("encounter", "reference", "encounter", targets=("Encounter",)),
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("clinical-status", "token", "clinicalStatus"),
            _p("verification-status", "token", "verificationStatus"),
            _p("onset-date", "date", "onset[x]", single=True),
            _p("recorded-date", "date", "recordedDate", single=True),
        ]
    ),
    "Encounter": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("date", "date", "period", single=True),
            _p("status", "token", "status", single=True),
            _p("class", "token", "class", single=True),
            _p("type", "token", "type"),
            _p("service-provider", "reference", "serviceProvider", targets=("Organization",)),
            _p("participant", "reference", "participant.individual"),
        ]
    ),
    "MedicationRequest": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("encounter", "reference", "encounter", targets=("Encounter",)),
            _p("status", "token", "status", single=True),
            _p("intent", "token", "intent", single=True),
            _p("code", "token", "medicationCodeableConcept"),
            _p("medication", "reference", "medicationReference", targets=("Medication",)),
            _p("authoredon", "date", "authoredOn", single=True),
            _p("requester", "reference", "requester"),
        ]
    ),
    "Consent": dict(
        [
            _p("patient", "reference", "patient", targets=("Patient",)),
            _p("status", "token", "status", single=True),
            _p("scope", "token", "scope"),
            _p("category", "token", "category"),
            _p("date", "date", "dateTime", single=True),
            _p("period", "date", "provision.period", single=True),
            _p("actor", "reference", "provision.actor.reference"),
            _p("organization", "reference", "organization", targets=("Organization",)),
        ]
    ),
    "AuditEvent": dict(
        [
            # R4: AuditEvent.agent.who.where(resolve() is Patient) | AuditEvent.entity.what.where(... Patient)
            _p("patient", "reference", "agent.who", "entity.what", targets=("Patient",)),
            _p("agent", "reference", "agent.who"),
            _p("entity", "reference", "entity.what"),
            _p("date", "date", "recorded", single=True),
            _p("type", "token", "type", single=True),
            _p("subtype", "token", "subtype"),
            _p("action", "token", "action", single=True),
            _p("outcome", "token", "outcome", single=True),
        ]
    ),
    "AllergyIntolerance": dict(
        [
            _p("patient", "reference", "patient", targets=("Patient",)),
            _p("code", "token", "code"),
            _p("clinical-status", "token", "clinicalStatus"),
            _p("date", "date", "recordedDate", single=True),
        ]
    ),
    "Immunization": dict(
        [
            _p("patient", "reference", "patient", targets=("Patient",)),
            _p("vaccine-code", "token", "vaccineCode"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "occurrence[x]", single=True),
        ]
    ),
    "Procedure": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("code", "token", "code"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "performed[x]", single=True),
        ]
    ),
    "DiagnosticReport": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=_SUBJECT_TARGETS),
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "effective[x]", single=True),
        ]
    ),
    "Device": dict(
        [_p("patient", "reference", "patient", targets=("Patient",)), _p("type", "token", "type")]
    ),
    "Practitioner": dict(
        [
            _p("identifier", "token", "identifier"),
            _p("name", "string", "name"),
            _p("family", "string", "name.family"),
            _p("given", "string", "name.given"),
        ]
    ),
    "Organization": dict([_p("identifier", "token", "identifier"), _p("name", "string", "name")]),
    "Location": dict([_p("identifier", "token", "identifier"), _p("name", "string", "name")]),
}

SEARCH_PARAMETERS: Final[Mapping[str, Mapping[str, SearchParamDef]]] = {
    rtype: {**COMMON_PARAMETERS, **params} for rtype, params in _TYPE_PARAMETERS.items()
}


def search_parameters(resource_type: str) -> Mapping[str, SearchParamDef]:
    """The parameters searchable on a type: its own (SEARCH_PARAMETERS) or only `_id` and `_lastUpdated`."""
    return SEARCH_PARAMETERS.get(resource_type, COMMON_PARAMETERS)
