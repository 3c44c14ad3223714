"""Who has a relationship with a patient, for CDS Hooks consults (healthledger.consent.consult.related). Pure."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_adapters.consent import consent_rules
from healthledger.consent.consult import related
from healthledger.consent.engine import PatientContext
from healthledger.principal import Principal

CARE = "Organization/general-hospital"
CLINIC = "Organization/city-clinic"
DR = "Practitioner/dr-who"


def consent(provision: dict[str, Any], status: str = "active") -> Any:
    return consent_rules({"resourceType": "Consent", "id": "c1", "status": status,
                          "patient": {"reference": "Patient/p1"}, "provision": provision})


def actor(ref: str) -> dict[str, Any]:
    return {"reference": {"reference": ref}}


def ctx(*consents: Any) -> PatientContext:
    return PatientContext("p1", consents=consents, care_organizations=frozenset({CARE}))


CLINIC_SYSTEM = Principal("c", role="system", organization=CLINIC)
DOCTOR = Principal("d", role="clinician", references=frozenset({DR}))
NOBODY = Principal("n", role="system")

CASES = [
    ("a care organisation", Principal("h", role="system", organization=CARE), ctx(), True),
    ("a stranger, no consents", CLINIC_SYSTEM, ctx(), False),
    ("named in a permit", CLINIC_SYSTEM, ctx(consent({"type": "permit", "actor": [actor(CLINIC)]})), True),
    ("named in a deny", CLINIC_SYSTEM, ctx(consent({"type": "deny", "actor": [actor(CLINIC)]})), True),
    ("named in a nested provision", CLINIC_SYSTEM,
     ctx(consent({"type": "deny", "provision": [{"type": "permit", "actor": [actor(CLINIC)]}]})), True),
    ("a blanket deny names nobody", CLINIC_SYSTEM, ctx(consent({"type": "deny"})), False),
    ("named in a proposed consent only", CLINIC_SYSTEM,
     ctx(consent({"type": "permit", "actor": [actor(CLINIC)]}, status="proposed")), False),
    ("named in an inactive consent only", CLINIC_SYSTEM,
     ctx(consent({"type": "deny", "actor": [actor(CLINIC)]}, status="inactive")), False),
    ("named by one of its references", DOCTOR, ctx(consent({"type": "permit", "actor": [actor(DR)]})), True),
    ("another organisation named", CLINIC_SYSTEM, ctx(consent({"type": "deny", "actor": [actor(CARE)]})), False),
    ("no identity at all", NOBODY, ctx(consent({"type": "deny"})), False),
]


@pytest.mark.parametrize(("asking", "context", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_relationship(asking: Principal, context: PatientContext, expected: bool) -> None:
    assert related(asking, context) is expected
