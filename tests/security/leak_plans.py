"""Sub-worlds for the leak properties: hypothesis strategies for plans, and the plan built into a deployment.

A plan names patients (their care organisations, shared MRNs, links), Consents (permit or deny, actor,
classes, signed / unsigned / revoked, or asked for by the actor's own client: a request for access),
clinical resources of many types with a patient reference at one of the type's patient elements (literal or
absolute), and later events (moves to another patient, deletions, an id reused for another patient, a change
of care organisation). Every id is fresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import reference_policy as ref
from consent_world import (
    CLINIC,
    HOSPITAL,
    MRN_SYSTEM,
    OTHER_HOSPITAL,
    UNIVERSITY,
    deny_consent,
    permit_consent,
)
from hypothesis import strategies as st
from leak_world import BASE, LOINC, Deployment, fresh_code, fresh_id, org_resource

ORG_KEYS = ("hospital", "other", "clinic", "university", "fresh")
REQUESTERS = {"hospital": "ehr", "other": "other-ehr", "clinic": "clinic"}  # ORG_KEYS key -> a client that may ask
POOL = {"hospital": HOSPITAL, "other": OTHER_HOSPITAL, "clinic": CLINIC, "university": UNIVERSITY}
SHARED_CODES = ("4548-4", "2339-0")  # consent_world's own Observations carry 4548-4
# (type, the patient element the reference sits at)
CLINICAL_KINDS = (
    ("Observation", "subject"), ("Observation", "performer"), ("Condition", "subject"), ("Condition", "asserter"),
    ("Encounter", "subject"), ("Group", "member.entity"), ("Provenance", "target"), ("AllergyIntolerance", "patient"),
    ("AllergyIntolerance", "recorder"), ("Procedure", "performer.actor"), ("Immunization", "patient"), ("DiagnosticReport", "subject"), ("Task", "for"),
    ("MedicationRequest", "subject"),
)
CONSENT_CLASSES = ((), ("Observation",), ("Condition", "Encounter"), ("Patient",), ("Observation", "Task", "Group"),
                   ("Consent",))
GOOD_FORMS = ("literal", "absolute")
# Forms a write may be refused for (identifier-only and display-only only at subject elements, or when typed
# Patient; the model decides which): `unreferenced-contained` is a literal reference beside a contained
# Patient nothing refers to.
REFUSED_FORMS = ("identifier", "display", "typed-identifier", "contained", "unreferenced-contained", "wrong-case",
                 "whitespace", "conditional", "two-patients")


def now_instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- plans ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatientPlan:
    manager: str | None  # an ORG_KEYS key
    gp: str | None  # "practitioner" or an ORG_KEYS key
    same_mrn_as_previous: bool
    link_previous: bool


@dataclass(frozen=True)
class ConsentPlan:
    patient: int
    kind: str  # permit | deny
    actor: str | None  # an ORG_KEYS key; None: everybody (deny) / the university (permit)
    classes: tuple[str, ...]
    lifecycle: str  # signed | unsigned | revoked | requested (permits; requested: the actor's client asked, rule 5a)


@dataclass(frozen=True)
class ResourcePlan:
    patient: int
    kind: tuple[str, str]
    form: str  # literal | absolute
    shared_code: bool


@dataclass(frozen=True)
class EventPlan:
    kind: str  # move | reuse | update | delete | recare
    resource: int
    patient: int


@dataclass(frozen=True)
class WorldPlan:
    patients: tuple[PatientPlan, ...]
    consents: tuple[ConsentPlan, ...]
    resources: tuple[ResourcePlan, ...]
    events: tuple[EventPlan, ...]


_patients = st.builds(
    PatientPlan,
    manager=st.sampled_from((*ORG_KEYS, None)),
    gp=st.sampled_from((None, None, "practitioner", *ORG_KEYS)),
    same_mrn_as_previous=st.booleans(),
    link_previous=st.booleans(),
)


@st.composite
def world_plans(draw: st.DrawFn, *, max_resources: int = 6, max_events: int = 3) -> WorldPlan:
    n = draw(st.integers(2, 3))
    patients = tuple(draw(st.lists(_patients, min_size=n, max_size=n)))
    consents = tuple(draw(st.lists(st.builds(
        ConsentPlan,
        patient=st.integers(0, n - 1),
        kind=st.sampled_from(("permit", "permit", "deny")),
        actor=st.sampled_from((*ORG_KEYS, None)),
        classes=st.sampled_from(CONSENT_CLASSES),
        lifecycle=st.sampled_from(("signed", "signed", "unsigned", "revoked", "requested")),
    ), max_size=4)))
    resources = tuple(draw(st.lists(st.builds(
        ResourcePlan,
        patient=st.integers(0, n - 1),
        kind=st.sampled_from(CLINICAL_KINDS),
        form=st.sampled_from(GOOD_FORMS),
        shared_code=st.booleans(),
    ), min_size=2, max_size=max_resources)))
    events = tuple(draw(st.lists(st.builds(
        EventPlan,
        kind=st.sampled_from(("move", "move", "reuse", "reuse", "update", "delete", "recare")),
        resource=st.integers(0, len(resources) - 1),
        patient=st.integers(0, n - 1),
    ), max_size=max_events)))
    return WorldPlan(patients, consents, resources, events)


# -- resources ----------------------------------------------------------------------------------------------
def patient_reference(form: str, pid: str, mrn: str) -> dict[str, Any]:
    """A reference to Patient/{pid} in one of the forms the tests use (see REFUSED_FORMS for the bad ones)."""
    forms: dict[str, dict[str, Any]] = {
        "literal": {"reference": f"Patient/{pid}"},
        "absolute": {"reference": f"{BASE}/Patient/{pid}"},
        "identifier": {"identifier": {"system": MRN_SYSTEM, "value": mrn}},
        "typed-identifier": {"type": "Patient", "identifier": {"system": MRN_SYSTEM, "value": mrn}},
        "display": {"display": "Leaktest Patient"},
        "contained": {"reference": "#p"},
        "wrong-case": {"reference": f"patient/{pid}"},
        "whitespace": {"reference": f" Patient/{pid}"},
        "conditional": {"reference": f"Patient?identifier={MRN_SYSTEM}|{mrn}"},
    }
    return forms[form]


def clinical_resource(kind: tuple[str, str], ref: dict[str, Any], code: str, practitioner: str) -> dict[str, Any]:
    """A valid R4 resource of `kind` whose patient element holds `ref` (and no other patient reference)."""
    cc = {"coding": [{"system": LOINC, "code": code}]}
    group = {"reference": f"Group/{fresh_id()}"}  # a subject that is not a patient
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("Observation", "subject"): {"status": "final", "code": cc, "subject": ref, "effectiveDateTime": "2025-01-02"},
        ("Observation", "performer"): {"status": "final", "code": cc, "performer": [ref]},
        ("Condition", "subject"): {"code": cc, "subject": ref},
        ("Condition", "asserter"): {"code": cc, "subject": group, "asserter": ref},
        ("Encounter", "subject"): {"status": "finished", "subject": ref, "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}},
        ("Group", "member.entity"): {"type": "person", "actual": True, "member": [{"entity": ref}]},
        ("Provenance", "target"): {"target": [ref], "recorded": "2025-01-02T10:00:00Z",
                                   "agent": [{"who": {"reference": f"Practitioner/{practitioner}"}}]},
        ("AllergyIntolerance", "patient"): {"patient": ref, "code": cc},
        ("AllergyIntolerance", "recorder"): {"patient": ref, "recorder": ref, "code": cc},
        ("Procedure", "performer.actor"): {"status": "completed", "code": cc, "subject": group,
                                           "performer": [{"actor": ref}]},
        ("Immunization", "patient"): {"status": "completed", "vaccineCode": cc, "patient": ref,
                                      "occurrenceDateTime": "2025-01-02"},
        ("DiagnosticReport", "subject"): {"status": "final", "code": cc, "subject": ref},
        ("Task", "for"): {"status": "requested", "intent": "order", "for": ref},
        ("MedicationRequest", "subject"): {"status": "active", "intent": "order", "subject": ref,
                                           "medicationCodeableConcept": cc},
    }
    return {"resourceType": kind[0], **bodies[kind]}


def with_form(kind: tuple[str, str], form: str, pid: str, other: str, mrn: str, code: str, practitioner: str
              ) -> dict[str, Any]:
    """A resource for Patient/{pid} whose patient reference takes `form`; `two-patients` names `other` too."""
    if form == "two-patients":
        body = clinical_resource(kind, {"reference": f"Patient/{pid}"}, code, practitioner)
        rtype, element = kind
        second = {"reference": f"Patient/{other}"}
        if rtype == "Observation":
            body["performer"] = [*body.get("performer", []), second]
        elif rtype == "Group":
            body["member"].append({"entity": second})
        elif rtype == "Provenance":
            body["target"].append(second)
        elif rtype == "Procedure":
            body["performer"].append({"actor": second})
        elif rtype == "Condition":
            body["asserter" if element == "subject" else "subject"] = second
        else:  # a type with one patient element: the Observation it would have been recorded as
            body = clinical_resource(("Observation", "subject"), {"reference": f"Patient/{pid}"}, code, practitioner)
            body["performer"] = [second]
        return body
    body = clinical_resource(kind, patient_reference("literal" if form == "unreferenced-contained" else form, pid, mrn),
                             code, practitioner)
    if form in ("contained", "unreferenced-contained"):
        body["contained"] = [{"resourceType": "Patient", "id": "p", "identifier": [
            {"system": MRN_SYSTEM, "value": mrn}]}]
    return body


def retarget(resource: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The resource with every reference to Patient/{old} pointing at Patient/{new} instead."""
    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            ref = out.get("reference")
            if isinstance(ref, str) and (ref == f"Patient/{old}" or ref.endswith(f"/Patient/{old}")):
                out["reference"] = ref[: -len(old)] + new
            return out
        return node
    return {k: walk(v) for k, v in resource.items() if k != "meta"}


# -- building ---------------------------------------------------------------------------------------------
@dataclass
class SubWorld:
    """What one example added: ids of everything, in plan order."""

    started: str
    org: str
    practitioner: str
    code: str  # this example's own code
    patients: list[str] = field(default_factory=list)
    clinical: list[tuple[str, str]] = field(default_factory=list)
    consents: list[str] = field(default_factory=list)
    unsigned: list[str] = field(default_factory=list)

    def org_ref(self, key: str | None) -> str | None:
        return None if key is None else POOL.get(key, f"Organization/{self.org}")

    @property
    def keys(self) -> list[tuple[str, str]]:
        return [("Organization", self.org), ("Practitioner", self.practitioner),
                *[("Patient", p) for p in self.patients], *self.clinical, *[("Consent", c) for c in self.consents]]


def build(dep: Deployment, plan: WorldPlan) -> SubWorld:
    """Write the plan through the API: the development token for records, each patient's session for consents."""
    dep.keep_index_fresh()
    sub = SubWorld(started=now_instant(), org=fresh_id(), practitioner=fresh_id(), code=fresh_code())
    dep.dev_put(org_resource(sub.org))
    dep.dev_put({"resourceType": "Practitioner", "id": sub.practitioner, "name": [{"family": "Leaktest"}],
                 "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.6", "value": sub.practitioner[:10]}]})
    mrn = ""
    for i, p in enumerate(plan.patients):
        mrn = mrn if p.same_mrn_as_previous and i else f"MRN-{fresh_id()[:13]}"
        body: dict[str, Any] = {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
                                "name": [{"family": "Leaktest", "given": [f"P{i}"]}], "birthDate": "1980-01-01"}
        if p.manager:
            body["managingOrganization"] = {"reference": sub.org_ref(p.manager)}
        if p.gp:
            body["generalPractitioner"] = [{"reference": f"Practitioner/{sub.practitioner}" if p.gp == "practitioner"
                                            else sub.org_ref(p.gp)}]
        if p.link_previous and i:
            body["link"] = [{"other": {"reference": f"Patient/{sub.patients[-1]}"}, "type": "seealso"}]
        sub.patients.append(dep.add_patient(body))
    signed: list[tuple[str, str, str]] = []  # (patient, consent, lifecycle)
    for c in plan.consents:
        pid = sub.patients[c.patient]
        if c.kind == "deny":
            actors = () if c.actor is None else (sub.org_ref(c.actor),)
            cid = dep.dev_create(deny_consent(pid, *actors, classes=c.classes))  # type: ignore[arg-type]
        elif c.lifecycle == "requested":
            # Rule 5a: an organisation's client asks for access for itself (the clinic when the plan's actor has
            # no client here); its organisation reads it from now on.
            asker = REQUESTERS.get(c.actor or "", "clinic")
            org = POOL[{"ehr": "hospital", "other-ehr": "other", "clinic": "clinic"}[asker]]
            end = (datetime.now(UTC).date() + timedelta(days=90)).isoformat()
            reply = dep.call(asker, "POST", "/fhir/Consent", permit_consent(
                pid, org, classes=c.classes, status="proposed", period_end=end))  # type: ignore[arg-type]
            assert reply.status == 201, reply.summary()
            cid = reply.body["id"]
            dep.refresh("Consent", cid)
            dep.state.requests[cid] = org
            sub.unsigned.append(cid)  # the patient may approve it ($sign probes)
        else:
            actor = sub.org_ref(c.actor or "university")
            reply = dep.call(dep.patient_caller(pid), "POST", "/fhir/Consent", permit_consent(
                pid, actor, classes=c.classes))  # type: ignore[arg-type]
            assert reply.status == 201, reply.summary()
            cid = reply.body["id"]
            dep.refresh("Consent", cid)
            if c.lifecycle == "unsigned":
                sub.unsigned.append(cid)
            else:
                dep.sign(pid, cid)
                signed.append((pid, cid, c.lifecycle))
        sub.consents.append(cid)
    if signed:
        dep.sync()  # mined and indexed: the grants are live
        for pid, cid, lifecycle in signed:
            dep.state.grants[cid] = "live"
            if lifecycle == "revoked":
                dep.revoke(pid, cid)  # off-chain at once; the chain follows at the next poll
    for r in plan.resources:
        pid = sub.patients[r.patient]
        code = SHARED_CODES[r.patient % 2] if r.shared_code else sub.code
        body = clinical_resource(r.kind, patient_reference(r.form, pid, ""), code, sub.practitioner)
        sub.clinical.append((body["resourceType"], dep.dev_create(body)))
    for e in plan.events:
        apply_event(dep, sub, e)
    return sub


def apply_event(dep: Deployment, sub: SubWorld, event: EventPlan) -> None:
    rtype, rid = sub.clinical[event.resource]
    target = sub.patients[event.patient]
    current = dep.state.current(rtype, rid)
    if event.kind == "recare":
        patient = dep.state.current("Patient", target)
        assert patient is not None and patient.resource is not None
        body = {k: v for k, v in patient.resource.items() if k != "meta"}
        body["managingOrganization"] = {"reference": POOL[("hospital", "other", "clinic")[event.resource % 3]]}
        dep.dev_put(body)
        return
    if current is None:
        return
    if event.kind == "delete":
        if current.resource is not None:
            dep.dev_delete(rtype, rid)
        return
    content = dep.state.last_live(rtype, rid)
    assert content is not None
    old = next(iter(sorted(ref.compartment(content))), None)
    if event.kind == "update":
        if current.resource is not None:
            dep.dev_put({k: v for k, v in content.items() if k != "meta"})
        return
    moved = retarget(content, old, target) if old else content
    if event.kind == "reuse" and current.resource is not None:
        dep.dev_delete(rtype, rid)  # the id of a deleted resource, reused for another patient
    dep.dev_put({**moved, "id": rid})

