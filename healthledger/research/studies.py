"""Studies: a researcher's `ResearchStudy` (draft) with its cohort `Group`, checked; `$publish` registers it on
`StudyRegistry` through the outbox and the study becomes `active` when that write is confirmed.

Order of the checks on a new study (`check_study`, pure), each failure naming the element:
1. the caller is a researcher acting for an organisation;
2. title, sponsor, principal investigator and an ethics approval (extension `study-ethics-approval`, an
   Identifier) are present;
3. purpose: `study-purpose-of-use`, if given, is HRESCH (the only purpose a study may ask for);
4. the data categories are resource types a research purpose may receive (clinical data; not the access log,
   consents, free-text documents or billing), each named once;
5. the data period has a start and does not end before it starts;
6. the enrolment window (`ResearchStudy.period`) has an end that is in the future and after its start;
7. the maximum number of participants is a positive integer that fits the contract (uint32);
8. the criteria compile for the eligibility circuit (`zk.criteria.compile_criteria`): every unsupported
   attribute, operator or bound is named by the compiler.
The server sets `status` (draft), the owner (the caller and their organisation), the purpose and the cohort.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, Final

import sqlalchemy as sa
from eth_utils import keccak
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from fhir_adapters.errors import FhirInputError
from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    ETHICS_APPROVAL_URL,
    MAX_PARTICIPANTS_URL,
    OWNER_URL,
    PURPOSE_URL,
    REGISTRATION_URL,
    StudyTerms,
    study_terms,
)
from fhir_adapters.search import parse_search
from healthledger.consent.lifecycle import ChainKeys
from healthledger.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from healthledger.ledger import outbox, relayer
from healthledger.ledger.outbox import OutboxState
from healthledger.principal import HRESCH, Principal
from healthledger.research.credentials import condition_hasher_for
from healthledger.research.criteria_words import characteristics
from healthledger.research.models import PublishedStudy
from healthledger.store.repository import ResourceStore, StoredResource, UnitOfWork
from zk.criteria import CompiledCriteria, compile_criteria
from zk.errors import CriteriaError
from zk.prover import CircuitFiles

V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
MAX_UINT32: Final = 2**32 - 1

# Resource types a study may request for research (HRESCH): clinical data, de-identified on export. Not the
# access log, consents or provenance (about the patient's choices, not their health), not documents or
# media (free text and images cannot be de-identified reliably), not billing or coverage (another purpose).
RESEARCH_TYPES: Final = frozenset({
    "Patient", "Observation", "Condition", "Procedure", "MedicationRequest", "MedicationStatement",
    "MedicationAdministration", "Immunization", "DiagnosticReport", "Encounter", "AllergyIntolerance",
    "CarePlan", "Specimen", "FamilyMemberHistory",
})


def chain_study_id(tenant: str, study_id: str) -> int:
    """The study's id on StudyRegistry: keccak256(tenant/ResearchStudy/id) reduced below 2^248 (a field element)."""
    return int.from_bytes(keccak(text=f"{tenant}/ResearchStudy/{study_id}"), "big") >> 8


@lru_cache(maxsize=4)
def verifying_key_id(files: CircuitFiles | None = None) -> bytes:
    """SHA-256 of the snarkjs verification key the study's proofs are checked with (recorded on-chain)."""
    files = files or CircuitFiles.committed()
    return hashlib.sha256(files.verification_key.read_bytes()).digest()


# ---- pure checks -------------------------------------------------------------------------------------


def _extension(resource: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    for item in resource.get("extension") or []:
        if isinstance(item, Mapping) and item.get("url") == url:
            return item
    return None


def _reference(resource: Mapping[str, Any], element: str, target: str) -> str:
    value = resource.get(element)
    ref = value.get("reference") if isinstance(value, Mapping) else None
    if not isinstance(ref, str) or not ref.startswith(f"{target}/"):
        raise Unprocessable(f"ResearchStudy.{element} must reference a {target}", expression=f"ResearchStudy.{element}")
    return ref


def _terms(resource: Mapping[str, Any]) -> StudyTerms:
    try:
        return study_terms(resource)
    except FhirInputError as exc:
        raise Unprocessable(exc.message, expression=exc.expression) from None


ACCOUNT_SYSTEM: Final = "https://healthledger.dev/fhir/sid/account"  # a Practitioner standing for an account


def _account_name(conn: Connection, store: ResourceStore, actor_id: str) -> str:
    """The display name of a signed-in person's account ("" for an API client or a person without one)."""
    from healthledger.auth.models import User
    from healthledger.auth.users import AccountNames

    if not actor_id.startswith("user:"):
        return ""
    with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
        user = session.get(User, actor_id.removeprefix("user:"))
        return AccountNames(store).display_name(session, user) if user is not None else ""


def check_researcher(principal: Principal) -> None:
    if principal.role != "researcher" or not principal.organization.startswith("Organization/"):
        raise Forbidden("only a researcher acting for an organisation may define studies")


def check_study(resource: Mapping[str, Any], *, now: datetime,
                compile_for: Callable[[Mapping[str, Any], date], CompiledCriteria]) -> StudyTerms:
    """The checks of the module docstring (2-8) on a study as sent; returns its terms."""
    if resource.get("resourceType") != "ResearchStudy":
        raise BadRequest("the body must be a ResearchStudy", expression="ResearchStudy")
    if not isinstance(resource.get("title"), str) or not resource["title"].strip():
        raise Unprocessable("a study needs a title", expression="ResearchStudy.title")
    _reference(resource, "sponsor", "Organization")
    _reference(resource, "principalInvestigator", "Practitioner")
    ethics = _extension(resource, ETHICS_APPROVAL_URL)
    identifier = ethics.get("valueIdentifier") if ethics else None
    if not isinstance(identifier, Mapping) or not str(identifier.get("value") or "").strip():
        raise Unprocessable(
            f"a study needs its ethics approval: extension {ETHICS_APPROVAL_URL} with valueIdentifier "
            "(the approving board's system and the approval number)", expression="ResearchStudy.extension",
        )
    purpose = _extension(resource, PURPOSE_URL)
    if purpose is not None:
        coding = purpose.get("valueCoding") or {}
        if coding.get("code") != HRESCH or coding.get("system") not in (None, V3_ACT_REASON):
            raise Unprocessable(
                f"a study's purpose of use is research ({V3_ACT_REASON}|{HRESCH}); it cannot ask for another",
                expression="ResearchStudy.extension",
            )
    terms = _terms(resource)
    if not terms.categories:
        raise Unprocessable(f"a study must name the data it requests: extension {DATA_CATEGORY_URL}",
                            expression="ResearchStudy.extension")
    seen: set[str] = set()
    for category in terms.categories:
        if category.resource_type not in RESEARCH_TYPES:
            raise Unprocessable(
                f"data category {category.resource_type!r} is broader than the research purpose allows; "
                f"a study may request: {', '.join(sorted(RESEARCH_TYPES))}", expression="ResearchStudy.extension",
            )
        if category.resource_type in seen:
            raise Unprocessable(f"data category {category.resource_type!r} is named twice",
                                expression="ResearchStudy.extension")
        seen.add(category.resource_type)
    period = terms.data_period
    if period is None or period.start is None:
        raise Unprocessable(f"a study must say from when it wants data: extension {DATA_PERIOD_URL} with a start",
                            expression="ResearchStudy.extension")
    if period.end is not None and period.end < period.start:
        raise Unprocessable("the data period ends before it starts", expression="ResearchStudy.extension")
    window = terms.enrolment_window
    if window is None or window.end is None:
        raise Unprocessable("the enrolment window (ResearchStudy.period) needs an end", expression="ResearchStudy.period")
    if window.end <= now:
        raise Unprocessable("the enrolment window (ResearchStudy.period) is in the past", expression="ResearchStudy.period")
    if window.start is not None and window.start >= window.end:
        raise Unprocessable("the enrolment window ends before it starts", expression="ResearchStudy.period")
    if terms.max_participants is None or not 0 < terms.max_participants <= MAX_UINT32:
        raise Unprocessable(f"a study needs a maximum number of participants: extension {MAX_PARTICIPANTS_URL} "
                            f"(1 to {MAX_UINT32})", expression="ResearchStudy.extension")
    if not terms.criteria:
        raise Unprocessable(f"a study needs eligibility criteria: extension {CRITERIA_URL}",
                            expression="ResearchStudy.extension")
    try:
        compile_for(terms.criteria, now.date())
    except CriteriaError as exc:
        raise Unprocessable(f"the eligibility circuit cannot express these criteria: {exc}",
                            expression="ResearchStudy.extension") from None
    return terms


def prepared_study(resource: Mapping[str, Any], principal: Principal, cohort_id: str) -> dict[str, Any]:
    """The study as stored: status draft, the caller as owner, research as purpose, the cohort in `enrollment`."""
    kept = [e for e in resource.get("extension") or []
            if isinstance(e, Mapping) and e.get("url") not in (OWNER_URL, PURPOSE_URL, REGISTRATION_URL)]
    owner = {"url": OWNER_URL, "extension": [
        {"url": "principal", "valueString": principal.actor_id},
        {"url": "organization", "valueReference": {"reference": principal.organization}},
    ]}
    purpose = {"url": PURPOSE_URL, "valueCoding": {"system": V3_ACT_REASON, "code": HRESCH, "display": "healthcare research"}}
    study = {k: v for k, v in resource.items() if k not in ("id", "meta", "status", "enrollment", "extension")}
    return {
        "resourceType": "ResearchStudy", **study, "status": "draft",
        "enrollment": [{"reference": f"Group/{cohort_id}"}], "extension": [*kept, owner, purpose],
    }


def cohort_group(title: str, criteria: Mapping[str, Any]) -> dict[str, Any]:
    """The cohort as a definitional Group: who may join, in words (the circuit checks the same criteria)."""
    return {
        "resourceType": "Group", "type": "person", "actual": False, "name": f"Eligible for: {title}"[:200],
        "characteristic": characteristics(criteria),
    }


def registration_extension(registration: Registration) -> dict[str, Any]:
    """What a patient's prover needs of the published study (`study-registration`, all public values)."""
    return {"url": REGISTRATION_URL, "extension": [
        {"url": "studyId", "valueString": str(registration.chain_study_id)},
        {"url": "criteriaHash", "valueString": str(registration.criteria.criteria_hash)},
        {"url": "verifyingKey", "valueString": registration.verifying_key.hex()},
        {"url": "referenceDate", "valueDate": registration.reference_date.isoformat()},
        {"url": "circuit", "valueString": json.dumps(registration.criteria.circuit_inputs(), sort_keys=True)},
    ]}


@dataclass(frozen=True)
class Registration:
    chain_study_id: int
    criteria: CompiledCriteria
    verifying_key: bytes
    reference_date: date


@dataclass(frozen=True)
class PublishedCircuit:
    """A published study's public circuit inputs, as a prover reads them from the ResearchStudy."""

    chain_study_id: int
    criteria_hash: int
    verifying_key: str
    reference_date: date
    inputs: dict[str, Any]

    @classmethod
    def from_study(cls, study: Mapping[str, Any]) -> PublishedCircuit:
        ext = _extension(study, REGISTRATION_URL)
        if ext is None:
            raise Conflict("this study is not published: it has no on-chain registration to prove against")
        parts = {p.get("url"): p for p in ext.get("extension") or [] if isinstance(p, Mapping)}
        try:
            return cls(
                chain_study_id=int(parts["studyId"]["valueString"]),
                criteria_hash=int(parts["criteriaHash"]["valueString"]),
                verifying_key=str(parts["verifyingKey"]["valueString"]),
                reference_date=date.fromisoformat(parts["referenceDate"]["valueDate"]),
                inputs=json.loads(parts["circuit"]["valueString"]),
            )
        except (KeyError, TypeError, ValueError):
            raise Conflict("this study's registration extension is malformed") from None


def compiled_from_inputs(inputs: Mapping[str, Any]) -> CompiledCriteria:
    """The CompiledCriteria whose `circuit_inputs()` are `inputs` (a prover's copy of the published criteria)."""
    def ints(name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in inputs[name])

    return CompiledCriteria(
        reference_day=int(inputs["referenceDay"]), min_age_days=int(inputs["minAgeDays"]),
        max_age_days=int(inputs["maxAgeDays"]), sex_mask=int(inputs["sexMask"]), flags=int(inputs["flags"]),
        inclusion_codes=ints("inclusionCodes"), exclusion_codes=ints("exclusionCodes"),
        lab_lo=ints("labLo"), lab_hi=ints("labHi"),
    )


# ---- the shell ------------------------------------------------------------------------------------


def _session(conn: Connection) -> Session:
    return Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)


def acting(principal: Principal) -> Principal:
    """The caller, once the research module has decided: the store writes for them and logs it under their name."""
    return replace(principal, scopes=None)


def of_owner_organization(principal: Principal, terms: StudyTerms) -> bool:
    """A researcher of the study's owning organisation: may see its draft and publish it. Its participants,
    counts and exports are its owner's alone (`participants.is_owner`)."""
    return (principal.role == "researcher" and bool(principal.organization)
            and principal.organization == terms.owner_organization)


class Studies:
    """Creating, publishing, listing and reading studies over one store (the tenant's encrypted store)."""

    def __init__(self, store: ResourceStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _compile_for(self, conn: Connection) -> Callable[[Mapping[str, Any], date], CompiledCriteria]:
        hasher = condition_hasher_for(self.store, conn)
        return lambda document, reference: compile_criteria(document, reference, hasher)

    def create(self, resource: dict[str, Any], principal: Principal) -> tuple[StoredResource, StoredResource]:
        """Check and store a new draft study and its cohort Group; (study, group). A study without a
        `principalInvestigator` names the researcher themself (`_own_practitioner`)."""
        check_researcher(principal)
        with self.store.unit_of_work(acting(principal)) as uow:
            if resource.get("resourceType") == "ResearchStudy" and "principalInvestigator" not in resource:
                resource = {**resource, "principalInvestigator": {
                    "reference": f"Practitioner/{self._own_practitioner(uow, principal)}"}}
            terms = check_study(resource, now=self._now(), compile_for=self._compile_for(uow.conn))
            group, _ = uow.create(cohort_group(str(resource["title"]), terms.criteria))
            study, _ = uow.create(prepared_study(resource, principal, group.id))
        return study, group

    def _own_practitioner(self, uow: UnitOfWork, principal: Principal) -> str:
        """The id of the Practitioner that stands for the researcher as a principal investigator: the one
        identified by their account (`ACCOUNT_SYSTEM|actor id`), made on first use with their display name."""
        query = parse_search("Practitioner", [("identifier", f"{ACCOUNT_SYSTEM}|{principal.actor_id}")])
        found = uow.search("Practitioner", query, count=1, offset=0, check=False)
        if found.items:
            return found.items[0].id
        practitioner: dict[str, Any] = {"resourceType": "Practitioner", "identifier": [
            {"system": ACCOUNT_SYSTEM, "value": principal.actor_id}]}
        name = _account_name(uow.conn, self.store, principal.actor_id)
        if name:
            practitioner["name"] = [{"text": name}]
        created, _ = uow.create(practitioner)
        return created.id

    def _owned(self, uow: Any, study_id: str, principal: Principal) -> tuple[StoredResource, StudyTerms]:
        current = uow.peek("ResearchStudy", study_id)
        if current is None or current.resource is None:
            raise NotFound(f"ResearchStudy/{study_id} is not known")
        terms = _terms(current.resource)
        if not of_owner_organization(principal, terms):
            raise NotFound(f"ResearchStudy/{study_id} is not known")  # a denial answers like a miss
        return current, terms

    def publish(self, study_id: str, principal: Principal) -> StoredResource:
        """Register the draft on StudyRegistry through the outbox; it turns active when the write is confirmed."""
        check_researcher(principal)
        now = self.clock()
        with self.store.unit_of_work(acting(principal)) as uow:
            current, terms = self._owned(uow, study_id, principal)
            conn: Connection = uow.conn
            session = _session(conn)
            existing = session.get(PublishedStudy, (self.store.tenant, study_id), with_for_update=True)
            if existing is not None and existing.state == "failed" and terms.status == "draft":
                return self._retry(uow, session, current, existing, now)
            if existing is not None or terms.status != "draft":
                state = f"registration {existing.state}" if existing is not None and terms.status == "draft" else ""
                raise Conflict(f"ResearchStudy/{study_id} is already published (status {terms.status}"
                               + (f", {state}" if state else "") + ")")
            assert current.resource is not None
            resource = dict(current.resource)
            terms = check_study(resource, now=self._now(), compile_for=self._compile_for(conn))
            reference = self._now().date()
            criteria = compile_criteria(terms.criteria, reference, condition_hasher_for(self.store, conn))
            registration = Registration(chain_study_id(self.store.tenant, study_id), criteria, verifying_key_id(),
                                        reference)
            window = terms.enrolment_window
            assert window is not None and window.end is not None and terms.max_participants is not None
            opens_at = int(window.start.timestamp()) if window.start is not None else int(now)
            closes_at = int(window.end.timestamp())
            assert terms.owner_organization is not None
            # A keyed address of its own (not the organisation's grantee address in consents): the chain does
            # not tie the study to the grants patients made to that organisation.
            owner = ChainKeys.for_store(self.store, conn).grantee_address(f"{terms.owner_organization}#study-owner")
            item = relayer.submit_study(
                session, registration.chain_study_id, criteria.criteria_hash, registration.verifying_key,
                max(opens_at, 1), closes_at, terms.max_participants, owner, now=now,
            )
            session.add(PublishedStudy(
                tenant=self.store.tenant, study_id=study_id, chain_study_id=str(registration.chain_study_id),
                criteria_hash=str(criteria.criteria_hash), circuit=json.dumps(criteria.circuit_inputs(), sort_keys=True),
                opens_at=max(opens_at, 1), closes_at=closes_at, max_participants=terms.max_participants,
                owner_address=owner, register_item=item, state="publishing", published_at=now,
            ))
            session.commit()
            resource["extension"] = [*(e for e in resource.get("extension") or [] if e.get("url") != REGISTRATION_URL),
                                     registration_extension(registration)]
            stored, _ = uow.update("ResearchStudy", study_id, resource)
        return stored

    def _retry(self, uow: Any, session: Session, current: StoredResource, published: PublishedStudy,
               now: float) -> StoredResource:
        """`$publish` of a study whose registration failed: the same registration write queued again (its
        terms were fixed when it was first published; the window is checked again), the study stays draft
        until the chain confirms it."""
        assert current.resource is not None
        check_study(dict(current.resource), now=self._now(), compile_for=self._compile_for(uow.conn))
        if outbox.status(session, int(published.register_item)).state is OutboxState.FAILED:
            outbox.requeue_failed(session, int(published.register_item), now=now)
        published.state = "publishing"
        session.commit()
        return current

    def settle(self) -> int:
        """Studies whose registration the chain confirmed become active, and active ones whose enrolment window
        has ended become closed-to-accrual; how many changed. A failed registration leaves the study draft (its
        registration `failed`); once its write is queued again (`$publish` again, or an operator's `healthledger
        relay requeue`) it is `publishing` again, and active when that write confirms."""
        changed = self._close_ended()
        with self.store.engine.connect() as conn:
            pending = conn.execute(
                sa.select(PublishedStudy.study_id, PublishedStudy.register_item, PublishedStudy.state).where(
                    PublishedStudy.tenant == self.store.tenant, PublishedStudy.state.in_(("publishing", "failed"))
                )
            ).all()
        for study_id, item, known in pending:
            with self.store.unit_of_work() as uow:
                session = _session(uow.conn)
                state = outbox.status(session, int(item)).state
                settled = {OutboxState.CONFIRMED: "active", OutboxState.FAILED: "failed"}.get(state, "publishing")
                if settled == known:
                    continue
                row = session.get(PublishedStudy, (self.store.tenant, study_id), with_for_update=True)
                if row is None or row.state != known:
                    continue
                row.state = settled
                session.commit()
                current = uow.peek("ResearchStudy", study_id)
                if state is OutboxState.CONFIRMED and current is not None and current.resource is not None:
                    resource = dict(current.resource)
                    resource["status"] = "active"
                    uow.update("ResearchStudy", study_id, resource, already_decided=True)
                changed += 1
        return changed

    def _close_ended(self) -> int:
        now = self.clock()
        with self.store.engine.connect() as conn:
            ended = conn.execute(
                sa.select(PublishedStudy.study_id).where(
                    PublishedStudy.tenant == self.store.tenant, PublishedStudy.state == "active",
                    PublishedStudy.closes_at > 0, PublishedStudy.closes_at <= now,
                )
            ).scalars().all()
        for study_id in ended:
            with self.store.unit_of_work() as uow:
                session = _session(uow.conn)
                row = session.get(PublishedStudy, (self.store.tenant, study_id), with_for_update=True)
                if row is None or row.state != "active":
                    continue
                row.state = "closed"
                session.commit()
                current = uow.peek("ResearchStudy", study_id)
                if current is not None and current.resource is not None:
                    resource = dict(current.resource)
                    resource["status"] = "closed-to-accrual"  # the window ended (StudyRegistry refuses too)
                    uow.update("ResearchStudy", study_id, resource, already_decided=True)
        return len(ended)

    def visible(self, resource: Mapping[str, Any], principal: Principal) -> bool:
        """Published studies are public to every authenticated caller; drafts only to their owners."""
        if resource.get("status") != "draft":
            return True
        return principal.unrestricted or of_owner_organization(principal, _terms(resource))

    def read(self, study_id: str, principal: Principal) -> StoredResource:
        self.settle_quietly()
        with self.store.reading(acting(principal)) as uow:
            stored = uow.read("ResearchStudy", study_id)
        return self.shown(stored, principal)

    def shown(self, stored: StoredResource, principal: Principal) -> StoredResource:
        """`stored` (read acting for the caller) if the caller may see it; a hidden draft is a missing study."""
        if stored.resource is None or not self.visible(stored.resource, principal):
            raise NotFound(f"ResearchStudy/{stored.id} is not known")
        return stored

    def search_on(self, uow: UnitOfWork, principal: Principal, status: set[str] | None) -> list[StoredResource]:
        """Every study the caller may see, of those statuses (all when None), in the store's order, on an open unit
        of work acting for the caller. It does not settle: settling writes, and a Bundle entry's transaction holds
        the write lock already (SQLite); the REST search settles first (`settle_quietly`)."""
        found: list[StoredResource] = []
        offset: int | None = 0
        everything = parse_search("ResearchStudy", [])
        while offset is not None:
            page = uow.search("ResearchStudy", everything, count=200, offset=offset)
            for item in page.items:
                resource = item.resource
                if resource is None or not self.visible(resource, principal):
                    continue
                if status and resource.get("status") not in status:
                    continue
                found.append(item)
            offset = page.next_offset
        return found

    def settle_quietly(self) -> None:
        """Settle before answering, so a confirmed publication shows at once (the worker does it too)."""
        self.settle()
