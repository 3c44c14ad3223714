"""A reference model of the consent boundary: which caller may see or change which version of what.

Written from the policy (docs/consent-semantics.md and the rules listed below), not from the code: it
imports nothing of `healthledger` or `fhir_adapters`, so a mistake there cannot hide here. Plain
functions over a few dicts; `test_leak_properties.py` holds the real HTTP API to it.

The rules, in the order they are applied:
1. Scopes first, everywhere: a token whose SMART scopes do not allow the interaction on the type -> 403,
   before any existence check, any validation of the references in a body and any conditional search. A
   batch checks each entry first; a transaction checks every entry's interaction before processing any
   (the first the scopes refuse makes the whole transaction 403).
2. A resource's patient is the Patient compartment: a Patient is its own (its links do not move it); any
   other resource is in the compartment of every `Patient/{id}` its literal references name, relative or
   absolute, at any depth (contained resources included). A write is refused with 400 naming the element:
   - at a subject element (subject, patient, beneficiary, individual, member.entity, for, link.target,
     target, candidate...): an identifier-only, display-only or contained (`#x`) reference unless its
     `type` names a non-Patient type, a `urn:uuid:` outside a transaction, a bare id. A Group, Device,
     Location... there is no patient: allowed, no compartment;
   - at a participant element (performer, author, recorder, asserter, requester, actor, source...): an
     identifier-only or display-only reference only if its `type` says Patient (a practitioner known by
     NPI is fine);
   - anywhere: a malformed patient reference (`patient/1`, ` Patient/1`), a conditional `Patient?...`
     outside a transaction, a contained Patient (naming the element that refers to it, else
     `X.contained[i]`), and two different patients (naming the element of the first, in document order).
   No patient: the scopes decide reads; writes need a writer role, and patients never write outside
   their own compartment.
3. A patient reads all of their own data and writes only their own Consents; nothing of anyone else.
4. A clinician breaking the glass (ETREAT with a reason) is permitted, flagged; ETREAT from another role
   is denied.
5a. A request for access: a clinician or system of an organisation may create a Consent for any patient id,
   known or not, that asks for access for that organisation only (status `proposed`, provision `type` permit,
   every `provision.actor` that organisation and at least one, `provision.period.end` after today and at
   most 730 days ahead), whatever that patient's Consents or care say; and that organisation (any of its
   clients) reads every version of the Consents it created so, and nothing else by this rule.
5. An active deny Consent that applies -> denied. Else a signed, mined, unrevoked permit naming the
   caller's organisation -> permitted. Else the patient's care organisation (managingOrganization,
   generalPractitioner), role clinician or system, purpose TREAT -> permitted. Else denied.
6. Denied reads look like missing ones; searches and histories leave denied versions out of pages and
   totals; every version is decided on its own. In an instance history a deletion is shown exactly when
   the version it deleted is; a type history shows restricted callers no deletions; the service sees all.
   Writing over an id whose last live version is another patient's is an update of that version too.
   A deletion (read, or vread of it) is decided on the version it deleted: 410 if that may be read, else the
   404 of a missing read (the service: 410).
   Deletes: a restricted caller's delete of a missing or withheld resource, or one it may not delete, is the
   404 of a missing read (recorded as a deny); deleting a deletion is decided as a delete of the version it
   deleted (204, nothing written, or that 404); the service's delete of a missing one is 204.
   A new Patient (create, or update of an id that never held anything) is its own compartment, decided
   on its own content: a clinician or system, purpose TREAT, of an organisation it names as
   managingOrganization or generalPractitioner (there is no home organisation in these worlds).
7. Conditional create/update/delete and conditional references search as the caller (its matches only;
   no search scope finds nothing). Create: scopes, then the probe: one visible match -> 200 with it (no
   create decided), several -> 412, none -> the create, decided like any.
8. AuditEvents: a patient sees their own entries; the service and clients registered for AuditEvent by
   name see all; an auditor those of the patients its organisation cares for (none without one); a
   researcher its own requests about studies, cohort Groups and the log that name no patient (never an entry
   naming one, nor its attempts on a patient's kind of data); anyone else none. A CDS Hooks consult from a
   caller with no relationship with the patient (care organisation, or named by an active Consent) answers as
   for an unknown patient unless the answer is PERMIT.
9. The access log: every attempt leaves one entry per patient whose data it touched, exactly one when it
   touched none (`Touch`). read/vread/$sign/create: 1; an update across two patients: 2, each decided on
   its own; a history or search: one per (resource, patient) disclosed on the page (a resource's versions
   count once per patient), one per patient withheld, one per patient counted in the total but not on the
   page and not covered otherwise; exactly one if nothing matched. A conditional probe is logged like a
   search (its page is the server's choice), besides the interaction's own entries.

Where the policy is silent or leaves a choice, the reading taken (the stricter one where it matters):
- `$sign` is an update of the Consent (seen first, then decided like any write);
- a type history's resource whose shown versions are two patients' data has an entry for each (every
  patient touched has one), and a deletion is its deleted version's patient's data;
- a conditional delete that finds nothing the caller may see is a 204 that decides nothing (only the
  probe is logged), as is a conditional create that returns its match and a 412;
- a hidden deletion in a type history is not a withheld match (it is never shown to anyone restricted);
- a consult from a caller with no standing with the patient answers as for an unknown patient, whatever
  actor it names; de-identified answers carry no real id of the resource or of its patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

TREAT, ETREAT = "TREAT", "ETREAT"
TREATING_ROLES = frozenset({"clinician", "system"})  # also the roles that may write (policy writer_roles)
REQUESTER_ROLES = frozenset({"clinician", "system"})  # who may ask a patient for access (rule 5a)
MAX_REQUEST_DAYS = 730
# What a researcher's own requests in the log may be about (rule 8): never a patient's kind of data, as a miss there
# names no patient while the denial of a real patient's record does.
RESEARCH_TYPES = frozenset({"AuditEvent", "Group", "ResearchStudy"})
BREAK_GLASS_ROLES = frozenset({"clinician"})
READ_ACTIONS = frozenset({"read", "vread", "history", "search"})
WRITE_ACTIONS = frozenset({"create", "update", "delete"})
PERMISSION = {"create": "c", "read": "r", "vread": "r", "history": "r", "update": "u", "delete": "d", "search": "s"}
PATIENT_WRITABLE_TYPES = frozenset({"Consent"})

# Where a reference says whom the record is about (subject elements) or who took part (participant
# elements): the last element name, or the last two. The lists are the policy's; unlisted elements are
# neither (identifier-only references there are refused only when their `type` says Patient).
SUBJECT_ELEMENTS = frozenset({"subject", "patient", "beneficiary", "individual", "member.entity", "for",
                              "link.target", "target", "candidate"})
PARTICIPANT_ELEMENTS = frozenset({"performer", "author", "recorder", "asserter", "sender", "recipient", "requester",
                                  "attester", "participant", "actor", "source", "payee", "receiver", "subscriber",
                                  "policyHolder", "payor", "deliverTo"})
_REFERENCE_KEYS = frozenset({"reference", "type", "identifier", "display", "id", "extension"})
# The search parameters the tests use: (type, name) -> (kind, element path), from the R4 SearchParameter
# expressions of the parameters fhir_adapters/search/parameters.py supports.
SEARCH_PARAMETERS: dict[tuple[str, str], tuple[str, str]] = {
    ("Patient", "identifier"): ("token", "identifier"), ("Patient", "family"): ("string", "name.family"),
    ("Patient", "given"): ("string", "name.given"), ("Patient", "name"): ("string", "name"),
    ("Patient", "birthdate"): ("date", "birthDate"), ("Patient", "organization"): ("reference", "managingOrganization"),
    ("Patient", "general-practitioner"): ("reference", "generalPractitioner"),
    ("Observation", "code"): ("token", "code"), ("Observation", "status"): ("token", "status"),
    ("Observation", "date"): ("date", "effectiveDateTime"),
    ("Condition", "code"): ("token", "code"),
    ("Encounter", "status"): ("token", "status"), ("Encounter", "class"): ("token", "class"),
    ("Consent", "actor"): ("reference", "provision.actor.reference"), ("Consent", "category"): ("token", "category"),
    ("AllergyIntolerance", "code"): ("token", "code"),
    ("Immunization", "vaccine-code"): ("token", "vaccineCode"), ("Immunization", "status"): ("token", "status"),
    ("Immunization", "date"): ("date", "occurrenceDateTime"),
    ("Procedure", "code"): ("token", "code"), ("Procedure", "status"): ("token", "status"),
    ("DiagnosticReport", "code"): ("token", "code"), ("DiagnosticReport", "status"): ("token", "status"),
    ("MedicationRequest", "status"): ("token", "status"), ("MedicationRequest", "intent"): ("token", "intent"),
    ("MedicationRequest", "code"): ("token", "medicationCodeableConcept"),
    ("Practitioner", "identifier"): ("token", "identifier"), ("Practitioner", "family"): ("string", "name.family"),
    ("Organization", "identifier"): ("token", "identifier"), ("Organization", "name"): ("string", "name"),
}
# `patient` (and `subject`, for types that have it) read this element, restricted to Patient targets.
SEARCH_PATIENT_ELEMENT = {
    "AllergyIntolerance": "patient", "Condition": "subject", "Consent": "patient", "DiagnosticReport": "subject",
    "Encounter": "subject", "Immunization": "patient", "MedicationRequest": "subject", "Observation": "subject",
    "Procedure": "subject",
}

_ID = r"[A-Za-z0-9\-.]{1,64}"
_PATIENT_REFERENCE = re.compile(rf"(?:https?://[^\s?#]+/)?Patient/({_ID})(?:/_history/[0-9]+)?")


# -- callers --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """Who asks: role, organisation, purpose, SMART scopes (None: the unrestricted development token)."""

    name: str
    role: str
    organization: str = ""
    purpose: str = TREAT
    patient_id: str = ""  # a patient acting for themselves
    scopes: tuple[str, ...] | None = ()
    break_glass_reason: str = ""
    actor_id: str = ""  # how the access log names it (`client:{id}`); a researcher's own entries are found by it

    @property
    def unrestricted(self) -> bool:
        return self.scopes is None


def scope_allows(caller: Caller, resource_type: str, action: str) -> bool:
    """SMART `{context}/{Type|*}.{cruds}`: some scope names the type (or *) and the action's letter."""
    if caller.scopes is None:
        return True
    letter = PERMISSION[action]
    for scope in caller.scopes:
        target, _, letters = scope.partition("/")[2].partition(".")
        if target in ("*", resource_type) and letter in letters:
            return True
    return False


# -- what a resource is about -----------------------------------------------------------------------------
def named_patient(reference: str) -> str | None:
    """`Patient/{id}` or `{base}/Patient/{id}` (optionally `/_history/{n}`) -> id; anything else -> None."""
    match = _PATIENT_REFERENCE.fullmatch(reference)
    return match.group(1) if match else None


def values_at(node: Any, path: str) -> Iterator[Any]:
    """The values at a dotted element path, arrays flattened."""
    head, _, rest = path.partition(".")
    for value in node if isinstance(node, list) else [node]:
        if not isinstance(value, dict) or head not in value:
            continue
        inner = value[head]
        if rest:
            yield from values_at(inner, rest)
        else:
            yield from inner if isinstance(inner, list) else [inner]


def references(node: Any) -> Iterator[str]:
    """Every `reference` string in a resource, at any depth (contained resources included)."""
    if isinstance(node, list):
        for item in node:
            yield from references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)


def compartment(resource: dict[str, Any]) -> frozenset[str]:
    """The patients the resource is about: a Patient itself (links do not move it); else every patient named."""
    if resource["resourceType"] == "Patient":
        return frozenset({resource["id"]}) if resource.get("id") else frozenset()
    return frozenset(p for p in map(named_patient, references(resource)) if p is not None)


def sole_patient(patients: frozenset[str] | set[str]) -> str | None:
    """The one patient ("" for none; None when several: not checked)."""
    return "" if not patients else next(iter(patients)) if len(patients) == 1 else None


def element_kind(path: str) -> str:
    """"subject", "participant" or "other", for a dotted element path (no type, no indices)."""
    parts = path.split(".")
    if ".".join(parts[-2:]) in SUBJECT_ELEMENTS or parts[-1] in SUBJECT_ELEMENTS:
        return "subject"
    return "participant" if parts[-1] in PARTICIPANT_ELEMENTS else "other"


def _walk_references(node: Any, path: str, contained: bool) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(element path, the Reference, inside a contained resource?) in document order."""
    if isinstance(node, list):
        for item in node:
            yield from _walk_references(item, path, contained)
        return
    if not isinstance(node, dict):
        return
    if path and set(node) <= _REFERENCE_KEYS and {"reference", "identifier", "display"} & set(node):
        yield path, node, contained
        return
    for key, value in node.items():
        if key == "contained" and not path:
            for i, inner in enumerate(value if isinstance(value, list) else [value]):
                yield from _walk_references(inner, f"contained[{i}]", True)
        elif key != "resourceType":
            yield from _walk_references(value, f"{path}.{key}" if path else key, contained)


def refused_element(resource: dict[str, Any], *, in_transaction: bool = False) -> str | None:
    """The element whose patient reference the write is refused for (400 naming it), or None (rule 2)."""
    rtype = resource["resourceType"]
    contained = {c.get("id"): (i, c) for i, c in enumerate(resource.get("contained", [])) if isinstance(c, dict)}
    patients_contained = {cid for cid, (_, c) in contained.items() if c.get("resourceType") == "Patient"}
    referred: set[str] = set()
    first_patient: tuple[str, str] | None = None  # (patient, element)
    for path, ref, inside in _walk_references(resource, "", False):
        element = f"{rtype}.{path}"
        kind = "other" if inside else element_kind(path)
        reference, typed = ref.get("reference"), ref.get("type")
        says_patient = isinstance(typed, str) and typed.rsplit("/", 1)[-1] == "Patient"
        not_patient = isinstance(typed, str) and not says_patient
        if isinstance(reference, str):
            if reference.startswith("#"):
                referred.add(reference[1:])
                if reference[1:] in patients_contained or (kind == "subject" and not not_patient):
                    return element  # a contained Patient; or whom is it about?
            elif reference.startswith("Patient?"):
                if not in_transaction:
                    return element  # a conditional reference left unresolved
            elif "patient/" in reference.lower() and named_patient(reference) is None:
                return element  # wrong case, whitespace, a malformed id
            elif kind == "subject" and ((reference.startswith("urn:uuid:") and not in_transaction) or (
                    "/" not in reference and not reference.startswith("urn:"))):
                return element  # a placeholder outside a transaction, a bare id
            patient = named_patient(reference)
            if patient is not None and rtype != "Patient":
                if first_patient is None:
                    first_patient = (patient, element)
                elif first_patient[0] != patient:
                    return first_patient[1]  # two different patients: the first one's element
        elif says_patient or (kind == "subject" and not not_patient):
            return element  # identifier-only or display-only: which patient is it?
    for cid in sorted(patients_contained - referred, key=lambda c: contained[c][0]):
        return f"{rtype}.contained[{contained[cid][0]}]"  # a contained Patient nothing refers to
    return None


# -- the cumulative state of the deployment ---------------------------------------------------------------
@dataclass
class Version:
    number: int
    resource: dict[str, Any] | None  # None: this version is a deletion
    last_updated: str  # the FHIR instant the server stamped (UTC, milliseconds)


@dataclass
class State:
    """Every version of every resource, each Consent's grant on the chain ("live" or "revoked"), and the
    organisation that created each Consent as a request for access (rule 5a)."""

    versions: dict[tuple[str, str], list[Version]] = field(default_factory=dict)
    grants: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)

    def record(self, rtype: str, rid: str, number: int, resource: dict[str, Any] | None, last_updated: str) -> None:
        history = self.versions.setdefault((rtype, rid), [])
        history[:] = [v for v in history if v.number != number]
        history.append(Version(number, resource, last_updated))
        history.sort(key=lambda v: v.number)

    def current(self, rtype: str, rid: str) -> Version | None:
        history = self.versions.get((rtype, rid))
        return history[-1] if history else None

    def live(self, rtype: str) -> Iterator[tuple[str, Version]]:
        for (t, rid), history in self.versions.items():
            if t == rtype and history[-1].resource is not None:
                yield rid, history[-1]

    def last_live(self, rtype: str, rid: str, before: int | None = None) -> dict[str, Any] | None:
        """The content of the newest live version (below `before`): what a deletion deleted."""
        for v in reversed(self.versions.get((rtype, rid), [])):
            if (before is None or v.number < before) and v.resource is not None:
                return v.resource
        return None

    def content(self, rtype: str, rid: str, version: Version) -> dict[str, Any] | None:
        """What a version is about: its own content, or for a deletion the content it deleted."""
        return version.resource if version.resource is not None else self.last_live(rtype, rid, version.number)

    def care_organizations(self, patient: str) -> frozenset[str]:
        current = self.current("Patient", patient)
        if current is None or current.resource is None:
            return frozenset()
        refs = [*values_at(current.resource, "managingOrganization"), *values_at(current.resource, "generalPractitioner")]
        return frozenset(r["reference"] for r in refs if str(r.get("reference", "")).startswith("Organization/"))

    def consents(self, patient: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for rid, version in self.live("Consent"):
            assert version.resource is not None
            if named_patient(version.resource.get("patient", {}).get("reference", "")) == patient:
                yield rid, version.resource


# -- decisions --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    permitted: bool
    why: str
    break_glass: bool = False
    status: int = 0  # the refusal's HTTP status when it is not the interaction's usual one (403 scope, 400)
    request: bool = False  # permitted as a request for access (rule 5a): the caller's organisation reads it


def asks_for_itself(caller: Caller, resource: dict[str, Any], today: date) -> bool:
    """Rule 5a: is this Consent, created by `caller`, a request for access for its own organisation?"""
    provision = resource.get("provision") or {}
    actors = {(a.get("reference") or {}).get("reference") for a in provision.get("actor") or []}
    end = (provision.get("period") or {}).get("end")
    return (
        resource.get("resourceType") == "Consent"
        and caller.role in REQUESTER_ROLES
        and bool(caller.organization)
        and resource.get("status") == "proposed"
        and provision.get("type", "permit") == "permit"
        and actors == {caller.organization}
        and isinstance(end, str) and len(end) == 10
        and today < date.fromisoformat(end) + timedelta(days=1) <= today + timedelta(days=MAX_REQUEST_DAYS)
    )


def own_request(state: State, caller: Caller, rtype: str, resource: dict[str, Any]) -> bool:
    """Rule 5a: a Consent the caller's organisation created as a request for access."""
    return rtype == "Consent" and bool(caller.organization) and state.requests.get(
        str(resource.get("id", ""))) == caller.organization


def _provision(consent: dict[str, Any]) -> tuple[str, frozenset[str], frozenset[str]]:
    provision = consent.get("provision", {})
    actors = frozenset(a["reference"]["reference"] for a in provision.get("actor", []))
    classes = frozenset(c["code"] for c in provision.get("class", []))
    return provision.get("type", "permit"), actors, classes


def _consent_in_force(state: State, cid: str, consent: dict[str, Any]) -> bool:
    kind, _, _ = _provision(consent)
    if consent.get("status") not in ("active", "proposed"):
        return False  # inactive (revoked), rejected, entered-in-error...
    if kind == "deny":
        return True  # a deny takes effect when it is recorded
    return state.grants.get(cid) == "live"  # a permit: signed by the patient and mined, not revoked


def decide(state: State, caller: Caller, action: str, rtype: str, patient: str) -> Decision:
    """Rules 3-5 for one action on one patient's data."""
    who = f"{caller.name} ({caller.role}, {caller.organization or '-'}, {caller.purpose})"
    if caller.unrestricted:
        return Decision(True, "the development token is unrestricted")
    if caller.role == "patient":
        if caller.patient_id != patient:
            return Decision(False, f"{who} is another patient than Patient/{patient}")
        if action in WRITE_ACTIONS and rtype not in PATIENT_WRITABLE_TYPES:
            return Decision(False, f"a patient writes only their own Consents, not {rtype}")
        return Decision(True, f"Patient/{patient}'s own data")
    if caller.purpose == ETREAT:
        if caller.role in BREAK_GLASS_ROLES and caller.break_glass_reason.strip():
            return Decision(True, f"{who} breaks the glass", break_glass=True)
        return Decision(False, f"{who}: only a clinician with a reason may break the glass")
    permits = []
    for cid, consent in state.consents(patient):
        if not _consent_in_force(state, cid, consent):
            continue
        kind, actors, classes = _provision(consent)
        if (actors and caller.organization not in actors) or (classes and rtype not in classes):
            continue
        if kind == "deny":
            return Decision(False, f"Consent/{cid} of Patient/{patient} denies {sorted(actors) or 'everybody'}"
                                   f"{' ' + str(sorted(classes)) if classes else ''}")
        permits.append(cid)
    if permits:
        return Decision(True, f"Consent/{permits[0]} of Patient/{patient} (signed, mined) permits {caller.organization}")
    care = state.care_organizations(patient)
    if caller.organization in care and caller.role in TREATING_ROLES and caller.purpose == TREAT:
        return Decision(True, f"{caller.organization} cares for Patient/{patient} ({caller.role}, TREAT)")
    return Decision(False, f"no consent of Patient/{patient} permits {who}, and its care organisations are "
                           f"{sorted(care) or 'none'}")


def read_decision(state: State, caller: Caller, rtype: str, resource: dict[str, Any] | None) -> Decision:
    """May the caller see this content (one version)? `resource` None: nothing is known of it (missing)."""
    if caller.unrestricted:
        return Decision(True, "the development token is unrestricted")
    if resource is None:
        return Decision(False, "nothing to see")
    patients = compartment(resource)
    if not patients:
        return Decision(True, "no patient compartment: the scopes decide")
    if caller.role != "patient" and caller.purpose != ETREAT and own_request(state, caller, rtype, resource):
        return Decision(True, f"{caller.organization} reads the request for access it made")
    decisions = [decide(state, caller, "read", rtype, p) for p in sorted(patients)]
    refused = [d for d in decisions if not d.permitted]
    return refused[0] if refused else decisions[0]


def write_decision(
    state: State, caller: Caller, action: str, rtype: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
    *, in_transaction: bool = False,
) -> Decision:
    """May the caller replace `before` (the live content it changes, or deletes) with `after`?"""
    if not scope_allows(caller, rtype, action):
        return Decision(False, f"{caller.name}'s scopes do not allow {action} on {rtype}", status=403)
    if after is not None:
        element = refused_element(after, in_transaction=in_transaction)
        if element is not None:
            return Decision(False, f"the patient reference at {element} is ambiguous", status=400)
    if caller.unrestricted:
        return Decision(True, "the development token is unrestricted")
    if rtype == "Patient" and before is None and after is not None and action in ("create", "update"):
        refs = [*values_at(after, "managingOrganization"), *values_at(after, "generalPractitioner")]
        care = {str(r.get("reference", "")) for r in refs if isinstance(r, dict)}
        if caller.role in TREATING_ROLES and caller.purpose == TREAT and caller.organization in care:
            return Decision(True, f"a new Patient naming {caller.organization}, which will care for it")
        return Decision(False, f"a new Patient not in the care of {caller.organization or 'no organisation'} "
                               f"({caller.role}, {caller.purpose})", status=403)
    patients = (compartment(before) if before else frozenset()) | (compartment(after) if after else frozenset())
    if not patients:
        if caller.role == "patient":
            return Decision(False, "patients never write outside their own compartment", status=403)
        if caller.role in TREATING_ROLES:
            return Decision(True, f"no patient compartment: {caller.role} may write")
        return Decision(False, f"no patient compartment: a {caller.role} may not write", status=403)
    if (action == "create" or (action == "update" and before is None)) and after is not None and (
            caller.purpose != ETREAT and asks_for_itself(caller, after, datetime.now(UTC).date())):
        return Decision(True, f"{caller.organization} asks Patient/{min(patients)} for access for itself",
                        request=True)
    for patient in sorted(patients):
        decision = decide(state, caller, action, rtype, patient)
        if not decision.permitted:
            return Decision(False, decision.why, status=403)
    return decide(state, caller, action, rtype, min(patients))


# -- expected answers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shown:
    """One version as a caller is shown it: (type, id, version); a deletion has no content."""

    rtype: str
    rid: str
    number: int
    deleted: bool = False
    patients: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[str, str, int]:
        return self.rtype, self.rid, self.number


@dataclass(frozen=True)
class Touch:
    """One access-log entry an attempt must leave (rule 9): whose ("" none, None not checked) and its
    decision (None: not checked)."""

    patient: str | None = None
    permitted: bool | None = None


ONE_ENTRY = (Touch(),)


@dataclass(frozen=True)
class Expected:
    status: int
    shown: tuple[Shown, ...] = ()  # read/vread: the one version; history/search: every visible match
    why: str = ""
    log: tuple[Touch, ...] = ONE_ENTRY  # listings: with every match on the page (see `listing_log`)
    withheld_patients: frozenset[str] = frozenset()
    break_glass: bool = False
    listing: str = ""  # "search", "type-history" or "instance-history"
    returned: str | None = None  # a conditional create: the id of the one visible match it returns
    probe: Expected | None = None  # a conditional interaction: its search, as the caller's (logged like one)

    @property
    def log_entries(self) -> int:
        return len(self.log)


def _refused(status: int, why: str) -> Expected:
    """Refused before any decision (scopes, a bad request): exactly one entry, a deny."""
    return Expected(status, why=why, log=(Touch(None, False),))


def _shown(state: State, rtype: str, rid: str, version: Version) -> Shown:
    content = state.content(rtype, rid, version)
    return Shown(rtype, rid, version.number, version.resource is None, compartment(content) if content else frozenset())


def expect_read(state: State, caller: Caller, rtype: str, rid: str, number: int | None = None) -> Expected:
    """read (number None) or vread: 403 for scopes, 404 for missing or denied, 410 for a deletion of a version the
    caller may read (the service: any deletion)."""
    action = "read" if number is None else "vread"
    if not scope_allows(caller, rtype, action):
        return _refused(403, f"{caller.name}'s scopes do not allow {action} on {rtype}")
    history = state.versions.get((rtype, rid), [])
    version = history[-1] if history and number is None else next((v for v in history if v.number == number), None)
    if version is None:
        return Expected(404, why=f"{rtype}/{rid}{'' if number is None else f' version {number}'} does not exist")
    if version.resource is None:
        if caller.unrestricted:
            return Expected(410, why="the service sees every deletion")
        buried = next((v for v in reversed(history) if v.number < version.number and v.resource is not None), None)
        if buried is None:
            return Expected(404, why="a deletion of nothing")
        decision = read_decision(state, caller, rtype, buried.resource)
        if not decision.permitted:
            return Expected(404, why=f"a deletion of v{buried.number}, which it may not read: {decision.why}")
        return Expected(410, why=f"a deletion of v{buried.number}, which it may read: {decision.why}",
                        break_glass=decision.break_glass)
    decision = read_decision(state, caller, rtype, version.resource)
    if not decision.permitted:
        return Expected(404, why=decision.why)
    return Expected(200, (_shown(state, rtype, rid, version),), decision.why, break_glass=decision.break_glass)


def version_decision(
    state: State, caller: Caller, rtype: str, rid: str, version: Version, *, type_history: bool = False
) -> Decision:
    """One version, decided on its own. A deletion: the service sees it; in an instance history a restricted
    caller sees it exactly when it sees the version it deleted; in a type history, never."""
    if version.resource is not None or caller.unrestricted:
        return read_decision(state, caller, rtype, state.content(rtype, rid, version))
    if type_history:
        return Decision(False, "a type history shows restricted callers no deletions")
    deleted = next((v for v in reversed(state.versions.get((rtype, rid), []))
                    if v.number < version.number and v.resource is not None), None)
    if deleted is None:
        return Decision(False, "a deletion of nothing")
    decision = read_decision(state, caller, rtype, deleted.resource)
    return Decision(decision.permitted, f"a deletion of v{deleted.number}, shown with it: {decision.why}",
                    decision.break_glass)


def visible_versions(state: State, caller: Caller, rtype: str, rid: str) -> list[tuple[Version, Decision]]:
    """Each version of one resource with its own decision (instance history)."""
    return [(v, version_decision(state, caller, rtype, rid, v)) for v in state.versions.get((rtype, rid), [])]


def listing_log(expected: Expected, on_page: set[tuple[str, str, int]] | None = None) -> tuple[Touch, ...]:
    """The entries a search or history leaves, given which of the visible versions are on the page (None:
    all): one per resource and patient disclosed on the page (several versions of one resource count once,
    unless they are different patients' data: each patient touched has an entry), one per patient withheld,
    one per patient counted in the total but not on the page and not covered by another entry; exactly one
    if nothing matched (or nothing touched a patient)."""
    if expected.status != 200 or not expected.listing:
        return expected.log
    page = [s for s in expected.shown if on_page is None or s.key in on_page]
    off_page = [s for s in expected.shown if on_page is not None and s.key not in on_page]
    disclosed = {(s.rtype, s.rid, patient) for s in page for patient in (s.patients or {""})}
    touches = [Touch(patient, True) for _, _, patient in sorted(disclosed)]
    touches += [Touch(p, False) for p in sorted(expected.withheld_patients)]
    covered = {patient for _, _, patient in disclosed} | expected.withheld_patients
    touches += [Touch(p, None) for p in sorted({p for s in off_page for p in s.patients} - covered)]
    return tuple(touches) or ONE_ENTRY


def conditional_log(expected: Expected, on_page: set[tuple[str, str, int]] | None = None) -> tuple[Touch, ...]:
    """A conditional interaction's entries: its probe's, logged like a search (`on_page`: the matches the
    probe's page held, None: all), then the interaction's own."""
    if expected.probe is None:
        return expected.log
    return listing_log(expected.probe, on_page) + expected.log


def expect_history(state: State, caller: Caller, rtype: str, rid: str) -> Expected:
    """Instance history: the visible versions; 404 like a missing resource when none is visible."""
    if not scope_allows(caller, rtype, "history"):
        return _refused(403, f"{caller.name}'s scopes do not allow history on {rtype}")
    decided = visible_versions(state, caller, rtype, rid)
    shown = tuple(_shown(state, rtype, rid, v) for v, d in decided if d.permitted)
    withheld = frozenset(p for v, d in decided if not d.permitted for p in _shown(state, rtype, rid, v).patients)
    if not shown:
        why = decided[-1][1].why if decided else f"{rtype}/{rid} does not exist"
        log = tuple(Touch(p, False) for p in sorted(withheld)) or (Touch("" if not decided else None, False),)
        return Expected(404, why=why, log=log, withheld_patients=withheld)
    why = "; ".join(f"v{v.number} {'shown' if d.permitted else 'withheld'}: {d.why}" for v, d in reversed(decided))
    expected = Expected(200, shown, why, withheld_patients=withheld, listing="instance-history")
    return Expected(200, shown, why, listing_log(expected), withheld, listing="instance-history")


def expect_type_history(state: State, caller: Caller, rtype: str, since: str | None = None) -> Expected:
    if not scope_allows(caller, rtype, "history"):
        return _refused(403, f"{caller.name}'s scopes do not allow history on {rtype}")
    shown: list[Shown] = []
    withheld: set[str] = set()
    for (t, rid), history in state.versions.items():
        if t != rtype:
            continue
        for version in history:
            if since is not None and version.last_updated < since:
                continue
            if version_decision(state, caller, rtype, rid, version, type_history=True).permitted:
                shown.append(_shown(state, rtype, rid, version))
            elif version.resource is not None:
                withheld |= compartment(version.resource)
    expected = Expected(200, tuple(shown), f"{len(shown)} visible versions", withheld_patients=frozenset(withheld),
                        listing="type-history")
    return Expected(200, expected.shown, expected.why, listing_log(expected), expected.withheld_patients,
                    listing="type-history")


def tokens(value: Any) -> Iterator[tuple[str, str]]:
    """(system, code) pairs of a code, Coding, CodeableConcept or Identifier."""
    if isinstance(value, str):
        yield "", value
    elif isinstance(value, dict):
        for coding in value.get("coding", []):
            yield from tokens(coding)
        code = value.get("code", value.get("value"))
        if isinstance(code, str):
            yield value.get("system", ""), code


def strings(value: Any) -> Iterator[str]:
    """The text of a string or of a HumanName's parts."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for part in ("text", "family", "given", "prefix", "suffix"):
            found = value.get(part)
            yield from (v for v in (found if isinstance(found, list) else [found]) if isinstance(v, str))


def matches(resource: dict[str, Any], last_updated: str, params: list[tuple[str, str]]) -> bool:
    """R4 search semantics for the parameters the tests use (search.html): AND across parameters; token
    `[system|]code`; string: starts with, case-insensitive; reference: that reference; date: `eq` a day."""
    rtype = resource["resourceType"]
    for name, value in params:
        if name == "_id":
            ok = resource.get("id") == value
        elif name == "_lastUpdated":
            prefix, instant = value[:2], value[2:]
            ok = last_updated >= instant if prefix == "ge" else last_updated < instant
        elif name in ("patient", "subject"):
            wanted = named_patient(value) or value
            ok = any(named_patient(r.get("reference", "")) == wanted
                     for r in values_at(resource, SEARCH_PATIENT_ELEMENT[rtype]) if isinstance(r, dict))
        else:
            kind, path = SEARCH_PARAMETERS[(rtype, name)]
            found = list(values_at(resource, path))
            if kind == "token":
                system, _, code = value.rpartition("|")
                ok = any(c == code and (not system or s == system) for f in found for s, c in tokens(f))
            elif kind == "string":
                ok = any(text.lower().startswith(value.lower()) for f in found for text in strings(f))
            elif kind == "reference":
                ok = any(isinstance(f, dict) and f.get("reference") == value for f in found)
            else:
                ok = any(isinstance(f, str) and f[:10] == value.removeprefix("eq") for f in found)
        if not ok:
            return False
    return True


def expect_search(state: State, caller: Caller, rtype: str, params: list[tuple[str, str]]) -> Expected:
    """Every current live match the caller may see (each counted one is disclosed: it is in the total)."""
    if not scope_allows(caller, rtype, "search"):
        return _refused(403, f"{caller.name}'s scopes do not allow search on {rtype}")
    shown: list[Shown] = []
    withheld: set[str] = set()
    for rid, version in state.live(rtype):
        assert version.resource is not None
        if not matches(version.resource, version.last_updated, params):
            continue
        if read_decision(state, caller, rtype, version.resource).permitted:
            shown.append(_shown(state, rtype, rid, version))
        else:
            withheld |= compartment(version.resource)
    expected = Expected(200, tuple(shown), f"{len(shown)} visible matches", withheld_patients=frozenset(withheld),
                        listing="search")
    return Expected(200, expected.shown, expected.why, listing_log(expected), expected.withheld_patients,
                    listing="search")


def _write_log(state: State, caller: Caller, action: str, rtype: str, before: dict[str, Any] | None,
               after: dict[str, Any] | None, decision: Decision) -> tuple[Touch, ...]:
    """One entry per patient the write touched (the version it replaces, the new one), each decided on its own."""
    patients = sorted((compartment(before) if before else frozenset()) | (compartment(after) if after else frozenset()))
    if len(patients) > 1:
        return tuple(Touch(p, decide(state, caller, action, rtype, p).permitted) for p in patients)
    if not patients and rtype == "Patient" and action == "create":
        return (Touch(None, decision.permitted),)  # a new Patient: its own new compartment
    return (Touch(patients[0] if patients else "", decision.permitted),)


def expect_write(
    state: State, caller: Caller, action: str, rtype: str, rid: str | None, after: dict[str, Any] | None,
    *, in_transaction: bool = False,
) -> tuple[Expected, Decision]:
    """create (rid None), update (update-as-create too) or delete (after None) by the caller.

    An update is decided on what it replaces as well: the last live version, even under a deletion (an id
    reused for another patient is an update of that patient's record too). A restricted caller's delete
    of anything it may not delete, or of nothing live, is the 404 of a missing read.
    """
    current = state.current(rtype, rid) if rid else None
    before = state.last_live(rtype, rid) if rid else None
    if action == "delete":
        if not scope_allows(caller, rtype, "delete"):
            why = f"{caller.name}'s scopes do not allow delete on {rtype}"
            return _refused(403, why), Decision(False, why, status=403)
        if current is None or current.resource is None:
            if caller.unrestricted:
                return Expected(204, why="the service deletes a missing id: 204", log=(Touch(None, None),)), Decision(
                    True, "no-op")
            if current is not None and before is not None:
                again = write_decision(state, caller, "delete", rtype, before, None)
                log = _write_log(state, caller, "delete", rtype, before, None, again)
                if again.permitted:
                    return Expected(204, why=f"deleted already, and it may delete what was: {again.why}", log=log,
                                    break_glass=again.break_glass), Decision(True, "no-op", break_glass=again.break_glass)
                why = f"deleted already, and it may not delete what was: {again.why}: the 404 of a missing read"
                return Expected(404, why=why, log=log), Decision(False, why, status=404)
            why = f"nothing live at {rtype}/{rid}: the 404 of a missing read"
            return Expected(404, why=why, log=(Touch(None, False),)), Decision(False, why, status=404)
        before = current.resource
    decision = write_decision(state, caller, action, rtype, before, after, in_transaction=in_transaction)
    if decision.status in (400,) or (decision.status == 403 and not scope_allows(caller, rtype, action)):
        return _refused(decision.status, decision.why), decision
    log = _write_log(state, caller, action, rtype, before, after, decision)
    if action == "delete":
        if not decision.permitted:
            return Expected(404, why=f"{decision.why}: a refused delete is the 404 of a missing read", log=log), decision
        return Expected(204, why=decision.why, log=log, break_glass=decision.break_glass), decision
    if not decision.permitted:
        return Expected(decision.status or 403, why=decision.why, log=log), decision
    live = current is not None and current.resource is not None
    status = 200 if action == "update" and live else 201
    return Expected(status, why=decision.why, log=log, break_glass=decision.break_glass), decision


def expect_conditional_match(
    state: State, caller: Caller, rtype: str, params: list[tuple[str, str]]
) -> tuple[list[str], frozenset[str]]:
    """Ids of the current matches the caller may see, and the patients whose matches are withheld from it
    (a caller whose scopes do not allow searching the type finds nothing)."""
    if not scope_allows(caller, rtype, "search"):
        return [], frozenset()
    visible: list[str] = []
    withheld: set[str] = set()
    for rid, version in state.live(rtype):
        assert version.resource is not None
        if matches(version.resource, version.last_updated, params):
            if read_decision(state, caller, rtype, version.resource).permitted:
                visible.append(rid)
            else:
                withheld |= compartment(version.resource)
    return visible, frozenset(withheld)


def _probe(state: State, rtype: str, visible: list[str], withheld: frozenset[str]) -> Expected:
    """A conditional interaction's search, as the caller's: logged like a search (`listing_log`)."""
    shown = []
    for rid in visible:
        current = state.current(rtype, rid)
        assert current is not None
        shown.append(_shown(state, rtype, rid, current))
    return Expected(200, tuple(shown), f"{len(shown)} visible matches", withheld_patients=withheld, listing="search")


def expect_conditional(
    state: State, caller: Caller, action: str, rtype: str, params: list[tuple[str, str]],
    body: dict[str, Any] | None, *, in_transaction: bool = False,
) -> Expected:
    """Conditional create (If-None-Exist), update or delete (rule 7): scopes, then the probe as the caller,
    then the interaction on what it found. Its log: the probe's entries, then the interaction's own."""
    if not scope_allows(caller, rtype, action):
        return _refused(403, f"{caller.name}'s scopes do not allow {action} on {rtype}")
    visible, withheld = expect_conditional_match(state, caller, rtype, params)
    probe = _probe(state, rtype, visible, withheld)
    seen = f" (matches it may see: {len(visible)}; withheld from it: patients {sorted(withheld)})"
    if len(visible) > 1:
        return Expected(412, why=f"{len(visible)} matches the caller may see" + seen, log=(), probe=probe)
    if action == "create" and visible:
        return Expected(200, why="one match the caller may see: returned, no create decided" + seen, log=(),
                        probe=probe, returned=visible[0])
    if action == "delete" and not visible:
        return Expected(204, why="no match the caller may see: nothing to delete, nothing decided" + seen, log=(),
                        probe=probe)
    target = visible[0] if visible else None
    after = None if body is None else {**body, **({"id": target} if target else {})}
    expected, _ = expect_write(state, caller, action, rtype, target, after, in_transaction=in_transaction)
    return Expected(expected.status, why=expected.why + seen, log=expected.log, probe=probe,
                    break_glass=expected.break_glass)


def expect_conditional_reference(
    state: State, caller: Caller, body: dict[str, Any], element: str, params: list[tuple[str, str]]
) -> Expected:
    """A transaction's create whose `element` is `Patient?{params}`: scopes (create) first, then the
    probe among the Patients the caller may see (exactly one, else 412), then the create of the resolved
    resource. Its log: the probe's entries, then the create's."""
    rtype = body["resourceType"]
    if not scope_allows(caller, rtype, "create"):
        return _refused(403, f"{caller.name}'s scopes do not allow create on {rtype}")
    visible, withheld = expect_conditional_match(state, caller, "Patient", params)
    probe = _probe(state, "Patient", visible, withheld)
    seen = f" (Patients it may see: {len(visible)}; withheld from it: {sorted(withheld)})"
    if len(visible) != 1:
        return Expected(412, why=f"{len(visible)} Patients the caller may see match" + seen, log=(), probe=probe)
    resolved = {**body, element: {"reference": f"Patient/{visible[0]}"}}
    expected, _ = expect_write(state, caller, "create", rtype, None, resolved, in_transaction=True)
    return Expected(expected.status, why=expected.why + seen, log=expected.log, probe=probe,
                    break_glass=expected.break_glass)


def expect_transaction_scopes(caller: Caller, interactions: list[tuple[str, str]]) -> Expected | None:
    """A transaction checks every entry's (action, type) against the scopes before processing any: the first
    refused makes the whole transaction 403 (one entry). None: the scopes allow them all."""
    for action, rtype in interactions:
        if not scope_allows(caller, rtype, action):
            return _refused(403, f"{caller.name}'s scopes do not allow {action} on {rtype} (a transaction entry)")
    return None


# -- the access log as AuditEvents, and the consent consult ----------------------------------------------
def audit_view(caller: Caller, interaction: str = "search") -> str:
    """What of the access log a caller sees (docs, "Who may read the access log"): "all" (the service, a
    client registered for AuditEvent by name), "own" (a patient), "cared-for" (an auditor with an
    organisation: its patients' entries), "own-requests" (a researcher: its own entries naming no patient), "none" (anyone else, an auditor without an organisation), or
    "refused" (scopes: 403)."""
    if not scope_allows(caller, "AuditEvent", interaction):
        return "refused"
    if caller.role == "patient":
        return "own" if caller.patient_id else "none"
    if caller.unrestricted:
        return "all"
    letter = PERMISSION[interaction]
    for scope in caller.scopes or ():
        target, _, letters = scope.partition("/")[2].partition(".")
        if target == "AuditEvent" and letter in letters:
            return "all"  # registered for the log by name (the tests' tokens carry the registered scopes)
    if caller.role == "auditor":
        return "cared-for" if caller.organization else "none"
    if caller.role == "researcher" and caller.actor_id:
        return "own-requests"
    return "none"


def audit_shows(state: State, caller: Caller, patient: str, interaction: str = "search", actor: str = "",
                rtype: str = "") -> bool:
    """Whether the caller's view of the log includes the entries about `patient` ("" : entries naming none)
    made by `actor` about a resource of type `rtype`."""
    view = audit_view(caller, interaction)
    if view == "own-requests":
        return not patient and actor == caller.actor_id and rtype in RESEARCH_TYPES
    if view == "all":
        return True
    if view == "own":
        return bool(patient) and patient == caller.patient_id
    if view == "cared-for":
        return bool(patient) and caller.organization in state.care_organizations(patient)
    return False


def related(state: State, caller: Caller, patient: str) -> bool:
    """Whether a consult's answer may differ from an unknown patient's: the caller has a relationship with the
    patient (a care organisation, or named by an active Consent, permit or deny), or an active permit shares
    with anyone (a PERMIT stands)."""
    if caller.unrestricted or caller.patient_id == patient:
        return True
    if caller.organization and caller.organization in state.care_organizations(patient):
        return True
    for _, consent in state.consents(patient):
        kind, actors, _ = _provision(consent)
        if consent.get("status") == "active" and (caller.organization in actors or (kind == "permit" and not actors)):
            return True
    return False


def expect_sign(state: State, caller: Caller, cid: str) -> Expected:
    """`$sign` changes the Consent (a write): seen first (404 like missing), then decided like an update."""
    if not scope_allows(caller, "Consent", "update"):
        return _refused(403, f"{caller.name}'s scopes do not allow update on Consent")
    current = state.current("Consent", cid)
    if current is None or current.resource is None:
        return Expected(404, why=f"Consent/{cid} does not exist")
    seen = read_decision(state, caller, "Consent", current.resource)
    if not seen.permitted:
        return Expected(404, why=seen.why)
    decision = write_decision(state, caller, "update", "Consent", current.resource, current.resource)
    if not decision.permitted:
        return Expected(403, why=decision.why)
    if cid in state.grants:
        return Expected(409, why=f"Consent/{cid} is signed already")
    return Expected(200, why=decision.why, break_glass=decision.break_glass)


# -- what standard clients send: _include, _revinclude, _has, PATCH ---------------------------------------------
def patient_targets(state: State, shown: tuple[Shown, ...]) -> list[str]:
    """The patients the shown matches refer to at their type's patient search element (`_include=T:patient`)."""
    out: set[str] = set()
    for s in shown:
        content = state.last_live(s.rtype, s.rid)
        element = SEARCH_PATIENT_ELEMENT.get(s.rtype)
        if content is None or element is None:
            continue
        for value in values_at(content, element):
            if isinstance(value, dict) and (pid := named_patient(value.get("reference", ""))):
                out.add(pid)
    return sorted(out)


def included_read(state: State, caller: Caller, pid: str) -> tuple[bool, Touch]:
    """An included Patient is read as the caller, on its own: shown only if that read is permitted; its entry."""
    read = expect_read(state, caller, "Patient", pid)
    current = state.current("Patient", pid)
    if read.status == 403:
        return False, Touch(None, False)
    whose = pid if current is not None and current.resource is not None else None if current else ""
    return read.status == 200, Touch(whose, read.status == 200)


def expect_include(state: State, caller: Caller, rtype: str, rid: str) -> tuple[Expected, list[str], tuple[Touch, ...]]:
    """`GET {rtype}?_id={rid}&_include={rtype}:patient`: the search as without it, then each referenced Patient
    read on its own. (the search, the Patients included, the included reads' entries)."""
    search = expect_search(state, caller, rtype, [("_id", rid)])
    if search.status != 200:
        return search, [], ()
    included, touches = [], []
    for pid in patient_targets(state, search.shown):
        shown, touch = included_read(state, caller, pid)
        touches.append(touch)
        if shown:
            included.append(pid)
    return search, included, tuple(touches)


def expect_revinclude(state: State, caller: Caller, pid: str, rtype: str) -> tuple[Expected, Expected | None]:
    """`GET Patient?_id={pid}&_revinclude={rtype}:patient`: the Patient search, then (if it showed the Patient)
    a search of `rtype` for `patient=Patient/{pid}` as the caller, decided and logged like any search."""
    search = expect_search(state, caller, "Patient", [("_id", pid)])
    if search.status != 200 or not search.shown:
        return search, None
    return search, expect_search(state, caller, rtype, [("patient", f"Patient/{pid}")])


def expect_has(state: State, caller: Caller, pid: str, rtype: str, code: str) -> tuple[Expected, Expected | None]:
    """`GET Patient?_id={pid}&_has:{rtype}:patient:code={code}`: a search of `rtype` by code as the caller; only the
    matches it may see select Patients. (the outer search, the inner one)."""
    if not scope_allows(caller, "Patient", "search"):
        return _refused(403, f"{caller.name}'s scopes do not allow search on Patient"), None
    inner = expect_search(state, caller, rtype, [("code", code)])
    if inner.status != 200:
        return inner, None
    selected = set(patient_targets(state, inner.shown))
    if pid in selected:
        return expect_search(state, caller, "Patient", [("_id", pid)]), inner
    return Expected(200, (), f"no {rtype} the caller may see refers to Patient/{pid}", listing="search"), inner


def expect_patch(state: State, caller: Caller, rtype: str, rid: str, after: dict[str, Any] | None) -> Expected:
    """PATCH changes the current version: seen first (404 like missing), then decided like an update (403)."""
    if not scope_allows(caller, rtype, "update"):
        return _refused(403, f"{caller.name}'s scopes do not allow update on {rtype}")
    current = state.current(rtype, rid)
    if current is None or current.resource is None:
        return Expected(404, why=f"nothing live at {rtype}/{rid}", log=(Touch(None, False),))
    seen = read_decision(state, caller, rtype, current.resource)
    patients = sorted(compartment(current.resource))
    whose = patients[0] if len(patients) == 1 else None
    if not seen.permitted:
        return Expected(404, why=f"{seen.why}: looks missing", log=(Touch(whose, False),))
    decision = write_decision(state, caller, "update", rtype, current.resource, after)
    if not decision.permitted:
        return Expected(403, why=decision.why, log=(Touch(whose, False),))
    return Expected(200, why=decision.why, log=(Touch(whose, True),), break_glass=decision.break_glass)
