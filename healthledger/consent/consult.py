"""The CDS Hooks `patient-consent-consult` question answered by the consent engine (impure shell).

Another system asks "may this actor, for this purpose, have this patient's data of these classes?":
patient and actor come as identifiers, which are resolved through the store's blind indexes; the
answer is the engine's, over the same index the API enforces with, and the question itself is
recorded in the access log (action `decide`) under the asking client.

Where the hook is loose, we decide: an actor resolved to a Practitioner asks as a clinician, otherwise
as a system of the resolved organisation; the purpose is the first `purposeOfUse` (else from `scope`:
research -> HRESCH, otherwise TREAT); with several classes, every class must be permitted (a deny of
any is the answer; anything else not permitted is NO_CONSENT); `category` (the consent category the
asker cares about) does not narrow which Consents count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_adapters import search as fhir_search
from fhir_adapters.errors import FhirInputError
from healthledger.api.cds_hooks import ConsultDecision, ConsultRequest
from healthledger.auth.scopes import scope_allows
from healthledger.consent.enforcement import ConsentPolicy
from healthledger.consent.engine import Decision, Obligation, Outcome, Reason, ResourceFacts, decide
from healthledger.errors import Forbidden, NotFound
from healthledger.principal import HRESCH, PURPOSES, TREAT, Principal

_SCOPE_PURPOSE = {"research": HRESCH, "treatment": TREAT}


class ConsentConsultant:
    """`consult(request)` for `cds_hooks_blueprint`; `caller()` gives the authenticated principal."""

    def __init__(self, store: Any, policy: ConsentPolicy, caller: Callable[[], Principal]) -> None:
        self.store = store
        self.policy = policy
        self.caller = caller

    def __call__(self, request: ConsultRequest) -> ConsultDecision:
        caller = self.caller()
        if not caller.unrestricted and not scope_allows(caller.scopes or (), caller.scope_context, "Consent", "read"):
            raise Forbidden("asking for consent decisions needs a scope that allows reading Consent")
        with self.store.unit_of_work(caller) as uow:
            conn = uow.conn
            patient_id = _resolve(uow, "Patient", request.patient_identifiers)
            classes = request.classes or ("",)
            if patient_id is None:
                self.policy.record(conn, caller, "decide", ",".join(request.classes)[:64], "", "", _UNKNOWN)
                raise NotFound("no such patient")
            principal = self._asking(uow, request, caller)
            now = self.policy.clock()
            ctx = self.policy.patient_context(conn, patient_id, now)
            outcomes = [
                decide(principal, "read", ResourceFacts(cls, "", patient_id), ctx, self.policy.policy, now)
                for cls in classes
            ]
            outcome = _combine(outcomes)
            self.policy.record(conn, caller, "decide", ",".join(request.classes)[:64], "", patient_id, outcome)
        return ConsultDecision.from_outcome(outcome)

    def _asking(self, uow: Any, request: ConsultRequest, caller: Principal) -> Principal:
        orgs = _resolve_all(uow, "Organization", request.actor_identifiers)
        practitioners = _resolve_all(uow, "Practitioner", request.actor_identifiers)
        purposes = [p for p in request.purposes if p in PURPOSES]
        purpose = purposes[0] if purposes else _SCOPE_PURPOSE.get(request.scope, TREAT)
        refs = frozenset({f"Organization/{o}" for o in orgs} | {f"Practitioner/{p}" for p in practitioners})
        return Principal(
            actor_id=f"consult:{caller.actor_id}",
            role="clinician" if practitioners else "system",
            organization=f"Organization/{orgs[0]}" if orgs else "",
            purpose=purpose,
            references=refs,
            scopes=(),
            via="api",
        )


_UNKNOWN = Outcome(Decision.NOT_APPLICABLE, (Reason("unknown-patient"),))


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
