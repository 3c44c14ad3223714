"""The federation's operations, both sides: record locators (A), linking and fetching (B).

At A (the hospital holding the record):
- `record_locator(principal, consent_id)`: the patient makes a one-time locator for a Consent of theirs that
  grants a member organisation (decided as a change of that Consent: only the patient, or staff who may change
  it, get one).
- `redeem_locator(principal, text)`: a member redeems it once, with a token issued under that same Consent;
  the answer is the patient's reference here. Unknown, used, expired, for another member or another Consent:
  one answer, "no such record locator".

At B (the hospital asking):
- `link_record(principal, patient_id, text, purpose)`: B's intake records the locator against B's own patient,
  after redeeming it at A. A Consent already linked here is refused (409) before the locator is spent; a link to
  the same record at A under an older Consent is replaced (the patient granted again). `unlink_record` removes
  links (the copies stay, with their Provenance).
- `fetch(principal, patient_id)`: for each link of the patient, a token from A under the linked Consent, then
  A's records of the types the token allows, changed since the last fetch (`_lastUpdated=gt` a watermark on A's
  clock: the `Date` of A's token response, else the newest `meta.lastUpdated` A returned, less
  `WATERMARK_MARGIN`; never B's clock); each stored in B's encrypted store under B's patient (ids derived from
  A's, references rewritten, `meta.source` naming A's copy, A's `meta.security` and `meta.profile` kept so B's
  consent engine decides the copy by A's labels), with one `Provenance` per fetch naming A, the Consent and the
  time. A refresh also lists the ids A still shows B (`_elements=id`) and removes the copies of those it no
  longer shows (deleted at A, outside a narrowed Consent, a type no longer granted). B's writes and removals are
  decided and logged by B's own store as the caller's, the fetch (or its refusal) by `_log`; A logs every read,
  the locator's redemption and a refused token under a Consent naming B, on its side.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fhir_adapters.search import parse_search
from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_access
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.auth.scopes import ResourceScope, parse_scopes
from healthledger.consent.lifecycle import grantees_of
from healthledger.errors import BadRequest, Conflict, Forbidden, NotFound, NotSupported
from healthledger.federation.client import FederationRefused, MemberClient, client_assertion
from healthledger.federation.exchange import member_reference
from healthledger.federation.keys import MemberKeys
from healthledger.federation.locators import (
    RecordLinkRow,
    links_of,
    parse_locator,
    record_locator,
    redeem,
)
from healthledger.ledger.members import ACTIVE, member_by_id
from healthledger.principal import Principal
from healthledger.store.repository import ResourceStore

log = structlog.get_logger("healthledger.federation")

# What a fetch asks for when the token allows every type: clinical data in the patient's compartment that A can
# search by `patient`. Never Patient (B has its own), Consent or AuditEvent (A's own business).
FETCH_TYPES = ("AllergyIntolerance", "Condition", "DiagnosticReport", "Encounter", "Immunization",
               "MedicationRequest", "Observation", "Procedure")
PAGE_SIZE = 50
NOT_A_MEMBER = ("this server is not a member of a hospital consortium, so federation operations are not available "
                "(a member sets HEALTHLEDGER_FEDERATION_ORG_ID: docs/federation.md)")
MAX_PAGES = 200  # per type and fetch: a bound, not a limit anyone should reach
_ID_NAMESPACE = uuid.UUID("6f3f0c52-6a9e-4c8a-9a57-0f1d0b9e5a11")  # ids at B of records copied from members
FEDERATED_TAG = {"system": "https://healthledger.dev/fhir/CodeSystem/federation", "code": "fetched",
                 "display": "copied from another member hospital"}
# A's `Date` has one-second resolution (truncated), and a record is stamped before its transaction commits: the
# next refresh asks from this long before what A last showed us (the versions seen again are skipped).
WATERMARK_MARGIN = 5.0
KEPT_META = ("security", "profile")  # A's labels decide the copy at B too (consent engine step 5, by meta.security)


def local_id(org: str, resource_type: str, resource_id: str) -> str:
    """B's id for A's record: stable, so a refresh updates the copy instead of adding another."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{org}/{resource_type}/{resource_id}"))


def rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    """Every `reference` that names a record we copied (or A's patient) renamed to its copy at B."""
    if isinstance(value, dict):
        out = {k: rewrite_references(v, mapping) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in mapping:
            out["reference"] = mapping[ref]
        return out
    if isinstance(value, list):
        return [rewrite_references(v, mapping) for v in value]
    return value


def copy_meta(base: str, record: dict[str, Any]) -> dict[str, Any]:
    """`meta` of B's copy: where it came from, the federation tag, and A's security labels and profiles."""
    meta: dict[str, Any] = {"source": source_url(base, record), "tag": [FEDERATED_TAG]}
    theirs = record.get("meta")
    if isinstance(theirs, dict):
        for name in KEPT_META:
            if isinstance(theirs.get(name), list) and theirs[name]:
                meta[name] = theirs[name]
    return meta


def next_watermark(previous: float | None, server_time: float | None, records: list[dict[str, Any]]) -> float | None:
    """Where the next refresh starts, on A's clock only: A's time at the start of this fetch (its `Date`), else the
    newest `meta.lastUpdated` A returned, less WATERMARK_MARGIN; with neither, the previous watermark stays.
    Never moves backwards."""
    seen = [t for r in records if (t := _instant((r.get("meta") or {}).get("lastUpdated"))) is not None]
    anchor = server_time if server_time is not None else max(seen, default=None)
    if anchor is None:
        return previous
    mark = anchor - WATERMARK_MARGIN
    return mark if previous is None else max(previous, mark)


def _instant(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def types_for(scope: str) -> list[str]:
    types: list[str] = []
    for s in parse_scopes(scope):
        if isinstance(s, ResourceScope):
            if s.resource_type == "*":
                return list(FETCH_TYPES)
            if s.resource_type in FETCH_TYPES:
                types.append(s.resource_type)
    return sorted(set(types))


@dataclass
class FetchReport:
    source: str
    consent: str
    fetched: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    provenance: str = ""
    refused: str = ""
    removed: int = 0  # copies removed: deleted at the member, or no longer permitted


class Federation:
    """One hospital's federation operations, on its store, its sessions and its directory key."""

    def __init__(
        self,
        store: ResourceStore,
        sessions: sessionmaker[Session],
        *,
        org_id: str,
        fhir_base: str,
        keys: Callable[[], MemberKeys],
        client: MemberClient | None = None,
        clock: Callable[[], float] = time.time,
        user_names: Callable[[str], str] = lambda actor_id: "",
    ) -> None:
        """`user_names`: an actor id -> the display name sent as `subject_name` ("" when unknown)."""
        self.store = store
        self.sessions = sessions
        self.org_id = org_id
        self.fhir_base = fhir_base.rstrip("/")
        self._keys = keys
        self.client = client or MemberClient()
        self.clock = clock
        self.user_names = user_names

    # -- at A ------------------------------------------------------------------------------------------
    def record_locator(self, principal: Principal, consent_id: str, member: str = "") -> tuple[str, str]:
        """(locator, member) for a Consent of the caller's that grants a member."""
        self._require_membership()
        from fhir_adapters.consent import consent_rules

        with self.store.unit_of_work(principal) as uow:
            stored = uow.for_operation("Consent", consent_id)  # decided and logged as a change of the Consent
            rules = consent_rules(stored.resource or {})
            with self.sessions() as session:
                members = [m for ref in grantees_of(rules)
                           if ref.startswith("Organization/")
                           and (m := member_by_id(session, ref.removeprefix("Organization/"))) is not None
                           and m.status == ACTIVE]  # fmt: skip
            if member:
                members = [m for m in members if m.org_id == member]
            if not members:
                raise Conflict("this Consent grants no active member of the consortium: name one in its provision.actor")
            if len(members) > 1:
                raise BadRequest("this Consent grants several members: say which with the 'member' parameter")
            with Session(bind=uow.conn, join_transaction_mode="create_savepoint") as session:
                locator = record_locator(session, tenant=self.store.tenant, org=self.org_id, consent_id=consent_id,
                                         member=members[0].org_id, patient_id=rules.patient_id, now=self.clock())
                session.commit()
        return locator.encode(), members[0].org_id

    def redeem_locator(self, principal: Principal, text: str) -> str:
        """The patient reference a member's locator leads to (used once)."""
        self._require_membership()
        member = principal.organization.removeprefix("Organization/")
        if not principal.consent_reference or not principal.actor_id.startswith("member:"):
            raise NotFound("no such record locator")
        locator = parse_locator(text)
        with self.sessions.begin() as session:
            patient = redeem(session, tenant=self.store.tenant, locator=locator, member=member,
                             consent_id=principal.consent_reference, now=self.clock())
        if patient is None:
            log.warning("federation.locator_refused", member=member)
            raise NotFound("no such record locator (unknown, already used, expired, or not for this token)")
        # The answer discloses who the patient is here: the patient's own log says so.
        self._log(principal, "read", "Patient", patient, patient, "permit",
                  f"federation-locator:{member}:Consent/{principal.consent_reference}")
        log.info("federation.locator_redeemed", member=member, consent=principal.consent_reference)
        return f"Patient/{patient}"

    # -- at B ------------------------------------------------------------------------------------------
    def link_record(self, principal: Principal, patient_id: str, text: str, purpose: str = "TREAT") -> RecordLinkRow:
        """Record the locator against our patient `patient_id`, redeeming it at the member that made it.

        A Consent already linked here is refused before the locator is spent (409: unlink it first); a link of
        this patient to the same record at that member under another Consent is replaced by this one (the
        patient granted again), and its next fetch is a full one."""
        self._may_change(principal, patient_id)
        self._require_membership()
        locator = parse_locator(text)
        with self.sessions() as session:
            taken = session.scalar(select(RecordLinkRow.patient_id).where(
                RecordLinkRow.tenant == self.store.tenant, RecordLinkRow.source_org == locator.org,
                RecordLinkRow.consent_ref == locator.consent))
        if taken is not None:
            mine = taken == patient_id
            raise Conflict(f"{locator.consent} at {locator.org} is already linked to "
                           f"{'this patient' if mine else 'a patient'} here; the record locator was not used "
                           f"(unlink first: $unlink-record or `healthledger federation unlink`)")
        source, base = self._source(locator.org)
        token = self._token(source, base, f"{base}/{locator.consent}", principal, purpose, "system/*.rs")
        status, body = self.client.post(f"{base}/$redeem-record-locator", token.access_token, {
            "resourceType": "Parameters", "parameter": [{"name": "locator", "valueString": text.strip()}]})
        if status != 200:
            raise FederationRefused(f"{source} did not accept the record locator ({status}): "
                                    f"{_outcome_text(body)}", status=409 if status == 404 else 502)
        patient_ref = _parameter_value(body, "patient")
        if not patient_ref.startswith("Patient/"):
            raise FederationRefused(f"{source} answered the record locator without a patient reference")
        try:
            with self.sessions.begin() as session:
                row = session.scalar(select(RecordLinkRow).where(
                    RecordLinkRow.tenant == self.store.tenant, RecordLinkRow.patient_id == patient_id,
                    RecordLinkRow.source_org == source, RecordLinkRow.source_patient == patient_ref))
                if row is None:
                    row = RecordLinkRow(tenant=self.store.tenant, patient_id=patient_id, source_org=source,
                                        source_patient=patient_ref, fetched_count=0)
                    session.add(row)
                else:
                    log.info("federation.record_relinked", source=source, old=row.consent_ref, new=locator.consent)
                row.consent_ref, row.linked_at, row.linked_by = locator.consent, self.clock(), principal.actor_id[:256]
                row.last_fetch_at = None  # a new Consent may allow more: fetch in full
        except IntegrityError:  # the same Consent linked by a concurrent request
            raise Conflict(f"{locator.consent} at {locator.org} is already linked here") from None
        log.info("federation.record_linked", source=source, consent=locator.consent)
        return row

    def unlink_record(self, principal: Principal, patient_id: str, source: str, consent: str = "") -> int:
        """Remove our patient's links to `source` (only the one under `consent`, "Consent/{id}", when given); the
        copies already fetched stay, with their Provenance. Returns how many links were removed."""
        self._may_change(principal, patient_id)
        self._require_membership()
        with self.sessions.begin() as session:
            rows = [r for r in links_of(session, self.store.tenant, patient_id)
                    if r.source_org == source and (not consent or r.consent_ref == consent)]
            for row in rows:
                session.delete(row)
        if not rows:
            raise NotFound(f"this patient has no link to {source[:64]!r}" + (f" under {consent[:80]}" if consent else ""))
        log.info("federation.record_unlinked", source=source, links=len(rows))
        return len(rows)

    def fetch(self, principal: Principal, patient_id: str, purpose: str = "TREAT") -> list[FetchReport]:
        """Fetch what changed at every member our patient is linked to (see the module docstring)."""
        self._may_change(principal, patient_id)
        self._require_membership()
        with self.sessions() as session:
            links = links_of(session, self.store.tenant, patient_id)
        if not links:
            raise NotFound("this patient is linked to no record at another member (record a locator first)")
        reports = []
        for link in links:
            try:
                sole = sum(1 for other in links if other.source_org == link.source_org) == 1
                reports.append(self._fetch_one(principal, patient_id, link, purpose, sole))
            except FederationRefused as exc:
                log.warning("federation.fetch_refused", source=link.source_org, reason=exc.error or "refused")
                self._log(principal, "read", "Patient", patient_id, patient_id, "error",
                          f"federation-fetch-refused:{link.source_org}:{link.consent_ref}:{exc.error or exc.status}",
                          purpose=purpose)
                reports.append(FetchReport(link.source_org, link.consent_ref, refused=exc.message))
        return reports

    def _fetch_one(self, principal: Principal, patient_id: str, link: RecordLinkRow, purpose: str,
                   sole: bool = True) -> FetchReport:
        """One link: what changed (all of it on the first fetch), then what A no longer shows B removed here.

        `sole`: the patient's only link to that member (with several, one link's Consent must not remove copies
        another's allowed, so nothing is removed)."""
        source, base = self._source(link.source_org)
        consent_url = f"{base}/{link.consent_ref}"
        token = self._token(source, base, consent_url, principal, purpose, "system/*.rs")
        report = FetchReport(source, consent_url)
        since = link.last_fetch_at
        records: list[dict[str, Any]] = []
        shown: dict[str, set[str] | None] = {}  # type -> A's ids A shows B now (None: the listing was cut short)
        for resource_type in types_for(token.scope):
            criteria = [("patient", link.source_patient), ("_count", str(PAGE_SIZE))]
            if since is None:
                found, complete = self._search(source, base, token.access_token, resource_type, criteria)
                records += found
                shown[resource_type] = {r["id"] for r in found} if complete else None
                continue
            found, _ = self._search(source, base, token.access_token, resource_type,
                                    [*criteria, ("_lastUpdated", "gt" + datetime.fromtimestamp(since, UTC).isoformat())])
            records += found
            # What A still shows: ids only (each decided and logged at A, as any search), so deletions at A and
            # records the Consent no longer covers leave B too.
            ids, complete = self._search(source, base, token.access_token, resource_type,
                                         [("patient", link.source_patient), ("_elements", "id"), ("_count", "500")])
            shown[resource_type] = {r["id"] for r in ids} if complete else None
        mapping = {link.source_patient: f"Patient/{patient_id}"}
        for r in records:
            mapping[f"{r['resourceType']}/{r['id']}"] = f"{r['resourceType']}/{local_id(source, r['resourceType'], r['id'])}"
        written: list[str] = []
        removed: list[str] = []
        withheld = 0  # copies the caller may not change here (each refusal decided and logged by our store)
        with self.store.unit_of_work(principal) as uow:
            for r in records:
                copy = rewrite_references(r, mapping)
                new_id = local_id(source, r["resourceType"], r["id"])
                copy["id"] = new_id
                copy["meta"] = copy_meta(base, r)
                held = uow.peek(r["resourceType"], new_id)
                if held is not None and held.resource is not None and \
                        (held.resource.get("meta") or {}).get("source") == copy["meta"]["source"]:
                    continue  # this version of A's record is here already (the window overlaps the last fetch's)
                try:
                    uow.update(r["resourceType"], new_id, copy)
                except (NotFound, Forbidden):  # our own rules withhold that copy from the caller: it stays as it was
                    withheld += 1
                    continue
                written.append(f"{r['resourceType']}/{new_id}")
                report.by_type[r["resourceType"]] = report.by_type.get(r["resourceType"], 0) + 1
            if sole:
                for resource_type in FETCH_TYPES:
                    if resource_type in shown and shown[resource_type] is None:
                        continue  # A's listing was cut short: remove nothing of this type
                    allowed = shown.get(resource_type) or set()
                    for held_id, source_id in self._copies(self.store.view_on(uow.conn), base, resource_type, patient_id):
                        if source_id not in allowed:  # deleted at A, no longer permitted, or a type no longer granted
                            try:
                                uow.delete(resource_type, held_id)
                            except (NotFound, Forbidden):
                                withheld += 1
                                continue
                            removed.append(f"{resource_type}/{held_id}")
            if written:
                provenance, _ = uow.create(self._provenance(patient_id, written, source, consent_url, purpose))
                report.provenance = f"Provenance/{provenance.id}"
        report.fetched = len(written)
        report.removed = len(removed)
        # Our own access log records the fetch itself (whoever asked, the CLI included), beside the store's entry
        # for each record written or removed.
        self._log(principal, "create", "Provenance", report.provenance.removeprefix("Provenance/"), patient_id,
                  "permit", f"federation-fetch:{source}:{link.consent_ref}:{len(written)}"
                  + (f":removed={len(removed)}" if removed else ""), purpose=purpose)
        with self.sessions.begin() as session:
            row = session.get(RecordLinkRow, link.id)
            if row is not None:
                row.last_fetch_at = next_watermark(since, token.server_time, records)
                row.fetched_count = (row.fetched_count or 0) + len(written)
        log.info("federation.fetched", source=source, records=len(written), removed=len(removed), withheld=withheld,
                 consent=link.consent_ref)
        return report

    def _search(self, source: str, base: str, token: str, resource_type: str,
                criteria: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], bool]:
        """Every page of one search at the member: (its records, whether the last page was reached)."""
        records: list[dict[str, Any]] = []
        params: list[tuple[str, str]] | None = criteria
        url: str | None = f"{base}/{resource_type}"
        for _ in range(MAX_PAGES):
            if url is None:
                return records, True
            status, bundle = self.client.get(url, token, params)
            params = None  # the next link carries them
            if status != 200 or not isinstance(bundle, dict):
                raise FederationRefused(f"{source} refused the search of {resource_type} ({status}): "
                                        f"{_outcome_text(bundle)}", error=str(status))
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict) and resource.get("resourceType") == resource_type \
                        and isinstance(resource.get("id"), str):
                    records.append(resource)
            url = next((link_["url"] for link_ in bundle.get("link") or []
                        if isinstance(link_, dict) and link_.get("relation") == "next"), None)
        return records, url is None

    def _copies(self, view: Any, base: str, resource_type: str, patient_id: str) -> list[tuple[str, str]]:
        """(our id, A's id) of each copy of A's records of this type in our patient's compartment: bookkeeping on
        the service's view (nothing decided or recorded; only the removals it leads to are, as the caller's)."""
        prefix = f"{base}/{resource_type}/"

        def from_member(resource: dict[str, Any]) -> bool:
            return str((resource.get("meta") or {}).get("source", "")).startswith(prefix)

        query = parse_search(resource_type, [("patient", f"Patient/{patient_id}")])
        out: list[tuple[str, str]] = []
        offset: int | None = 0
        while offset is not None:
            page = view.search(resource_type, query, count=PAGE_SIZE * 4, offset=offset, keep=from_member)
            for item in page.items:
                source = str(((item.resource or {}).get("meta") or {}).get("source", ""))
                out.append((item.id, source.removeprefix(prefix).partition("/")[0]))
            offset = page.next_offset
        return out

    def _provenance(self, patient_id: str, targets: list[str], source: str, consent_url: str,
                    purpose: str) -> dict[str, Any]:
        with self.sessions() as session:
            member = member_by_id(session, source)
        return {
            "resourceType": "Provenance",
            "target": [{"reference": f"Patient/{patient_id}"}, *({"reference": t} for t in targets)],
            "recorded": datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="seconds"),
            "policy": [consent_url],
            "reason": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}]}],
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                     "code": "CREATE"}]},
            "agent": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                     "code": "author"}]},
                "who": {"identifier": {"system": "urn:healthledger:member", "value": source},
                        "display": member.name if member is not None else source},
            }],
            "entity": [{"role": "source", "what": {"reference": consent_url, "display": "the patient's Consent"}}],
        }

    # -- helpers ---------------------------------------------------------------------------------------
    def _may_change(self, principal: Principal, patient_id: str) -> None:
        """Only someone who may change this patient's record here links or fetches for it (decided and logged as
        an update of the Patient); never another member's token, which would make us ask a third member in its
        name."""
        if principal.consent_reference:
            raise Forbidden("another member hospital's token cannot link or fetch records here")
        with self.store.unit_of_work(principal) as uow:
            uow.for_operation("Patient", patient_id)

    def _log(self, principal: Principal, action: str, resource_type: str, resource_id: str, patient_id: str,
             decision: str, reason: str, *, purpose: str = "") -> None:
        """One entry in our access log, in the patient's compartment (their history shows it)."""
        with self.sessions.begin() as session:
            record_access(session, AccessEntry(
                time=datetime.fromtimestamp(self.clock(), UTC), actor=principal.actor_id,
                organization=principal.organization or member_reference(self.org_id), role=principal.role,
                purpose=purpose or principal.purpose, action=action, resource_type=resource_type,
                resource_id=resource_id, patient_pseudonym=patient_pseudonym(self.store.indexer, patient_id),
                decision=decision, reason=reason[:500],
            ))  # fmt: skip

    def _require_membership(self) -> None:
        if not self.org_id:
            raise NotSupported(NOT_A_MEMBER)

    def _source(self, org: str) -> tuple[str, str]:
        with self.sessions() as session:
            member = member_by_id(session, org)
        if member is None or member.status != ACTIVE:
            raise FederationRefused(f"{org!r} is not an active member of the consortium directory", status=409)
        return member.org_id, member.fhir_base_url.rstrip("/")

    def _token(self, source: str, base: str, consent_url: str, principal: Principal, purpose: str, scope: str) -> Any:
        with self.sessions() as session:
            me = member_by_id(session, self.org_id)
        if me is None or me.status != ACTIVE:
            raise FederationRefused(f"this server ({self.org_id!r}) is not an active member of the directory",
                                    status=409)
        key = self._keys().signing_key(me.key_thumbprint)
        endpoint = self.client.token_endpoint(base)
        assertion = client_assertion(key, self.org_id, endpoint, purpose=purpose, user=principal.actor_id,
                                     consent_reference=consent_url, now=int(self.clock()),
                                     user_name=self.user_names(principal.actor_id)[:256])
        return self.client.token(endpoint, assertion, scope)


def _parameter_value(body: Any, name: str) -> str:
    for p in (body or {}).get("parameter") or [] if isinstance(body, dict) else []:
        if isinstance(p, dict) and p.get("name") == name:
            value = p.get("valueString") or (p.get("valueReference") or {}).get("reference")
            return value if isinstance(value, str) else ""
    return ""


def source_url(base: str, record: dict[str, Any]) -> str:
    """`meta.source` of a copy: A's URL of the version copied (its `_history` URL when A gave a versionId)."""
    url = f"{base}/{record['resourceType']}/{record['id']}"
    version = (record.get("meta") or {}).get("versionId")
    return f"{url}/_history/{version}" if isinstance(version, str) and version else url


def _outcome_text(body: Any) -> str:
    if isinstance(body, dict):
        for issue in body.get("issue") or []:
            if isinstance(issue, dict) and isinstance(issue.get("diagnostics"), str):
                return str(issue["diagnostics"])[:300]
    return ""
