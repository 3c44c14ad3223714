"""Who is asking: one principal type for the API, the web app, the CLI and the consent engine.

A principal is who (an API client or a person) + on behalf of which organisation + role + purpose of
use (HL7 v3 PurposeOfUse, http://terminology.hl7.org/CodeSystem/v3-ActReason). SMART scopes bound
what its token may do; the consent engine bounds whose data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# HL7 v3 PurposeOfUse codes we recognise (v3-PurposeOfUse value set, the ones a request may state).
TREAT, ETREAT, HPAYMT, HOPERAT, HRESCH, PUBHLTH = "TREAT", "ETREAT", "HPAYMT", "HOPERAT", "HRESCH", "PUBHLTH"
PURPOSES = frozenset({TREAT, ETREAT, HPAYMT, HOPERAT, HRESCH, PUBHLTH, "HMARKT", "HDIRECT", "PATRQT", "FAMRQT",
                      "PWATRNY", "COC", "HSYSADMIN", "HLEGAL", "HQUALIMP", "CLINTRCH"})

ROLES = frozenset({"patient", "clinician", "researcher", "auditor", "system", "internal"})


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request.

    `scopes` None means unrestricted (the service itself: CLI, demo loader, the development token);
    otherwise a tuple of granted SMART scopes (healthledger.auth.scopes) and `scope_context` names
    which of them apply (`system` for backend clients, `patient` for a patient acting for
    themselves, `user` for staff).
    """

    actor_id: str
    role: str  # patient | clinician | researcher | auditor | system | internal
    organization: str = ""  # "Organization/{id}"; empty for patients and the service itself
    purpose: str = TREAT
    patient_id: str = ""  # set for a patient acting for themselves
    references: frozenset[str] = frozenset()  # FHIR references naming the actor, e.g. Practitioner/1
    break_glass_reason: str = ""
    scopes: tuple[Any, ...] | None = None
    scope_context: str = "system"
    via: str = "api"  # api | web | cli: where the request came from (the log records API and web accesses)
    # What an API client's registration says, beyond its token: the scopes it is registered for (a token
    # holds their intersection with what it asked for), and whether it may ask consent consults on behalf
    # of other actors. () and False for people and the service itself.
    registered_scopes: tuple[Any, ...] = ()
    consult_for_others: bool = False
    # Another member hospital reading under one patient's Consent (healthledger.federation): that Consent, and
    # only it, may permit its requests; "" for everyone else.
    consent_reference: str = ""

    @property
    def id(self) -> str:
        return self.actor_id

    @property
    def unrestricted(self) -> bool:
        return self.scopes is None

    def identities(self) -> frozenset[str]:
        """References a Consent's provision.actor may use to name this principal."""
        return self.references | {self.organization} if self.organization else self.references

    def acting_for(self, purpose: str, break_glass_reason: str = "") -> Principal:
        return replace(self, purpose=purpose, break_glass_reason=break_glass_reason)


# The service itself (CLI commands, the demo loader, the importer): unrestricted and not an API access.
SYSTEM = Principal("system", role="internal", via="cli")
