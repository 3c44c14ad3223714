"""A reference model of the consent boundary: which caller may see or change which version of what.

Written from the policy (docs/consent-semantics.md and the rules listed below), not from the code: it
imports nothing of `healthledger` or `fhir_adapters`, so a mistake there cannot hide here. Plain
functions over a few dicts; `test_leak_properties.py` holds the real HTTP API to it.

The rules, in the order they are applied:
1. Scopes first: a token whose SMART scopes do not allow the interaction on the type -> 403.
2. A resource's patient is the Patient compartment: a Patient is its own; any other resource is in the
   compartment of every `Patient/{id}` its references name (literal or absolute URL). A write whose
   patient element is ambiguous (identifier-only, display-only, contained, malformed, conditional, or two
   different patients) -> 400 naming the element. No patient: the scopes decide reads; writes need a
   writer role, and patients never write outside their own compartment.
3. A patient reads all of their own data and writes only their own Consents; nothing of anyone else.
4. A clinician breaking the glass (ETREAT with a reason) is permitted, flagged; ETREAT from another role
   is denied.
5. An active deny Consent that applies -> denied. Else a signed, mined, unrevoked permit naming the
   caller's organisation -> permitted. Else the patient's care organisation (managingOrganization,
   generalPractitioner), role clinician or system, purpose TREAT -> permitted. Else denied.
6. Denied reads look like missing ones; searches and histories leave denied versions out of pages and
   totals; every version is decided on its own; deletions are shown to the service only.
7. Conditional create/update/delete see only the caller's visible matches.
8. AuditEvents: a patient sees their own entries only; auditors and the service see all; any other
   client sees none.
9. The access log: one entry per instance interaction; a search or type history has one per disclosed
   (returned or counted) resource version plus one per patient whose matches were withheld, or one if
   nothing matched at all.

Where the policy is silent, the stricter reading:
- a deletion in a history is shown to the service only (deleted resources look missing to everyone else);
- a resource counted in a total (`_summary=count`, or past the page) is disclosed: it gets its log entry;
- reusing the id of a deleted resource takes over its history: it is a write on the deleted content too;
- `$sign` is an update of the Consent (seen first, then decided like any write);
- a delete of nothing live is a no-op, 204 to anyone whose scopes allow delete (as for a missing id);
- a consult from a caller with no standing with the patient answers as for an unknown patient, whatever
  actor it names; de-identified answers carry no real id of the resource or of its patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TREAT, ETREAT = "TREAT", "ETREAT"
TREATING_ROLES = frozenset({"clinician", "system"})  # also the roles that may write (policy writer_roles)
BREAK_GLASS_ROLES = frozenset({"clinician"})
READ_ACTIONS = frozenset({"read", "vread", "history", "search"})
WRITE_ACTIONS = frozenset({"create", "update", "delete"})
PERMISSION = {"create": "c", "read": "r", "vread": "r", "history": "r", "update": "u", "delete": "d", "search": "s"}
PATIENT_WRITABLE_TYPES = frozenset({"Consent"})

# Where each type names the patient it is about: the R4 Patient CompartmentDefinition's parameters
# (http://hl7.org/fhir/R4/compartmentdefinition-patient.html) as element paths, and Task.for.
PATIENT_ELEMENTS: dict[str, tuple[str, ...]] = {
    "AllergyIntolerance": ("patient", "recorder", "asserter"),
    "Condition": ("subject", "asserter"),
    "Consent": ("patient",),
    "DiagnosticReport": ("subject",),
    "Encounter": ("subject",),
    "Group": ("member.entity",),
    "Immunization": ("patient",),
    "MedicationRequest": ("subject",),
    "Observation": ("subject", "performer"),
    "Procedure": ("subject", "performer.actor"),
    "Provenance": ("target",),
    "Task": ("for",),
}
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
    """Every `reference` string in a resource (contained resources are not the resource's own)."""
    if isinstance(node, list):
        for item in node:
            yield from references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif key != "contained":
                yield from references(value)


def compartment(resource: dict[str, Any]) -> frozenset[str]:
    """The patients the resource is about: a Patient itself (links do not move it); else every patient named."""
    if resource["resourceType"] == "Patient":
        return frozenset({resource["id"]}) if resource.get("id") else frozenset()
    return frozenset(p for p in map(named_patient, references(resource)) if p is not None)


def refused_element(resource: dict[str, Any], *, in_transaction: bool = False) -> str | None:
    """The patient element whose reference is ambiguous (the write is refused with 400), or None."""
    rtype = resource["resourceType"]
    for path in PATIENT_ELEMENTS.get(rtype, ()):
        for value in values_at(resource, path):
            reference = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(reference, str):
                return f"{rtype}.{path}"  # identifier-only or display-only: whose is it?
            if reference.startswith("#") or (reference.startswith("Patient?") and not in_transaction):
                return f"{rtype}.{path}"  # contained, or a conditional reference left unresolved
            if "patient/" in reference.lower() and named_patient(reference) is None:
                return f"{rtype}.{path}"  # wrong case, whitespace, a malformed id
    if len(compartment(resource)) > 1:
        return f"{rtype}.{PATIENT_ELEMENTS.get(rtype, ('?',))[0]}"  # two different patients
    return None


# -- the cumulative state of the deployment ---------------------------------------------------------------
@dataclass
class Version:
    number: int
    resource: dict[str, Any] | None  # None: this version is a deletion
    last_updated: str  # the FHIR instant the server stamped (UTC, milliseconds)


@dataclass
class State:
    """Every version of every resource, and each Consent's grant on the chain ("live" or "revoked")."""

    versions: dict[tuple[str, str], list[Version]] = field(default_factory=dict)
    grants: dict[str, str] = field(default_factory=dict)

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
    patients = (compartment(before) if before else frozenset()) | (compartment(after) if after else frozenset())
    if not patients:
        if caller.role == "patient":
            return Decision(False, "patients never write outside their own compartment", status=403)
        if caller.role in TREATING_ROLES:
            return Decision(True, f"no patient compartment: {caller.role} may write")
        return Decision(False, f"no patient compartment: a {caller.role} may not write", status=403)
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


@dataclass(frozen=True)
class Expected:
    status: int
    shown: tuple[Shown, ...] = ()  # read/vread: the one version; history/search: every visible match
    why: str = ""
    log_entries: int = 1
    withheld_patients: frozenset[str] = frozenset()
    break_glass: bool = False


def _shown(state: State, rtype: str, rid: str, version: Version) -> Shown:
    content = state.content(rtype, rid, version)
    return Shown(rtype, rid, version.number, version.resource is None, compartment(content) if content else frozenset())


def expect_read(state: State, caller: Caller, rtype: str, rid: str, number: int | None = None) -> Expected:
    """read (number None) or vread: 403 for scopes, 404 for missing, deleted or denied (410: the service)."""
    action = "read" if number is None else "vread"
    if not scope_allows(caller, rtype, action):
        return Expected(403, why=f"{caller.name}'s scopes do not allow {action} on {rtype}")
    history = state.versions.get((rtype, rid), [])
    version = history[-1] if history and number is None else next((v for v in history if v.number == number), None)
    if version is None:
        return Expected(404, why=f"{rtype}/{rid}{'' if number is None else f' version {number}'} does not exist")
    if version.resource is None:
        return Expected(410 if caller.unrestricted else 404, why="a deletion looks missing (410 to the service)")
    decision = read_decision(state, caller, rtype, version.resource)
    if not decision.permitted:
        return Expected(404, why=decision.why)
    return Expected(200, (_shown(state, rtype, rid, version),), decision.why, break_glass=decision.break_glass)


def version_decision(state: State, caller: Caller, rtype: str, rid: str, version: Version) -> Decision:
    """One version, decided on its own. A deletion is shown to the service only: deleted resources look
    missing to everyone else (docs/consent-semantics.md), so a history never says that one was deleted
    (the stricter reading; the policy is silent on deletions in histories)."""
    if version.resource is None and not caller.unrestricted:
        return Decision(False, "a deletion is shown to the service only")
    return read_decision(state, caller, rtype, state.content(rtype, rid, version))


def visible_versions(state: State, caller: Caller, rtype: str, rid: str) -> list[tuple[Version, Decision]]:
    """Each version of one resource with its own decision."""
    return [(v, version_decision(state, caller, rtype, rid, v)) for v in state.versions.get((rtype, rid), [])]


def expect_history(state: State, caller: Caller, rtype: str, rid: str) -> Expected:
    """Instance history: the visible versions; 404 like a missing resource when none is visible."""
    if not scope_allows(caller, rtype, "history"):
        return Expected(403, why=f"{caller.name}'s scopes do not allow history on {rtype}")
    decided = visible_versions(state, caller, rtype, rid)
    shown = tuple(_shown(state, rtype, rid, v) for v, d in decided if d.permitted)
    if not shown:
        why = decided[-1][1].why if decided else f"{rtype}/{rid} does not exist"
        return Expected(404, why=why)
    why = "; ".join(f"v{v.number} {'shown' if d.permitted else 'withheld'}: {d.why}" for v, d in reversed(decided))
    return Expected(200, shown, why)


def _search_log(shown: list[Shown], withheld: set[str]) -> int:
    return len(shown) + len(withheld) or 1


def expect_type_history(state: State, caller: Caller, rtype: str, since: str | None = None) -> Expected:
    if not scope_allows(caller, rtype, "history"):
        return Expected(403, why=f"{caller.name}'s scopes do not allow history on {rtype}")
    shown: list[Shown] = []
    withheld: set[str] = set()
    for (t, rid), history in state.versions.items():
        if t != rtype:
            continue
        for version in history:
            if since is not None and version.last_updated < since:
                continue
            if version_decision(state, caller, rtype, rid, version).permitted:
                shown.append(_shown(state, rtype, rid, version))
            elif version.resource is not None:
                withheld |= compartment(version.resource)
    return Expected(200, tuple(shown), f"{len(shown)} visible versions", _search_log(shown, withheld),
                    frozenset(withheld))


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
        return Expected(403, why=f"{caller.name}'s scopes do not allow search on {rtype}")
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
    return Expected(200, tuple(shown), f"{len(shown)} visible matches", _search_log(shown, withheld),
                    frozenset(withheld))


def expect_write(
    state: State, caller: Caller, action: str, rtype: str, rid: str | None, after: dict[str, Any] | None,
    *, in_transaction: bool = False,
) -> tuple[Expected, Decision]:
    """create (rid None), update (update-as-create too) or delete (after None) by the caller.

    An update or delete is decided on what it replaces as well; reusing the id of a deleted resource
    takes over its history, so it is decided on the deleted content too (the stricter reading).
    """
    current = state.current(rtype, rid) if rid else None
    before = state.last_live(rtype, rid) if rid else None
    if action == "delete" and (current is None or current.resource is None):
        if not scope_allows(caller, rtype, "delete"):
            return Expected(403, why=f"{caller.name}'s scopes do not allow delete on {rtype}"), Decision(False, "scope")
        return Expected(204, why="nothing live by that id: a no-op, as for a missing id"), Decision(True, "no-op")
    decision = write_decision(state, caller, action, rtype, before, after, in_transaction=in_transaction)
    if not decision.permitted:
        return Expected(decision.status or 403, why=decision.why), decision
    if action == "delete":
        return Expected(204, why=decision.why, break_glass=decision.break_glass), decision
    live = current is not None and current.resource is not None
    status = 200 if action == "update" and live else 201
    return Expected(status, why=decision.why, break_glass=decision.break_glass), decision


def expect_conditional_match(
    state: State, caller: Caller, rtype: str, params: list[tuple[str, str]]
) -> tuple[list[str], frozenset[str]]:
    """Ids of the current matches the caller may see, and the patients whose matches are withheld from it."""
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


# -- the access log as AuditEvents, and the consent consult ----------------------------------------------
def audit_view(caller: Caller) -> str:
    """What of the access log a caller sees: "all" (auditors, the service), "own" (a patient), "none"."""
    if caller.unrestricted or caller.role == "auditor":
        return "all"
    if caller.role == "patient":
        return "own"
    return "none"


def related(state: State, caller: Caller, patient: str) -> bool:
    """Whether the caller has any standing with the patient: care organisation, or named by a consent."""
    if caller.unrestricted or caller.patient_id == patient:
        return True
    if caller.organization and caller.organization in state.care_organizations(patient):
        return True
    return any(caller.organization in _provision(c)[1] for _, c in state.consents(patient))


def expect_sign(state: State, caller: Caller, cid: str) -> Expected:
    """`$sign` changes the Consent (a write): seen first (404 like missing), then decided like an update."""
    if not scope_allows(caller, "Consent", "update"):
        return Expected(403, why=f"{caller.name}'s scopes do not allow update on Consent")
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
