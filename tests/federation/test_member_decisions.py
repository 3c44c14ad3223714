"""Properties: the engine's decision for another member hospital against a small reference model, and the
record-locator parser on any input."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapters.consent import ConsentRules, Provision
from healthledger.consent.engine import Decision, GrantStatus, PatientContext, Policy, ResourceFacts, decide
from healthledger.errors import BadRequest
from healthledger.federation.locators import Locator, new_locator, parse_locator
from healthledger.principal import Principal

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ME, OTHER = "Organization/hospital-b", "Organization/hospital-c"
TYPES = ("Observation", "Condition")
PURPOSES = ("TREAT", "HRESCH")


@dataclass(frozen=True)
class Plan:
    """One of the patient's Consents, as the reference model sees it."""

    consent_id: str
    kind: str  # permit | deny
    active: bool
    live: bool
    actor: str | None  # None: names nobody (applies to everyone)
    purpose: str | None
    type_: str | None


plans = st.builds(
    Plan,
    consent_id=st.sampled_from(["c1", "c2", "c3", "c4"]),
    kind=st.sampled_from(["permit", "deny"]),
    active=st.booleans(),
    live=st.booleans(),
    actor=st.sampled_from([None, ME, OTHER]),
    purpose=st.sampled_from([None, *PURPOSES]),
    type_=st.sampled_from([None, *TYPES]),
)


def applies(p: Plan, purpose: str, type_: str) -> bool:
    return ((p.actor is None or p.actor == ME) and (p.purpose is None or p.purpose == purpose)
            and (p.type_ is None or p.type_ == type_))


def reference(consents: list[Plan], named: str, purpose: str, type_: str) -> bool:
    """A member relying on Consent `named` may read a record iff no active deny applies, and the named Consent
    is an active, live permit that applies. Nothing else permits it (no other Consent, no policy default)."""
    active = [p for p in consents if p.active]
    if any(p.kind == "deny" and applies(p, purpose, type_) for p in active):
        return False
    return any(p.consent_id == named and p.kind == "permit" and p.live and applies(p, purpose, type_) for p in active)


def rules(p: Plan) -> ConsentRules:
    return ConsentRules(
        consent_id=p.consent_id, patient_id="pat", status="active" if p.active else "inactive", scopes=frozenset(),
        root=Provision(
            type=p.kind, path="Consent.provision",
            actor_refs=frozenset({p.actor}) if p.actor else frozenset(),
            purposes=frozenset({p.purpose}) if p.purpose else frozenset(),
            classes=frozenset({p.type_}) if p.type_ else frozenset(),
        ),
    )


@settings(max_examples=400, deadline=None)
@given(
    consents=st.lists(plans, max_size=4, unique_by=lambda p: p.consent_id),
    named=st.sampled_from(["c1", "c2", "c3", "c4"]),
    purpose=st.sampled_from(PURPOSES),
    type_=st.sampled_from(TYPES),
    care=st.booleans(),
)
def test_a_member_is_decided_by_its_named_consent_alone(
    consents: list[Plan], named: str, purpose: str, type_: str, care: bool
) -> None:
    principal = Principal("member:hospital-b/Practitioner/1", role="system", organization=ME, purpose=purpose,
                          scopes=(), consent_reference=named)
    ctx = PatientContext(
        "pat", consents=[rules(p) for p in consents],
        grants={p.consent_id: GrantStatus.LIVE if p.live else GrantStatus.REVOKED for p in consents},
        care_organizations=frozenset({ME}) if care else frozenset(),  # even a care organisation gets no default
    )
    outcome = decide(principal, "read", ResourceFacts(type_, "r1", "pat"), ctx, Policy(), NOW)
    assert (outcome.decision is Decision.PERMIT) == reference(consents, named, purpose, type_)


@given(org=st.from_regex(r"[a-z0-9\-.]{1,40}", fullmatch=True), consent=st.from_regex(r"[a-z0-9\-]{1,64}", fullmatch=True))
def test_a_locator_reads_back(org: str, consent: str) -> None:
    made = new_locator(org, consent)
    assert parse_locator(made.encode()) == made
    assert parse_locator("  " + made.encode() + "\n") == made


@given(st.text(max_size=600))
def test_any_text_is_a_locator_or_a_clear_refusal(text: str) -> None:
    try:
        parsed = parse_locator(text)
    except BadRequest as exc:
        assert len(text.strip()) < 20 or text.strip() not in exc.message  # never echoes what it was given
        return
    assert isinstance(parsed, Locator) and parsed.consent.startswith("Consent/")


@given(st.binary(max_size=300))
def test_any_payload_after_the_prefix_is_refused_or_read(payload: bytes) -> None:
    import base64

    text = "HLRL1." + base64.urlsafe_b64encode(payload).decode().rstrip("=")
    try:
        parse_locator(text)
    except BadRequest:
        pass
