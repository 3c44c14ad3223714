"""Which Patient compartment a resource belongs to (R4 CompartmentDefinition `patient`), for keys and consent.

The compartment decides everything that protects a patient's data: the data key a resource is sealed under
(and destroyed with, on erasure), whose consents decide each access, whose access log records it. A resource
the check does not recognise as a patient's would be served by scope alone, so the rule here is strict and
the same for every type:

1. A Patient resource is its own compartment (`Patient.link` names another record of the same person; it
   does not move this one into the other's compartment).
2. Any other resource is in patient P's compartment when any literal reference in it (at any depth,
   contained resources and extensions included) names `Patient/P`, relative or absolute. This covers every
   parameter of the R4 Patient CompartmentDefinition (http://hl7.org/fhir/R4/compartmentdefinition-patient.html,
   listed in `COMPARTMENT_PARAMS` with the elements their R4 SearchParameter expressions read) and the
   references that definition does not list (`Task.for`, `Device.patient`, extensions).
3. What cannot be resolved to one patient is refused (`PatientReferenceError`, 400 naming the element):
   references to two different patients; a reference that spells Patient in another case, with whitespace,
   or as a conditional `Patient?...` (resolved only inside transaction Bundles, before this runs); a
   `urn:uuid:`/`urn:oid:` placeholder or a bare id at an element that places a resource in a patient's
   compartment; an identifier-only, display-only or contained (`#id`) reference at such an element unless
   `Reference.type` names a type other than Patient; a contained Patient resource.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fhir_adapters.errors import InvalidResource
from fhir_adapters.search.references import ReferenceValue, parse_reference
from fhir_adapters.search.values import values_at

__all__ = [
    "COMPARTMENT_PARAMS",
    "CompartmentParam",
    "PatientReferenceError",
    "patient_compartment",
    "patient_elements",
]


@dataclass(frozen=True)
class CompartmentParam:
    """One inclusion criterion of the R4 Patient compartment: a search parameter and the elements it reads.

    `subject`: the parameter names whom the resource is about (a reference there must say who, literally);
    otherwise it names a participant (performer, author, recipient...), who may well be a practitioner known
    only by identifier.
    """

    name: str
    paths: tuple[str, ...]
    subject: bool


def _s(name: str, *paths: str) -> CompartmentParam:
    return CompartmentParam(name, paths or (name,), True)


def _a(name: str, *paths: str) -> CompartmentParam:
    return CompartmentParam(name, paths or (name,), False)


# R4 (4.0.1) CompartmentDefinition/patient: resource -> params; element paths from each parameter's R4
# SearchParameter expression (`X.subject.where(resolve() is Patient)` reads X.subject).
COMPARTMENT_PARAMS: Final[Mapping[str, tuple[CompartmentParam, ...]]] = {
    "Account": (_s("subject"),),
    "AdverseEvent": (_s("subject"),),
    "AllergyIntolerance": (_s("patient"), _a("recorder"), _a("asserter")),
    "Appointment": (_a("actor", "participant.actor"),),
    "AppointmentResponse": (_a("actor"),),
    "AuditEvent": (_a("patient", "agent.who", "entity.what"),),
    "Basic": (_s("patient", "subject"), _a("author")),
    "BodyStructure": (_s("patient"),),
    "CarePlan": (_s("patient", "subject"), _a("performer", "activity.detail.performer")),
    "CareTeam": (_s("patient", "subject"), _a("participant", "participant.member")),
    "ChargeItem": (_s("subject"),),
    "Claim": (_s("patient"), _a("payee", "payee.party")),
    "ClaimResponse": (_s("patient"),),
    "ClinicalImpression": (_s("subject"),),
    "Communication": (_s("subject"), _a("sender"), _a("recipient")),
    "CommunicationRequest": (_s("subject"), _a("sender"), _a("recipient"), _a("requester")),
    "Composition": (_s("subject"), _a("author"), _a("attester", "attester.party")),
    "Condition": (_s("patient", "subject"), _a("asserter")),
    "Consent": (_s("patient"),),
    "Coverage": (
        _a("policy-holder", "policyHolder"), _a("subscriber"), _s("beneficiary"), _a("payor"),
    ),
    "CoverageEligibilityRequest": (_s("patient"),),
    "CoverageEligibilityResponse": (_s("patient"),),
    "DetectedIssue": (_s("patient"),),
    "DeviceRequest": (_s("subject"), _a("performer")),
    "DeviceUseStatement": (_s("subject"),),
    "DiagnosticReport": (_s("subject"),),
    "DocumentManifest": (_s("subject"), _a("author"), _a("recipient")),
    "DocumentReference": (_s("subject"), _a("author")),
    "Encounter": (_s("patient", "subject"),),
    "EnrollmentRequest": (_s("subject", "candidate"),),
    "EpisodeOfCare": (_s("patient"),),
    "ExplanationOfBenefit": (_s("patient"), _a("payee", "payee.party")),
    "FamilyMemberHistory": (_s("patient"),),
    "Flag": (_s("patient", "subject"),),
    "Goal": (_s("patient", "subject"),),
    "Group": (_s("member", "member.entity"),),
    "ImagingStudy": (_s("patient", "subject"),),
    "Immunization": (_s("patient"),),
    "ImmunizationEvaluation": (_s("patient"),),
    "ImmunizationRecommendation": (_s("patient"),),
    "Invoice": (_s("subject"), _s("patient", "subject"), _a("recipient")),
    "List": (_s("subject"), _a("source")),
    "MeasureReport": (_s("patient", "subject"),),
    "Media": (_s("subject"),),
    "MedicationAdministration": (_s("patient", "subject"), _a("performer", "performer.actor"), _s("subject")),
    "MedicationDispense": (_s("subject"), _s("patient", "subject"), _a("receiver")),
    "MedicationRequest": (_s("subject"),),
    "MedicationStatement": (_s("subject"),),
    "MolecularSequence": (_s("patient"),),
    "NutritionOrder": (_s("patient"),),
    "Observation": (_s("subject"), _a("performer")),
    "Patient": (_a("link", "link.other"),),
    "Person": (_s("patient", "link.target"),),
    "Procedure": (_s("patient", "subject"), _a("performer", "performer.actor")),
    "Provenance": (_s("patient", "target"),),
    "QuestionnaireResponse": (_s("subject"), _a("author")),
    "RelatedPerson": (_s("patient"),),
    "RequestGroup": (_s("subject"), _a("participant", "action.participant")),
    "ResearchSubject": (_s("individual"),),
    "RiskAssessment": (_s("subject"),),
    "Schedule": (_a("actor"),),
    "ServiceRequest": (_s("subject"), _a("performer")),
    "Specimen": (_s("subject"),),
    "SupplyDelivery": (_s("patient"),),
    "SupplyRequest": (_a("subject", "deliverTo"),),
    "VisionPrescription": (_s("patient"),),
}

# Where the patient a resource is about is said, for types the R4 definition leaves out of the compartment
# but which are about a patient all the same (R4 Task.for, Device.patient...).
EXTRA_SUBJECT_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "Task": ("for",),
    "Device": ("patient",),
    "Linkage": ("item.resource",),
    "GuidanceResponse": ("subject",),
    "Contract": ("subject",),
}


class PatientReferenceError(InvalidResource):
    """A reference that may name a patient but cannot be resolved to exactly one (400, `expression` says where)."""


# Something that spells a Patient reference, however badly: any case, whitespace, conditional.
_PATIENT_LIKE = re.compile(r"(?:^|/)\s*patient\s*(?:/|\?)", re.IGNORECASE)
_CANONICAL = re.compile(r"(?:^|/)Patient/")


def patient_elements(resource_type: str) -> Iterator[tuple[str, bool]]:
    """(element path, names-the-subject) for every element that places a `resource_type` in a patient's compartment."""
    for param in COMPARTMENT_PARAMS.get(resource_type, ()):
        for path in param.paths:
            yield path, param.subject
    for path in EXTRA_SUBJECT_PATHS.get(resource_type, ()):
        yield path, True


def patient_compartment(resource: Mapping[str, Any]) -> str | None:
    """The id of the one Patient whose compartment holds `resource`, or None if it is about no patient.

    Raises PatientReferenceError (400) when the resource may be about a patient but its references do not say
    which one, or name several (see the module docstring for the rules).
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return None
    if resource_type != "Patient" and "contained" not in resource:
        settled, patient_id = _one_patient(resource, resource_type)
        if settled:
            return patient_id
    own = resource.get("id") if resource_type == "Patient" else None
    found: dict[str, str] = {}  # patient id -> element that named it
    if resource_type == "Patient" and isinstance(own, str) and own:
        found[own] = "Patient.id"
    contained_patients = {
        str(item.get("id")) for _, item in _contained(resource) if item.get("resourceType") == "Patient"
    }
    _check_patient_elements(resource, resource_type)
    for path, reference in _references(resource, resource_type):
        expression = f"{resource_type}.{path}"
        if resource_type == "Patient" and (path == "link" or path.startswith(("link[", "link."))):
            continue  # Patient.link: another record of the same person, not this record's compartment
        if reference.startswith("#") and reference[1:] in contained_patients:
            raise PatientReferenceError(
                "a contained Patient cannot be the patient of a record: refer to a stored Patient",
                expression=expression,
            )
        patient_id = _patient_id(reference, expression)
        if patient_id is None:
            continue
        found.setdefault(patient_id, expression)
        if len(found) > 1:
            raise PatientReferenceError(
                "the resource refers to more than one patient; a resource may be about one patient only "
                f"(also at {expression})",
                expression=next(iter(found.values())),
            )
    for path, item in _contained(resource):
        if item.get("resourceType") == "Patient":
            raise PatientReferenceError(
                "a contained Patient cannot be the patient of a record: refer to a stored Patient",
                expression=f"{resource_type}.{path}",
            )
    if not found:
        return None
    return next(iter(found))


_UNSETTLED: Final = (False, None)
_SCALARS: Final = frozenset({int, float, bool, type(None)})  # JSON leaves other than strings


def _one_patient(resource: Mapping[str, Any], resource_type: str) -> tuple[bool, str | None]:
    """The common case of `patient_compartment`, without building element paths (they only name where an
    error is): (True, the patient or None) for a resource with no contained resources whose references name
    at most one patient, all literally. Anything else (a `#` reference, a badly spelled patient, several
    patients) is _UNSETTLED, and the full rules above decide it, with their messages."""
    _check_patient_elements(resource, resource_type)
    found: str | None = None
    for reference in _reference_strings(resource):
        settled, patient_id = _literal_patient(reference)
        if not settled:
            return _UNSETTLED
        if patient_id is None:
            continue
        if found is not None and patient_id != found:
            return _UNSETTLED
        found = patient_id
    return True, found


@functools.lru_cache(maxsize=4096)
def _literal_patient(reference: str) -> tuple[bool, str | None]:
    """`_patient_id` of a reference outside any contained resource, remembered (a record's references repeat:
    its patient, its encounter): (True, the patient or None), or _UNSETTLED when it would raise."""
    if reference.startswith("#"):
        return _UNSETTLED
    try:
        return True, _patient_id(reference, "")
    except PatientReferenceError:
        return _UNSETTLED


def _reference_strings(resource: Mapping[str, Any]) -> list[str]:
    """Every `Reference.reference` string in the resource (those `_references` finds), without their paths."""
    out: list[str] = []
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(value, str):
                    if key == "reference":
                        out.append(value)
                elif type(value) not in _SCALARS:  # objects and arrays (anything else is ignored when popped)
                    stack.append(value)
    return out


def _patient_id(reference: str, expression: str) -> str | None:
    """The patient id a reference string names; None if it names no patient; raises if it spells one badly."""
    parsed = parse_reference(reference)
    if parsed.type == "Patient" and parsed.id and reference == reference.strip() and _CANONICAL.search(reference):
        return parsed.id
    if _PATIENT_LIKE.search(reference):
        raise PatientReferenceError(
            "a reference to a patient must be a literal reference Patient/{id} (exact case, no spaces; "
            "conditional references only inside transaction Bundles)",
            expression=expression,
        )
    return None


def _check_patient_elements(resource: Mapping[str, Any], resource_type: str) -> None:
    """At the elements that say whose record this is, a reference must say so literally."""
    for path, names_subject in patient_elements(resource_type):
        for element in values_at(resource, path):
            if not isinstance(element, Mapping):
                continue
            expression = f"{resource_type}.{path}"
            declared = element.get("type")
            other_type = isinstance(declared, str) and declared not in ("", "Patient")
            reference = element.get("reference")
            if isinstance(reference, str):
                if reference.startswith("#"):
                    if not other_type and names_subject:
                        raise PatientReferenceError(
                            "the patient of a record cannot be a contained resource: refer to a stored Patient",
                            expression=expression,
                        )
                    continue
                parsed = parse_reference(reference)
                if parsed.type is None and names_subject and not other_type:
                    raise PatientReferenceError(
                        "the patient reference must be a literal Patient/{id} (placeholders such as urn:uuid "
                        "are resolved only inside transaction Bundles)",
                        expression=expression,
                    )
                continue
            if other_type:
                continue
            if names_subject or declared == "Patient":
                raise PatientReferenceError(
                    "the patient must be named by a literal reference Patient/{id}, not only by an identifier "
                    "or a display text",
                    expression=expression,
                )


def _references(resource: Mapping[str, Any], resource_type: str) -> Iterator[tuple[str, str]]:
    """Every `Reference.reference` string in the resource, contained resources included, as (path, value)."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, Mapping):
            for key, value in node.items():
                child = f"{path}.{key}" if path else str(key)
                if key == "reference" and isinstance(value, str):
                    yield path, value
                elif isinstance(value, (Mapping, list)):
                    yield from walk(value, child)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                yield from walk(item, f"{path}[{i}]")

    yield from walk(resource, "")


def _contained(resource: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, item in enumerate(contained):
            if isinstance(item, Mapping):
                yield f"contained[{i}]", item


def searched_patients(resource_type: str, criteria: Iterable[Any]) -> frozenset[str] | None:
    """The patients whose compartments hold every match of a search, when its criteria pin them (else None).

    A plain reference criterion whose every value is `Patient/x` (or a bare id where the parameter refers to
    Patient only, or with `:Patient`) holds only resources that refer to one of those patients, hence (rule 2:
    a resource refers to one patient at most) in their compartments; `_id` pins a Patient search the same way.
    Criteria AND, so each such one narrows the set. `criteria`: fhir_adapters.search.query.SearchCriterion.
    """
    from fhir_adapters.search.query import TokenValue  # (the search package imports this module's neighbours)

    pinned: frozenset[str] | None = None
    for criterion in criteria:
        param, values = criterion.param, criterion.values
        if criterion.missing is not None or not values:
            continue
        if resource_type == "Patient":
            if param.name != "_id" or criterion.modifier is not None:
                continue
            named = [v.code if isinstance(v, TokenValue) and v.system is None else None for v in values]
        else:
            if param.type != "reference" or criterion.modifier not in (None, "Patient"):
                continue
            named = [v.id if isinstance(v, ReferenceValue) and v.url is None and (
                v.type == "Patient" or (v.type is None and tuple(param.targets) == ("Patient",))) else None
                for v in values]
        if all(named):
            ids = frozenset(str(n) for n in named)
            pinned = ids if pinned is None else pinned & ids
    return pinned
