"""Consent enforcement at the store's seam: scopes, then the decision engine, and one log entry per attempt.

The store calls `ConsentPolicy` inside each operation: `begin` once (index freshness), then `check` per
operation (or `screen` per search match and `record_results` once per page). Every decision about an
API or web caller is appended to the access log on the operation's connection: in its transaction, or,
for reads on SQLite, in a short write transaction right after it (see ResourceStore.reading); either way
before anything is returned, and kept when the operation fails. Denied reads answer exactly like a
missing resource. docs/consent-semantics.md describes the whole of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection

from healthledger import crypto
from healthledger.actions import LOGGED_ACTIONS, WRITE_ACTIONS, Action
from healthledger.audit.entries import AccessEntry
from healthledger.audit.group_commit import AccessLogWriteFailed, GroupCommitLog
from healthledger.audit.log import DEFAULT_LOG, record_access, record_accesses
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.audit.spool import AccessSpool
from healthledger.auth.scopes import scope_allows
from healthledger.consent.engine import (
    ACCESS_REQUEST,
    Decision,
    Obligation,
    Outcome,
    PatientContext,
    Policy,
    Reason,
    ResourceFacts,
    decide,
    decide_new_patient,
    may_permit_reads,
)
from healthledger.consent.facts import UNRESOLVED_PATIENT, resource_facts
from healthledger.consent.index import ConsentIndex, care_named
from healthledger.consent.models import ConsentRequest
from healthledger.errors import (
    DecryptionError,
    Forbidden,
    InsufficientScope,
    TooManyRequests,
    not_known,
    refused_write,
)
from healthledger.principal import Principal
from healthledger.store.access import Screened
from healthledger.store.repository import ResourceStore

ACCESS_LOG_KEY_CLASS = "access-log"
# How many entries the current request has recorded: a request refused before any decision (a bad
# parameter, a bad purpose header) is recorded by `record_refusal`, and only then (one entry per attempt).
_RECORDED: ContextVar[int] = ContextVar("healthledger_entries_recorded", default=0)
_AGE_KEY = "healthledger.consent.index_age"
_PENDING_KEY = "healthledger.consent.entries"
_DEFER_KEY = "healthledger.consent.defer"
REQUEST_LIMIT = "policy:access-request-limit"
# Said with every refused Consent create, whoever it names (so it says nothing about the patient): the one way an
# organisation that does not care for the patient may write a Consent (engine.asks_for_itself).
_REQUEST_HINT = (
    "; to ask a patient for access, record a Consent with status 'proposed' whose provision.actor names only your"
    " organisation (or your practitioner) and whose provision.period ends within {days} days"
)
_PSEUDONYMS_KEPT = 50_000
_FACTS_KEPT = 20_000  # stored versions whose facts a worker keeps


Transform = Callable[[dict[str, Any], Obligation, Principal], dict[str, Any] | None]


class ConsentPolicy:
    """The store's AccessPolicy backed by SMART scopes, the consent engine and the access log."""

    filters_search_results = True
    records_accesses = True

    def __init__(
        self,
        store: ResourceStore,
        index: ConsentIndex,
        policy: Policy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        obligations: Transform | None = None,
        on_decision: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_decision(decision, rule)` is told of every decision recorded (the service counts them)."""
        self.store = store
        self.index = index
        self.policy = policy
        self.clock = clock
        self._obligations = obligations
        self._on_decision = on_decision
        self._sealing_key: bytes | None = None
        self._log_writer = GroupCommitLog(store.engine)
        self._spool = AccessSpool.for_engine(store.engine)  # SQLite: reads' entries go to the spool instead
        self._pseudonyms: dict[str, str] = {}
        self._facts_kept: dict[tuple[str, ...], ResourceFacts] = {}

    # -- the seam -------------------------------------------------------------------------------
    def begin(self, conn: Connection, *, defer: bool = False) -> None:
        """At the start of each operation: index freshness, and a fresh list of entries.

        `defer`: the operation runs on a read view (SQLite, whose one writer at a time would otherwise
        serialise every read); entries are only collected, and the store records them in a short write
        transaction of their own before anything is returned (`rescue` then `keep`).
        """
        conn.info[_AGE_KEY] = self.index.refresh(conn)
        conn.info[_PENDING_KEY] = []
        conn.info[_DEFER_KEY] = defer

    def rescue(self, conn: Connection) -> list[AccessEntry]:
        """The entries recorded in a transaction that is about to roll back."""
        conn.info.pop(_AGE_KEY, None)
        conn.info.pop(_DEFER_KEY, None)
        return list(conn.info.pop(_PENDING_KEY, []))

    def keep(self, conn: Connection, entries: list[AccessEntry]) -> None:
        """Record rescued entries in a transaction of their own (before the error reaches the caller)."""
        record_accesses(conn, entries)

    def keep_durably(self, entries: list[AccessEntry], conn: Connection) -> None:
        """Make a read's entries durable; returns only once they are, raises AccessLogWriteFailed (503, nothing
        returned) when they are not.

        SQLite: appended to this process's spool file (healthledger.audit.spool), moved into the log in
        batches. PostgreSQL: committed in a group commit with the reads ending at the same time (on `conn`,
        the read's own, when it leads).
        """
        if self._spool is None:
            self._log_writer.append(entries, conn=conn)
            return
        try:
            self._spool.append(entries, log_id=DEFAULT_LOG)
        except OSError as exc:
            raise AccessLogWriteFailed() from exc

    def record_miss(
        self, principal: Principal, action: Action, resource_type: str, resource_id: str, *, conn: Connection
    ) -> None:
        """An attempt on a resource that is not there (or not to be admitted): logged like a denial."""
        if principal.via == "cli":
            return
        self.record(conn, principal, action, resource_type, resource_id, "", _MISS)

    def check_scope(self, principal: Principal, action: Action, resource_type: str, *, conn: Connection) -> None:
        if principal.unrestricted or scope_allows(principal.scopes or (), principal.scope_context, resource_type, action):
            return
        outcome = Outcome(Decision.DENY, (Reason("scope", detail=f"{principal.scope_context}/{resource_type}"),))
        self.record(conn, principal, action, resource_type, "", "", outcome)
        raise InsufficientScope(f"the access token's scopes do not allow {action} on {resource_type}")

    def check(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        resource: dict[str, Any] | None,
        *,
        resource_id: str = "",
        conn: Connection,
    ) -> dict[str, Any] | None:
        # Type level: the scopes alone (searches and histories screen each match; a delete of nothing
        # records its miss through record_miss).
        type_level = resource is None and action in ("search", "history", "delete")
        if principal.unrestricted:
            if not type_level:  # type-level results are recorded per resource by `record_results`
                facts = self._facts(resource_type, resource_id, resource, stored=action not in WRITE_ACTIONS)
                self.record(conn, principal, action, resource_type, facts.resource_id, facts.patient_id, _UNRESTRICTED)
            return resource
        self.check_scope(principal, action, resource_type, conn=conn)
        if type_level:
            return None  # each match is screened, and the page recorded, by the store
        facts = self._facts(resource_type, resource_id, resource, stored=action not in WRITE_ACTIONS)
        if action == "create" and resource_type == "Patient" and resource is not None:
            # The same rule whether the id is the server's (POST) or the client's (PUT): docs/consent-semantics.md.
            care = frozenset(care_named(resource) | {self.index.home_organization}) - {""}
            outcome = decide_new_patient(principal, care, self.policy)
        else:
            outcome = self._decide(principal, action, facts, conn)
        if outcome.permitted and outcome.reasons[0].rule == ACCESS_REQUEST:
            outcome = self._admit_request(conn, principal, facts.resource_id)
        self.record(conn, principal, action, resource_type, facts.resource_id, facts.patient_id, outcome)
        if not outcome.permitted:
            if outcome.reasons[0].rule == REQUEST_LIMIT:
                raise TooManyRequests(
                    f"this organisation has made {self.policy.max_requests_per_day} requests for access in the "
                    "last 24 hours, the most allowed; try again later"
                )
            if action in ("create", "update"):
                # Deliberate (docs/consent-semantics.md): a write the caller may make to an id nobody holds
                # creates it, so the writer may learn that an id is taken, nothing of whose it is or what it
                # holds. A refused create and a refused update say the same (a PUT refused either way does not
                # tell whether the id is taken); a delete refused is the same 404 as a missing resource.
                hint = _REQUEST_HINT.format(days=self.policy.max_request_days) if resource_type == "Consent" else ""
                refused = refused_write(resource_type)
                raise Forbidden(refused.message + hint)
            raise not_known(resource_type, facts.resource_id)
        if action in WRITE_ACTIONS:
            return resource  # the writer is shown what it sent
        shown = self._apply(resource, outcome, principal)
        if shown is None and resource is not None:
            raise not_known(resource_type, facts.resource_id)  # nothing may be shown
        return shown

    def screen(
        self, principal: Principal, action: Action, resource_type: str, resource: dict[str, Any], *, conn: Connection
    ) -> Screened:
        facts = self._facts(resource_type, "", resource, stored=True)
        outcome = _UNRESTRICTED if principal.unrestricted else self._decide(principal, "read", facts, conn)
        shown = self._apply(resource, outcome, principal) if outcome.permitted else None
        return Screened(resource_type, facts.resource_id, facts.patient_id, shown, outcome)

    def withheld_patient(
        self, principal: Principal, resource_type: str, patient_id: str, *, conn: Connection
    ) -> Screened | None:
        """A search pinned to `patient_id` whose matches this caller may see none of, whatever they say: their
        withheld entry (the store then answers without reading the patient's records, in the time a patient
        who does not exist takes). None where some match might be shown: each one is screened as ever."""
        if principal.unrestricted:
            return None
        if principal.scope_context == "patient" and patient_id != principal.patient_id:
            denied = Outcome(Decision.DENY, (Reason("scope", detail="patient scopes cover the patient's own data"),))
            return Screened(resource_type, "", patient_id, None, denied)
        now = self.clock()
        if may_permit_reads(principal, resource_type, self.patient_context(conn, patient_id, now), self.policy, now):
            return None
        withheld = Outcome(Decision.NOT_APPLICABLE, (Reason("no-applicable-consent", detail="none of this type"),))
        return Screened(resource_type, "", patient_id, None, withheld)

    def record_results(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        disclosed: Sequence[Screened],
        withheld: Sequence[Screened],
        *,
        counted: Sequence[Screened] = (),
        conn: Connection,
    ) -> None:
        """The entries of one search or history: one per patient touched, at least.

        One per disclosed resource (however many of its versions were shown); one per patient whose matches
        were withheld (whether or not others of theirs were shown); one per patient whose matches were only
        counted in the total (not on the page) and who has no other entry of this attempt; one if nothing matched.
        """
        entries = []
        shown: set[tuple[str, str, str]] = set()
        covered: set[str] = set()
        for s in disclosed:
            key = (s.resource_type, s.resource_id, s.patient_id)
            if key not in shown:
                shown.add(key)
                covered.add(s.patient_id)
                entries.append(self._entry(principal, action, s.resource_type, s.resource_id, s.patient_id, s.verdict))
        # A patient withheld from is told so even when other matches of theirs were shown (e.g. an organisation's
        # own request for access shown, the patient's other Consents withheld): a denial has its own entry.
        withheld_from: set[str] = set()
        for s in withheld:
            if s.patient_id not in withheld_from:
                withheld_from.add(s.patient_id)
                entries.append(self._entry(principal, action, resource_type, "", s.patient_id, s.verdict))
        covered |= withheld_from
        for s in counted:
            if s.patient_id not in covered:
                covered.add(s.patient_id)
                entries.append(self._entry(principal, action, resource_type, "", s.patient_id, s.verdict))
        if not entries:
            entries.append(self._entry(principal, action, resource_type, "", "", _NOTHING_MATCHED))
        if principal.via != "cli":
            if not conn.info.get(_DEFER_KEY):
                record_accesses(conn, entries)
            conn.info.setdefault(_PENDING_KEY, []).extend(entries)
            _RECORDED.set(_RECORDED.get() + len(entries))

    # -- attempts refused before any decision ------------------------------------------------------------
    def start_attempt(self) -> None:
        """A new request begins (the API calls this before anything else)."""
        _RECORDED.set(0)

    def attempt_recorded(self) -> bool:
        """Whether the current request has recorded an entry already."""
        return _RECORDED.get() > 0

    def record_refusal(
        self, principal: Principal, action: str, resource_type: str, resource_id: str, patient_id: str, reason: str
    ) -> None:
        """An authenticated attempt refused before any decision (400 for a bad parameter, 406, ...): one entry.

        `patient_id` is the patient the request named (a search's `patient`, a Patient URL); for an
        instance URL the stored resource's own patient is looked up, so the patient sees the attempt too.
        """
        if principal.via == "cli" or self.attempt_recorded():
            return
        with self.store.engine.begin() as conn:
            if not patient_id and resource_type and resource_id:
                patient_id = self._patient_of_stored(conn, resource_type, resource_id)
            outcome = Outcome(Decision.DENY, (Reason("refused", detail=reason),))
            entry = self._entry(principal, action, resource_type[:64], resource_id[:64], patient_id, outcome)
            record_accesses(conn, [entry])
        _RECORDED.set(_RECORDED.get() + 1)

    def _patient_of_stored(self, conn: Connection, resource_type: str, resource_id: str) -> str:
        current = self.store.view_on(conn).peek(resource_type, resource_id)
        if current is None or current.resource is None:
            return ""
        return resource_facts(resource_type, resource_id, current.resource).patient_id

    def record_audit_access(
        self, principal: Principal, action: str, targets: Sequence[tuple[str, str]], decision: str, reason: str, /
    ) -> None:
        """An access to the access log itself (AuditEvent read or search), decided by its own rules: one
        entry per (AuditEvent id, patient pseudonym) target, in one transaction."""
        if principal.via == "cli":
            return
        now = self.clock()
        entries = [
            AccessEntry(
                time=now, actor=principal.actor_id, organization=principal.organization, role=principal.role,
                purpose=principal.purpose, action=action, resource_type="AuditEvent", resource_id=resource_id,
                patient_pseudonym=pseudonym, decision=decision, reason=reason[:500],
            )
            for resource_id, pseudonym in targets
        ]
        with self.store.engine.begin() as conn:
            for entry in entries:
                record_access(conn, entry)

    # -- decisions ----------------------------------------------------------------------------------
    def _decide(self, principal: Principal, action: str, facts: Any, conn: Connection) -> Outcome:
        if not facts.patient_id:
            # Outside every patient compartment (Organization, Practitioner, Medication, a new Patient...):
            # no patient's data, so the token's scopes (already checked) decide reads. Writes need a writer
            # role: what is shared (organisations, practitioners) changes decisions about every patient, so
            # patients write nothing here.
            if action in WRITE_ACTIONS and principal.role not in self.policy.writer_roles:
                return Outcome(Decision.DENY, (Reason("policy:writer-role"),))
            return Outcome(Decision.PERMIT, (Reason("no-patient-compartment"),))
        if facts.patient_id == UNRESOLVED_PATIENT:
            # A stored resource whose patient can no longer be told (written before the compartment rules
            # were strict): nobody but the service itself may touch it.
            return Outcome(Decision.DENY, (Reason("unresolved-patient"),))
        if principal.scope_context == "patient" and facts.patient_id != principal.patient_id:
            return Outcome(Decision.DENY, (Reason("scope", detail="patient scopes cover the patient's own data"),))
        now = self.clock()
        return decide(principal, action, facts, self.patient_context(conn, facts.patient_id, now), self.policy, now)

    def _admit_request(self, conn: Connection, principal: Principal, consent_id: str) -> Outcome:
        """A request for access the engine permitted (step 3): within its organisation's daily bound, it is
        remembered as that organisation's (the index reads it: the requester may read its request), in the
        write's transaction; past the bound it is refused. Neither depends on the patient it names."""
        if not consent_id:
            raise ValueError("a request for access is decided with the id it will be stored under")
        now = self.clock().timestamp()
        if conn.dialect.name == "postgresql":
            # One organisation's requests are counted and recorded one transaction at a time (two concurrent
            # requests at the bound would otherwise both count below it); SQLite writers serialise already.
            conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": f"healthledger/access-requests|{self.store.tenant}|{principal.organization}"},
            )
        made = conn.execute(
            select(func.count()).select_from(ConsentRequest).where(
                ConsentRequest.tenant == self.store.tenant,
                ConsentRequest.organization == principal.organization,
                ConsentRequest.requested_at > now - 86_400,
            )
        ).scalar_one()
        if made >= self.policy.max_requests_per_day:
            return Outcome(Decision.DENY, (Reason(REQUEST_LIMIT),))
        conn.execute(
            insert(ConsentRequest).values(
                tenant=self.store.tenant, consent_id=consent_id, organization=principal.organization, requested_at=now
            )
        )
        return Outcome(Decision.PERMIT, (Reason(ACCESS_REQUEST),))

    def patient_context(self, conn: Connection, patient_id: str, now: datetime) -> PatientContext:
        """What the engine knows about the patient, with the index age read at the operation's start."""
        age = conn.info.get(_AGE_KEY)
        if age is None:
            age = self.index.refresh(conn)
        return self.index.context(conn, patient_id, now, age)

    def _apply(self, resource: dict[str, Any] | None, outcome: Outcome, principal: Principal) -> dict[str, Any] | None:
        if resource is None or not outcome.obligations:
            return resource
        if self._obligations is None:
            # Nothing here can carry the obligation out: withhold rather than disclose more than allowed.
            raise Forbidden("this access carries an obligation the server cannot fulfil")
        shown: dict[str, Any] | None = resource
        for obligation in outcome.obligations:
            if shown is None:
                break
            shown = self._obligations(shown, obligation, principal)
        return shown

    # -- the access log -------------------------------------------------------------------------------
    def sealing_key(self) -> bytes:
        """The key that seals break-the-glass reasons (created by `bootstrap`, or here on first use).

        Made in a transaction of its own, so it outlives the operation that needed it. `bootstrap` makes it
        before serving: on SQLite, making it here while a write holds the lock would wait for that lock.
        """
        if self._sealing_key is None:
            with self.store.engine.begin() as own:
                self._sealing_key = self.store.keyring.key_for_scope(own, ACCESS_LOG_KEY_CLASS, b"").key
        return self._sealing_key

    def break_glass_reason(self, entry: AccessEntry) -> str:
        """The justification sealed into a break-the-glass entry (see `_entry`), for a reader entitled to it
        (the access log's reading rule decides who is); "" when there is none or it does not open."""
        if not entry.sealed_note:
            return ""
        aad = f"healthledger/break-glass/v1|{self.store.tenant}|{entry.actor}".encode()
        try:
            return crypto.open_(self.sealing_key(), entry.sealed_note, aad).decode()
        except DecryptionError:
            return ""

    def _entry(
        self,
        principal: Principal,
        action: str,
        resource_type: str,
        resource_id: str,
        patient_id: str,
        outcome: Outcome,
    ) -> AccessEntry:
        now = self.clock()
        note = b""
        if outcome.break_glass and principal.break_glass_reason:
            key = self.sealing_key()
            aad = f"healthledger/break-glass/v1|{self.store.tenant}|{principal.actor_id}".encode()
            note = crypto.seal(key, principal.break_glass_reason.encode(), aad)
        if self._on_decision is not None:
            self._on_decision("permit" if outcome.permitted else "deny", outcome.reasons[0].rule if outcome.reasons else "")
        return AccessEntry(
            time=now,
            actor=principal.actor_id,
            organization=principal.organization,
            role=principal.role,
            purpose=principal.purpose,
            action=action if action in LOGGED_ACTIONS else "read",
            resource_type=resource_type,
            resource_id=resource_id,
            patient_pseudonym=self._pseudonym(patient_id) if patient_id else "",
            decision="permit" if outcome.permitted else "deny",
            reason=reason_text(outcome),
            break_glass=outcome.break_glass,
            sealed_note=note,
        )

    def _facts(self, resource_type: str, resource_id: str, resource: dict[str, Any] | None, *,
               stored: bool) -> ResourceFacts:
        """`resource_facts`, remembered per stored version: a version's content never changes, and its facts
        (whose compartment, labels, codes, dates) are worked out on every read of it."""
        meta = resource.get("meta") if stored and resource is not None else None
        version = meta.get("versionId") if isinstance(meta, dict) else None
        if not isinstance(version, str):
            return resource_facts(resource_type, resource_id, resource)
        assert resource is not None
        key = (resource_type, resource_id, str(resource.get("id", "")), version, str(meta.get("lastUpdated", "")))  # type: ignore[union-attr]
        found = self._facts_kept.get(key)
        if found is None:
            found = resource_facts(resource_type, resource_id, resource)
            if len(self._facts_kept) >= _FACTS_KEPT:
                self._facts_kept.clear()
            self._facts_kept[key] = found
        return found

    def _pseudonym(self, patient_id: str) -> str:
        """The patient's access-log pseudonym (a keyed hash, fixed per tenant): remembered, it is on every entry."""
        found = self._pseudonyms.get(patient_id)
        if found is None:
            found = patient_pseudonym(self.store.indexer, patient_id)
            if len(self._pseudonyms) >= _PSEUDONYMS_KEPT:
                self._pseudonyms.clear()
            self._pseudonyms[patient_id] = found
        return found

    def record(
        self,
        conn: Connection,
        principal: Principal,
        action: str,
        resource_type: str,
        resource_id: str,
        patient_id: str,
        outcome: Outcome,
    ) -> None:
        if principal.via == "cli":
            return  # the service's own maintenance (imports, erasure) is not an access by anyone
        entry = self._entry(principal, action, resource_type, resource_id, patient_id, outcome)
        if not conn.info.get(_DEFER_KEY):
            record_accesses(conn, [entry])
        conn.info.setdefault(_PENDING_KEY, []).append(entry)
        _RECORDED.set(_RECORDED.get() + 1)


_UNRESTRICTED = Outcome(Decision.PERMIT, (Reason("unrestricted"),))
_NOTHING_MATCHED = Outcome(Decision.PERMIT, (Reason("no-match"),))
_MISS = Outcome(Decision.DENY, (Reason("not-found"),))


def reason_text(outcome: Outcome) -> str:
    """The machine reason recorded in the log: rule, consent and provision; no free text, no PHI."""
    parts = []
    for r in outcome.reasons[:4]:
        text = r.rule
        if r.consent_id:
            text += f":Consent/{r.consent_id}"
        if r.provision:
            text += f"#{r.provision}"
        if r.detail and r.rule in ("scope", "index-stale", "break-glass", "consent-grant-not-live", "refused"):
            text += f"({r.detail})"
        parts.append(text)
    return ";".join(parts)[:500]


def policy_from_settings(values: dict[str, Any]) -> Policy:
    """A Policy from the `consent_policy` setting (JSON object of Policy fields); unknown keys are an error."""
    fields = {f for f in Policy.__dataclass_fields__}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown consent policy setting(s): {', '.join(unknown)}")
    converted: dict[str, Any] = {
        k: (frozenset(v) if isinstance(v, (list, tuple, set)) else v) for k, v in values.items()
    }
    policy = replace(Policy(), **converted)
    if not (policy.max_index_age_seconds > 0 and math.isfinite(policy.max_index_age_seconds)):
        raise ValueError("consent policy max_index_age_seconds must be a positive number")
    return policy
