"""The reference policy on small hand-made cases: each rule once, the expected answers written from the policy.

The leak properties trust `reference_policy` to be right; these cases are what makes that trust cheap to check
(and they run in milliseconds, without the app).
"""

from __future__ import annotations

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
    provision: dict[str, Any] = {"type": kind, "actor": [{"reference": {"reference": a}} for a in actors]}
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


@pytest.mark.parametrize(("subject", "refused"), [
    ({"reference": "Patient/ann"}, False),
    ({"reference": "https://x.example/fhir/Patient/ann"}, False),
    ({"reference": "Group/g"}, False),
    ({"identifier": {"system": "urn:mrn", "value": "1"}}, True),
    ({"display": "Ann"}, True),
    ({"reference": "#p"}, True),
    ({"reference": "patient/ann"}, True),
    ({"reference": " Patient/ann"}, True),
    ({"reference": "Patient?identifier=urn:mrn|1"}, True),
])
def test_ambiguous_patient_references_are_refused(subject: dict[str, Any], refused: bool) -> None:
    resource = {"resourceType": "Observation", "subject": subject}
    assert (ref.refused_element(resource) == "Observation.subject") is refused


def test_two_patients_are_refused_and_a_transaction_may_resolve_a_conditional_reference() -> None:
    both = {**obs("Patient/ann"), "performer": [{"reference": "Patient/bob"}]}
    assert ref.refused_element(both) is not None
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
    state.record("Observation", "o", 3, None, "2026-01-04T00:00:00.000Z")
    assert [s.number for s in ref.expect_history(state, BOB, "Observation", "o").shown] == [2]  # deletions hidden
    assert [s.number for s in ref.expect_history(state, DEV, "Observation", "o").shown] == [1, 2, 3]
    assert ref.expect_read(state, DEV, "Observation", "o").status == 410


def test_scopes_first_and_searches_count_what_they_disclose() -> None:
    state = world()
    assert ref.expect_read(state, NARROW, "Observation", "o").status == 403
    assert ref.expect_read(state, NARROW, "Patient", "ann").status == 200
    found = ref.expect_search(state, EHR, "Patient", [("_lastUpdated", "ge2026-01-01T00:00:00.000Z")])
    assert [s.rid for s in found.shown] == ["ann"] and found.withheld_patients == {"bob"}
    assert found.log_entries == 2  # one disclosed, one patient withheld
    nothing = ref.expect_search(state, EHR, "Patient", [("_id", "nobody")])
    assert nothing.shown == () and nothing.log_entries == 1


def test_writes() -> None:
    state = world()
    new = {"resourceType": "Observation", "subject": {"reference": "Patient/ann"}}
    assert ref.expect_write(state, EHR, "create", "Observation", None, new)[0].status == 201
    assert ref.expect_write(state, ANN, "create", "Observation", None, new)[0].status == 403  # patients: Consents only
    assert ref.expect_write(state, ANN, "create", "Consent", None, consent("permit", CLINIC))[0].status == 201
    assert ref.expect_write(state, ANN, "create", "Organization", None, {"resourceType": "Organization"})[0].status == 403
    assert ref.expect_write(state, EHR, "create", "Organization", None, {"resourceType": "Organization"})[0].status == 201
    assert ref.expect_write(state, RESEARCH, "create", "Observation", None, new)[0].status == 403  # scopes
    moved_back = {**obs("Patient/ann"), "id": "o"}
    assert ref.expect_write(state, EHR, "update", "Observation", "o", moved_back)[0].status == 403  # v2 is Bob's
    assert ref.expect_write(state, BREAK_GLASS, "update", "Observation", "o", moved_back)[0].status == 200
    assert ref.expect_write(state, EHR, "create", "Observation", None, {**new, "subject": {"display": "Ann"}}
                            )[0].status == 400


def test_audit_view_and_standing() -> None:
    assert [ref.audit_view(c) for c in (DEV, ANN, EHR, RESEARCH)] == ["all", "own", "none", "none"]
    state = world()
    assert ref.related(state, EHR, "ann") and not ref.related(state, CLINICIAN, "ann")
    assert ref.related(world(consent("deny", CLINIC)), CLINICIAN, "ann")
