"""What the consent engine needs to know about a resource (ResourceFacts), read from its FHIR JSON. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from fhir_adapters import compartment as fhir_compartment
from fhir_adapters.consent import Coding, ConsentRules, consent_rules, instant_range
from fhir_adapters.deidentify import element_labels
from fhir_adapters.errors import FhirInputError
from healthledger.consent.engine import ResourceFacts

# CodeableConcept elements whose codes a Consent's provision.code may name (R4: "the resources are
# about these codes"): the resource's main code first, then its classification.
_CODE_ELEMENTS = ("code", "vaccineCode", "medicationCodeableConcept", "category", "type", "class", "reasonCode")
# The clinically relevant time of a resource for provision.dataPeriod, in order of preference.
_DATE_ELEMENTS = (
    "effectiveDateTime", "effectivePeriod", "effectiveInstant", "occurrenceDateTime", "occurrencePeriod",
    "performedDateTime", "performedPeriod", "onsetDateTime", "onsetPeriod", "recordedDate", "authoredOn",
    "issued", "period", "date", "dateTime", "created", "birthDate",
)
# The patient of a stored resource whose references no longer resolve to one patient (written before the
# compartment rules were strict): no Patient has this id (FHIR ids have no '?'), so nobody's own-data,
# care-organisation or consent rule can reach it; only the service itself and break-the-glass can.
UNRESOLVED_PATIENT = "?unresolved"


def patient_of(resource: Mapping[str, Any] | None) -> str:
    """The id of the patient whose compartment holds `resource` ("" for none; UNRESOLVED_PATIENT if unclear)."""
    if resource is None:
        return ""
    try:
        return fhir_compartment.patient_compartment(resource) or ""
    except FhirInputError:
        return UNRESOLVED_PATIENT  # fail closed: never "no patient", which scopes alone would decide


def resource_facts(resource_type: str, resource_id: str, resource: Mapping[str, Any] | None) -> ResourceFacts:
    if resource is None:
        return ResourceFacts(resource_type, resource_id, "")
    meta = resource.get("meta")
    labels = frozenset(_codings(meta.get("security") if isinstance(meta, Mapping) else None))
    return ResourceFacts(
        resource_type=resource_type,
        resource_id=resource_id or str(resource.get("id", "")),
        patient_id=patient_of(resource),
        security_labels=labels,
        element_labels=element_labels(resource),
        codes=resource_codes(resource),
        date_range=clinical_date_range(resource),
        consent=own_rules(resource) if resource_type == "Consent" else None,
    )


def own_rules(consent: Mapping[str, Any]) -> ConsentRules | None:
    """A Consent's compiled rules, for the decision about writing it (a request for access is one); None when it
    cannot be compiled (such a Consent is no request, and grants nothing)."""
    try:
        return consent_rules(consent)
    except FhirInputError:
        return None


def resource_codes(resource: Mapping[str, Any]) -> frozenset[Coding]:
    """The codes a provision.code may name (ResourceFacts.codes), without the rest of the facts."""
    codes: set[Coding] = set()
    for name in _CODE_ELEMENTS:
        value = resource.get(name)
        for concept in value if isinstance(value, list) else [value]:
            if isinstance(concept, Mapping):
                codes.update(_codings(concept.get("coding")))
    return frozenset(codes)


def _codings(value: Any) -> Iterable[Coding]:
    for c in value if isinstance(value, list) else []:
        if isinstance(c, Mapping) and isinstance(c.get("code"), str):
            system = c.get("system")
            yield (system if isinstance(system, str) else "", c["code"])


def clinical_date_range(resource: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
    """The clinically relevant time of a resource for a dataPeriod (ResourceFacts.date_range), or None."""
    for name in _DATE_ELEMENTS:
        value = resource.get(name)
        try:
            if isinstance(value, str):
                return instant_range(value)
            if isinstance(value, Mapping) and (value.get("start") or value.get("end")):
                start, end = value.get("start"), value.get("end")
                low = instant_range(start)[0] if isinstance(start, str) else None
                high = instant_range(end)[1] if isinstance(end, str) else None
                if low is None or high is None:
                    # An open period: its known end stands for both (a conservative point in time).
                    point = low or high
                    assert point is not None
                    return (point, point)
                return (low, high)
        except FhirInputError:
            continue
    return None
