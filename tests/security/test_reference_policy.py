"""The reference policy on small hand-made cases: each rule once, the expected answers written from the policy.

The leak properties trust `reference_policy` to be right; these cases are what makes that trust cheap to check
(and they run in milliseconds, without the app).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
import reference_policy as ref

HOSPITAL, CLINIC, UNIVERSITY = "Organization/hospital", "Organization/clinic", "Organization/university"
EHR = ref.Caller("ehr", "system", HOSPITAL, scopes=("system/*.cruds",))
CLINICIAN = ref.Caller("clinic", "clinician", CLINIC, scopes=("system/*.cruds",))
BREAK_GLASS = ref.Caller("clinic-bg", "clinician", CLINIC, "ETREAT", scopes=("system/*.cruds",),
                         break_glass_reason="unconscious")
SYSTEM_ETREAT = ref.Caller("ehr-bg", "system", HOSPITAL, "ETREAT", scopes=("system/*.cruds",), break_glass_reason="x")
RESEARCH = ref.Caller("research", "researcher", UNIVERSITY, "HRESCH", scopes=("system/*.rs",))
NARROW = ref.Caller("narrow", "system", HOSPITAL, scopes=("system/Patient.rs",))
ANN = ref.Caller("ann", "patient", patient_id="ann", scopes=("patient/*.cruds",))
BOB = ref.Caller("bob", "patient", patient_id="bob", scopes=("patient/*.cruds",))
DEV = ref.Caller("dev", "internal", scopes=None)


def world(*consents: dict[str, Any], grants: dict[str, str] | None = None) -> ref.State:
    """Ann, cared for by the hospital; one Observation of hers (v1) moved to Bob (v2); her consents."""
    state = ref.State(grants=dict(grants or {}))
    state.record("Patient", "ann", 1, {"resourceType": "Patient", "id": "ann",
                                       "managingOrganization": {"reference": HOSPITAL},
                                       "link": [{"other": {"reference": "Patient/bob"}}]}, "2026-01-01T00:00:00.000Z")
    state.record("Patient", "bob", 1, {"resourceType": "Patient", "id": "bob"}, "2026-01-01T00:00:00.000Z")
    state.record("Observation", "o", 1, obs("Patient/ann"), "2026-01-02T00:00:00.000Z")
    state.record("Observation", "o", 2, obs("Patient/bob"), "2026-01-03T00:00:00.000Z")
    for i, consent in enumerate(consents):
        state.record("Consent", f"c{i}", 1, {**consent, "id": f"c{i}"}, "2026-01-01T00:00:00.000Z")
    return state


def obs(reference: str, element: str = "subject") -> dict[str, Any]:
    value: Any = {"reference": reference}
    return {"resourceType": "Observation", "id": "o", element: [value] if element == "performer" else value}


def consent(kind: str, *actors: str, classes: tuple[str, ...] = ()) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": kind}
    if actors:  # (R4 JSON has no empty array)
        provision["actor"] = [{"reference": {"reference": a}} for a in actors]
    if classes:
        provision["class"] = [{"code": c} for c in classes]
    return {"resourceType": "Consent", "status": "active", "patient": {"reference": "Patient/ann"},
            "provision": provision}


def can_read(state: ref.State, caller: ref.Caller, resource: dict[str, Any]) -> bool:
    return ref.read_decision(state, caller, resource["resourceType"], resource).permitted


def test_care_organisation_patient_herself_and_nobody_else() -> None:
    state, ann_obs = world(), obs("Patient/ann")
    assert can_read(state, EHR, ann_obs)  # the hospital cares for Ann, TREAT
    assert can_read(state, ANN, ann_obs)
    assert not can_read(state, BOB, ann_obs)
    assert not can_read(state, CLINICIAN, ann_obs)  # no consent names the clinic
    assert not can_read(state, RESEARCH, ann_obs)  # the university's researcher is no treating role
    assert can_read(state, BREAK_GLASS, ann_obs)
    assert not can_read(state, SYSTEM_ETREAT, ann_obs)  # only clinicians break the glass
    assert ref.decide(state, BREAK_GLASS, "read", "Observation", "ann").break_glass


def test_only_a_signed_mined_unrevoked_permit_counts_and_deny_wins() -> None:
    ann_obs = obs("Patient/ann")
    assert not can_read(world(consent("permit", CLINIC)), CLINICIAN, ann_obs)  # unsigned: proposed
    assert can_read(world(consent("permit", CLINIC), grants={"c0": "live"}), CLINICIAN, ann_obs)
    assert not can_read(world(consent("permit", CLINIC), grants={"c0": "revoked"}), CLINICIAN, ann_obs)
    assert not can_read(world(consent("permit", CLINIC, classes=("Condition",)), grants={"c0": "live"}), CLINICIAN,
                        ann_obs)
    denied = world(consent("permit", CLINIC), consent("deny"), grants={"c0": "live"})
    assert not can_read(denied, CLINICIAN, ann_obs)
    assert not can_read(denied, EHR, ann_obs)  # a deny naming nobody binds the care organisation too
    assert can_read(denied, ANN, ann_obs)  # ... but not the patient
    assert can_read(denied, BREAK_GLASS, ann_obs)
    assert can_read(world(consent("deny", CLINIC)), EHR, ann_obs)  # a deny of others only


def test_compartment_every_reference_and_a_patient_is_its_own() -> None:
    assert ref.compartment(obs("Patient/ann", "performer")) == {"ann"}
    assert ref.compartment(obs("http://localhost/fhir/Patient/ann/_history/2")) == {"ann"}
    assert ref.compartment({"resourceType": "Task", "for": {"reference": "Patient/ann"}}) == {"ann"}
    assert ref.compartment({"resourceType": "Group", "member": [{"entity": {"reference": "Patient/ann"}}]}) == {"ann"}
    assert ref.compartment({"resourceType": "Patient", "id": "ann", "link": [{"other": {"reference": "Patient/bob"}}]}
                           ) == {"ann"}
    assert ref.compartment({"resourceType": "Organization", "id": "h"}) == frozenset()
    assert ref.compartment(obs("patient/ann")) == frozenset()  # malformed: names nobody (and is refused)
    assert ref.compartment({**obs("Group/g"), "contained": [  # contained resources and extensions count
        {"resourceType": "Provenance", "target": [{"reference": "Patient/ann"}]}]}) == {"ann"}
    assert ref.compartment({**obs("Group/g"), "extension": [
        {"url": "x", "valueReference": {"reference": "Patient/bob"}}]}) == {"bob"}


MRN = {"system": "urn:mrn", "value": "1"}


@pytest.mark.parametrize(("element", "value", "refused"), [
    # subject elements: whom the record is about must resolve to one stored patient, or to no patient at all
    ("subject", {"reference": "Patient/ann"}, False),
    ("subject", {"reference": "https://x.example/fhir/Patient/ann"}, False),
    ("subject", {"reference": "Group/g"}, False),  # a Group, Device, Location... is no patient
    ("subject", {"identifier": MRN}, True),
    ("subject", {"display": "Ann"}, True),
    ("subject", {"type": "Group", "identifier": MRN}, False),  # typed as something else than a Patient
    ("subject", {"type": "Patient", "identifier": MRN}, True),
    ("subject", {"reference": "#g"}, True),  # contained, untyped
    ("subject", {"reference": "patient/ann"}, True),
    ("subject", {"reference": " Patient/ann"}, True),
    ("subject", {"reference": "Patient?identifier=urn:mrn|1"}, True),
    ("subject", {"reference": "urn:uuid:4f1c7b66-36a5-4e3c-a1a6-0f8b4b6b8d11"}, True),
    ("subject", {"reference": "ann"}, True),  # a bare id
    # participant elements: a practitioner known by identifier is fine, a patient is not
    ("performer", {"identifier": MRN}, False),
    ("performer", {"display": "Dr Who"}, False),
    ("performer", {"type": "Practitioner", "identifier": MRN}, False),
    ("performer", {"type": "Patient", "identifier": MRN}, True),
    ("performer", {"type": "Patient", "display": "Ann"}, True),
    ("performer", {"reference": "patient/ann"}, True),
    ("performer", {"reference": "Patient?identifier=urn:mrn|1"}, True),
])
def test_ambiguous_patient_references_are_refused(element: str, value: dict[str, Any], refused: bool) -> None:
    resource = {"resourceType": "Observation", "status": "final", element: [value] if element == "performer" else value}
    if value.get("reference") == "#g":
        resource["contained"] = [{"resourceType": "Group", "id": "g", "type": "person", "actual": False}]
    assert ref.refused_element(resource) == (f"Observation.{element}" if refused else None)


def test_participants_and_subjects_by_element_name() -> None:
    assert ref.element_kind("performer.actor") == "participant"  # Procedure.performer.actor
    assert ref.element_kind("member.entity") == "subject"
    assert ref.element_kind("provision.actor.reference") == "other"  # Consent: the Reference inside the actor
    procedure = {"resourceType": "Procedure", "subject": {"reference": "Group/g"},
                 "performer": [{"actor": {"identifier": MRN}}]}
    assert ref.refused_element(procedure) is None
    assert ref.refused_element({**procedure, "performer": [{"actor": {"identifier": MRN, "type": "Patient"}}]}
                               ) == "Procedure.performer.actor"
    group = {"resourceType": "Group", "member": [{"entity": {"identifier": MRN}}]}
    assert ref.refused_element(group) == "Group.member.entity"


def test_a_contained_patient_is_always_refused_naming_what_refers_to_it() -> None:
    contained = [{"resourceType": "Patient", "id": "p", "identifier": [MRN]}]
    at_performer = {"resourceType": "Observation", "subject": {"reference": "Group/g"},
                    "performer": [{"reference": "#p"}], "contained": contained}
    assert ref.refused_element(at_performer) == "Observation.performer"
    assert ref.refused_element({**at_performer, "performer": [{"reference": "#p", "type": "Practitioner"}]}
                               ) == "Observation.performer"  # a Patient whatever the reference says
    nobody_refers = {**obs("Patient/ann"), "contained": [{"resourceType": "Practitioner", "id": "x"}, *contained]}
    assert ref.refused_element(nobody_refers) == "Observation.contained[1]"
    practitioner = {**at_performer, "contained": [{"resourceType": "Practitioner", "id": "p"}]}
    assert ref.refused_element(practitioner) is None


def test_two_patients_are_refused_naming_the_first_and_a_transaction_may_resolve_a_conditional_reference() -> None:
    both = {**obs("Patient/ann"), "performer": [{"reference": "Patient/bob"}]}
    assert ref.refused_element(both) == "Observation.subject"
    performer_first = {"resourceType": "Observation", "performer": [{"reference": "Patient/bob"}],
                       "subject": {"reference": "Patient/ann"}}
    assert ref.refused_element(performer_first) == "Observation.performer"  # document order
    group = {"resourceType": "Group", "member": [{"entity": {"reference": "Patient/ann"}},
                                                 {"entity": {"reference": "Patient/bob"}}]}
    assert ref.refused_element(group) == "Group.member.entity"
    assert ref.refused_element({**obs("Patient/ann"), "performer": [{"reference": "Patient/ann"}]}) is None
    linked = {"resourceType": "Patient", "id": "ann", "link": [{"other": {"reference": "Patient/bob"}}]}
    assert ref.refused_element(linked) is None  # a Patient's links do not make it someone else's
    conditional = obs("Patient?identifier=urn:mrn|1")
    assert ref.refused_element(conditional) is not None
    assert ref.refused_element(conditional, in_transaction=True) is None


def test_every_version_is_decided_on_its_own() -> None:
    state = world()
    # v1 is Ann's (the hospital cares for her), v2 Bob's (nobody does): the hospital sees v1 only.
    assert ref.expect_read(state, EHR, "Observation", "o").status == 404
    assert ref.expect_read(state, EHR, "Observation", "o", 1).status == 200
    history = ref.expect_history(state, EHR, "Observation", "o")
    assert history.status == 200 and [s.number for s in history.shown] == [1]
    assert [s.number for s in ref.expect_history(state, BOB, "Observation", "o").shown] == [2]
    assert ref.expect_history(state, CLINICIAN, "Observation", "o").status == 404  # like a missing id
    assert ref.expect_read(state, NARROW, "Observation", "o").status == 403  # scopes first


def test_a_deletion_is_shown_with_the_version_it_deleted_in_instance_histories_only() -> None:
    state = world()
    state.record("Observation", "o", 3, None, "2026-01-04T00:00:00.000Z")  # deletes v2, Bob's
    assert [s.number for s in ref.expect_history(state, BOB, "Observation", "o").shown] == [2, 3]
    assert [s.number for s in ref.expect_history(state, EHR, "Observation", "o").shown] == [1]
    assert [s.number for s in ref.expect_history(state, DEV, "Observation", "o").shown] == [1, 2, 3]
    assert [s.number for s in ref.expect_type_history(state, BOB, "Observation").shown] == [2]  # no deletions
    assert [s.number for s in ref.expect_type_history(state, DEV, "Observation").shown] == [1, 2, 3]
    assert ref.expect_read(state, DEV, "Observation", "o").status == 410
    # A read of the deletion is decided on v2, Bob's: Gone to him, the 404 of a missing read to the hospital.
    assert ref.expect_read(state, BOB, "Observation", "o").status == 410
    assert ref.expect_read(state, BOB, "Observation", "o", 3).status == 410
    assert ref.expect_read(state, EHR, "Observation", "o").status == 404
    state.record("Observation", "o", 4, obs("Patient/ann"), "2026-01-05T00:00:00.000Z")  # the id reused for Ann
    state.record("Observation", "o", 5, None, "2026-01-06T00:00:00.000Z")
    assert [s.number for s in ref.expect_history(state, EHR, "Observation", "o").shown] == [1, 4, 5]
    assert [s.number for s in ref.expect_history(state, ANN, "Observation", "o").shown] == [1, 4, 5]
    assert [s.number for s in ref.expect_type_history(state, EHR, "Observation").shown] == [1, 4]


def touches(expected: ref.Expected, on_page: set[tuple[str, str, int]] | None = None) -> list[tuple[Any, Any]]:
    return sorted((t.patient, t.permitted) for t in ref.listing_log(expected, on_page))


def test_the_log_has_one_entry_per_patient_touched() -> None:
    state = world()
    # An instance history whose versions span two patients: one entry per (resource, patient) shown, one per
    # patient withheld.
    assert touches(ref.expect_history(state, EHR, "Observation", "o")) == [("ann", True), ("bob", False)]
    assert touches(ref.expect_history(state, DEV, "Observation", "o")) == [("ann", True), ("bob", True)]
    assert sorted((t.patient, t.permitted) for t in ref.expect_history(state, CLINICIAN, "Observation", "o").log
                  ) == [("ann", False), ("bob", False)]
    assert ref.expect_history(state, EHR, "Observation", "nothing").log_entries == 1
    # A type history: one per resource and patient disclosed, however many of its versions.
    assert touches(ref.expect_type_history(state, DEV, "Observation")) == [("ann", True), ("bob", True)]
    state.record("Observation", "o", 3, obs("Patient/bob"), "2026-01-04T00:00:00.000Z")
    assert ref.expect_type_history(state, DEV, "Observation").log_entries == 2  # v2 and v3: Bob's, counted once
    assert touches(ref.expect_type_history(state, EHR, "Observation")) == [("ann", True), ("bob", False)]
    # Searches: one per resource on the page, one per patient withheld, one per patient only counted.
    state.record("Observation", "o2", 1, {**obs("Patient/ann"), "id": "o2"}, "2026-01-03T00:00:00.000Z")
    state.record("Observation", "o3", 1, {**obs("Patient/ann"), "id": "o3"}, "2026-01-03T00:00:00.000Z")
    found = ref.expect_search(state, EHR, "Observation", [("_lastUpdated", "ge2026-01-01T00:00:00.000Z")])
    assert [s.rid for s in found.shown] == ["o2", "o3"] and found.withheld_patients == {"bob"}
    assert touches(found) == [("ann", True), ("ann", True), ("bob", False)]
    assert touches(found, set()) == [("ann", None), ("bob", False)]  # _summary=count, _count=0
    assert touches(found, {("Observation", "o2", 1)}) == [("ann", True), ("bob", False)]  # ann covered
    nothing = ref.expect_search(state, EHR, "Patient", [("_id", "nobody")])
    assert nothing.shown == () and nothing.log_entries == 1
    assert ref.expect_search(state, NARROW, "Observation", []).log_entries == 1  # refused: one entry


def test_scopes_first_and_searches_count_what_they_disclose() -> None:
    state = world()
    assert ref.expect_read(state, NARROW, "Observation", "o").status == 403
    assert ref.expect_read(state, NARROW, "Patient", "ann").status == 200
    found = ref.expect_search(state, EHR, "Patient", [("_lastUpdated", "ge2026-01-01T00:00:00.000Z")])
    assert [s.rid for s in found.shown] == ["ann"] and found.withheld_patients == {"bob"}
    assert found.log_entries == 2  # one disclosed, one patient withheld
    assert ref.expect_transaction_scopes(NARROW, [("search", "Patient"), ("create", "Observation")]) is not None
    assert ref.expect_transaction_scopes(EHR, [("search", "Patient"), ("create", "Observation")]) is None


def test_writes() -> None:
    state = world()
    new = {"resourceType": "Observation", "subject": {"reference": "Patient/ann"}}
    assert ref.expect_write(state, EHR, "create", "Observation", None, new)[0].status == 201
    assert ref.expect_write(state, ANN, "create", "Observation", None, new)[0].status == 403  # patients: Consents only
    assert ref.expect_write(state, ANN, "create", "Consent", None, consent("permit", CLINIC))[0].status == 201
    assert ref.expect_write(state, ANN, "create", "Organization", None, {"resourceType": "Organization"})[0].status == 403
    assert ref.expect_write(state, EHR, "create", "Organization", None, {"resourceType": "Organization"})[0].status == 201
    # A new Patient: created for the organisation it names as caring for it, by POST and by PUT alike.
    for rid in (None, "new"):
        action = "create" if rid is None else "update"
        body = {"resourceType": "Patient", **({"id": rid} if rid else {})}
        named = {**body, "managingOrganization": {"reference": EHR.organization}}
        assert ref.expect_write(state, EHR, action, "Patient", rid, body)[0].status == 403
        assert ref.expect_write(state, EHR, action, "Patient", rid, named)[0].status == 201
        assert ref.expect_write(state, CLINICIAN, action, "Patient", rid, named)[0].status == 403
    assert ref.expect_write(state, RESEARCH, "create", "Observation", None, new)[0].status == 403  # scopes
    ambiguous = {**new, "subject": {"display": "Ann"}}
    assert ref.expect_write(state, EHR, "create", "Observation", None, ambiguous)[0].status == 400
    assert ref.expect_write(state, RESEARCH, "create", "Observation", None, ambiguous)[0].status == 403  # scopes first
    by_npi = {"resourceType": "Observation", "performer": [{"identifier": MRN}]}
    assert ref.expect_write(state, EHR, "create", "Observation", None, by_npi)[0].status == 201  # no patient


def test_updates_across_two_patients_are_decided_and_logged_on_each() -> None:
    state = world()
    moved_back = {**obs("Patient/ann"), "id": "o"}
    refused, _ = ref.expect_write(state, EHR, "update", "Observation", "o", moved_back)  # v2 is Bob's
    assert refused.status == 403
    assert sorted((t.patient, t.permitted) for t in refused.log) == [("ann", True), ("bob", False)]
    glass, _ = ref.expect_write(state, BREAK_GLASS, "update", "Observation", "o", moved_back)
    assert glass.status == 200 and [t.permitted for t in glass.log] == [True, True]
    same, _ = ref.expect_write(state, ANN, "update", "Consent", None, {**consent("permit", CLINIC), "id": "c9"})
    assert same.status == 201 and [(t.patient, t.permitted) for t in same.log] == [("ann", True)]
    # An id whose current version is a deletion: writing over it is an update of its last live version too.
    state.record("Observation", "o", 3, None, "2026-01-04T00:00:00.000Z")
    reused, _ = ref.expect_write(state, EHR, "update", "Observation", "o", moved_back)
    assert reused.status == 403 and reused.log_entries == 2
    assert ref.expect_write(state, DEV, "update", "Observation", "o", moved_back)[0].status == 201


def test_deletes() -> None:
    state = world()
    state.record("Observation", "a", 1, {**obs("Patient/ann"), "id": "a"}, "2026-01-02T00:00:00.000Z")

    def delete(caller: ref.Caller, rid: str) -> int:
        return ref.expect_write(state, caller, "delete", "Observation", rid, None)[0].status

    assert delete(RESEARCH, "a") == 403 and delete(RESEARCH, "missing") == 403  # scopes first
    assert delete(CLINICIAN, "a") == 404  # withheld: the 404 of a missing read
    assert delete(ANN, "a") == 404  # she may read it, not delete it: a refused delete is that same 404
    assert delete(EHR, "missing") == 404 and delete(DEV, "missing") == 204
    expected, _ = ref.expect_write(state, CLINICIAN, "delete", "Observation", "a", None)
    assert [(t.patient, t.permitted) for t in expected.log] == [("ann", False)]
    assert delete(EHR, "a") == 204
    state.record("Observation", "a", 2, None, "2026-01-03T00:00:00.000Z")
    # Already deleted: decided as a delete of what was (R4: 204 again), or the 404 of a missing read.
    assert delete(EHR, "a") == 204 and delete(DEV, "a") == 204
    assert delete(CLINICIAN, "a") == 404 and delete(ANN, "a") == 404


def log_of(expected: ref.Expected) -> list[tuple[Any, Any]]:
    return [(t.patient, t.permitted) for t in ref.conditional_log(expected)]


def test_conditional_interactions_probe_as_the_caller() -> None:
    state = world()
    by_id = [("_id", "o")]  # o is Bob's now
    new = {"resourceType": "Observation", "subject": {"reference": "Patient/ann"}}
    created = ref.expect_conditional(state, EHR, "create", "Observation", by_id, new)
    assert created.status == 201  # Bob's match does not exist for the hospital
    assert log_of(created) == [("bob", False), ("ann", True)]  # the probe, then the create
    found = ref.expect_conditional(state, BOB, "create", "Observation", by_id, new)
    assert found.status == 200 and found.returned == "o" and log_of(found) == [("bob", True)]  # no create decided
    refused = ref.expect_conditional(state, NARROW, "create", "Patient", [("_id", "ann")], {"resourceType": "Patient"})
    assert refused.status == 403 and len(ref.conditional_log(refused)) == 1  # scopes (create) before the probe
    everyone = [("_lastUpdated", "ge2026-01-01T00:00:00.000Z")]
    several = ref.expect_conditional(state, DEV, "create", "Patient", everyone, {"resourceType": "Patient"})
    assert several.status == 412 and log_of(several) == [("ann", True), ("bob", True)]
    assert several.probe is not None
    # The probe's page is the server's choice: a match only counted is logged per patient not covered.
    assert [(t.patient, t.permitted) for t in ref.conditional_log(several, {("Patient", "ann", 1)})] == [
        ("ann", True), ("bob", None)]
    nothing = ref.expect_conditional(state, EHR, "delete", "Observation", by_id, None)
    assert nothing.status == 204 and log_of(nothing) == [("bob", False)]
    moved = ref.expect_conditional(state, BOB, "update", "Observation", by_id, obs("Patient/ann"))
    assert moved.status == 403 and log_of(moved) == [("bob", True), ("ann", False), ("bob", False)]
    subject = {"resourceType": "Observation", "subject": {"reference": "Patient?_id=ann"}}
    resolved = ref.expect_conditional_reference(state, EHR, subject, "subject", [("_id", "ann")])
    assert resolved.status == 201 and log_of(resolved) == [("ann", True), ("ann", True)]
    hidden = ref.expect_conditional_reference(state, CLINICIAN, subject, "subject", [("_id", "ann")])
    assert hidden.status == 412 and log_of(hidden) == [("ann", False)]
    assert ref.expect_conditional_reference(state, NARROW, subject, "subject", [("_id", "ann")]).status == 403


AUDITOR = ref.Caller("auditor", "auditor", scopes=("system/AuditEvent.rs",))  # registered for the log by name
HOSPITAL_AUDITOR = ref.Caller("privacy", "auditor", HOSPITAL, scopes=("system/*.rs",))
LOST_AUDITOR = ref.Caller("lost", "auditor", scopes=("system/*.rs",))


def test_audit_view_and_standing() -> None:
    assert [ref.audit_view(c) for c in (DEV, ANN, EHR, RESEARCH, AUDITOR, HOSPITAL_AUDITOR, LOST_AUDITOR, NARROW)] == [
        "all", "own", "none", "none", "all", "cared-for", "none", "refused"]
    state = world()
    assert ref.audit_shows(state, HOSPITAL_AUDITOR, "ann") and not ref.audit_shows(state, HOSPITAL_AUDITOR, "bob")
    assert not ref.audit_shows(state, HOSPITAL_AUDITOR, "") and ref.audit_shows(state, AUDITOR, "")
    assert ref.audit_shows(state, ANN, "ann") and not ref.audit_shows(state, ANN, "bob")
    assert ref.related(state, EHR, "ann") and not ref.related(state, CLINICIAN, "ann")
    assert ref.related(world(consent("deny", CLINIC)), CLINICIAN, "ann")
    proposed = {**consent("permit", CLINIC), "status": "proposed"}
    assert not ref.related(world(proposed), CLINICIAN, "ann")  # an unsigned permit is no relationship


def request(*actors: str, patient: str = "ann", status: str = "proposed", days: int = 90) -> dict[str, Any]:
    end = (date.today() + timedelta(days=days)).isoformat()
    return {"resourceType": "Consent", "status": status, "patient": {"reference": f"Patient/{patient}"},
            "provision": {"type": "permit", "actor": [{"reference": {"reference": a}} for a in actors],
                          "period": {"start": "2020-01-01", "end": end}}}


def test_requests_for_access() -> None:
    """Rule 5a: an organisation asks any patient id for access for itself, and reads only what it asked."""
    state = world(consent("deny", CLINIC))  # Ann refuses the clinic everything: it may still ask
    for patient in ("ann", "nobody-here"):
        decision = ref.write_decision(state, CLINICIAN, "create", "Consent", None, request(CLINIC, patient=patient))
        assert decision.permitted and decision.request, patient
    for why, body, who in (("for another", request(UNIVERSITY), CLINICIAN), ("active", request(CLINIC, status="active"),
                           CLINICIAN), ("too long", request(CLINIC, days=3000), CLINICIAN),
                          ("a researcher", request(UNIVERSITY), RESEARCH), ("a patient's", request(CLINIC), BOB)):
        assert not ref.write_decision(state, who, "create", "Consent", None, body).permitted, why
    state.record("Consent", "q", 1, {**request(CLINIC), "id": "q"}, "2026-01-01T00:00:00.000Z")
    state.requests["q"] = CLINIC
    asked = state.current("Consent", "q")
    assert asked is not None and asked.resource is not None
    assert can_read(state, CLINICIAN, asked.resource) and not can_read(state, RESEARCH, asked.resource)
    assert not can_read(state, CLINICIAN, obs("Patient/ann"))  # nothing else of Ann
    assert not ref.write_decision(state, CLINICIAN, "update", "Consent", asked.resource, asked.resource).permitted
