"""The access log as FHIR R4 AuditEvents: GET /fhir/AuditEvent (search) and /fhir/AuditEvent/{id} (read).

Who sees what (docs/consent-semantics.md, "Who may read the access log"): on top of the SMART scopes for
AuditEvent, a patient sees the entries about themselves (found by their pseudonym, a keyed hash the log
stores instead of their id); an auditor sees the entries of the patients its organisation is a care
organisation of (all of them, and the entries naming no patient, for an auditor of the home organisation);
a client registered for AuditEvent by name, not through `*`, and the service itself see every entry;
anyone else sees none (an empty searchset; a read answers 404 like a missing id). Reading the log is itself
an access: each request is recorded through the injected `record` before anything is returned, permitted or
not, against each patient whose entries it disclosed.

The log holds no patient ids, so a `Patient/{id}` reference is rendered only when the request said whose
entries it wanted (the `patient` parameter, or the patient asking); otherwise the pseudonym is shown.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from flask import Blueprint, Response, request
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from werkzeug.exceptions import MethodNotAllowed

from fhir_adapters.audit_event import audit_event
from fhir_adapters.errors import UnsupportedSearch
from fhir_adapters.search.controls import ResultControls, parse_controls, prefers_strict
from fhir_adapters.search.dates import date_range, interval_datetime
from fhir_adapters.search.parameters import search_parameters
from fhir_adapters.search.query import DATE_PREFIXES
from fhir_adapters.search.references import parse_reference
from healthledger.api import negotiation as http
from healthledger.api.paging import (
    CURSOR_PARAM,
    PageLinks,
    Position,
    ignored_outcome,
    parse_count,
    read_cursor,
    searchset_bundle,
)
from healthledger.audit.anchoring import EntryProof, anchored_proof
from healthledger.audit.entries import AccessEntry, decode_entry
from healthledger.audit.log import DEFAULT_LOG
from healthledger.audit.models import AccessLogEntry
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.audit.spool import ingest
from healthledger.auth.scopes import INTERACTION_PERMISSION, ResourceScope, scope_allows
from healthledger.errors import BadRequest, Forbidden, NotFound
from healthledger.principal import Principal
from healthledger.store.repository import ResourceStore, dump_resource

RESOURCE_TYPE = "AuditEvent"
SEARCH_PARAMS = frozenset({"patient", "date"})
CONTROLS = frozenset({"_count", "_offset", CURSOR_PARAM, "_format", "_pretty"})
RESULT_CONTROLS = frozenset({"_summary", "_total", "_elements", "_sort"})
# What `_sort` takes: the columns the log is ordered by (an entry's `recorded` is its `date` and, since an entry never
# changes, its `_lastUpdated`); ties, and no `_sort`, go by id (append order).
SORTABLE = {name: search_parameters(RESOURCE_TYPE)[name] for name in ("date", "_lastUpdated", "_id")}
_ENTRY_ID = re.compile(r"[0-9]{1,18}")
_NO_SUCH_ENTRY = "no AuditEvent with that id"
_WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]

# Which entries a caller may see (AuditAccess.sees).
EVERYTHING = "everything"  # every entry, including those naming no patient
OWN_ENTRIES = "own-entries"  # the entries of `patient_id`
CARED_FOR = "cared-for"  # the entries of the patients `organization` is a care organisation of
OWN_REQUESTS = "own-requests"  # a researcher's own requests (`actor`) about RESEARCH_TYPES, naming no patient
NOTHING = "nothing"  # none: searches are empty, reads answer like a missing id

# What a researcher's own requests are about: studies, their cohort Groups and exports, the log itself. Its
# attempts on anything else (a Patient, an Observation) are never shown, even those naming no patient: a miss
# (or a search matching nothing) names no patient while the denial of a real patient's resource does, so showing
# the one and hiding the other would tell the researcher which patient ids exist.
RESEARCH_TYPES = ("AuditEvent", "Group", "ResearchStudy")

Target = tuple[str, str]  # (AuditEvent id or "", patient pseudonym or "") of one recorded access


class RecordAccess(Protocol):
    """Records one request to the access log (wired to the consent engine's logging): one entry per target,
    all with the same action, decision and reason, in one transaction."""

    def __call__(
        self, principal: Principal, action: str, targets: Sequence[Target], decision: str, reason: str, /,
    ) -> None: ...


class ActorNames(Protocol):
    """Display names for the ids the log holds (healthledger.auth.directory.ActorDirectory); "" for none."""

    def actor(self, actor_id: str) -> str: ...

    def organization(self, reference: str) -> str: ...


class CareOrganisations(Protocol):
    """Care organisations as the consent index computes them (healthledger.consent.index.ConsentIndex)."""

    home_organization: str  # a care organisation of every patient

    def patients_cared_for(self, conn: Connection, organization: str) -> frozenset[str]:
        """The ids of the patients whose care organisations include `organization`."""
        ...


def audit_event_blueprint(
    store: ResourceStore,
    authenticate: Callable[[], Principal],
    record: RecordAccess,
    care: CareOrganisations,
    *,
    log_id: str = DEFAULT_LOG,
    pages: AuditPages | None = None,
    names: ActorNames | None = None,
    break_glass_reason: Callable[[AccessEntry], str] | None = None,
) -> Blueprint:
    """The /fhir/AuditEvent blueprint over `store`'s database and blind-index keys.

    `authenticate()` returns the caller or raises Unauthorized; `record(principal, action, targets,
    decision, reason)` is called once per authenticated request, action "read" or "search", decision
    "permit", "deny" or "error", one target per patient whose entries were disclosed (a read: the entry's
    id and its patient's pseudonym) or a single target naming no patient when none were. `care` says
    which patients an auditor's organisation cares for. Every method under /fhir/AuditEvent is routed here
    (writes get 405), so the generic FHIR blueprint never serves or stores AuditEvents of its own.

    `names` gives the display names of actors and organisations; `break_glass_reason` opens the sealed
    justification of a break-the-glass entry, rendered only for the patient whose entry it is and for
    auditors. `GET /fhir/AuditEvent/{id}/$inclusion-proof` answers, under the read rule, the entry's
    canonical bytes and its RFC 6962 audit path to the first on-chain anchored tree head that covers it.
    """
    bp = Blueprint("audit_events", __name__, url_prefix="/fhir")
    api = _AuditEventApi(store, authenticate, record, care, log_id, pages or AuditPages(), names, break_glass_reason)
    methods = ["GET", *_WRITE_METHODS]
    bp.add_url_rule(f"/{RESOURCE_TYPE}", "search", api.search, methods=methods)
    bp.add_url_rule(f"/{RESOURCE_TYPE}/<entry_id>", "read", api.read, methods=methods)
    bp.add_url_rule(f"/{RESOURCE_TYPE}/<entry_id>/$inclusion-proof", "inclusion_proof", api.inclusion_proof,
                    methods=methods)
    bp.add_url_rule(f"/{RESOURCE_TYPE}/<path:rest>", "other", api.other, methods=methods)
    return bp


# -- access rules (pure) ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditAccess:
    """What a principal may see of the access log.

    `allowed` False: its SMART scopes do not allow the interaction on AuditEvent (403, as for any type).
    Otherwise `sees` says which entries (EVERYTHING, OWN_ENTRIES of `patient_id`, CARED_FOR by
    `organization`, or NOTHING) and `reason` names the rule, recorded with the access.
    """

    allowed: bool
    reason: str
    sees: str = NOTHING
    patient_id: str = ""
    organization: str = ""
    actor: str = ""  # OWN_REQUESTS: the actor id whose entries are shown

    def shows(self, entry: AccessEntry) -> bool:
        """The per-entry part of the rule that pseudonyms alone cannot say (OWN_REQUESTS: the actor)."""
        return self.sees != OWN_REQUESTS or (
            entry.actor == self.actor and not entry.patient_pseudonym and entry.resource_type in RESEARCH_TYPES
        )

    @property
    def hidden_reason(self) -> str:
        """The recorded reason when the entries asked for are not among those the rule shows."""
        return {OWN_ENTRIES: "audit:other-patient", CARED_FOR: "audit:not-cared-for",
                OWN_REQUESTS: "audit:not-own-request"}.get(self.sees, self.reason)


def audit_access(principal: Principal, interaction: str, home_organization: str) -> AuditAccess:
    """Decide an AuditEvent `interaction` ("read" or "search") for `principal`, in this order:

    1. scopes: a restricted principal needs a SMART scope allowing the interaction on AuditEvent;
    2. a patient: their own entries (none without a patient id);
    3. the service itself or the development token (unrestricted): every entry;
    4. a client registered for AuditEvent by name (`system/AuditEvent.rs`, not `system/*.rs`): every entry;
    5. an auditor: the patients of its organisation (every entry for the home organisation's auditors);
    6. a researcher: their own requests (entries whose actor is them) about studies, cohort Groups and the log
       (RESEARCH_TYPES) that name no patient: feasibility releases, export kick-offs, manifests, downloads and
       cancels, study reads. Their attempts on other types are not shown (an existence oracle otherwise; see
       RESEARCH_TYPES). Entries naming a patient
       (each resource an export delivered is logged against its patient, by the study as actor) are never
       shown, so no patient pseudonym reaches a researcher (docs/trust-model.md);
    7. anyone else: nothing.
    """
    if not principal.unrestricted and not scope_allows(
        principal.scopes or (), principal.scope_context, RESOURCE_TYPE, interaction
    ):
        return AuditAccess(False, "scope:none-for-AuditEvent")
    if principal.role == "patient":
        if not principal.patient_id:
            return AuditAccess(True, "audit:patient-without-id")
        return AuditAccess(True, "audit:own-entries", OWN_ENTRIES, patient_id=principal.patient_id)
    if principal.unrestricted:
        return AuditAccess(True, "audit:unrestricted", EVERYTHING)
    if registered_for_the_log(principal.registered_scopes, principal.scope_context, interaction):
        return AuditAccess(True, "audit:registered-for-the-log", EVERYTHING)
    if principal.role == "auditor" and principal.organization:
        if principal.organization == home_organization:
            return AuditAccess(True, "audit:auditor-of-the-home-organisation", EVERYTHING)
        return AuditAccess(True, "audit:auditor-of-a-care-organisation", CARED_FOR,
                           organization=principal.organization)
    if principal.role == "researcher" and principal.actor_id:
        return AuditAccess(True, "audit:own-requests", OWN_REQUESTS, actor=principal.actor_id)
    return AuditAccess(True, "audit:not-a-log-reader")


def registered_for_the_log(registered: Iterable[Any], context: str, interaction: str) -> bool:
    """Is a client registered for the log itself: a registered scope naming AuditEvent (not `*`) that
    allows the interaction? A wildcard registration is what every integration asks for; it is not a
    decision to hand this client the whole log."""
    permission = INTERACTION_PERMISSION.get(interaction)
    if permission is None:
        return False
    return any(
        isinstance(s, ResourceScope) and s.resource_type == RESOURCE_TYPE and s.allows(context, RESOURCE_TYPE, permission)
        for s in registered
    )


# -- search parameters (pure) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DateCondition:
    """One `date` value: the entry time t (an instant) against the value's implicit range [lo, hi).

    R4 search.html#prefix applied to a one-microsecond target: eq lo <= t < hi, ne its negation,
    gt/sa t >= hi, lt/eb t < lo, ge t >= lo, le t < hi. None bounds are unbounded.
    """

    prefix: str
    lo: datetime | None
    hi: datetime | None


@dataclass(frozen=True)
class AuditQuery:
    patients: tuple[frozenset[str], ...]  # each `patient` parameter: ids, OR-ed; parameters AND-ed
    dates: tuple[tuple[DateCondition, ...], ...]  # each `date` parameter: values OR-ed; parameters AND-ed
    kept: tuple[tuple[str, str], ...]  # the search parameters, for paging links
    count: int
    offset: int
    results: ResultControls = dataclasses.field(default_factory=ResultControls)  # _summary, _total, _elements, _sort
    ignored: tuple[str, ...] = ()  # left out under lenient handling
    after: int | None = None  # the page starts after this entry, in `order` (a keyset cursor); None: at `offset`

    @property
    def order(self) -> tuple[tuple[str, bool], ...]:
        """The columns (`recorded_at`, `id`) the entries are in, each with descending or not, id last."""
        columns: list[tuple[str, bool]] = []
        for key in self.results.sort:
            column = "id" if key.param.name == "_id" else "recorded_at"
            if column not in (c for c, _ in columns):
                columns.append((column, key.descending))
        if "id" not in (c for c, _ in columns):
            columns.append(("id", columns[-1][1] if columns else False))
        return tuple(columns)

    @property
    def keyset(self) -> bool:
        """Whether pages go by the last entry shown (a keyset): when every column runs the same way; otherwise
        by offset."""
        return len({descending for _, descending in self.order}) == 1


def parse_audit_query(
    params: Sequence[tuple[str, str]], *, default_count: int, max_count: int, strict: bool = True
) -> AuditQuery:
    """The search parameters AuditEvent search supports. Anything else is an UnsupportedSearch (400 not-supported)
    under strict handling; otherwise left out and named in `ignored` (FHIR's default, R4 3.1.1.4)."""
    controls: dict[str, list[str]] = {}
    patients: list[frozenset[str]] = []
    dates: list[tuple[DateCondition, ...]] = []
    kept: list[tuple[str, str]] = []
    result_params: list[tuple[str, str]] = []
    ignored: list[str] = []
    for name, value in params:
        if name in CONTROLS:
            controls.setdefault(name, []).append(value)
        elif name in RESULT_CONTROLS:
            result_params.append((name, value))
        elif name == "patient":
            patients.append(frozenset(_patient_id(piece) for piece in _pieces(name, value)))
            kept.append((name, value))
        elif name == "date":
            dates.append(tuple(_date_condition(piece) for piece in _pieces(name, value)))
            kept.append((name, value))
        else:
            shown = name[:40] if name.isprintable() else "?"
            if not strict:
                ignored.append(shown)
                continue
            raise UnsupportedSearch(
                f"unsupported AuditEvent search parameter {shown!r} (supported: patient, date, _count, _offset, "
                "_summary, _total, _elements, _sort)",
                expression=shown if shown != "?" else None,
            )
    count = parse_count(controls.get("_count", []), default=default_count, maximum=max_count)
    offset = 0
    after: int | None = None
    if CURSOR_PARAM in controls:
        cursor = read_cursor(controls[CURSOR_PARAM][-1])
        offset = cursor.offset
        if cursor.after is not None:
            if len(cursor.after) != 1 or not _ENTRY_ID.fullmatch(str(cursor.after[0])):
                raise BadRequest("invalid paging cursor")
            after = int(str(cursor.after[0]))
    elif "_offset" in controls:
        offset = parse_count(controls["_offset"], default=0, maximum=10**9, name="_offset")
    results = parse_controls(RESOURCE_TYPE, result_params, strict=strict, sortable=SORTABLE)
    if results.summary is not None and results.elements is not None:
        raise BadRequest("use either _summary or _elements, not both")
    if results.summary == "count":
        count = 0
    query = AuditQuery(tuple(patients), tuple(dates), (*kept, *results.kept), count, offset, results,
                       tuple(dict.fromkeys([*ignored, *results.ignored])))
    return dataclasses.replace(query, after=after) if query.keyset else query


def _past(conn: Connection, query: AuditQuery, columns: dict[str, Any], where: list[Any]) -> Any:
    """The entries after `query.after` in `query.order` (a keyset; R4 search.html#paging leaves paging to the
    server). That entry's time is looked up, not carried in the cursor (which holds only the id the page showed),
    among the entries the search selects (`where`): a cursor naming any other is invalid, so a forged one tells
    nothing about entries the caller does not see."""
    assert query.after is not None
    recorded = conn.execute(sa.select(AccessLogEntry.recorded_at).where(
        *where, AccessLogEntry.id == query.after)).scalar_one_or_none()
    if recorded is None:
        raise BadRequest("invalid paging cursor")
    anchor = {"id": query.after, "recorded_at": recorded}
    clause: Any = sa.false()
    # (a, b) after (x, y) in the order: a past x, or a equal to x and b past y.
    for column, descending in reversed(query.order):
        past = columns[column] < anchor[column] if descending else columns[column] > anchor[column]
        clause = sa.or_(past, sa.and_(columns[column] == anchor[column], clause))
    return clause


def _pieces(name: str, value: str) -> list[str]:
    pieces = value.split(",")  # R4 search.html#combining: a comma ORs values (ids and dates have none)
    if any(not piece.strip() for piece in pieces):
        raise BadRequest(f"empty value in '{name}'", expression=name)
    return [piece.strip() for piece in pieces]


def _patient_id(piece: str) -> str:
    ref = parse_reference(piece)
    if ref.id is None or ref.type not in (None, "Patient"):
        raise BadRequest("patient must be Patient/{id} or {id}", expression="patient")
    return ref.id


def _date_condition(piece: str) -> DateCondition:
    prefix, text = "eq", piece
    if piece[:2] in DATE_PREFIXES and len(piece) > 2 and not piece[2].isalpha():
        prefix, text = piece[:2], piece[2:]
    if prefix == "ap":
        raise BadRequest("the 'ap' date prefix is not supported for AuditEvent", expression="date")
    interval = date_range(text)
    if interval is None:
        raise BadRequest(
            "date must be [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.ffffff]][Z|+hh:mm]]]] with prefix eq, ne, gt, lt, ge, "
            "le, sa or eb",
            expression="date",
        )
    return DateCondition(prefix, _bound(interval.lo), _bound(interval.hi))


def _bound(us: int | None) -> datetime | None:
    if us is None:
        return None
    try:
        return interval_datetime(us)
    except OverflowError:  # the end of year 9999: unbounded
        return None


def _date_clause(column: Any, cond: DateCondition) -> Any:
    after_lo = sa.true() if cond.lo is None else column >= cond.lo
    before_hi = sa.true() if cond.hi is None else column < cond.hi
    if cond.prefix == "eq":
        return sa.and_(after_lo, before_hi)
    if cond.prefix == "ne":
        return sa.not_(sa.and_(after_lo, before_hi))
    if cond.prefix in ("gt", "sa"):
        return sa.false() if cond.hi is None else column >= cond.hi
    if cond.prefix in ("lt", "eb"):
        return sa.false() if cond.lo is None else column < cond.lo
    if cond.prefix == "ge":
        return after_lo
    return before_hi  # le


# -- the shell ------------------------------------------------------------------------------------------
@dataclass
class _Attempt:
    """What gets recorded for one request; handlers fill it in as they learn it."""

    resource_id: str = ""
    disclosed: list[str] = dataclasses.field(default_factory=list)  # pseudonyms ("": no patient) shown
    decision: str = "error"
    reason: str = "audit:bad-request"

    def targets(self) -> list[Target]:
        """One per patient whose entries were disclosed; one naming no patient when none were."""
        return [(self.resource_id, p) for p in dict.fromkeys(self.disclosed)] or [(self.resource_id, "")]


@dataclass(frozen=True)
class AuditPages:
    """Paging of AuditEvent searches, and the base URL of links (empty: the request's own host)."""

    default_count: int = 20
    max_count: int = 100
    base_url: str = ""


class _AuditEventApi:
    def __init__(
        self, store: ResourceStore, authenticate: Callable[[], Principal], record: RecordAccess,
        care: CareOrganisations, log_id: str, pages: AuditPages, names: ActorNames | None,
        break_glass_reason: Callable[[AccessEntry], str] | None,
    ) -> None:
        self.store = store
        self.authenticate = authenticate
        self.record = record
        self.care = care
        self.log_id = log_id
        self.pages = pages
        self.names = names
        self.break_glass_reason = break_glass_reason

    def _base(self) -> str:
        base_url = self.pages.base_url
        root = base_url.rstrip("/") if base_url else request.host_url.rstrip("/")
        return f"{root}/fhir"

    def _logged(self, action: str, work: Callable[[Principal, _Attempt], Response]) -> Response:
        """Authenticate, run `work`, and record the attempt once, whether it succeeded or was refused."""
        principal = self.authenticate()
        attempt = _Attempt()
        try:
            ingest(self.store.engine)  # (SQLite) the reads' entries still in the spool are in the log like any other
            return work(principal, attempt)
        finally:  # refused or answered: recorded (an unexpected error is an attempt too)
            self.record(principal, action, attempt.targets(), attempt.decision, attempt.reason)

    # -- endpoints --------------------------------------------------------------------------------------
    def search(self) -> Response:
        _read_only()
        return self._logged("search", self._search)

    def read(self, entry_id: str) -> Response:
        _read_only()
        return self._logged("read", lambda principal, attempt: self._read(principal, attempt, entry_id))

    def inclusion_proof(self, entry_id: str) -> Response:
        _read_only()
        return self._logged("read", lambda principal, attempt: self._proof(principal, attempt, entry_id))

    def other(self, rest: str) -> Response:
        _read_only()
        raise NotFound("AuditEvent supports read (GET /fhir/AuditEvent/{id}), search (GET /fhir/AuditEvent) and "
                       "GET /fhir/AuditEvent/{id}/$inclusion-proof only")

    # -- interactions -----------------------------------------------------------------------------------
    def _read(self, principal: Principal, attempt: _Attempt, entry_id: str) -> Response:
        row, entry, access = self._readable_entry(principal, attempt, entry_id)
        known = self._own(access)
        attempt.decision = "permit"
        attempt.disclosed.append(entry.patient_pseudonym)
        event = self._render(row.id, entry, row.leaf_index, known, access)
        wanted = [(n, v) for n, v in request.args.items(multi=True) if n in ("_summary", "_elements")]
        if wanted:  # R4 3.1.1.5.8: a read may ask for a subset too
            results = parse_controls(RESOURCE_TYPE, wanted, strict=True)
            if results.summary == "count":
                raise BadRequest("_summary=count applies to searches, not reads", expression="_summary")
            event = _subset(event, results)
        return _respond(event)

    def _proof(self, principal: Principal, attempt: _Attempt, entry_id: str) -> Response:
        """The entry's bytes and audit path to the anchored head covering it (R4 Parameters)."""
        row, entry, _access = self._readable_entry(principal, attempt, entry_id)
        with Session(self.store.engine) as session, session.begin():
            found = anchored_proof(session, row.id, datetime.now(UTC), tenant=self.store.tenant, log_id=self.log_id)
        attempt.decision = "permit"
        attempt.disclosed.append(entry.patient_pseudonym)
        return _respond(proof_parameters(found))

    def _readable_entry(self, principal: Principal, attempt: _Attempt, entry_id: str) -> tuple[Any, AccessEntry, AuditAccess]:
        """The stored row and entry `entry_id` if the read rule shows it to `principal`; NotFound otherwise."""
        http.check_response_format(request)
        access = audit_access(principal, "read", self.care.home_organization)
        attempt.resource_id = entry_id if _ENTRY_ID.fullmatch(entry_id) else ""
        attempt.reason = access.reason
        if not access.allowed:
            attempt.decision = "deny"
            raise Forbidden("this client may not read AuditEvents")
        row = None
        with self.store.engine.connect() as conn:
            if attempt.resource_id:
                row = conn.execute(
                    sa.select(AccessLogEntry.id, AccessLogEntry.body, AccessLogEntry.leaf_index).where(
                        AccessLogEntry.id == int(entry_id), AccessLogEntry.log_id == self.log_id
                    )
                ).first()
            if row is None:
                attempt.reason = "audit:not-found"
                raise NotFound(_NO_SUCH_ENTRY)
            entry = decode_entry(row.body)
            visible = self._visible(conn, access)
        # The body decides (the Merkle leaf covers it), not the index column.
        if (visible is not None and entry.patient_pseudonym not in visible) or not access.shows(entry):
            attempt.decision, attempt.reason = "deny", access.hidden_reason
            raise NotFound(_NO_SUCH_ENTRY)  # exactly as for a missing id: existence is not disclosed
        return row, entry, access

    def _search(self, principal: Principal, attempt: _Attempt) -> Response:
        http.check_response_format(request)
        query = parse_audit_query(
            list(request.args.items(multi=True)),
            default_count=self.pages.default_count,
            max_count=self.pages.max_count,
            strict=prefers_strict(request.headers.get("Prefer")),
        )
        access = audit_access(principal, "search", self.care.home_organization)
        attempt.reason = access.reason
        if not access.allowed:
            attempt.decision = "deny"
            raise Forbidden("this client may not search AuditEvents")

        requested = self._pseudonyms(query.patients)
        known = {**(requested or {}), **self._own(access)}
        with self.store.engine.connect() as conn:
            visible = self._visible(conn, access)
            wanted: frozenset[str] | None = visible
            if requested is not None:
                wanted = frozenset(requested) if visible is None else frozenset(requested) & visible
                if not wanted:
                    # Entries the rule does not show: an empty result, as if there were none.
                    attempt.decision, attempt.reason = "deny", access.hidden_reason
                    return self._bundle(query, [], 0, None)
            if wanted is not None and not wanted:
                # The rule shows no entry at all (nothing, or an organisation that cares for no patient).
                attempt.decision = "deny"
                return self._bundle(query, [], 0, None)

            where = [AccessLogEntry.log_id == self.log_id]
            if access.sees == OWN_REQUESTS:
                where.append(AccessLogEntry.patient_pseudonym.is_(None))  # entries naming no patient
            elif wanted is not None:
                # Rendered inline: an organisation may care for more patients than a statement takes
                # parameters; pseudonyms are hex digests.
                where.append(AccessLogEntry.patient_pseudonym.in_(
                    sa.bindparam("visible", sorted(wanted), expanding=True, literal_execute=True)))
            if access.sees == OWN_REQUESTS:
                # The log has no actor column: the body is matched as stored (canonical JSON, sorted keys),
                # and every row is checked again below (the body decides).
                where.append(_body_text(conn).contains(_actor_spelling(access.actor), autoescape=True))
                where.append(sa.or_(*(_body_text(conn).contains(_type_spelling(t), autoescape=True)
                                      for t in RESEARCH_TYPES)))
            for group in query.dates:
                where.append(sa.or_(*(_date_clause(AccessLogEntry.recorded_at, cond) for cond in group)))
            total = int(conn.execute(sa.select(sa.func.count()).select_from(AccessLogEntry).where(*where)).scalar_one())
            rows: Sequence[Any] = ()
            if query.count > 0:
                columns = {"id": AccessLogEntry.id, "recorded_at": AccessLogEntry.recorded_at}
                ordered = (sa.select(AccessLogEntry.id, AccessLogEntry.body, AccessLogEntry.leaf_index,
                                     AccessLogEntry.recorded_at)
                           .where(*where)
                           .order_by(*(columns[c].desc() if down else columns[c] for c, down in query.order)))
                if query.after is not None:
                    ordered = ordered.where(_past(conn, query, columns, where))
                else:
                    ordered = ordered.offset(query.offset)
                rows = conn.execute(ordered.limit(query.count + 1)).all()
        # One row past the page says whether there is a next one, whatever was added meanwhile.
        more, rows = len(rows) > query.count, rows[: query.count]
        events = []
        for row in rows:
            entry = decode_entry(row.body)
            if (wanted is not None and entry.patient_pseudonym not in wanted) or not access.shows(entry):
                continue  # an index column that disagrees with its body (`audit verify` reports it)
            attempt.disclosed.append(entry.patient_pseudonym)
            events.append((row.id, self._render(row.id, entry, row.leaf_index, known, access)))
        attempt.decision = "permit"
        next_offset = query.offset + len(rows) if more else None
        # Keyset: the next page starts after the last entry of this one (its id, which the page shows).
        next_after = (str(rows[-1].id),) if more and query.keyset else None
        return self._bundle(query, events, total, next_offset, next_after)


    # -- helpers ----------------------------------------------------------------------------------------
    def _visible(self, conn: Connection, access: AuditAccess) -> frozenset[str] | None:
        """The pseudonyms whose entries `access` shows; None for every entry (those naming no patient too)."""
        if access.sees == EVERYTHING:
            return None
        if access.sees == OWN_ENTRIES:
            return frozenset({patient_pseudonym(self.store.indexer, access.patient_id)})
        if access.sees == OWN_REQUESTS:
            return frozenset({""})  # entries naming no patient (stored with an empty pseudonym)
        if access.sees == CARED_FOR:
            patients = self.care.patients_cared_for(conn, access.organization)
            return frozenset(patient_pseudonym(self.store.indexer, pid) for pid in patients)
        return frozenset()

    def _own(self, access: AuditAccess) -> dict[str, str]:
        """pseudonym -> id of the patient asking (their own entries show their Patient reference)."""
        if access.sees != OWN_ENTRIES:
            return {}
        return {patient_pseudonym(self.store.indexer, access.patient_id): access.patient_id}

    def _pseudonyms(self, patients: tuple[frozenset[str], ...]) -> dict[str, str] | None:
        """pseudonym -> patient id for the ids every `patient` parameter allows; None if none was given."""
        if not patients:
            return None
        ids = frozenset.intersection(*patients)
        return {patient_pseudonym(self.store.indexer, pid): pid for pid in sorted(ids)}

    def _render(
        self, entry_id: int, entry: AccessEntry, leaf_index: int | None, known: dict[str, str], access: AuditAccess,
    ) -> dict[str, Any]:
        patient_id = known.get(entry.patient_pseudonym) if entry.patient_pseudonym else None
        reason = ""
        if entry.break_glass and entry.sealed_note and self.break_glass_reason is not None and (
            access.sees == OWN_ENTRIES or access.reason.startswith("audit:auditor")
        ):
            reason = self.break_glass_reason(entry)
        return audit_event(
            dataclasses.asdict(entry),
            entry_id=entry_id,
            leaf_index=leaf_index,
            patient_ref=f"Patient/{patient_id}" if patient_id else None,
            actor_display=self.names.actor(entry.actor) if self.names is not None else "",
            organization_display=(
                self.names.organization(entry.organization) if self.names is not None and entry.organization else ""),
            break_glass_reason=reason,
        )

    def _bundle(
        self, query: AuditQuery, events: list[tuple[int, dict[str, Any]]], total: int, next_offset: int | None,
        next_after: Position | None = None,
    ) -> Response:
        base = self._base()
        after = (str(query.after),) if query.after is not None else None
        links = PageLinks(f"{base}/{RESOURCE_TYPE}", query.kept, query.count, query.offset, after).links(
            next_offset, next_after)
        if query.count == 0:
            links = links[:1]
        results = query.results
        entries = [(f"{base}/{RESOURCE_TYPE}/{entry_id}", _subset(event, results)) for entry_id, event in events]
        shown_total = None if results.total == "none" and results.summary != "count" else total
        outcome = ignored_outcome(list(query.ignored))
        return _respond(searchset_bundle(entries, total=shown_total, links=links, outcome=outcome))


def _subset(event: dict[str, Any], results: ResultControls) -> dict[str, Any]:
    return results.subset(event)


def _actor_spelling(actor: str) -> str:
    """How an entry's canonical encoding (healthledger.audit.entries.encode_entry: sorted keys, no spaces,
    ASCII) spells its actor."""
    return '"actor":' + json.dumps(actor, ensure_ascii=True) + ","


def _type_spelling(resource_type: str) -> str:
    """How an entry's canonical encoding spells its resource type (followed by `role`, in sorted key order)."""
    return '"resource_type":' + json.dumps(resource_type, ensure_ascii=True) + ","


def _body_text(conn: Connection) -> Any:
    """The entry body (ASCII JSON bytes) as text, for LIKE: PostgreSQL decodes the bytea, SQLite casts."""
    if conn.dialect.name == "postgresql":
        return sa.func.convert_from(AccessLogEntry.body, "UTF8", type_=sa.Text)
    return sa.cast(AccessLogEntry.body, sa.Text)


def _read_only() -> None:
    if request.method != "GET":
        # The access log is written by the server as accesses happen, never through the API.
        raise MethodNotAllowed(valid_methods=["GET"])


def proof_parameters(found: EntryProof) -> dict[str, Any]:
    """An entry's proof as R4 Parameters: `entry` (its canonical bytes), `leafIndex`, `treeSize`, `rootHash`
    (hex), one `auditPath` per node from the leaf up (hex), and `anchor` (tree size, root, block number and
    hash, transaction) when an on-chain anchored head covers the entry."""
    proof = found.proof
    params: list[dict[str, Any]] = [
        {"name": "entry", "valueBase64Binary": base64.b64encode(found.body).decode()},
        {"name": "leafIndex", "valueInteger": proof.leaf_index},
        {"name": "treeSize", "valueInteger": proof.tree_size},
        {"name": "rootHash", "valueString": proof.root.hex()},
        *({"name": "auditPath", "valueString": node.hex()} for node in proof.path),
    ]
    if found.anchor is not None:
        anchor = found.anchor
        params.append({"name": "anchor", "part": [
            {"name": "treeSize", "valueInteger": anchor.size},
            {"name": "rootHash", "valueString": anchor.root.hex()},
            {"name": "blockNumber", "valueInteger": anchor.block_number},
            {"name": "blockHash", "valueString": anchor.block_hash},
            {"name": "transaction", "valueString": anchor.transaction},
        ]})
    return {"resourceType": "Parameters", "parameter": params}


def _respond(payload: dict[str, Any]) -> Response:
    return Response(dump_resource(payload), status=200, content_type=http.FHIR_JSON)
