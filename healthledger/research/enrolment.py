"""Enrolment by proof: a patient proves, with a Groth16 proof of the eligibility circuit, that a credential leaf
under an anchored root meets a published study's criteria; the service checks it in Python, relays
`StudyRegistry.enrolFor` through the outbox, and records the study consent signed by the same pseudonym.

Order of the checks of `$enrol` (each a distinct 4xx):
1. the caller is a patient (403 otherwise);
2. the study is published and active (404 unknown, 409 not active yet);
3. the enrolment window is open now (409), the study is not full (409);
4. proof and public signals are well-formed snarkjs JSON (400);
5. the public signals name this study, its criteria hash and the caller's study pseudonym (422): the pseudonym
   is derived from the patient's key, which their password unlocks;
6. the root is one of the last 30 anchored credential roots (409 pending or stale);
7. the nullifier was not used (409: this patient is already enrolled);
8. the proof verifies (zk.groth16, 422).
Then, in one transaction: the enrolment write queued, the study Consent (purpose HRESCH, the study's categories
and data period, actor `ResearchStudy/{id}`, `study-pseudonym` extension) created and signed by the pseudonym,
and the enrolment row. The answer is a ResearchSubject naming the pseudonym, never the patient.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from eth_utils import to_checksum_address
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from fhir_adapters.research_study import (
    STUDY_PSEUDONYM_SYSTEM,
    STUDY_PSEUDONYM_URL,
    StudyTerms,
    study_consent_provision,
    study_reference,
)
from healthledger.consent.lifecycle import revoke_consent, sign_consent
from healthledger.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from healthledger.ledger import outbox, patient_keys, relayer
from healthledger.ledger.models import OutboxItem
from healthledger.principal import Principal
from healthledger.research.credentials import root_state
from healthledger.research.models import Enrolment, PublishedStudy
from healthledger.research.participants import is_owner
from healthledger.research.studies import Studies, _terms
from healthledger.store.repository import ResourceStore, StoredResource
from zk import groth16
from zk.errors import MalformedInput
from zk.prover import CircuitFiles
from zk.snarkjs_io import (
    Proof,
    VerificationKey,
    load_proof,
    load_public_signals,
    load_verification_key,
    solidity_calldata,
)

CHAIN_STATE_URL = "https://healthledger.dev/fhir/StructureDefinition/enrolment-chain-state"


@lru_cache(maxsize=1)
def eligibility_key() -> VerificationKey:
    return load_verification_key(CircuitFiles.committed().verification_key)


def _session(conn: Connection) -> Session:
    return Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)


def _parse_proof(proof: Any, signals: Any) -> tuple[Proof, list[int]]:
    try:
        parsed = load_proof(json.loads(proof) if isinstance(proof, str) else proof)
        public = load_public_signals(json.loads(signals) if isinstance(signals, str) else signals)
    except (MalformedInput, ValueError, TypeError) as exc:
        raise BadRequest(f"the proof or its public signals are not snarkjs Groth16 JSON: {exc}") from None
    if len(public) != 5:
        raise BadRequest("an eligibility proof has 5 public signals: root, studyId, criteriaHash, enrollee, nullifier")
    return parsed, public


def study_consent(patient_id: str, study_id: str, terms: StudyTerms, pseudonym: str, now: datetime) -> dict[str, Any]:
    """The study Consent (seam: fhir_adapters/research_study.py): research only, exactly the study's categories,
    codes and period (`study_consent_provision`), its pseudonym."""
    return {
        "resourceType": "Consent", "status": "proposed",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": f"Patient/{patient_id}"}, "dateTime": now.isoformat(),
        "extension": [{"url": STUDY_PSEUDONYM_URL, "valueString": pseudonym}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": study_consent_provision(study_id, terms),
    }


def _refused_on_chain(session: Session, row: Enrolment) -> bool:
    """Whether the chain refused the enrolment's enrolFor (its outbox item failed with a revert reason)."""
    item = session.get(OutboxItem, int(row.enrol_item))
    return item is not None and item.state == outbox.OutboxState.FAILED.value


_ENDED = frozenset({"inactive", "rejected", "entered-in-error"})  # a Consent's statuses that end it


@dataclass(frozen=True)
class Participant:
    """An enrolment as the researcher and the patient see it."""

    id: str
    study_id: str
    pseudonym: str
    enrolled_at: float
    left_at: float | None
    chain_state: str
    consent_id: str

    def research_subject(self, *, for_patient: bool) -> dict[str, Any]:
        subject: dict[str, Any] = {
            "resourceType": "ResearchSubject", "id": self.id,
            "status": "withdrawn" if self.left_at is not None else "on-study",
            "period": {"start": datetime.fromtimestamp(self.enrolled_at, UTC).date().isoformat()},
            "study": {"reference": study_reference(self.study_id)},
            "individual": {"identifier": {"system": STUDY_PSEUDONYM_SYSTEM, "value": self.pseudonym}},
            "extension": [{"url": CHAIN_STATE_URL, "valueCode": self.chain_state}],
        }
        if self.left_at is not None:
            subject["period"]["end"] = datetime.fromtimestamp(self.left_at, UTC).date().isoformat()
        if for_patient:
            subject["consent"] = {"reference": f"Consent/{self.consent_id}"}
        return subject


class Enrolments:
    """`$enrol`, `$leave` and the participants of a study, over one store."""

    def __init__(self, store: ResourceStore, studies: Studies, *, clock: Callable[[], float] = time.time,
                 verify: Callable[[Proof, list[int]], bool] | None = None) -> None:
        self.store = store
        self.studies = studies
        self.clock = clock
        self._verify = verify or (lambda proof, public: groth16.verify(groth16.prepare_verification_key(
            eligibility_key()), proof, public))

    def _published(self, session: Session, study_id: str) -> PublishedStudy:
        row = session.get(PublishedStudy, (self.store.tenant, study_id))
        if row is None:
            raise NotFound(f"ResearchStudy/{study_id} is not known")
        return row

    def _participant(self, session: Session, row: Enrolment) -> Participant:
        state = outbox.status(session, int(row.enrol_item)).state.value
        label = {"queued": "pending", "sent": "pending"}.get(state, state)
        left_at = row.left_at if row.left_at is not None else self._consent_ended(session, row)
        return Participant(row.id, row.study_id, row.enrollee, row.enrolled_at, left_at, label, row.consent_id)

    def _consent_ended(self, session: Session, row: Enrolment) -> float | None:
        """When the study consent ended if it was revoked other than by `$leave` (`$revoke` on the Consent marks
        it inactive): taking part rests on that consent, so its participant has left, as the export already
        treats them (`participants.live_participants`). None while it stands (stored `proposed` until the
        chain confirms, `active`)."""
        stored = self.store.view_on(session.connection()).peek("Consent", row.consent_id)
        if stored is None or stored.resource is None or stored.resource.get("status") not in _ENDED:
            return None
        return stored.last_updated.timestamp()

    def enrol(self, study_id: str, principal: Principal, proof_json: Any, signals_json: Any,
              password: str) -> Participant:
        if principal.role != "patient" or not principal.patient_id:
            raise Forbidden("only a patient enrols, with a proof made from their own credential")
        self.studies.settle()
        now = self.clock()
        patient_ref = f"Patient/{principal.patient_id}"
        with self.store.unit_of_work(principal) as uow:
            conn: Connection = uow.conn
            session = _session(conn)
            published = self._published(session, study_id)
            if published.state == "closed":
                raise Conflict(f"the enrolment window of ResearchStudy/{study_id} is closed")
            if published.state != "active":
                raise Conflict(f"ResearchStudy/{study_id} is not open for enrolment yet (its registration is "
                               f"{published.state})")
            if now < published.opens_at or (published.closes_at and now >= published.closes_at):
                raise Conflict(f"the enrolment window of ResearchStudy/{study_id} is closed")
            self._check_room(session, published)  # fail fast; checked again under the lock below
            proof, public = _parse_proof(proof_json, signals_json)
            root, chain_id, criteria_hash, enrollee_field, nullifier = public
            if chain_id != int(published.chain_study_id) or criteria_hash != int(published.criteria_hash):
                raise Unprocessable("the proof was made for another study or other criteria", expression="publicSignals")
            try:
                master = patient_keys.unlock(session, patient_ref, password)
            except patient_keys.KeyUnlockError:
                raise Forbidden("the patient's key could not be unlocked with that password") from None
            pseudonym = patient_keys.pseudonym_for(master, study_reference(study_id))
            if enrollee_field != int(pseudonym.address, 16):
                raise Unprocessable("the proof is not bound to your pseudonym for this study", expression="publicSignals")
            state = root_state(session, self.store.tenant, root)
            if state == "pending":
                raise Conflict("the credential root of this proof is not anchored on-chain yet; retry shortly")
            if state == "stale":
                raise Conflict("the credential root of this proof is stale: fetch your credential again and re-prove")
            # An enrolment whose enrolFor the chain refused (reverted: the outbox item failed) was never counted
            # there and never made a participant: enrolling again replaces it (below) instead of being refused.
            earlier = list(session.scalars(sa.select(Enrolment).where(
                (Enrolment.nullifier == str(nullifier))
                | ((Enrolment.tenant == self.store.tenant) & (Enrolment.study_id == study_id)
                   & (Enrolment.enrollee == to_checksum_address(pseudonym.address))))))
            if any(not _refused_on_chain(session, row) for row in earlier):
                raise Conflict("this credential has already enrolled in this study (the nullifier is used)")
            try:
                valid = self._verify(proof, public)
            except MalformedInput as exc:
                raise BadRequest(f"the proof is malformed: {exc}") from None
            if not valid:
                raise Unprocessable("the proof does not verify", expression="proof")
            # Count-then-insert is safe only serialised: lock the study's row until this transaction commits
            # (PostgreSQL: SELECT ... FOR UPDATE; SQLite writers are serialised by BEGIN IMMEDIATE already).
            locked = session.get(PublishedStudy, (self.store.tenant, study_id), with_for_update=True,
                                 populate_existing=True)
            assert locked is not None
            self._check_room(session, locked)
            for superseded in earlier:  # its study consent is withdrawn (its grant revoked), then the row goes
                if uow.peek("Consent", superseded.consent_id) is not None:
                    revoke_consent(uow, superseded.consent_id, password, now=now)
                session.delete(superseded)
            session.flush()
            a, b, c, _ = solidity_calldata(proof, public)
            item = relayer.submit_enrolment(session, pseudonym.address, chain_id, root, nullifier, a, b, c, now=now)
            session.commit()  # releases the savepoint into the unit of work's transaction
            study = uow.peek("ResearchStudy", study_id)
            assert study is not None and study.resource is not None
            terms = _terms(study.resource)
            consent, _ = uow.create(study_consent(principal.patient_id, study_id, terms, pseudonym.address,
                                                  datetime.fromtimestamp(now, UTC)), study_consent=True)
            sign_consent(uow, consent.id, password, now=now, master=master)
            session = _session(conn)
            row = Enrolment(id=secrets.token_hex(16), tenant=self.store.tenant, study_id=study_id,
                            nullifier=str(nullifier), enrollee=to_checksum_address(pseudonym.address), root=str(root),
                            enrol_item=item, consent_id=consent.id, enrolled_at=now)
            session.add(row)
            session.commit()
            return self._participant(session, row)

    def _check_room(self, session: Session, published: PublishedStudy) -> None:
        """409 when the study has as many enrolments as it allows (every enrolment counts, a withdrawn one too:
        StudyRegistry counts them the same way; one whose enrolFor the chain refused does not, there or here)."""
        if not published.max_participants:
            return
        count = session.scalar(
            sa.select(sa.func.count()).select_from(Enrolment)
            .outerjoin(OutboxItem, OutboxItem.id == Enrolment.enrol_item)
            .where(Enrolment.tenant == self.store.tenant, Enrolment.study_id == published.study_id,
                   sa.or_(OutboxItem.state.is_(None), OutboxItem.state != outbox.OutboxState.FAILED.value))
        ) or 0
        if count >= published.max_participants:
            raise Conflict(f"ResearchStudy/{published.study_id} is full ({published.max_participants} participants)")

    def leave(self, study_id: str, principal: Principal, password: str) -> Participant:
        """Withdraw: revoke the study consent's grant (signed by the pseudonym); the enrolment stays counted."""
        if principal.role != "patient" or not principal.patient_id:
            raise Forbidden("only the participant can leave a study")
        now = self.clock()
        patient_ref = f"Patient/{principal.patient_id}"
        with self.store.unit_of_work(principal) as uow:
            session = _session(uow.conn)
            address = patient_keys.pseudonym_address(session, patient_ref, study_reference(study_id))
            row = None if address is None else session.scalar(sa.select(Enrolment).where(
                Enrolment.tenant == self.store.tenant, Enrolment.study_id == study_id, Enrolment.enrollee == address))
            if row is None:
                raise NotFound(f"you are not enrolled in ResearchStudy/{study_id}")
            if row.left_at is None:
                revoke_consent(uow, row.consent_id, password, now=now)
                row.left_at = now
                session.commit()
            return self._participant(session, row)

    def mine(self, study_id: str, principal: Principal) -> Participant | None:
        """The caller's own enrolment in the study (patients), or None."""
        if principal.role != "patient" or not principal.patient_id:
            return None
        with self.store.engine.connect() as conn:
            session = _session(conn)
            address = patient_keys.pseudonym_address(session, f"Patient/{principal.patient_id}", study_reference(study_id))
            row = None if address is None else session.scalar(sa.select(Enrolment).where(
                Enrolment.tenant == self.store.tenant, Enrolment.study_id == study_id, Enrolment.enrollee == address))
            return None if row is None else self._participant(session, row)

    def all_mine(self, principal: Principal) -> list[Participant]:
        """Every enrolment of the calling patient (their study pseudonyms are theirs to see)."""
        if principal.role != "patient" or not principal.patient_id:
            return []
        from healthledger.ledger.models import PatientPseudonym

        with self.store.engine.connect() as conn:
            session = _session(conn)
            addresses = session.scalars(sa.select(PatientPseudonym.address).where(
                PatientPseudonym.patient_ref == f"Patient/{principal.patient_id}",
                PatientPseudonym.grantee.like("ResearchStudy/%"))).all()
            if not addresses:
                return []
            rows = session.scalars(sa.select(Enrolment).where(
                Enrolment.tenant == self.store.tenant, Enrolment.enrollee.in_(list(addresses))
            ).order_by(Enrolment.enrolled_at))
            return [self._participant(session, r) for r in rows]

    def one(self, subject_id: str, principal: Principal, *,
            read_study: Callable[[str], StoredResource] | None = None) -> tuple[Participant, bool] | None:
        """The enrolment `ResearchSubject/{subject_id}` if the caller may see it: (participant, as the patient sees
        it); None otherwise, whether it exists or not. The patient sees their own enrolments (with their study
        consent), the study's owner every enrolment of the study (pseudonyms and dates), nobody else anything.
        `read_study`: the study as the caller may see it (default `Studies.read`; a Bundle entry reads it on its
        own transaction)."""
        with self.store.engine.connect() as conn:
            session = _session(conn)
            row = session.scalar(sa.select(Enrolment).where(
                Enrolment.tenant == self.store.tenant, Enrolment.id == subject_id[:64]))
            if row is None:
                return None
            if principal.role == "patient" and principal.patient_id:
                address = patient_keys.pseudonym_address(
                    session, f"Patient/{principal.patient_id}", study_reference(row.study_id))
                return (self._participant(session, row), True) if address == row.enrollee else None
            participant = self._participant(session, row)
        try:
            stored = (read_study or (lambda sid: self.studies.read(sid, principal)))(participant.study_id)
        except NotFound:
            return None
        assert stored.resource is not None
        if principal.unrestricted or is_owner(principal, _terms(stored.resource)):
            return participant, False
        return None

    def participants(self, study_id: str, principal: Principal, *,
                     read_study: Callable[[str], StoredResource] | None = None) -> list[Participant]:
        """The study's participants for its owner: pseudonyms and dates only (denied == unknown study).
        `read_study` as for `one`."""
        stored = (read_study or (lambda sid: self.studies.read(sid, principal)))(study_id)
        assert stored.resource is not None
        if not principal.unrestricted and not is_owner(principal, _terms(stored.resource)):
            raise NotFound(f"ResearchStudy/{study_id} is not known")
        with self.store.engine.connect() as conn:
            session = _session(conn)
            rows = session.scalars(sa.select(Enrolment).where(
                Enrolment.tenant == self.store.tenant, Enrolment.study_id == study_id).order_by(Enrolment.enrolled_at))
            return [self._participant(session, r) for r in rows]


def participant_counts(conn: Connection, tenant: str, study_id: str) -> Mapping[str, int]:
    """Enrolled, and still participating (not left): what the researcher may know."""
    total = conn.execute(sa.select(sa.func.count()).select_from(Enrolment).where(
        Enrolment.tenant == tenant, Enrolment.study_id == study_id)).scalar_one()
    left = conn.execute(sa.select(sa.func.count()).select_from(Enrolment).where(
        Enrolment.tenant == tenant, Enrolment.study_id == study_id, Enrolment.left_at.is_not(None))).scalar_one()
    return {"enrolled": int(total), "participating": int(total) - int(left)}
