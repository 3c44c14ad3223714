"""may_permit_reads: a search pinned to one patient skips their records only where `decide` permits none of them.

Soundness against the engine itself, the reference: whenever `decide` permits reading a resource, `may_permit_reads`
says so for its type. Then the cases it exists for: a revoked grant, a deny of everything or of a type.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapters.consent import instant_range
from healthledger.consent.engine import GrantStatus, Principal, ResourceFacts, decide, may_permit_reads

from .test_engine import (
    CARE_ORG,
    CLINICIAN,
    LOINC_HBA1C,
    NOW,
    OTHER_ORG,
    OUTSIDER,
    PATIENT,
    POLICY,
    PSY,
    RESEARCHER,
    actor,
    consent,
    ctx,
    klass,
    purpose,
)

TYPES = ["Observation", "MedicationRequest", "Condition", "Consent"]
MEMBER = Principal("member:b/Practitioner/x", "clinician", OTHER_ORG, "TREAT", consent_reference="k0")


def _coding(pair: tuple[str, str]) -> dict:
    return {"system": pair[0], "code": pair[1]}


_conditions = {
    "class": st.lists(st.sampled_from(TYPES[:3]), min_size=1, max_size=2).map(lambda ts: klass(*ts)),
    "actor": st.sampled_from([OTHER_ORG, CARE_ORG, "Practitioner/dr-b", "Organization/uni"]).map(lambda r: [actor(r)]),
    "purpose": st.lists(st.sampled_from(["TREAT", "HPAYMT", "HRESCH"]), min_size=1, max_size=2).map(lambda ps: purpose(*ps)),
    "action": st.sampled_from(["access", "use", "correct"]).map(lambda a: [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": a}]}]),
    "code": st.just([{"coding": [_coding(LOINC_HBA1C)]}]),
    "securityLabel": st.just([_coding(PSY)]),
    "dataPeriod": st.sampled_from([{"start": "2025-01-01"}, {"end": "2020-01-01"}]),
    "period": st.sampled_from([{"start": "2020-01-01"}, {"end": "2021-01-01"}, {"start": "2030-01-01"}]),
}
provision_st = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["permit", "deny"])}, optional=_conditions),
    lambda children: st.fixed_dictionaries(
        {"type": st.sampled_from(["permit", "deny"]), "provision": st.lists(children, min_size=1, max_size=3)},
        optional=_conditions),
    max_leaves=6,
)
principal_st = st.sampled_from([
    CLINICIAN, OUTSIDER, RESEARCHER, PATIENT, MEMBER,
    Principal("u-p2", "patient", purpose="TREAT", patient_id="p2"),
    Principal("dr-b", "clinician", OTHER_ORG, "HPAYMT"),
    Principal("dr-b", "clinician", OTHER_ORG, "ETREAT", break_glass_reason="unconscious"),
    Principal("dr-b", "clinician", OTHER_ORG, "ETREAT"),
    Principal("sys", "system", CARE_ORG, "TREAT"),
])
resource_st = st.builds(
    ResourceFacts,
    resource_type=st.sampled_from(TYPES),
    resource_id=st.sampled_from(["r1", "k0", "q1"]),
    patient_id=st.just("p1"),
    security_labels=st.sampled_from([frozenset(), frozenset({PSY})]),
    codes=st.sampled_from([frozenset(), frozenset({LOINC_HBA1C})]),
    date_range=st.sampled_from([None, instant_range("2019-05-01"), instant_range("2025-03-04")]),
)


@settings(max_examples=600, deadline=None)
@given(provisions=st.lists(provision_st, max_size=4), statuses=st.lists(st.sampled_from(["active", "inactive"]), min_size=4,
       max_size=4), grants=st.lists(st.sampled_from(list(GrantStatus)), min_size=4, max_size=4), who=principal_st,
       res=resource_st, age=st.sampled_from([0.0, 1_000.0]), asked_by=st.sampled_from([None, OTHER_ORG, CARE_ORG]))
def test_whatever_decide_permits_it_says_may_be_permitted(provisions, statuses, grants, who, res, age, asked_by) -> None:
    consents = [consent(f"k{i}", p, status=statuses[i]) for i, p in enumerate(provisions)]
    context = ctx(*consents, grants={f"k{i}": g.value for i, g in enumerate(grants)}, age=age)
    if asked_by is not None:
        context = type(context)(context.patient_id, context.consents, context.grants, context.care_organizations,
                                context.index_age_seconds, {"q1": asked_by})
    if decide(who, "read", res, context, POLICY, NOW).permitted:
        assert may_permit_reads(who, res.resource_type, context, POLICY, NOW)


def test_a_revoked_grant_permits_a_member_nothing() -> None:
    grant = consent("k0", {"type": "permit", "actor": [actor(OTHER_ORG)]})
    assert may_permit_reads(MEMBER, "Observation", ctx(grant, grants={"k0": "live"}), POLICY, NOW)
    assert not may_permit_reads(MEMBER, "Observation", ctx(grant, grants={"k0": "revoked"}), POLICY, NOW)
    assert not may_permit_reads(OUTSIDER, "Observation", ctx(), POLICY, NOW)  # no grant, no care


def test_a_deny_of_everything_or_of_a_type_permits_none_of_it() -> None:
    deny_all = consent("k1", {"type": "deny"})
    assert not may_permit_reads(CLINICIAN, "Observation", ctx(deny_all), POLICY, NOW)
    assert may_permit_reads(PATIENT, "Observation", ctx(deny_all), POLICY, NOW)  # the patient's own data
    no_obs = consent("k2", {"type": "permit", "provision": [{"type": "deny", "class": klass("Observation")}]})
    assert not may_permit_reads(CLINICIAN, "Observation", ctx(no_obs), POLICY, NOW)
    assert may_permit_reads(CLINICIAN, "Condition", ctx(no_obs), POLICY, NOW)


def test_a_deny_with_a_condition_on_the_records_leaves_them_to_be_screened() -> None:
    # Some Observations (another code, another date) may still be permitted: each is decided.
    by_code = consent("k3", {"type": "deny", "code": [{"coding": [_coding(LOINC_HBA1C)]}]})
    by_date = consent("k4", {"type": "deny", "dataPeriod": {"end": "2020-01-01"}})
    with_exception = consent("k5", {"type": "deny", "provision": [{"type": "permit", "actor": [actor(CARE_ORG)]}]})
    for c in (by_code, by_date, with_exception):
        assert may_permit_reads(CLINICIAN, "Observation", ctx(c), POLICY, NOW)


def test_a_stale_index_permits_nothing_but_the_glass_and_own_data() -> None:
    stale = ctx(age=1_000)
    assert not may_permit_reads(CLINICIAN, "Observation", stale, POLICY, NOW)
    assert may_permit_reads(PATIENT, "Observation", stale, POLICY, NOW)
    glass = Principal("dr-b", "clinician", OTHER_ORG, "ETREAT", break_glass_reason="unconscious")
    assert may_permit_reads(glass, "Observation", stale, POLICY, NOW)


def test_a_live_grant_to_someone_else_permits_this_caller_nothing() -> None:
    to_clinic = consent("k0", {"type": "permit", "actor": [actor("Organization/clinic")]})
    assert not may_permit_reads(OUTSIDER, "Observation", ctx(to_clinic, grants={"k0": "live"}), POLICY, NOW)
    to_outsider_for_payment = consent("k0", {"type": "permit", "actor": [actor(OTHER_ORG)], "purpose": purpose("HPAYMT")})
    assert not may_permit_reads(OUTSIDER, "Observation", ctx(to_outsider_for_payment, grants={"k0": "live"}), POLICY, NOW)
    nested = consent("k0", {"type": "deny", "provision": [{"type": "permit", "actor": [actor(OTHER_ORG)]}]})
    assert may_permit_reads(OUTSIDER, "Observation", ctx(nested, grants={"k0": "live"}), POLICY, NOW)
