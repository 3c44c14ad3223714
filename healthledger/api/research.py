"""The research workflow's FHIR interactions and operations (thin: parse HTTP, call `healthledger.research`, render).

- `POST /fhir/ResearchStudy` (researcher): a draft study and its cohort Group; `GET /fhir/ResearchStudy[?status=]`
  and `GET /fhir/ResearchStudy/{id}`: published studies for anyone authenticated, drafts for their owners.
- `POST /fhir/ResearchStudy/{id}/$publish` (owner): registration on StudyRegistry through the outbox (202;
  the study turns `active` when the chain confirms it).
- `GET|POST /fhir/Patient/{id}/$eligibility-credential` (that patient only; anyone else: 404): the credential;
  POST with `password` activates it (first time) and adds the identity secret and, with `study`, the enrollee.
- `POST /fhir/ResearchStudy/{id}/$enrol` (patient: proof, publicSignals, password) -> ResearchSubject;
  `POST /fhir/ResearchStudy/{id}/$leave` (patient: password) revokes the study consent's grant.
- `GET /fhir/ResearchSubject?study=ResearchStudy/{id}`: the study's enrolments (participants as pseudonyms) to
  its owner, a patient's own enrolments to that patient (in every study when `study` is left out), and, to
  everyone, the ResearchSubjects stored by clients (POST/PUT) that the caller may read, like any other search.

Both searches take FHIR's lenient or strict handling of what they do not support (`Prefer: handling=`), as the
generic search does; the same reads and searches answer GET entries of batch and transaction Bundles
(`bundle_reads`), on the entry's own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request
from sqlalchemy.orm import Session

from fhir_adapters.research_study import study_reference
from fhir_adapters.search import parse_search
from fhir_adapters.search.controls import prefers_strict, screen_fixed
from fhir_adapters.search.matching import ResourceMeta
from fhir_adapters.search.parameters import COMMON_PARAMETERS, SearchParamDef
from fhir_adapters.search.sorting import sort_matches
from healthledger.api import negotiation as http
from healthledger.api.fhir import STUDY_EDITS_REFUSED
from healthledger.api.paging import ignored_outcome, parse_count, searchset_bundle
from healthledger.config import Settings
from healthledger.errors import BadRequest, Forbidden, NotFound, Unprocessable, UnsupportedMediaType
from healthledger.ledger import patient_keys
from healthledger.principal import Principal
from healthledger.research.credentials import Credential, CredentialIssuer
from healthledger.research.enrolment import Enrolments
from healthledger.research.studies import Studies, acting
from healthledger.store.bundles import EntryRead, Target
from healthledger.store.repository import (
    Page,
    ResourceStore,
    StoredResource,
    UnitOfWork,
    dump_resource,
    fhir_errors,
)
from zk.credential import credential_inputs

_STATUSES = frozenset({"draft", "active", "closed-to-accrual", "completed", "withdrawn", "administratively-completed",
                       "approved", "closed-to-accrual-and-intervention", "disapproved", "in-review",
                       "temporarily-closed-to-accrual", "temporarily-closed-to-accrual-and-intervention"})
MAX_COUNT = 500
# What the two searches answer (besides _format): declared in api/fhir.py TYPE_CAPABILITIES.
STUDY_SEARCH: Final = frozenset({"status", "_count"})
# What a study search sorts by (`_sort`; it takes `_summary`, `_elements` and `_total` too): R4's ResearchStudy
# parameters that have an order.
STUDY_SORTABLE: Final = {**COMMON_PARAMETERS, "title": SearchParamDef("title", "string", ("title",)),
                         "status": SearchParamDef("status", "token", ("status",), single=True),
                         "date": SearchParamDef("date", "date", ("period",), single=True)}
SUBJECT_SEARCH: Final = frozenset({"study", "_count"})


def research_blueprint(store: ResourceStore, settings: Settings, authenticate: Callable[[], Principal], *,
                       studies: Studies | None = None, issuer: CredentialIssuer | None = None,
                       enrolments: Enrolments | None = None) -> Blueprint:
    """Register before the generic /fhir blueprint: these paths are more specific than /fhir/<type>."""
    bp = Blueprint("research", __name__, url_prefix="/fhir")
    studies = studies or Studies(store)
    enrolments = enrolments or Enrolments(store, studies)
    api = _ResearchApi(store, settings, authenticate, studies, issuer or CredentialIssuer(store), enrolments)
    bp.add_url_rule("/ResearchStudy", "studies", api.studies, methods=["GET", "POST"])
    bp.add_url_rule("/ResearchStudy/_search", "studies_search", api.studies_search, methods=["POST"])
    bp.add_url_rule("/ResearchStudy/_history", "studies_history", api.studies_history, methods=["GET"])
    bp.add_url_rule("/ResearchStudy/<study_id>", "study", api.study, methods=["GET", "PUT", "DELETE"])
    bp.add_url_rule("/ResearchStudy/<study_id>/_history", "study_history", api.study_history, methods=["GET"])
    bp.add_url_rule("/ResearchStudy/<study_id>/_history/<version_id>", "study_vread", api.study_vread,
                    methods=["GET"])
    bp.add_url_rule("/ResearchStudy/<study_id>/$publish", "publish", api.publish, methods=["POST"])
    bp.add_url_rule("/ResearchStudy/<study_id>/$enrol", "enrol", api.enrol, methods=["POST"])
    bp.add_url_rule("/ResearchStudy/<study_id>/$leave", "leave", api.leave, methods=["POST"])
    bp.add_url_rule("/ResearchSubject", "subjects", api.subjects, methods=["GET"])
    bp.add_url_rule("/ResearchSubject/<subject_id>", "subject", api.subject, methods=["GET"])
    bp.add_url_rule("/Patient/<patient_id>/$eligibility-credential", "credential", api.credential,
                    methods=["GET", "POST"])
    return bp


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("resourceType") != "Parameters":
        raise BadRequest("the operation takes a Parameters resource", expression="resourceType")
    found: dict[str, Any] = {}
    for p in body.get("parameter") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str):
            value = next((v for k, v in p.items() if k.startswith("value")), p.get("resource"))
            found[p["name"]] = value
    return found


def _string(params: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"parameter {name!r} is required as a valueString", expression=f"Parameters.parameter[{name}]")
    return value


class _ResearchApi:
    def __init__(self, store: ResourceStore, settings: Settings, authenticate: Callable[[], Principal],
                 studies: Studies, issuer: CredentialIssuer, enrolments: Enrolments) -> None:
        self.store = store
        self.settings = settings
        self.authenticate = authenticate
        self.catalogue = studies
        self.issuer = issuer
        self.enrolments = enrolments
        self.reads = ResearchReads(studies, enrolments)

    def _base(self) -> str:
        root = self.settings.base_url.rstrip("/") if self.settings.base_url else request.host_url.rstrip("/")
        return f"{root}/fhir"

    def _respond(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        response = Response(dump_resource(payload), status=status, content_type=http.FHIR_JSON)
        if headers:
            response.headers.update(headers)
        return response

    def _body(self) -> dict[str, Any]:
        http.require_json_body(request)
        return http.parse_json_object(http.read_body(request, self.settings.max_request_bytes))

    def _shown(self, stored: StoredResource) -> dict[str, Any]:
        return _shown(stored)

    def _headers(self, stored: StoredResource, *, location: bool = False) -> dict[str, str]:
        headers = {"ETag": http.etag(stored.version_id), "Last-Modified": http.http_date(stored.last_updated)}
        if location:
            headers["Location"] = f"{self._base()}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
        return headers

    # -- studies ---------------------------------------------------------------------------------
    def studies(self) -> Response:
        principal = self.authenticate()
        http.check_response_format(request)
        if request.method == "POST":
            study, group = self.catalogue.create(self._body(), principal)
            headers = self._headers(study, location=True)
            headers["X-Cohort-Group"] = f"Group/{group.id}"
            return self._respond(self._shown(study), 201, headers)
        return self._search(principal, list(request.args.items(multi=True)))

    def _search(self, principal: Principal, params: list[tuple[str, str]]) -> Response:
        self.catalogue.settle_quietly()
        with self.store.reading(principal) as uow:
            found = self.reads.studies(uow, params, strict=prefers_strict(request.headers.get("Prefer")))
        return self._respond(found.bundle(self._base(), found.link(f"{self._base()}/ResearchStudy")))

    def studies_search(self) -> Response:
        """POST _search: the same search as GET, parameters from the query and the form body."""
        principal = self.authenticate()
        http.check_response_format(request)
        if http.media_type(request.headers.get("Content-Type")) != http.FORM_MEDIA_TYPE:
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded parameters")
        # request.form, not the raw body: the CSRF check of a cookie session may have read the body already.
        form = [(k, v) for k, v in request.form.items(multi=True) if k != "csrf_token"]
        return self._search(principal, [*request.args.items(multi=True), *form])

    def studies_history(self) -> Response:
        principal = self.authenticate()
        if not principal.unrestricted:
            # A type history would list every draft: studies are read through search and read.
            raise NotFound("the history of all studies is not available; read a study's own history")
        return _delegate("fhir.type_history", resource_type="ResearchStudy")

    def study_history(self, study_id: str) -> Response:
        self.catalogue.read(study_id, self.authenticate())  # a hidden draft answers like a missing study
        return _delegate("fhir.instance_history", resource_type="ResearchStudy", resource_id=study_id)

    def study_vread(self, study_id: str, version_id: str) -> Response:
        self.catalogue.read(study_id, self.authenticate())
        return _delegate("fhir.vread", resource_type="ResearchStudy", resource_id=study_id, version_id=version_id)

    def study(self, study_id: str) -> Response:
        principal = self.authenticate()
        http.check_response_format(request)
        if request.method != "GET":
            raise Forbidden(STUDY_EDITS_REFUSED)
        stored = self.catalogue.read(study_id, principal)
        return self._respond(self._shown(stored), 200, self._headers(stored))

    def publish(self, study_id: str) -> Response:
        principal = self.authenticate()
        http.check_response_format(request)
        stored = self.catalogue.publish(study_id, principal)
        return self._respond(self._shown(stored), 202, self._headers(stored))

    # -- credentials -----------------------------------------------------------------------------
    def credential(self, patient_id: str) -> Response:
        principal = self.authenticate()
        http.check_response_format(request)
        if principal.role != "patient" or principal.patient_id != patient_id:
            # Denied answers exactly like a patient with no credential.
            raise NotFound("no eligibility credential has been issued to this patient")
        patient_ref = f"Patient/{patient_id}"
        secret: int | None = None
        enrollee: str | None = None
        if request.method == "POST":
            params = _parameters(self._body())
            password = _string(params, "password")
            study = _string(params, "study", required=False)
            assert password is not None
            with self.store.unit_of_work(acting(principal)) as uow:
                session = Session(bind=uow.conn, join_transaction_mode="create_savepoint")
                try:
                    master = patient_keys.unlock(session, patient_ref, password)
                except patient_keys.KeyUnlockError:
                    raise Forbidden("the patient's key could not be unlocked with that password") from None
                known = self.issuer.activated(uow.conn, [patient_ref])
                secret = self.issuer.activate(uow.conn, patient_ref, master)
                if not known:
                    report = self.issuer.issue(uow.conn, [patient_ref])
                    if not report.issued and report.skipped:
                        reason = next(iter(report.skipped))
                        raise Unprocessable(f"no eligibility credential can be issued from your records: {reason}")
                if study is not None:
                    study_id = study.removeprefix("ResearchStudy/")
                    enrollee = patient_keys.pseudonym_for(master, study_reference(study_id)).address
        with self.store.engine.connect() as conn:
            credential = self.issuer.credential(conn, patient_ref)
        return self._respond(credential_parameters(credential, secret=secret, enrollee=enrollee))

    # -- enrolment -------------------------------------------------------------------------------
    def enrol(self, study_id: str) -> Response:
        principal = self.authenticate()
        http.check_response_format(request)
        params = _parameters(self._body())
        password = _string(params, "password")
        assert password is not None
        participant = self.enrolments.enrol(study_id, principal, params.get("proof"), params.get("publicSignals"),
                                            password)
        subject = participant.research_subject(for_patient=True)
        return self._respond(subject, 201, {"Location": f"{self._base()}/ResearchSubject/{participant.id}"})

    def leave(self, study_id: str) -> Response:
        principal = self.authenticate()
        http.check_response_format(request)
        password = _string(_parameters(self._body()), "password")
        assert password is not None
        participant = self.enrolments.leave(study_id, principal, password)
        return self._respond(participant.research_subject(for_patient=True))

    def subject(self, subject_id: str) -> Response:
        """An enrolment by id (where `$enrol`'s Location points): to its patient and to the study's owner; to
        anyone else, and for an id that is no enrolment, the ordinary read of a stored ResearchSubject (a 404
        when there is none), so an enrolment one may not see answers like one that does not exist."""
        if subject_id == "_history":
            return _delegate("fhir.type_history", resource_type="ResearchSubject")
        principal = self.authenticate()
        http.check_response_format(request)
        found = self.enrolments.one(subject_id, principal)
        if found is None:
            return _delegate("fhir.instance", resource_type="ResearchSubject", resource_id=subject_id)
        participant, for_patient = found
        return self._respond(participant.research_subject(for_patient=for_patient))

    def subjects(self) -> Response:
        """The ResearchSubject search (`ResearchReads.subjects`)."""
        principal = self.authenticate()
        http.check_response_format(request)
        self.catalogue.settle_quietly()
        with self.store.reading(principal) as uow:
            found = self.reads.subjects(uow, list(request.args.items(multi=True)),
                                   strict=prefers_strict(request.headers.get("Prefer")))
        return self._respond(found.bundle(self._base(), found.link(f"{self._base()}/ResearchSubject")))


@dataclass(frozen=True)
class Found:
    """A research search's answer before rendering: the matches shown (url relative to the base, resource), how
    many match in all, the parameters lenient handling left out and those applied (for the `self` link)."""

    entries: list[tuple[str, dict[str, Any]]]
    total: int | None  # None: `_total=none`
    ignored: tuple[str, ...]
    kept: tuple[tuple[str, str], ...] = ()

    def link(self, endpoint: str) -> str:
        """The search as it was applied: what lenient handling left out is not in it (as in every search)."""
        return f"{endpoint}?{urlencode(self.kept)}" if self.kept else endpoint

    def bundle(self, base: str | None = None, self_url: str | None = None) -> dict[str, Any]:
        """The searchset Bundle: full URLs under `base` with a `self` link (REST), relative ones in a Bundle entry
        (as the store's searches answer there)."""
        prefix = f"{base}/" if base else ""
        links = [{"relation": "self", "url": self_url}] if self_url else []
        bundle = searchset_bundle(((prefix + url, body) for url, body in self.entries), total=self.total,
                                  links=links, outcome=ignored_outcome(list(self.ignored)))
        if not links:
            del bundle["link"]
        return bundle


class ResearchReads:
    """The research types' reads and searches on one unit of work (the caller's): the REST handlers' and, through
    `bundle_reads`, a Bundle's GET entries, so that both answer alike. Nothing here settles studies (that writes):
    the REST handlers settle first; a Bundle's entries read what the worker and earlier requests settled."""

    def __init__(self, studies: Studies, enrolments: Enrolments) -> None:
        self.catalogue = studies
        self.enrolments = enrolments

    def study(self, uow: UnitOfWork, study_id: str) -> StoredResource:
        """A study the caller may see (drafts: their owners'); otherwise the 404 of a missing study."""
        principal = uow.principal
        return self.catalogue.shown(uow.acting_for(acting(principal)).read("ResearchStudy", study_id), principal)

    def studies(self, uow: UnitOfWork, params: list[tuple[str, str]], *, strict: bool) -> Found:
        """`GET ResearchStudy?status=` (and `_count`, `_sort`, `_summary`, `_elements`, `_total`): the studies the
        caller may see."""
        screened = screen_fixed("ResearchStudy", params, STUDY_SEARCH, strict=strict, sortable=STUDY_SORTABLE)
        statuses: set[str] = set()
        for value in screened.values.get("status", ()):
            wanted = {v.strip() for v in value.split(",") if v.strip()}
            unknown = wanted - _STATUSES
            if unknown:
                raise BadRequest(f"unknown ResearchStudy status {min(unknown)!r}", expression="status")
            statuses |= wanted
        count = parse_count(list(screened.values.get("_count", ())), default=MAX_COUNT, maximum=MAX_COUNT)
        results = screened.results
        if results.summary == "count":
            count = 0
        principal = uow.principal
        found = self.catalogue.search_on(uow.acting_for(acting(principal)), principal, statuses or None)
        found = sort_matches(found, results.sort, lambda s: (s.resource or {}, ResourceMeta(s.id, s.last_updated)))
        entries = [(f"ResearchStudy/{s.id}", results.subset(_shown(s))) for s in found[:count]]
        kept = (*((n, v) for n, v in params if n in STUDY_SEARCH), *results.kept)
        return Found(entries, screened.shown_total(len(found)), screened.ignored, kept)

    def subject(self, uow: UnitOfWork, subject_id: str) -> dict[str, Any] | None:
        """An enrolment by id as its patient or the study's owner sees it; None: the ordinary read answers."""
        found = self.enrolments.one(subject_id, uow.principal, read_study=lambda sid: self.study(uow, sid))
        if found is None:
            return None
        participant, for_patient = found
        return participant.research_subject(for_patient=for_patient)

    def subjects(self, uow: UnitOfWork, params: list[tuple[str, str]], *, strict: bool) -> Found:
        """`GET ResearchSubject[?study=]` (and `_count`): the enrolments the caller may see (a study's to its owner,
        a patient's own to them; any one study, or all of a patient's when `study` is left out), then the
        ResearchSubjects stored by clients (POST/PUT) of that study, searched as the caller like any other type
        (what the consent decisions withhold is not there). Other callers than patients name the study: a search
        of every enrolment of every study is not offered. An unknown study, and one whose enrolments the caller
        may not see, answer alike (no enrolments)."""
        screened = screen_fixed("ResearchSubject", params, SUBJECT_SEARCH, strict=strict)
        count = parse_count(list(screened.values.get("_count", ())), default=MAX_COUNT, maximum=MAX_COUNT)
        named = {v.strip().removeprefix("ResearchStudy/") for value in screened.values.get("study", ())
                 for v in value.split(",") if v.strip()}
        if len(named) > 1:
            raise BadRequest("search ResearchSubject by one study at a time", expression="study")
        study_id = next(iter(named), "")
        principal = uow.principal
        if principal.role == "patient":
            if study_id:
                mine = self.enrolments.mine(study_id, principal)
                people = [mine] if mine is not None else []
            else:
                people = self.enrolments.all_mine(principal)  # a patient's own studies, all of them
            subjects = [p.research_subject(for_patient=True) for p in people]
        elif not study_id:
            raise BadRequest("search ResearchSubject by study=ResearchStudy/{id}", expression="study")
        else:
            try:
                people = self.enrolments.participants(study_id, principal, read_study=lambda sid: self.study(uow, sid))
            except NotFound:
                people = []
            subjects = [p.research_subject(for_patient=False) for p in people]
        entries = [(f"ResearchSubject/{s['id']}", s) for s in subjects][:count]
        stored = _stored_subjects(uow, study_id, {s["id"] for s in subjects}, count=count - len(entries))
        entries += [(f"ResearchSubject/{s.id}", _shown(s)) for s in stored.items]
        kept = tuple((n, v) for n, v in params if n in SUBJECT_SEARCH)
        return Found(entries, len(subjects) + (stored.total or 0), screened.ignored, kept)

    def entry(self, uow: UnitOfWork, target: Target) -> StoredResource | dict[str, Any] | None:
        """A Bundle's GET entry of ResearchStudy or ResearchSubject (EntryRead). No `Prefer` header of its own:
        strict handling, like the store's searches in a Bundle."""
        if target.resource_type == "ResearchStudy":
            if target.id is None:
                return self.studies(uow, target.params or [], strict=True).bundle()
            if target.params is not None:
                return None
            shown = self.study(uow, target.id)  # a hidden draft answers like a missing study
            return shown if target.version is None else None  # a version: the ordinary vread, once seen
        if target.id is None:
            return self.subjects(uow, target.params or [], strict=True).bundle()
        if target.params is not None or target.version is not None:
            return None
        return self.subject(uow, target.id)


def bundle_reads(studies: Studies, enrolments: Enrolments) -> dict[str, EntryRead]:
    """The research types' GET entries for `execute_bundle`: answered as `GET /fhir/ResearchStudy...` and
    `GET /fhir/ResearchSubject...` answer them."""
    reads = ResearchReads(studies, enrolments)
    return {"ResearchStudy": reads.entry, "ResearchSubject": reads.entry}


def _shown(stored: StoredResource) -> dict[str, Any]:
    """A stored resource with its meta (versionId, lastUpdated), as the research searches and reads show it."""
    body = dict(stored.resource or {})
    body["id"] = stored.id
    body["meta"] = {**(body.get("meta") or {}), "versionId": str(stored.version_id),
                    "lastUpdated": stored.last_updated.isoformat()}
    return body


def _stored_subjects(uow: UnitOfWork, study_id: str, enrolled: set[str], *, count: int) -> Page:
    """The first `count` ResearchSubjects stored by clients that the caller may read, of `study_id` when given
    (not the enrolments, `enrolled`), and how many there are. The study is matched by the store's `keep`, not by
    its blind index (ResearchSubject has no indexed `study` terms; stored ones are few, enrolments live in the
    research tables), so what is left out is neither decided nor recorded as shown."""
    with fhir_errors():
        everything = parse_search("ResearchSubject", [])
    wanted = study_reference(study_id) if study_id else None

    def of_the_study(resource: dict[str, Any]) -> bool:
        if resource.get("id") in enrolled:
            return False
        return wanted is None or (resource.get("study") or {}).get("reference") == wanted

    return uow.search("ResearchSubject", everything, count=count, offset=0, keep=of_the_study)


def _delegate(endpoint: str, **args: str) -> Response:
    """The generic FHIR handler, once the research module has decided the caller may see the study."""
    response = current_app.view_functions[endpoint](**args)
    assert isinstance(response, Response)
    return response


def credential_parameters(credential: Credential, *, secret: int | None = None,
                          enrollee: str | None = None) -> dict[str, Any]:
    """`$eligibility-credential` as FHIR Parameters; `circuitInputs` is the prover's credential fragment."""
    attrs = credential.attributes
    inputs = credential_inputs(secret or 1, attrs, credential.path.siblings, credential.path.path_bits)
    if secret is None:
        del inputs["secret"]
    params: list[dict[str, Any]] = [
        {"name": "leafIndex", "valueInteger": credential.leaf_index},
        {"name": "identityCommitment", "valueString": str(credential.commitment)},
        {"name": "root", "valueString": str(credential.root)},
        {"name": "anchored", "valueBoolean": credential.anchored},
        {"name": "anchorState", "valueCode": credential.anchor_state},
        {"name": "circuitInputs", "valueString": json.dumps(inputs, sort_keys=True)},
    ]
    if credential.anchor_block is not None:
        params.append({"name": "anchorBlock", "valueInteger": credential.anchor_block})
    if credential.anchor_tx is not None:
        params.append({"name": "anchorTransaction", "valueString": credential.anchor_tx})
    if enrollee is not None:
        params.append({"name": "enrollee", "valueString": enrollee})
    return {"resourceType": "Parameters", "parameter": params}
