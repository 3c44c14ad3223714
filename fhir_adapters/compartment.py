"""Which Patient compartment a resource belongs to (R4 CompartmentDefinition `patient`), for per-patient keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fhir_adapters.search import parse_reference, values_at

# Element paths that link a resource to its patient, in priority order; from the R4 Patient compartment
# (http://hl7.org/fhir/R4/compartmentdefinition-patient.html), restricted to the elements that name *the*
# patient the record is about (not performers or authors who happen to be patients).
COMPARTMENT_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "Account": ("subject",),
    "AdverseEvent": ("subject",),
    "AllergyIntolerance": ("patient",),
    "Appointment": ("participant.actor",),
    "AppointmentResponse": ("actor",),
    "AuditEvent": ("entity.what", "agent.who"),
    "Basic": ("subject",),
    "BodyStructure": ("patient",),
    "CarePlan": ("subject",),
    "CareTeam": ("subject",),
    "ChargeItem": ("subject",),
    "Claim": ("patient",),
    "ClaimResponse": ("patient",),
    "ClinicalImpression": ("subject",),
    "Communication": ("subject",),
    "CommunicationRequest": ("subject",),
    "Composition": ("subject",),
    "Condition": ("subject",),
    "Consent": ("patient",),
    "Coverage": ("beneficiary", "subscriber", "policyHolder"),
    "CoverageEligibilityRequest": ("patient",),
    "CoverageEligibilityResponse": ("patient",),
    "DetectedIssue": ("patient",),
    "Device": ("patient",),
    "DeviceRequest": ("subject",),
    "DeviceUseStatement": ("subject",),
    "DiagnosticReport": ("subject",),
    "DocumentManifest": ("subject",),
    "DocumentReference": ("subject",),
    "Encounter": ("subject",),
    "EnrollmentRequest": ("candidate",),
    "EpisodeOfCare": ("patient",),
    "ExplanationOfBenefit": ("patient",),
    "FamilyMemberHistory": ("patient",),
    "Flag": ("subject",),
    "Goal": ("subject",),
    "ImagingStudy": ("subject",),
    "Immunization": ("patient",),
    "ImmunizationEvaluation": ("patient",),
    "ImmunizationRecommendation": ("patient",),
    "Invoice": ("subject", "recipient"),
    "List": ("subject",),
    "MeasureReport": ("subject",),
    "Media": ("subject",),
    "MedicationAdministration": ("subject",),
    "MedicationDispense": ("subject",),
    "MedicationRequest": ("subject",),
    "MedicationStatement": ("subject",),
    "MolecularSequence": ("patient",),
    "NutritionOrder": ("patient",),
    "Observation": ("subject",),
    "Person": ("link.target",),
    "Procedure": ("subject",),
    "Provenance": ("target",),
    "QuestionnaireResponse": ("subject",),
    "RelatedPerson": ("patient",),
    "RequestGroup": ("subject",),
    "ResearchSubject": ("individual",),
    "RiskAssessment": ("subject",),
    "Schedule": ("actor",),
    "ServiceRequest": ("subject",),
    "Specimen": ("subject",),
    "SupplyDelivery": ("patient",),
    "SupplyRequest": ("deliverFor",),
    "VisionPrescription": ("patient",),
}
FALLBACK_PATHS: Final = ("subject", "patient", "beneficiary")


def patient_compartment(resource: Mapping[str, Any]) -> str | None:
    """The id of the Patient the resource is about: a Patient's own id, else the first `Patient/<id>` reference
    at the type's compartment paths (absolute URLs and `_history` suffixes allowed); None if there is none.

    A reference that is still a `urn:uuid:` placeholder is not a compartment: rewrite bundle references first.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return None
    if resource_type == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and rid else None
    for path in COMPARTMENT_PATHS.get(resource_type, FALLBACK_PATHS):
        for element in values_at(resource, path):
            ref = element.get("reference") if isinstance(element, Mapping) else None
            if isinstance(ref, str):
                parsed = parse_reference(ref)
                if parsed.type == "Patient" and parsed.id:
                    return parsed.id
    return None
