"""Consent decision engine: FHIR R4 Consent semantics, policy defaults, chain authority, fail closed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapters.consent import consent_rules, instant_range
from fhir_adapters.errors import InvalidResource
from healthledger.consent.engine import (
    ACCESS_REQUEST,
    OWN_REQUEST,
    Decision,
    GrantStatus,
    PatientContext,
    Policy,
    Principal,
    ResourceFacts,
    decide,
)
from healthledger.consent.facts import resource_facts

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = Policy()
CARE_ORG = "Organization/general-hospital"
OTHER_ORG = "Organization/city-clinic"
LOINC_HBA1C = ("http://loinc.org", "4548-4")
PSY = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")


def consent(cid: str, provision: dict, *, status: str = "active", patient: str = "p1", **extra) -> dict:
    return {"resourceType": "Consent", "id": cid, "status": status, "patient": {"reference": f"Patient/{patient}"},
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "provision": provision, **extra}


def actor(ref: str) -> dict:
    return {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"reference": ref}}


def klass(*types: str) -> list[dict]:
    return [{"system": "http://hl7.org/fhir/resource-types", "code": t} for t in types]


def purpose(*codes: str) -> list[dict]:
    return [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": c} for c in codes]


CLINICIAN = Principal("dr-a", "clinician", CARE_ORG, "TREAT", references=frozenset({"Practitioner/dr-a"}))
OUTSIDER = Principal("dr-b", "clinician", OTHER_ORG, "TREAT", references=frozenset({"Practitioner/dr-b"}))
RESEARCHER = Principal("res-1", "researcher", "Organization/uni", "HRESCH", references=frozenset({"Practitioner/res-1"}))
PATIENT = Principal("u-p1", "patient", purpose="TREAT", patient_id="p1")

OBS = ResourceFacts("Observation", "o1", "p1", codes=frozenset({LOINC_HBA1C}),
                    date_range=instant_range("2025-03-04"))
MED = ResourceFacts("MedicationRequest", "m1", "p1", date_range=instant_range("2025-03-04"))


def ctx(*consents: dict, grants: dict | None = None, age: float = 0.0) -> PatientContext:
    return PatientContext(
        "p1", tuple(consent_rules(c) for c in consents),
        {k: GrantStatus(v) for k, v in (grants or {}).items()}, frozenset({CARE_ORG}), age,
    )


def test_patient_sees_own_data_even_with_deny_consent() -> None:
    c = ctx(consent("c1", {"type": "deny"}))
    assert decide(PATIENT, "read", OBS, c, POLICY, NOW).decision is Decision.PERMIT
    other = Principal("u-p2", "patient", patient_id="p2")
    assert decide(other, "read", OBS, c, POLICY, NOW).decision is not Decision.PERMIT


def test_treating_clinician_default_and_patient_deny() -> None:
    assert decide(CLINICIAN, "read", OBS, ctx(), POLICY, NOW).decision is Decision.PERMIT
    out = decide(CLINICIAN, "read", OBS, ctx(consent("c1", {"type": "deny", "class": klass("Observation")})), POLICY, NOW)
    assert out.decision is Decision.DENY and out.reasons[0].consent_id == "c1"
    # The deny covers Observations only: other data stays available for treatment.
    assert decide(CLINICIAN, "read", MED, ctx(consent("c1", {"type": "deny", "class": klass("Observation")})), POLICY, NOW).permitted
    # Not for a non-treatment purpose, and the default is configurable policy.
    assert not decide(Principal("dr-a", "clinician", CARE_ORG, "HPAYMT"), "read", OBS, ctx(), POLICY, NOW).permitted
    assert not decide(CLINICIAN, "read", OBS, ctx(), Policy(treating_roles=frozenset()), NOW).permitted


def test_outsider_needs_consent_and_live_grant() -> None:
    c = consent("c2", {"type": "permit", "actor": [actor(OTHER_ORG)], "purpose": purpose("TREAT")})
    assert decide(OUTSIDER, "read", OBS, ctx(), POLICY, NOW).decision is Decision.NOT_APPLICABLE
    assert decide(OUTSIDER, "read", OBS, ctx(c, grants={"c2": "live"}), POLICY, NOW).decision is Decision.PERMIT
    for state in ("pending", "revoked", "expired", "unknown"):
        out = decide(OUTSIDER, "read", OBS, ctx(c, grants={"c2": state}), POLICY, NOW)
        assert out.decision is Decision.NOT_APPLICABLE, state
        assert out.reasons[0].rule == "consent-grant-not-live" and out.reasons[0].detail == state
    # The consent names the organisation, not every actor.
    stranger = Principal("x", "clinician", "Organization/elsewhere", "TREAT")
    assert not decide(stranger, "read", OBS, ctx(c, grants={"c2": "live"}), POLICY, NOW).permitted


def test_nested_provisions_are_exceptions_and_deny_wins() -> None:
    c = consent("c3", {"type": "permit", "actor": [actor(OTHER_ORG)], "provision": [
        {"type": "deny", "class": klass("MedicationRequest")},
        {"type": "deny", "code": [{"coding": [{"system": LOINC_HBA1C[0], "code": LOINC_HBA1C[1]}]}],
         "provision": [{"type": "permit", "purpose": purpose("TREAT")}]},
    ]})
    live = {"c3": "live"}
    assert decide(OUTSIDER, "read", MED, ctx(c, grants=live), POLICY, NOW).decision is Decision.DENY
    # HbA1c is denied, except (nested permit) for treatment.
    out = decide(OUTSIDER, "read", OBS, ctx(c, grants=live), POLICY, NOW)
    assert out.permitted and out.reasons[0].provision == "Consent.provision.provision[1].provision[0]"
    payer = Principal("dr-b", "clinician", OTHER_ORG, "HPAYMT")
    assert decide(payer, "read", OBS, ctx(c, grants=live), POLICY, NOW).decision is Decision.DENY
    # Siblings: a permit and a deny both apply -> deny.
    sib = consent("c4", {"type": "deny", "provision": [
        {"type": "permit", "actor": [actor(OTHER_ORG)]}, {"type": "deny", "class": klass("Observation")}]})
    assert decide(OUTSIDER, "read", OBS, ctx(sib, grants={"c4": "live"}), POLICY, NOW).decision is Decision.DENY
    assert decide(OUTSIDER, "read", MED, ctx(sib, grants={"c4": "live"}), POLICY, NOW).permitted


def test_period_and_data_period() -> None:
    expired = consent("c5", {"type": "permit", "actor": [actor(OTHER_ORG)], "period": {"start": "2020", "end": "2025-12-31"}})
    assert not decide(OUTSIDER, "read", OBS, ctx(expired, grants={"c5": "live"}), POLICY, NOW).permitted
    data_2025 = consent("c6", {"type": "permit", "actor": [actor(OTHER_ORG)], "dataPeriod": {"start": "2025-01", "end": "2025-06"}})
    assert decide(OUTSIDER, "read", OBS, ctx(data_2025, grants={"c6": "live"}), POLICY, NOW).permitted
    old_obs = ResourceFacts("Observation", "o2", "p1", date_range=instant_range("2019-07-01"))
    assert not decide(OUTSIDER, "read", old_obs, ctx(data_2025, grants={"c6": "live"}), POLICY, NOW).permitted
    undated = ResourceFacts("Observation", "o3", "p1")
    assert not decide(OUTSIDER, "read", undated, ctx(data_2025, grants={"c6": "live"}), POLICY, NOW).permitted
    # A deny with a data period applies to undated data (conservative reading).
    deny_2025 = consent("c7", {"type": "deny", "dataPeriod": {"start": "2025", "end": "2025"}})
    assert decide(CLINICIAN, "read", undated, ctx(deny_2025), POLICY, NOW).decision is Decision.DENY
    assert decide(CLINICIAN, "read", old_obs, ctx(deny_2025), POLICY, NOW).permitted


def test_security_labels_deny_or_redact() -> None:
    deny_psy = consent("c8", {"type": "deny", "securityLabel": [{"system": PSY[0], "code": PSY[1]}]})
    labelled = ResourceFacts("Observation", "o4", "p1", security_labels=frozenset({PSY}))
    assert decide(CLINICIAN, "read", labelled, ctx(deny_psy), POLICY, NOW).decision is Decision.DENY
    inline = ResourceFacts("Observation", "o5", "p1", element_labels=frozenset({PSY}))
    out = decide(CLINICIAN, "read", inline, ctx(deny_psy), POLICY, NOW)
    assert out.permitted and out.obligations[0].kind == "redact-security-labels"
    assert out.obligations[0].labels == frozenset({PSY})
    assert decide(CLINICIAN, "read", OBS, ctx(deny_psy), POLICY, NOW).obligations == ()


def test_research_purpose_and_actions() -> None:
    c = consent("c9", {"type": "permit", "actor": [actor("Organization/uni")], "purpose": purpose("HRESCH"),
                       "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]})
    out = decide(RESEARCHER, "read", OBS, ctx(c, grants={"c9": "live"}), POLICY, NOW)
    assert out.permitted and [o.kind for o in out.obligations] == ["de-identify"]
    assert not decide(RESEARCHER, "update", OBS, ctx(c, grants={"c9": "live"}), POLICY, NOW).permitted
    assert not decide(RESEARCHER, "export", OBS, ctx(c, grants={"c9": "live"}), POLICY, NOW).permitted  # 'use' not granted
    treat = Principal("res-1", "researcher", "Organization/uni", "TREAT")
    assert not decide(treat, "read", OBS, ctx(c, grants={"c9": "live"}), POLICY, NOW).permitted


def test_break_the_glass() -> None:
    deny_all = consent("c10", {"type": "deny"})
    bg = Principal("dr-b", "clinician", OTHER_ORG, "ETREAT", break_glass_reason="unconscious in ED")
    out = decide(bg, "read", OBS, ctx(deny_all, age=10_000), POLICY, NOW)
    assert out.permitted and out.break_glass
    no_reason = Principal("dr-b", "clinician", OTHER_ORG, "ETREAT")
    assert decide(no_reason, "read", OBS, ctx(), POLICY, NOW).decision is Decision.DENY
    researcher_bg = Principal("r", "researcher", OTHER_ORG, "ETREAT", break_glass_reason="x")
    assert decide(researcher_bg, "read", OBS, ctx(), POLICY, NOW).decision is Decision.DENY


def test_fails_closed_when_index_is_stale() -> None:
    c = consent("c2", {"type": "permit", "actor": [actor(OTHER_ORG)]})
    out = decide(OUTSIDER, "read", OBS, ctx(c, grants={"c2": "live"}, age=61), POLICY, NOW)
    assert out.decision is Decision.DENY and out.reasons[0].rule == "index-stale"
    assert decide(CLINICIAN, "read", OBS, ctx(age=61), POLICY, NOW).decision is Decision.DENY
    assert decide(PATIENT, "read", OBS, ctx(age=61), POLICY, NOW).permitted
    # Writes disclose nothing the writer did not send: a stale index does not stop them.
    assert decide(CLINICIAN, "create", OBS, ctx(age=61), POLICY, NOW).permitted
    assert decide(CLINICIAN, "read", OBS, ctx(age=60), POLICY, NOW).permitted


def test_inactive_and_proposed_consents_do_not_count() -> None:
    for status in ("proposed", "inactive", "rejected", "entered-in-error", "draft"):
        c = consent("c11", {"type": "permit", "actor": [actor(OTHER_ORG)]}, status=status)
        assert not decide(OUTSIDER, "read", OBS, ctx(c, grants={"c11": "live"}), POLICY, NOW).permitted
        d = consent("c12", {"type": "deny"}, status=status)
        assert decide(CLINICIAN, "read", OBS, ctx(d), POLICY, NOW).permitted


def test_official_r4_example_consent_compiles(fixtures_dir: Path) -> None:
    rules = consent_rules(json.loads((fixtures_dir / "fhir-r4-examples" / "consent-example.json").read_text()))
    assert rules.patient_id == "f001" and rules.status == "active" and rules.scopes == {"patient-privacy"}
    assert rules.root.type == "permit"  # policyRule OPTIN
    assert rules.root.period is not None and not rules.root.period.contains(NOW)  # ended 2016-01-01


@pytest.mark.parametrize("bad, where", [
    ({"resourceType": "Patient"}, "Consent.resourceType"),
    ({"resourceType": "Consent", "status": "active", "patient": {"reference": "Group/1"}}, "Consent.patient"),
    ({"resourceType": "Consent", "patient": {"reference": "Patient/1"}}, "Consent.status"),
    (consent("x", {"type": "permit", "provision": [{"class": klass("Observation")}]}), "Consent.provision.provision[0].type"),
    (consent("x", {"type": "permit", "period": {"start": "2020-13-45"}}), "Consent.provision.period.start"),
    (consent("x", {"type": "permit", "actor": [{"role": {}}]}), "Consent.provision.actor"),
])
def test_unusable_consents_are_rejected_with_the_path(bad: dict, where: str) -> None:
    with pytest.raises(InvalidResource) as err:
        consent_rules(bad)
    assert err.value.expression == where


# --- properties -----------------------------------------------------------------------------------

provision_st = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["permit", "deny"])}, optional={
        "class": st.lists(st.sampled_from(["Observation", "MedicationRequest", "Condition"]), min_size=1, max_size=2).map(lambda ts: klass(*ts)),
        "actor": st.sampled_from([OTHER_ORG, CARE_ORG, "Practitioner/dr-b"]).map(lambda r: [actor(r)]),
        "purpose": st.lists(st.sampled_from(["TREAT", "HPAYMT", "HRESCH"]), min_size=1, max_size=2).map(lambda ps: purpose(*ps)),
    }),
    lambda children: st.fixed_dictionaries({"type": st.sampled_from(["permit", "deny"]), "provision": st.lists(children, min_size=1, max_size=3)}),
    max_leaves=6,
)
principal_st = st.sampled_from([CLINICIAN, OUTSIDER, RESEARCHER, Principal("dr-b", "clinician", OTHER_ORG, "HPAYMT")])
resource_st = st.sampled_from([OBS, MED, ResourceFacts("Condition", "c1", "p1")])
grant_st = st.sampled_from(list(GrantStatus))


@settings(max_examples=300, deadline=None)
@given(provisions=st.lists(provision_st, max_size=4), who=principal_st, res=resource_st, grants=st.lists(grant_st, min_size=4, max_size=4))
def test_an_unconditional_deny_is_never_overridden(provisions, who, res, grants) -> None:
    consents = [consent(f"k{i}", p) for i, p in enumerate(provisions)]
    states = {f"k{i}": g.value for i, g in enumerate(grants)}
    with_deny = ctx(*consents, consent("deny-all", {"type": "deny"}), grants=states)
    assert decide(who, "read", res, with_deny, POLICY, NOW).decision is Decision.DENY


@settings(max_examples=300, deadline=None)
@given(provisions=st.lists(provision_st, min_size=1, max_size=4), who=principal_st, res=resource_st)
def test_revoking_a_grant_never_grants_more(provisions, who, res) -> None:
    consents = [consent(f"k{i}", p) for i, p in enumerate(provisions)]
    live = {f"k{i}": "live" for i in range(len(consents))}
    before = decide(who, "read", res, ctx(*consents, grants=live), POLICY, NOW)
    for revoked in live:
        after = decide(who, "read", res, ctx(*consents, grants={**live, revoked: "revoked"}), POLICY, NOW)
        assert not (after.permitted and not before.permitted)
        if before.decision is Decision.DENY:
            assert after.decision is Decision.DENY  # denies never depend on the chain


# -- step 3: requests for access -----------------------------------------------------------------------------
def request_facts(provision: dict, *, status: str = "proposed", patient: str = "p1", cid: str = "q1") -> ResourceFacts:
    body = consent(cid, provision, status=status, patient=patient)
    return resource_facts("Consent", cid, body)


def asking(*actors: str, end: str = "2027-05-01", **more: object) -> dict:
    return {"type": "permit", "actor": [actor(a) for a in actors], "period": {"start": "2026-11-23", "end": end},
            "purpose": purpose("TREAT"), "class": klass("Observation"), **more}


def test_an_organisation_may_ask_a_patient_for_access_for_itself_only() -> None:
    asked = decide(OUTSIDER, "create", request_facts(asking(OTHER_ORG)), ctx(), POLICY, NOW)
    assert asked.permitted and asked.reasons[0].rule == ACCESS_REQUEST
    # Its own practitioner too; a backend client of the organisation as well.
    assert decide(OUTSIDER, "create", request_facts(asking("Practitioner/dr-b")), ctx(), POLICY, NOW).permitted
    backend = Principal("client:b", "system", OTHER_ORG, "TREAT")
    assert decide(backend, "create", request_facts(asking(OTHER_ORG)), ctx(), POLICY, NOW).permitted
    refused = {
        "for another organisation": (OUTSIDER, asking(CARE_ORG), "proposed"),
        "for itself and another": (OUTSIDER, asking(OTHER_ORG, CARE_ORG), "proposed"),
        "for anyone (no actor)": (OUTSIDER, {**asking(), "actor": []}, "proposed"),
        "active: only the patient's key activates": (OUTSIDER, asking(OTHER_ORG), "active"),
        "a deny takes effect unasked": (OUTSIDER, {**asking(OTHER_ORG), "type": "deny"}, "proposed"),
        "no end": (OUTSIDER, {**asking(OTHER_ORG), "period": {"start": "2026-11-23"}}, "proposed"),
        "ended already": (OUTSIDER, asking(OTHER_ORG, end="2026-11-01"), "proposed"),
        "too long": (OUTSIDER, asking(OTHER_ORG, end="2030-01-01"), "proposed"),
        "a researcher's role": (Principal("r", "researcher", OTHER_ORG, "HRESCH"), asking(OTHER_ORG), "proposed"),
        "nobody's organisation": (Principal("x", "clinician", "", "TREAT", references=frozenset({"Practitioner/x"})),
                                  asking("Practitioner/x"), "proposed"),
    }
    for why, (who, provision, status) in refused.items():
        out = decide(who, "create", request_facts(provision, status=status), ctx(), POLICY, NOW)
        assert not out.permitted, why
    # Only creating: changing a request is no request (the patient answers it).
    assert not decide(OUTSIDER, "update", request_facts(asking(OTHER_ORG)), ctx(), POLICY, NOW).permitted


def test_a_request_is_decided_without_the_patients_consents_or_care() -> None:
    """The same answer for a patient who refuses the asker, one nobody knows, one it already cares for."""
    refusing = ctx(consent("c1", {"type": "deny", "actor": [actor(OTHER_ORG)]}))
    unknown = PatientContext("p1")
    facts = request_facts(asking(OTHER_ORG))
    answers = {decide(OUTSIDER, "create", facts, c, POLICY, NOW) for c in (refusing, unknown, ctx())}
    assert len(answers) == 1 and next(iter(answers)).reasons[0].rule == ACCESS_REQUEST
    stale = decide(OUTSIDER, "create", facts, ctx(age=POLICY.max_index_age_seconds + 1), POLICY, NOW)
    assert stale.permitted  # a write


def test_the_requester_reads_its_own_request_and_nothing_else() -> None:
    facts = request_facts(asking(OTHER_ORG))
    asked = PatientContext("p1", requests={"q1": OTHER_ORG}, care_organizations=frozenset({CARE_ORG}))
    for action in ("read", "vread", "search", "history"):
        out = decide(OUTSIDER, action, facts, asked, POLICY, NOW)
        assert out.permitted and out.reasons[0].rule == OWN_REQUEST, action
    # Even when the patient has refused it everything: its own request, and the answer, are its own.
    refusing = PatientContext("p1", (consent_rules(consent("c1", {"type": "deny"})),), requests={"q1": OTHER_ORG})
    assert decide(OUTSIDER, "read", facts, refusing, POLICY, NOW).permitted
    # Not another organisation's request, not another Consent of the patient, not the patient's other data,
    # and no writing it.
    assert not decide(RESEARCHER, "read", facts, asked, POLICY, NOW).permitted
    other = request_facts(asking(OTHER_ORG), cid="c9")
    assert not decide(OUTSIDER, "read", other, asked, POLICY, NOW).permitted
    assert not decide(OUTSIDER, "read", ResourceFacts("Observation", "q1", "p1"), asked, POLICY, NOW).permitted
    for action in ("update", "delete"):
        assert not decide(OUTSIDER, action, facts, asked, POLICY, NOW).permitted, action
