"""A study as stored, who may ask about it, and its participants: patients whose study consent's grant is live.

A study is the stored FHIR `ResearchStudy` (terms parsed once, by `fhir_adapters.research_study`); its owner
is the researcher principal named in its `study-owner` extension. A participant is a patient with a Consent
whose permit names `ResearchStudy/{id}` as actor, for purpose HRESCH, and whose on-chain grant the consent
index (`healthledger.consent.index`, the same view every decision reads) reports LIVE while the Consent is
active: a participant who left (grant revoked) is not one any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from fhir_adapters import search as fhir_search
from fhir_adapters.consent import PERMIT, ConsentRules, Provision, consent_rules
from fhir_adapters.errors import FhirInputError
from fhir_adapters.research_study import STUDY_PSEUDONYM_URL, StudyTerms, study_reference, study_terms
from healthledger.consent.index import ConsentIndex, consent_grant_status
from healthledger.errors import not_known
from healthledger.ledger.grants import GrantStatus
from healthledger.principal import HRESCH, Principal
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
    """The study's participants now, ordered by patient id: one per patient (their first live study consent)."""
    ref = study_reference(study_id)
    uow = store.view_on(conn)
    index.refresh(conn)
    query = fhir_search.parse_search("Consent", [("actor", ref)])
    candidates: dict[str, list[tuple[str, str]]] = {}
    offset: int | None = 0
    while offset is not None:
        page = uow.search("Consent", query, count=_PAGE, offset=offset, check=False)
        for item in page.items:
            if item.resource is None:
                continue
            try:
                rules = consent_rules(item.resource)
            except FhirInputError:
                continue
            if study_consent_names(rules, ref):
                candidates.setdefault(rules.patient_id, []).append((rules.consent_id, _pseudonym(item.resource)))
        offset = page.next_offset
    epoch = int(now.timestamp())
    out: list[Participant] = []
    for patient_id in sorted(candidates):
        entry = index.entry(conn, patient_id)
        effective = {c.consent_id: c for c in entry.consents}
        for consent_id, pseudonym in sorted(candidates[patient_id]):
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
