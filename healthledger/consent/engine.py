"""The consent decision engine: pure code, (request, consents, grant states, policy, now) -> decision.

Order of evaluation (each step documented in docs/consent-semantics.md):
1. Break-the-glass: a principal whose role may break the glass, asking with the emergency purpose and
   a stated reason, is permitted, always, and the outcome is flagged. Without a reason: denied.
2. The patient's own data: the patient may read it, and write `patient_writable_types` (Consent) in it.
3. Requests for access: an organisation's client or user (`requester_roles`) may create a Consent that asks
   the patient for access for itself (`asks_for_itself`: status proposed, a permit whose root provision
   names only the asker, ending within `max_request_days`), and may read the Consents its organisation
   requested (`PatientContext.requests`). Decided from the request alone, before the patient's Consents
   and care organisations, so the answer is the same whether the patient exists here or not.
4. Fail closed: if the consent index is older than `policy.max_index_age_seconds`, deny reads.
5. The patient's active Consents that apply: any deny -> DENY (deny wins); else a permit whose on-chain
   grant is live -> PERMIT; a permit whose grant is not live does not count (the chain is the
   authority on revocation).
6. Policy defaults (configurable): treating roles of the patient's own care organisation with a
   treatment purpose are permitted; otherwise NOT_APPLICABLE, which enforcement treats as deny.
   A principal relying on a named Consent (another member hospital, `Principal.consent_reference`) is
   decided by that Consent alone in step 5 (deny provisions of every Consent still apply) and gets no
   policy default.

Unknown facts are read conservatively: a deny rule that asks about something the resource does not say
(e.g. its date) applies; a permit rule in the same position does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from fhir_adapters.consent import DENY, PERMIT, Coding, ConsentRules, Provision
from healthledger.actions import WRITE_ACTIONS
from healthledger.ledger.grants import GrantStatus
from healthledger.principal import ETREAT, HRESCH, TREAT, Principal

__all__ = [
    "ACCESS_REQUEST",
    "ETREAT",
    "HRESCH",
    "OWN_REQUEST",
    "TREAT",
    "Decision",
    "GrantStatus",
    "Obligation",
    "Outcome",
    "PatientContext",
    "Policy",
    "Principal",
    "Reason",
    "ResourceFacts",
    "asks_for_itself",
    "decide",
    "decide_new_patient",
    "may_permit_reads",
]

# The rules of step 3, as reasons name them.
ACCESS_REQUEST, OWN_REQUEST = "policy:access-request", "policy:own-request"

# Our actions -> FHIR consentaction codes (http://terminology.hl7.org/CodeSystem/consentaction).
CONSENT_ACTION: Mapping[str, str] = {  # keys: healthledger.actions.ACTIONS (tests/test_actions.py)
    "read": "access", "vread": "access", "search": "access", "history": "access",
    "export": "use", "create": "collect", "update": "correct", "delete": "correct",
}


class Decision(str, Enum):
    PERMIT = "permit"
    DENY = "deny"
    NOT_APPLICABLE = "not-applicable"


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    resource_type: str
    resource_id: str
    patient_id: str  # "" when the resource is in no patient compartment
    security_labels: frozenset[Coding] = frozenset()  # Resource.meta.security
    element_labels: frozenset[Coding] = frozenset()  # inline labels on elements (redactable)
    codes: frozenset[Coding] = frozenset()
    date_range: tuple[datetime, datetime] | None = None  # clinically relevant time, [low, high)
    consent: ConsentRules | None = None  # a Consent resource's own rules (None for other types, or unusable)


@dataclass(frozen=True, slots=True)
class Reason:
    rule: str  # e.g. consent, policy:own-data, policy:treating-organisation, break-glass, index-stale
    consent_id: str = ""
    provision: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Obligation:
    kind: str  # redact-security-labels | de-identify
    labels: frozenset[Coding] = frozenset()


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: Decision
    reasons: tuple[Reason, ...]
    obligations: tuple[Obligation, ...] = ()
    break_glass: bool = False

    @property
    def permitted(self) -> bool:
        return self.decision is Decision.PERMIT


@dataclass(frozen=True, slots=True)
class Policy:
    """Configurable defaults (not code paths)."""

    patient_sees_own: bool = True
    patient_writable_types: frozenset[str] = frozenset({"Consent"})  # what patients may write in their record
    treating_roles: frozenset[str] = frozenset({"clinician", "system"})
    treating_purposes: frozenset[str] = frozenset({TREAT})
    writer_roles: frozenset[str] = frozenset({"clinician", "system"})
    break_glass_roles: frozenset[str] = frozenset({"clinician"})
    break_glass_purpose: str = ETREAT
    deidentify_purposes: frozenset[str] = frozenset({HRESCH})
    max_index_age_seconds: float = 60.0
    # Requests for access (step 3): who may ask a patient for access for its own organisation, for how long at
    # most, and how many requests one organisation may make in a day (enforced by enforcement.py).
    requester_roles: frozenset[str] = frozenset({"clinician", "system"})
    max_request_days: int = 730
    max_requests_per_day: int = 200


@dataclass(frozen=True, slots=True)
class PatientContext:
    """What the engine knows about one patient: their Consents, grant states, care organisations."""

    patient_id: str
    consents: Sequence[ConsentRules] = ()
    grants: Mapping[str, GrantStatus] = field(default_factory=dict)  # consent id -> on-chain state
    care_organizations: frozenset[str] = frozenset()  # "Organization/{id}"
    index_age_seconds: float = 0.0
    requests: Mapping[str, str] = field(default_factory=dict)  # consent id -> organisation that requested it


def decide(
    principal: Principal, action: str, resource: ResourceFacts, ctx: PatientContext, policy: Policy, now: datetime
) -> Outcome:
    """Decide one access. Pure; see the module docstring for the order of evaluation."""
    consent_action = CONSENT_ACTION.get(action)
    if consent_action is None:
        return Outcome(Decision.DENY, (Reason("unknown-action", detail=action),))

    if principal.purpose == policy.break_glass_purpose:
        if principal.role not in policy.break_glass_roles:
            return Outcome(Decision.DENY, (Reason("break-glass", detail="role may not break the glass"),))
        if not principal.break_glass_reason.strip():
            return Outcome(Decision.DENY, (Reason("break-glass", detail="a reason is required"),))
        return Outcome(Decision.PERMIT, (Reason("break-glass"),), break_glass=True)

    if not resource.patient_id:
        return Outcome(Decision.NOT_APPLICABLE, (Reason("no-patient-compartment"),))
    if resource.patient_id != ctx.patient_id:
        raise ValueError("patient context does not belong to the resource's patient")

    if (
        policy.patient_sees_own
        and principal.role == "patient"
        and principal.patient_id == resource.patient_id
        and (action not in WRITE_ACTIONS or resource.resource_type in policy.patient_writable_types)
    ):
        return Outcome(Decision.PERMIT, (Reason("policy:own-data"),))

    asking = resource.consent
    if action == "create" and asking is not None and asks_for_itself(principal, asking, policy, now):
        return Outcome(Decision.PERMIT, (Reason(ACCESS_REQUEST),))
    if (
        action not in WRITE_ACTIONS
        and resource.resource_type == "Consent"
        and principal.organization
        and ctx.requests.get(resource.resource_id) == principal.organization
    ):
        # Its own request and the patient's answer, nothing else: no chain state is relied on, so not step 4's.
        return Outcome(Decision.PERMIT, (Reason(OWN_REQUEST),))

    if action not in WRITE_ACTIONS and ctx.index_age_seconds > policy.max_index_age_seconds:
        # Reads rest on the chain's word that no grant was revoked; writes disclose nothing.
        return Outcome(Decision.DENY, (Reason("index-stale", detail="consent state is not fresh enough"),))

    identities = principal.identities()
    denies: list[Reason] = []
    permits: list[Reason] = []
    not_live: list[Reason] = []
    redactions: set[Coding] = set()
    for consent in ctx.consents:
        if consent.status != "active" or consent.patient_id != resource.patient_id:
            continue
        result = _evaluate(consent.root, principal, identities, consent_action, resource, now)
        if result is None:
            continue
        decision, path, labels = result
        redactions |= labels  # the patient's wish to hide labelled elements holds whoever permits
        if decision == DENY:
            denies.append(Reason("consent", consent.consent_id, path))
            continue
        if decision == REDACT:
            continue
        if principal.consent_reference and consent.consent_id != principal.consent_reference:
            continue  # a member hospital's token names the one Consent whose permit it relies on
        state = ctx.grants.get(consent.consent_id, GrantStatus.UNKNOWN)
        if state is GrantStatus.LIVE:
            permits.append(Reason("consent", consent.consent_id, path))
        else:
            not_live.append(Reason("consent-grant-not-live", consent.consent_id, path, state.value))

    if denies:
        return Outcome(Decision.DENY, tuple(denies))
    if permits:
        return Outcome(Decision.PERMIT, tuple(permits), _obligations(principal, redactions, policy))

    if principal.consent_reference:
        return Outcome(Decision.NOT_APPLICABLE, tuple(not_live) or (Reason("no-applicable-consent"),))
    if (
        resource.patient_id
        and principal.organization in ctx.care_organizations
        and principal.purpose in policy.treating_purposes
        and principal.role in (policy.writer_roles if action in WRITE_ACTIONS else policy.treating_roles)
    ):
        return Outcome(Decision.PERMIT, (Reason("policy:treating-organisation"),), _obligations(principal, redactions, policy))
    return Outcome(Decision.NOT_APPLICABLE, tuple(not_live) or (Reason("no-applicable-consent"),))


def may_permit_reads(principal: Principal, resource_type: str, ctx: PatientContext, policy: Policy, now: datetime) -> bool:
    """Whether `decide` could permit this principal to read some resource of `resource_type` in ctx's patient's
    compartment. False only where it permits none, whatever the resource says (its codes, dates, labels, id):
    then a search pinned to this patient is answered without looking at their records, in the time a search
    for a patient who does not exist takes (docs/consent-semantics.md, "No existence oracle"). Where unsure,
    True (the search screens each match as ever); tests/consent/test_may_permit.py holds it to `decide`.
    """
    if principal.purpose == policy.break_glass_purpose:
        return principal.role in policy.break_glass_roles and bool(principal.break_glass_reason.strip())
    if policy.patient_sees_own and principal.role == "patient" and principal.patient_id == ctx.patient_id:
        return True
    if resource_type == "Consent" and principal.organization and principal.organization in ctx.requests.values():
        return True  # its own requests (step 3), whatever else the patient decided
    if ctx.index_age_seconds > policy.max_index_age_seconds:
        return False
    identities = principal.identities()
    access = CONSENT_ACTION["read"]
    relevant = [c for c in ctx.consents if c.status == "active" and c.patient_id == ctx.patient_id]
    if any(_denies_every(c.root, principal, identities, access, resource_type, now) for c in relevant):
        return False
    if any(
        ctx.grants.get(c.consent_id, GrantStatus.UNKNOWN) is GrantStatus.LIVE
        and (not principal.consent_reference or c.consent_id == principal.consent_reference)
        and _may_permit(c.root, principal, identities, access, resource_type, now)
        for c in relevant
    ):
        return True  # a live grant that may permit this caller some resource (its provisions decide which)
    if principal.consent_reference:
        return False
    return (
        principal.organization in ctx.care_organizations
        and principal.purpose in policy.treating_purposes
        and principal.role in policy.treating_roles
    )


def _applies_to_caller(
    p: Provision, principal: Principal, identities: frozenset[str], action: str, resource_type: str, now: datetime
) -> bool:
    """Whether `p` may apply to this request, for some resource of `resource_type`: its conditions on the caller,
    the action, the time and the type hold (those on what a resource says are left open)."""
    return (
        (p.period is None or p.period.contains(now))
        and (not p.actor_refs or bool(p.actor_refs & identities))
        and (not p.actions or action in p.actions)
        and (not p.purposes or principal.purpose in p.purposes)
        and (not p.classes or resource_type in p.classes)
    )


def _may_permit(
    p: Provision, principal: Principal, identities: frozenset[str], action: str, resource_type: str, now: datetime
) -> bool:
    """Whether `_evaluate(p, ...)` may be PERMIT for some resource of `resource_type`."""
    if not _applies_to_caller(p, principal, identities, action, resource_type, now):
        return False
    return p.type == PERMIT or any(
        _may_permit(child, principal, identities, action, resource_type, now) for child in p.children)


def _denies_every(
    p: Provision, principal: Principal, identities: frozenset[str], action: str, resource_type: str, now: datetime
) -> bool:
    """Whether `_evaluate(p, ...)` is DENY for every resource of `resource_type`: `p` applies to them all (no
    condition on what a resource says) and, if a deny, no exception of it could permit; if a permit, one of its
    exceptions denies them all (a deny wins among exceptions)."""
    applies_to_every = (
        _applies_to_caller(p, principal, identities, action, resource_type, now)
        and not (p.codes or p.data_refs or p.security_labels)
        and p.data_period is None
    )
    if not applies_to_every:
        return False
    if p.type == DENY:
        return not any(_could_permit(child) for child in p.children)
    return any(_denies_every(child, principal, identities, action, resource_type, now) for child in p.children)


def _could_permit(p: Provision) -> bool:
    return p.type == PERMIT or any(_could_permit(child) for child in p.children)


def decide_new_patient(principal: Principal, care_organizations: frozenset[str], policy: Policy) -> Outcome:
    """The create of a Patient (POST, or PUT to an id that holds nothing): a record nobody has consented about yet,
    so decided by step 6's rule alone, on the care organisations the new Patient itself names (its
    `managingOrganization`, `generalPractitioner`) and the home organisation, which cares for every patient.
    A writer creates only a Patient its organisation will care for, so it can read what it created; an outside
    organisation names itself as the managing organisation."""
    if principal.role not in policy.writer_roles:
        return Outcome(Decision.DENY, (Reason("policy:writer-role"),))
    if (
        principal.organization
        and principal.organization in care_organizations
        and principal.purpose in policy.treating_purposes
    ):
        return Outcome(Decision.PERMIT, (Reason("policy:treating-organisation"),))
    return Outcome(Decision.NOT_APPLICABLE, (Reason("new-patient-not-in-care"),))


def asks_for_itself(principal: Principal, rules: ConsentRules, policy: Policy, now: datetime) -> bool:
    """Whether this Consent, written by `principal`, is a request for access for itself (step 3).

    A request is `proposed` (only the patient's key can make it active), permits (a deny needs no asking and
    would take effect at once), and its root provision names actors, all of them the asker's own identities
    (its organisation, its practitioner): every provision below is then an exception that only ever applies to
    the asker. It says until when, no further than `max_request_days` ahead: what the patient is asked to
    grant is bounded, and an unanswered request expires (its grant could no longer be signed).
    """
    root = rules.root
    end = root.period.end if root.period is not None else None
    return (
        bool(principal.organization)
        and principal.role in policy.requester_roles
        and not principal.consent_reference
        and rules.status == "proposed"
        and root.type == PERMIT
        and bool(root.actor_refs)
        and root.actor_refs <= principal.identities()
        and end is not None
        and now < end <= now + timedelta(days=policy.max_request_days)
    )


def _obligations(principal: Principal, redactions: set[Coding], policy: Policy) -> tuple[Obligation, ...]:
    out: list[Obligation] = []
    if redactions:
        out.append(Obligation("redact-security-labels", frozenset(redactions)))
    if principal.purpose in policy.deidentify_purposes:
        out.append(Obligation("de-identify"))
    return tuple(out)


def _coding_match(rule: frozenset[Coding], facts: frozenset[Coding]) -> bool:
    for system, code in rule:
        for fsys, fcode in facts:
            if fcode == code and (not system or system == fsys):
                return True
    return False


# Result of a provision that applies: (permit | deny | redact, provision path, element labels to redact).
# "redact" is not a decision: a deny that matched only element-level labels asks for those elements to
# be removed and leaves the decision to its parent, other consents or the policy defaults.
REDACT = "redact"
_Result = tuple[str, str, frozenset[Coding]]


def _evaluate(
    p: Provision, principal: Principal, identities: frozenset[str], action: str, res: ResourceFacts, now: datetime
) -> _Result | None:
    """The result of provision `p` for this request, nested provisions as exceptions; None if it does not apply."""
    deny = p.type == DENY
    if p.period is not None and not p.period.contains(now):
        return None
    if p.actor_refs and not (p.actor_refs & identities):
        return None
    if p.actions and action not in p.actions:
        return None
    if p.purposes and principal.purpose not in p.purposes:
        return None
    if p.classes and res.resource_type not in p.classes:
        return None
    if p.codes and not _coding_match(p.codes, res.codes):
        return None
    if p.data_refs and f"{res.resource_type}/{res.resource_id}" not in p.data_refs:
        return None
    if p.data_period is not None:
        if res.date_range is None:
            if not deny:
                return None  # unknown date: a permit cannot vouch for it, a deny still applies
        elif not p.data_period.covers(*res.date_range):
            return None
    if p.security_labels and not _coding_match(p.security_labels, res.security_labels):
        labelled = frozenset(f for f in res.element_labels if _coding_match(p.security_labels, frozenset((f,))))
        if deny and labelled:
            return (REDACT, p.path, labelled)
        return None

    redactions: frozenset[Coding] = frozenset()
    permitted_by: str | None = None
    for child in p.children:
        r = _evaluate(child, principal, identities, action, res, now)
        if r is None:
            continue
        if r[0] == DENY:
            return r  # deny wins among exceptions
        redactions |= r[2]
        if r[0] == PERMIT and permitted_by is None:
            permitted_by = r[1]
    if permitted_by is not None:
        return (PERMIT, permitted_by, redactions)
    return (p.type, p.path, redactions)
