"""Feasibility without disclosure: how many of this hospital's patients meet a study's criteria, as a
differentially private count under a privacy budget kept in the database.

The mechanism (Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014, §3.3; the discrete
form: Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", 2020, and Ghosh et al.'s
geometric mechanism): each patient contributes at most one row to the counted data set (the privacy unit is
a patient: `unit_of(contributions=1)`), so the count has sensitivity 1, and OpenDP adds discrete Laplace
noise of scale 1/ε (`make_count >> then_laplace` over integers). The exact count never leaves
`eligible_count` except into the mechanism; nothing stores it.

What an answer discloses, in order (docs/research.md, "Feasibility without disclosure"):
1. Only the study's owning researcher may ask; anyone else gets the answer for a study that does not exist.
2. A question is the canonical criteria document (the study's, or one the researcher tries instead): the
   same question again is answered from its stored release, spending nothing, so repeating a question
   cannot average the noise away.
3. A new question spends `epsilon_per_query` from the study's budget and from the researcher's budget
   across all their studies, both in one transaction by conditional updates (spent + ε <= total), so
   concurrent workers and restarts cannot overspend; with either budget spent the answer is 403.
4. The threshold applies to the noisy count: below it (11 by default, never less) the answer is "fewer than
   11" without a number (thresholding the exact count would leak through differencing).
5. Every answer carries the ε it spent (0 for a repeat), the study's ε spent and left, and a 95 % interval
   computed from the noise scale alone; each answer is an access-log entry.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from fhir_adapters import search as fhir_search
from fhir_adapters.eligibility import eligibility_facts
from fhir_adapters.research_study import StudyTerms, study_reference
from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_accesses
from healthledger.errors import BadRequest, Forbidden, HealthLedgerError
from healthledger.principal import HRESCH, Principal
from healthledger.research.data_models import FeasibilityRelease, PrivacyBudget
from healthledger.research.participants import owned_study
from healthledger.store.repository import ResourceStore
from zk.credential import PatientAttributes
from zk.criteria import compile_criteria, evaluate
from zk.errors import CriteriaError

MIN_THRESHOLD = 11  # CMS cell-size suppression policy: no cell below 11 is shown
CONFIDENCE = 0.95
MICRO = 1_000_000  # budgets are kept in micro-ε: integer sums, no floating-point drift
MECHANISM = "discrete Laplace (OpenDP 0.16.0, make_count >> then_laplace), sensitivity 1: each patient counted once"
_PAGE = 1000


class BudgetSpent(Forbidden):
    """The privacy budget does not allow another release (repeated questions are still answered)."""


class _NoRoom(Exception):
    def __init__(self, study: PrivacyBudget, researcher: PrivacyBudget) -> None:
        self.study, self.researcher = study, researcher


# Spend ε only if it fits: atomic on both databases (the row is locked by the UPDATE), so concurrent workers
# cannot both pass a check and overspend.
_SPEND = text(
    "UPDATE research_privacy_budgets SET spent_micro = spent_micro + :eps "
    "WHERE tenant = :tenant AND holder = :holder AND spent_micro + :eps <= total_micro"
)


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """What the hospital allows (set by its settings, not by the researcher)."""

    epsilon_per_query: float = 0.25
    epsilon_per_study: float = 1.0
    epsilon_per_researcher: float = 3.0
    threshold: int = MIN_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("epsilon_per_query", "epsilon_per_study", "epsilon_per_researcher"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"feasibility {name} must be a positive number")
        if self.threshold < MIN_THRESHOLD:
            raise ValueError(f"the feasibility threshold may not be below {MIN_THRESHOLD}")

    @property
    def query_micro(self) -> int:
        return round(self.epsilon_per_query * MICRO)


# -- the pure core ------------------------------------------------------------------------------------


def canonical_question(document: Mapping[str, Any]) -> tuple[str, str]:
    """(canonical JSON, its sha256 hex): the same criteria written differently are the same question."""
    canonical = json.dumps(_canonical_value(document), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return canonical, hashlib.sha256(canonical.encode()).hexdigest()


def _canonical_value(value: Any) -> Any:
    """Numbers as one spelling (6.5, 6.50 and Decimal("6.5") alike; 40.0 as 40), recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        exact = Decimal(str(value))
        if not exact.is_finite():
            return str(exact)
        return int(exact) if exact == exact.to_integral_value() else float(exact)
    if isinstance(value, Mapping):
        return {str(k): _canonical_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    return str(value)


def noise_scale(epsilon: float) -> float:
    """Discrete Laplace scale for a count of sensitivity 1 at ε (Dwork & Roth, Theorem 3.6)."""
    return 1.0 / epsilon


def half_width(epsilon: float, confidence: float = CONFIDENCE) -> int:
    """Half-width of the interval that holds the true count with `confidence` (from the scale alone)."""
    from opendp.accuracy import discrete_laplacian_scale_to_accuracy

    return math.ceil(discrete_laplacian_scale_to_accuracy(noise_scale(epsilon), 1.0 - confidence))


def noisy_count(exact: int, epsilon: float) -> int:
    """The count of `exact` patients (one row each) released with OpenDP's discrete Laplace mechanism."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    measurement = dp.t.make_count(
        dp.vector_domain(dp.atom_domain(T=bool)), dp.symmetric_distance(), TO=dp.i64
    ) >> dp.m.then_laplace(scale=noise_scale(epsilon))
    if measurement.map(1) > epsilon * (1 + 1e-9):  # the privacy map says what one patient can change
        raise AssertionError("the feasibility mechanism would spend more than its ε")
    return int(measurement([True] * exact))


@dataclass(frozen=True, slots=True)
class Release:
    """A stored answer as shown: never the exact count."""

    study_id: str
    question_hash: str
    epsilon: float
    reference_date: date
    count: int | None  # None: below the threshold
    threshold: int
    half_width: int
    released_at: datetime

    @property
    def interval(self) -> tuple[int, int]:
        if self.count is None:  # from public facts only: below the threshold, plus the noise's reach
            return 0, self.threshold - 1 + self.half_width
        return max(0, self.count - self.half_width), self.count + self.half_width


@dataclass(frozen=True, slots=True)
class Answer:
    release: Release
    repeat: bool
    epsilon_spent_now: float
    study_spent: float
    study_total: float
    researcher_left: float

    def parameters(self) -> dict[str, Any]:
        """FHIR R4 Parameters (docs/research.md lists each parameter)."""
        r = self.release
        low, high = r.interval
        params: list[dict[str, Any]] = [{"name": "study", "valueReference": {"reference": study_reference(r.study_id)}}]
        if r.count is None:
            params.append({"name": "countBelow", "valueInteger": r.threshold})
            params.append({"name": "result", "valueString": f"fewer than {r.threshold}"})
        else:
            params.append({"name": "count", "valueInteger": r.count})
            params.append({"name": "result", "valueString": f"about {r.count} patients (noisy count)"})
        params += [
            {"name": "interval", "valueRange": {"low": {"value": low}, "high": {"value": high}}},
            {"name": "confidence", "valueDecimal": CONFIDENCE},
            {"name": "epsilon", "valueDecimal": _decimal(r.epsilon)},
            {"name": "epsilonSpentNow", "valueDecimal": _decimal(self.epsilon_spent_now)},
            {"name": "epsilonSpent", "valueDecimal": _decimal(self.study_spent)},
            {"name": "epsilonRemaining", "valueDecimal": _decimal(max(0.0, self.study_total - self.study_spent))},
            {"name": "epsilonBudget", "valueDecimal": _decimal(self.study_total)},
            {"name": "researcherEpsilonRemaining", "valueDecimal": _decimal(max(0.0, self.researcher_left))},
            {"name": "repeat", "valueBoolean": self.repeat},
            {"name": "releasedAt", "valueInstant": r.released_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
            {"name": "referenceDate", "valueDate": r.reference_date.isoformat()},
            {"name": "criteriaHash", "valueString": r.question_hash},
            {"name": "mechanism", "valueString": f"{MECHANISM}; scale {noise_scale(r.epsilon):g}"},
        ]
        return {"resourceType": "Parameters", "parameter": params}


def _decimal(value: float) -> float:
    return round(value, 6)


def eligible_count(store: ResourceStore, conn: Connection, document: Mapping[str, Any], reference: date) -> int:
    """How many patients meet `document` at `reference` (zk.criteria.evaluate over their eligibility facts).

    The exact count: it stays here and goes only into the mechanism. A patient without a full birth date
    cannot hold a credential, so cannot enrol, and is not counted.
    """
    uow = store.view_on(conn)
    related: dict[str, list[dict[str, Any]]] = {}
    for resource_type in ("Condition", "Observation"):
        for resource in _all(uow, resource_type):
            ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
            if isinstance(ref, str) and ref.startswith("Patient/"):
                related.setdefault(ref.removeprefix("Patient/"), []).append(resource)
    count = 0
    for patient in _all(uow, "Patient"):
        facts = eligibility_facts(patient, related.get(str(patient.get("id")), ()))
        if facts.birth_date is None:
            continue
        attrs = PatientAttributes(facts.birth_date, facts.sex, facts.conditions, facts.labs)
        if evaluate(document, attrs, reference):
            count += 1
    return count


def _all(uow: Any, resource_type: str) -> Iterator[dict[str, Any]]:
    query = fhir_search.parse_search(resource_type, [])
    offset: int | None = 0
    while offset is not None:
        page = uow.search(resource_type, query, count=_PAGE, offset=offset, check=False)
        for item in page.items:
            if item.resource is not None:
                yield item.resource
        offset = page.next_offset


# -- the shell: budgets and releases in the database --------------------------------------------------


class Feasibility:
    """`$feasibility` over one store: owner check, stored releases, budgets, the mechanism, the access log."""

    def __init__(
        self,
        store: ResourceStore,
        policy: BudgetPolicy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        count: Callable[[ResourceStore, Connection, Mapping[str, Any], date], int] = eligible_count,
    ) -> None:
        self.store = store
        self.engine: Engine = store.engine
        self.policy = policy
        self.clock = clock
        self._count = count

    def answer(self, principal: Principal, study_id: str, criteria: Mapping[str, Any] | None = None) -> Answer:
        """Answer the study's question (or `criteria` tried instead); raises NotFound, BadRequest or BudgetSpent."""
        now = self.clock()
        with self.engine.connect() as conn:
            try:
                terms = owned_study(self.store, conn, principal, study_id)
            except HealthLedgerError:
                self._log(principal, study_id, "deny", "feasibility:not-owner-or-missing", now)
                raise
        document = dict(criteria if criteria is not None else terms.criteria)
        reference = now.date()
        try:
            compile_criteria(document, reference, len)  # rejects what the circuit cannot express, by name
        except CriteriaError as exc:
            raise BadRequest(f"criteria: {exc}", expression="Parameters.parameter[criteria]") from None
        _, question = canonical_question(document)
        stored = self._stored(study_id, question)
        if stored is not None:
            return self._repeat(principal, terms, stored, now)
        with self.engine.connect() as conn:
            exact = self._count(self.store, conn, document, reference)
        try:
            return self._release(principal, terms, question, exact, reference, now)
        except IntegrityError:
            # Another worker released the same question at the same moment: its answer is the answer.
            again = self._stored(study_id, question)
            if again is None:
                raise
            return self._repeat(principal, terms, again, now)

    # -- steps ----------------------------------------------------------------------------------
    def _stored(self, study_id: str, question: str) -> Release | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(FeasibilityRelease).where(
                    FeasibilityRelease.tenant == self.store.tenant,
                    FeasibilityRelease.study_id == study_id,
                    FeasibilityRelease.question_hash == question,
                )
            ).first()
        if row is None:
            return None
        return Release(
            study_id=row.study_id, question_hash=row.question_hash, epsilon=row.epsilon_micro / MICRO,
            reference_date=date.fromisoformat(row.reference_date), count=row.noisy_count, threshold=row.threshold,
            half_width=row.half_width, released_at=_aware(row.released_at),
        )

    def _repeat(self, principal: Principal, terms: StudyTerms, stored: Release, now: datetime) -> Answer:
        with self.engine.begin() as conn:
            study, researcher = self._budgets(conn, terms, principal)
            record_accesses(conn, [self._entry(principal, terms.study_id, "permit", "feasibility:repeat", now)])
        return Answer(stored, True, 0.0, study.spent_micro / MICRO, study.total_micro / MICRO,
                      (researcher.total_micro - researcher.spent_micro) / MICRO)

    def _release(
        self, principal: Principal, terms: StudyTerms, question: str, exact: int, reference: date, now: datetime
    ) -> Answer:
        epsilon_micro = self.policy.query_micro
        epsilon = epsilon_micro / MICRO
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")  # one writer: the budget check and spend are one step
                study, researcher = self._budgets(conn, terms, principal)
                for holder in (study.holder, researcher.holder):
                    spent = conn.execute(_SPEND, {"eps": epsilon_micro, "tenant": self.store.tenant, "holder": holder})
                    if spent.rowcount != 1:
                        raise _NoRoom(study, researcher)  # rolls back whatever was spent here
                noisy = noisy_count(exact, epsilon)
                release = Release(
                    study_id=terms.study_id, question_hash=question, epsilon=epsilon, reference_date=reference,
                    count=noisy if noisy >= self.policy.threshold else None, threshold=self.policy.threshold,
                    half_width=half_width(epsilon), released_at=now,
                )
                conn.execute(
                    FeasibilityRelease.__table__.insert().values(  # type: ignore[attr-defined]
                        tenant=self.store.tenant, study_id=terms.study_id, question_hash=question,
                        requested_by=principal.actor_id, epsilon_micro=epsilon_micro,
                        reference_date=reference.isoformat(), noisy_count=release.count, threshold=release.threshold,
                        half_width=release.half_width, released_at=now,
                    )
                )
                record_accesses(conn, [self._entry(
                    principal, terms.study_id, "permit", f"feasibility:release(epsilon={epsilon:g})", now)])
        except _NoRoom as full:
            self._log(principal, terms.study_id, "deny", "feasibility:budget-spent", now)
            study, researcher = full.study, full.researcher
            raise BudgetSpent(
                f"the privacy budget is spent (study: ε {study.spent_micro / MICRO:g} of "
                f"{study.total_micro / MICRO:g} used; researcher: ε "
                f"{max(0, researcher.total_micro - researcher.spent_micro) / MICRO:g} left; each new question "
                f"costs ε {epsilon:g}); questions asked before are still answered from their stored releases"
            ) from None
        return Answer(
            release, False, epsilon, (study.spent_micro + epsilon_micro) / MICRO, study.total_micro / MICRO,
            (researcher.total_micro - researcher.spent_micro - epsilon_micro) / MICRO,
        )

    def _budgets(self, conn: Connection, terms: StudyTerms, principal: Principal) -> tuple[PrivacyBudget, PrivacyBudget]:
        """The study's and the researcher's budget rows (made on first use with the policy's totals)."""
        rows = []
        for holder, total in (
            (study_reference(terms.study_id), self.policy.epsilon_per_study),
            (f"researcher:{principal.actor_id}", self.policy.epsilon_per_researcher),
        ):
            conn.execute(
                text(
                    "INSERT INTO research_privacy_budgets (tenant, holder, total_micro, spent_micro) "
                    "VALUES (:tenant, :holder, :total, 0) ON CONFLICT (tenant, holder) DO NOTHING"
                ),
                {"tenant": self.store.tenant, "holder": holder, "total": round(total * MICRO)},
            )
            row = conn.execute(
                select(PrivacyBudget).where(PrivacyBudget.tenant == self.store.tenant, PrivacyBudget.holder == holder)
            ).one()
            rows.append(PrivacyBudget(tenant=row.tenant, holder=row.holder, total_micro=row.total_micro,
                                      spent_micro=row.spent_micro))
        return rows[0], rows[1]

    def _entry(self, principal: Principal, study_id: str, decision: str, reason: str, now: datetime) -> AccessEntry:
        return AccessEntry(
            time=now, actor=principal.actor_id, organization=principal.organization, role=principal.role,
            purpose=HRESCH, action="search", resource_type="ResearchStudy", resource_id=study_id[:64],
            patient_pseudonym="", decision=decision, reason=reason,
        )

    def _log(self, principal: Principal, study_id: str, decision: str, reason: str, now: datetime) -> None:
        if principal.via == "cli":
            return
        with self.engine.begin() as conn:
            record_accesses(conn, [self._entry(principal, study_id, decision, reason, now)])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
