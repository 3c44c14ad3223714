"""The CDS Hooks `patient-consent-consult` question answered by the consent engine (impure shell).

Another system asks "may this actor, for this purpose, have this patient's data of these classes?":
patient and actor come as identifiers, which are resolved through the store's blind indexes; the
answer is the engine's, over the same index the API enforces with, and the question itself is
recorded in the access log (action `decide`) under the asking client, against the patient when one was
resolved. docs/consent-semantics.md ("CDS Hooks: who may ask, and what strangers learn") states the rules:

- Who asks. A client asks as itself (its registered organisation, role and references), whether or not
  it sends `context.actor`; naming anyone else there is refused (403) unless the client is registered as a
  consent-decision consumer for others (`consult_for_others`) or is the service itself. Such a client
  asks for the actor it names: resolved to a Practitioner it asks as a clinician, otherwise as a system of
  the resolved organisation.
- What strangers learn. An actor with no relationship to the patient (its organisation is not one of the
  patient's care organisations, and no active Consent of the patient names it in a provision actor) is
  told NO_CONSENT unless the answer is a permit, exactly as for a patient nobody knows here (or ambiguous
  identifiers): the same steps run, the same bytes come back. A permit stands: the patient chose to share.

Where the hook is loose, we decide: the purpose is the first `purposeOfUse` (else from `scope`:
research -> HRESCH, otherwise TREAT); with several classes, every class must be permitted (a deny of
any is the answer; anything else not permitted is NO_CONSENT); `category` (the consent category the
asker cares about) does not narrow which Consents count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_adapters import search as fhir_search
from fhir_adapters.consent import Provision
from fhir_adapters.errors import FhirInputError
from healthledger.auth.scopes import scope_allows
from healthledger.consent.consult_hook import ConsultDecision, ConsultRequest
from healthledger.consent.enforcement import ConsentPolicy
from healthledger.consent.engine import (
    Decision,
    Obligation,
    Outcome,
    PatientContext,
    Reason,
    ResourceFacts,
    decide,
)
from healthledger.errors import Forbidden, InsufficientScope
from healthledger.principal import HRESCH, PURPOSES, TREAT, Principal
from healthledger.store.repository import ResourceStore

_SCOPE_PURPOSE = {"research": HRESCH, "treatment": TREAT}
NOT_ITSELF = (
    "this client may ask only about itself: context.actor must name its own organisation (or be left out); "
    "asking on behalf of others needs a registration as a consent-decision consumer for others"
)


class ConsentConsultant:
    """`consult(request)` for `cds_hooks_blueprint`; `caller()` gives the authenticated principal."""

    def __init__(self, store: ResourceStore, policy: ConsentPolicy, caller: Callable[[], Principal]) -> None:
        self.store = store
        self.policy = policy
        self.caller = caller

    def __call__(self, request: ConsultRequest) -> ConsultDecision:
        caller = self.caller()
        classes_asked = ",".join(request.classes)[:64]
        with self.store.unit_of_work(caller) as uow:
            conn = uow.conn
            if not caller.unrestricted and not scope_allows(
                caller.scopes or (), caller.scope_context, "Consent", "read"
            ):
                self.policy.record(conn, caller, "decide", classes_asked, "", "", _NO_SCOPE)
                raise InsufficientScope("asking for consent decisions needs a scope that allows reading Consent")
            principal = self._asking(uow, request, caller)
            if principal is None:
                self.policy.record(conn, caller, "decide", classes_asked, "", "", _NOT_ITSELF)
                raise Forbidden(NOT_ITSELF)
            patient_id = _resolve(uow, "Patient", request.patient_identifiers)
            now = self.policy.clock()
            # No fast path for a patient nobody knows: the same steps over a patient with no Consents and
            # no care organisations, so the answer comes back as a stranger's about a known patient does.
            ctx = PatientContext("") if patient_id is None else self.policy.patient_context(conn, patient_id, now)
            outcome = _combine([
                decide(principal, "read", ResourceFacts(cls, "", ctx.patient_id), ctx, self.policy.policy, now)
                for cls in request.classes or ("",)
            ])
            if patient_id is None:
                answer, recorded = _NO_CONSENT, _UNKNOWN
            elif outcome.permitted or related(principal, ctx):
                answer = recorded = outcome
            else:
                # A stranger learns nothing but a permit the patient chose to give: not a deny, not a reason.
                answer, recorded = _NO_CONSENT, _stranger(outcome)
            self.policy.record(conn, caller, "decide", classes_asked, "", patient_id or "", recorded)
        return ConsultDecision.from_outcome(answer)

    def _asking(self, uow: Any, request: ConsultRequest, caller: Principal) -> Principal | None:
        """Who the question is asked for; None if the caller names another actor and may not."""
        purposes = [p for p in request.purposes if p in PURPOSES]
        purpose = purposes[0] if purposes else _SCOPE_PURPOSE.get(request.scope, TREAT)
        named = [_actor_references(uow, identifier) for identifier in request.actor_identifiers]
        if caller.unrestricted or caller.consult_for_others:
            if not named:
                return _as_itself(caller, purpose)
            refs = frozenset[str]().union(*named)
            return Principal(
                actor_id=f"consult:{caller.actor_id}",
                role="clinician" if any(r.startswith("Practitioner/") for r in refs) else "system",
                organization=_first_organization(named),
                purpose=purpose,
                references=refs,
                scopes=(),
                via="api",
            )
        own = caller.identities()
        # Every identifier must name the caller itself: one that resolves to nothing, to another actor
        # or to several (one of them another) is refused alike.
        if any(not refs or not refs <= own for refs in named):
            return None
        return _as_itself(caller, purpose)


def related(asking: Principal, ctx: PatientContext) -> bool:
    """Has the asking actor a relationship with the patient? Its organisation is one of the patient's care
    organisations, or one of the patient's active Consents names it (its organisation or one of its
    references) in a provision actor, at any depth, permit or deny."""
    if asking.organization and asking.organization in ctx.care_organizations:
        return True
    identities = asking.identities()
    return bool(identities) and any(
        consent.status == "active" and _names(consent.root, identities) for consent in ctx.consents
    )


def _names(provision: Provision, identities: frozenset[str]) -> bool:
    return bool(provision.actor_refs & identities) or any(_names(child, identities) for child in provision.children)


def _as_itself(caller: Principal, purpose: str) -> Principal:
    """The caller's own registered identity (organisation, role, references), asking for `purpose`."""
    return Principal(
        actor_id=f"consult:{caller.actor_id}",
        role=caller.role,
        organization=caller.organization,
        purpose=purpose,
        references=caller.references,
        scopes=(),
        via="api",
    )


def _first_organization(named: list[frozenset[str]]) -> str:
    """The organisation the actor identifiers name first (in request order), if any."""
    return next((ref for refs in named for ref in sorted(refs) if ref.startswith("Organization/")), "")


_UNKNOWN = Outcome(Decision.NOT_APPLICABLE, (Reason("unknown-patient"),))
_NO_CONSENT = Outcome(Decision.NOT_APPLICABLE, ())
_NO_SCOPE = Outcome(Decision.DENY, (Reason("scope", detail="system/Consent"),))
_NOT_ITSELF = Outcome(Decision.DENY, (Reason("consult:actor-not-itself"),))


def _stranger(outcome: Outcome) -> Outcome:
    """What is recorded when a stranger was told NO_CONSENT: that, and the engine's own reasons."""
    return Outcome(Decision.NOT_APPLICABLE, (Reason("consult:no-relationship"), *outcome.reasons))


def _combine(outcomes: list[Outcome]) -> Outcome:
    denies = [o for o in outcomes if o.decision is Decision.DENY]
    if denies:
        return Outcome(Decision.DENY, tuple(r for o in denies for r in o.reasons))
    if all(o.permitted for o in outcomes):
        labels = frozenset(label for o in outcomes for ob in o.obligations for label in ob.labels)
        kinds = {ob.kind for o in outcomes for ob in o.obligations}
        obligations = tuple(
            Obligation(kind, labels if kind == "redact-security-labels" else frozenset()) for kind in sorted(kinds)
        )
        return Outcome(Decision.PERMIT, tuple(r for o in outcomes for r in o.reasons), obligations)
    return Outcome(Decision.NOT_APPLICABLE, tuple(r for o in outcomes if not o.permitted for r in o.reasons))


def _actor_references(uow: Any, identifier: tuple[str, str]) -> frozenset[str]:
    """The Organization and Practitioner references one actor identifier resolves to."""
    return frozenset(
        {f"Organization/{i}" for i in _resolve_all(uow, "Organization", (identifier,))}
        | {f"Practitioner/{i}" for i in _resolve_all(uow, "Practitioner", (identifier,))}
    )


def _resolve_all(uow: Any, resource_type: str, identifiers: tuple[tuple[str, str], ...]) -> list[str]:
    found: list[str] = []
    for system, value in identifiers:
        token = f"{system}|{value}" if system else value
        try:
            query = fhir_search.parse_search(resource_type, [("identifier", token)])
        except FhirInputError:
            continue
        for item in uow.search(resource_type, query, count=10, offset=0, check=False).items:
            if item.id not in found:
                found.append(item.id)
    return found


def _resolve(uow: Any, resource_type: str, identifiers: tuple[tuple[str, str], ...]) -> str | None:
    """The one resource the identifiers name; None if none or if they name several (ambiguous)."""
    found = _resolve_all(uow, resource_type, identifiers)
    return found[0] if len(found) == 1 else None
