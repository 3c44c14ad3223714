"""A study as stored, who may ask about it, and its participants: enrolments by proof whose study consent's
grant is live.

A study is the stored FHIR `ResearchStudy` (terms parsed once, by `fhir_adapters.research_study`); its owner
is the researcher principal named in its `study-owner` extension. A participant is an enrolment `$enrol` made
(a `research_enrolments` row: the proof verified, the study had room) that
1. has not been withdrawn (`$leave`);
2. has its `StudyRegistry.enrolFor` write confirmed on-chain: a pending one (queued or sent) is not a
   participant yet, a failed one never is;
3. has its study consent (the row's `consent_id`) still naming the study for HRESCH, signed by the row's
   pseudonym, active, with an on-chain grant the consent index (`healthledger.consent.index`, the same view
   every decision reads) reports LIVE: a participant who left (grant revoked) is not one any more.
A Consent naming the study that no enrolment points to (which the store refuses to write anyway) makes nobody a
participant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fhir_adapters import search as fhir_search
from fhir_adapters.consent import PERMIT, ConsentRules, Provision, consent_rules
from fhir_adapters.errors import FhirInputError
from fhir_adapters.research_study import STUDY_PSEUDONYM_URL, StudyTerms, study_reference, study_terms
from healthledger.consent.index import ConsentIndex, consent_grant_status
from healthledger.errors import not_known
from healthledger.ledger.grants import GrantStatus
from healthledger.ledger.models import OutboxItem
from healthledger.ledger.outbox import OutboxState
from healthledger.principal import HRESCH, Principal
from healthledger.research.models import Enrolment
from healthledger.store.repository import ResourceStore

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Participant:
    patient_id: str
    consent_id: str
    study_pseudonym: str  # the per-study address that signed the consent ("" if the Consent does not say)


def load_study(store: ResourceStore, conn: Connection, study_id: str) -> StudyTerms | None:
    """The study's terms, or None when there is no such (live) ResearchStudy or it cannot be read."""
    stored = store.view_on(conn).peek("ResearchStudy", study_id)
    if stored is None or stored.resource is None:
        return None
    try:
        return study_terms(stored.resource)
    except FhirInputError:
        return None


def owned_study(store: ResourceStore, conn: Connection, principal: Principal, study_id: str) -> StudyTerms:
    """The study, if `principal` is its owning researcher; otherwise the answer for a study that does not
    exist (a researcher learns nothing of other researchers' studies through these operations)."""
    terms = load_study(store, conn, study_id)
    if terms is None or not is_owner(principal, terms):
        raise not_known("ResearchStudy", study_id)
    return terms


def is_owner(principal: Principal, terms: StudyTerms) -> bool:
    return (
        principal.role == "researcher"
        and bool(terms.owner_principal)
        and principal.actor_id == terms.owner_principal
        and (not terms.owner_organization or principal.organization == terms.owner_organization)
    )


def study_for_group(store: ResourceStore, conn: Connection, group_id: str) -> StudyTerms | None:
    """The study whose `enrollment` references `Group/{group_id}` (its cohort), if exactly one does."""
    uow = store.view_on(conn)
    query = fhir_search.parse_search("ResearchStudy", [])
    found: list[StudyTerms] = []
    offset: int | None = 0
    while offset is not None:
        page = uow.search("ResearchStudy", query, count=_PAGE, offset=offset, check=False)
        for item in page.items:
            if item.resource is None:
                continue
            try:
                terms = study_terms(item.resource)
            except FhirInputError:
                continue
            if terms.cohort_group_id == group_id:
                found.append(terms)
        offset = page.next_offset
    return found[0] if len(found) == 1 else None


def study_consent_names(rules: ConsentRules, study_ref: str) -> bool:
    """Whether a Consent's permit (at any depth) names the study as actor for research (HRESCH or any purpose)."""

    def walk(p: Provision) -> bool:
        if p.type == PERMIT and study_ref in p.actor_refs and (not p.purposes or HRESCH in p.purposes):
            return True
        return any(walk(child) for child in p.children)

    return walk(rules.root)


def live_participants(
    store: ResourceStore, index: ConsentIndex, conn: Connection, study_id: str, now: datetime
) -> list[Participant]:
    """The study's participants now (see the module docstring), ordered by patient id, one per patient."""
    ref = study_reference(study_id)
    enrolments = conn.execute(
        sa.select(Enrolment.consent_id, Enrolment.enrollee)
        .join(OutboxItem, OutboxItem.id == Enrolment.enrol_item)
        .where(Enrolment.tenant == store.tenant, Enrolment.study_id == study_id, Enrolment.left_at.is_(None),
               OutboxItem.state == OutboxState.CONFIRMED.value)
        .order_by(Enrolment.enrolled_at, Enrolment.id)
    ).all()
    uow = store.view_on(conn)
    index.refresh(conn)
    candidates: dict[str, list[tuple[str, str]]] = {}
    for consent_id, enrollee in enrolments:
        stored = uow.peek("Consent", consent_id)
        if stored is None or stored.resource is None:
            continue
        try:
            rules = consent_rules(stored.resource)
        except FhirInputError:
            continue
        if not study_consent_names(rules, ref) or _pseudonym(stored.resource).lower() != str(enrollee).lower():
            continue
        candidates.setdefault(rules.patient_id, []).append((consent_id, str(enrollee)))
    epoch = int(now.timestamp())
    out: list[Participant] = []
    for patient_id in sorted(candidates):
        entry = index.entry(conn, patient_id)
        effective = {c.consent_id: c for c in entry.consents}
        for consent_id, pseudonym in candidates[patient_id]:
            current = effective.get(consent_id)
            if current is None or current.status != "active":
                continue
            if consent_grant_status(entry.grants.get(consent_id, ()), epoch) is GrantStatus.LIVE:
                out.append(Participant(patient_id, consent_id, pseudonym))
                break
    return out


def _pseudonym(consent: dict[str, object]) -> str:
    for ext in consent.get("extension") or []:  # type: ignore[attr-defined]
        if isinstance(ext, dict) and ext.get("url") == STUDY_PSEUDONYM_URL and isinstance(ext.get("valueString"), str):
            return str(ext["valueString"])
    return ""
