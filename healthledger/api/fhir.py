"""The FHIR R4 REST API under /fhir (http://hl7.org/fhir/R4/http.html): thin handlers over ResourceStore.

Handlers parse HTTP, call the store with the authenticated principal, and render results. Validation
and search semantics live in `fhir_adapters`; encryption, versioning and access checks in the store;
error-to-OperationOutcome mapping in `healthledger.api.outcomes`.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

from flask import Blueprint, Request, Response, current_app, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import MethodNotAllowed

from fhir_adapters import bundles as fhir_bundles
from fhir_adapters import definition_search
from fhir_adapters.capability import TypeCapability, capability_statement
from fhir_adapters.datatypes import ID, instant
from fhir_adapters.errors import FhirInputError, InvalidSearchValue, UnknownResourceType, UnsupportedSearch
from fhir_adapters.extensions import EXTENSIONS, structure_definition
from fhir_adapters.operation_definitions import OURS, operation_definition, system_operations, type_operations
from fhir_adapters.outcome import operation_outcome
from fhir_adapters.search import ResourceMeta, parse_search
from fhir_adapters.search.controls import (
    FixedSearch,
    ResultControls,
    SortKey,
    is_control,
    parse_controls,
    prefers_strict,
    screen_fixed,
)
from fhir_adapters.search.sorting import sort_position
from fhir_adapters.validation import is_resource_type, loads_json
from healthledger.api import negotiation as http
from healthledger.api.auth_seam import CALLER_KEY, Authenticator
from healthledger.api.bundle_entries import READ_ENDPOINTS, BatchCaller, answer_as_rest
from healthledger.api.outcomes import METHOD_NOT_ALLOWED, error_response
from healthledger.api.paging import (
    CURSOR_PARAM,
    HistoryEntry,
    PageLinks,
    Position,
    decode_cursor,
    history_bundle,
    ignored_outcome,
    parse_count,
    read_cursor,
    searchset_bundle,
)
from healthledger.config import Settings
from healthledger.consent.lifecycle import (
    CHAIN_STATE_URL,
    chain_states,
    present_consent,
    revoke_consent,
    sign_consent,
)
from healthledger.errors import (
    BadRequest,
    Forbidden,
    InvalidResource,
    KeyProviderUnavailable,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
)
from healthledger.store.access import Principal
from healthledger.store.bundles import (
    EntryRead,
    Target,
    conditional_delete,
    conditional_update,
    execute_bundle,
)
from healthledger.store.own_definitions import refuse_own_url
from healthledger.store.patching import patch_resource
from healthledger.store.repository import (
    ANY_VERSION,
    IfNoneMatch,
    ResourceStore,
    StoredResource,
    UnitOfWork,
    check_writable,
    dump_resource,
    fhir_errors,
)
from healthledger.store.search_results import run_search

_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
JSON_PATCH = "application/json-patch+json"
_VID = re.compile(r"[0-9]{1,9}")

# What the API really does; the CapabilityStatement is built from these, so it cannot claim more.
TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch")
STUDY_EDITS_REFUSED = "a study changes through its operations ($publish); it is not edited directly"
# The types that support other than TYPE_INTERACTIONS, with what they do support: the CapabilityStatement
# declares this table and `_check_supported` refuses the rest on every generic path (REST and Bundle entries),
# so the declaration and the refusals come from one place. AuditEvent is served by api/audit_events.py (writes
# 405); ResearchStudy and the GET search of ResearchSubject by api/research.py (study edits 403, as here); the
# searches of OperationDefinition and StructureDefinition by `_definitions` below.
# What the definitions' writes refuse besides the ids of ours (fhir_adapters/definition_search.py).
_CONDITIONAL_NOTE: Final = "; conditional ones select by _id and _lastUpdated only (by url or name: 400)"
_OWN_URL_NOTE: Final = ("; a definition whose url lies under this server's canonical base for the type is refused "
                        "(422)" + _CONDITIONAL_NOTE)
TYPE_CAPABILITIES: Final[Mapping[str, TypeCapability]] = {
    "AuditEvent": TypeCapability(
        ("read", "search-type"),
        search=(("patient", "reference", "entries about that patient (Patient/{id} or {id}; comma: any of)"),
                ("date", "date", "when the access happened (prefixes eq ne lt le gt ge sa eb)")),
        documentation="The access log, read-only: every access decided by this server, in a verifiable "
        "append-only log (see the $inclusion-proof operation).",
    ),
    "ResearchStudy": TypeCapability(
        ("create", "read", "vread", "history-instance", "history-type", "search-type"),
        notes={"create": "a researcher acting for an organisation defines a draft study and its cohort Group "
               "(POST /fhir/ResearchStudy; not in a Bundle: 403)",
               "history-type": "unrestricted callers only; others read a study's own history",
               "search-type": "by status, with _count, _summary, _elements, _total and _sort (title, status, date, "
               "_id, _lastUpdated); drafts are shown to their owners only; any other parameter is ignored and named "
               "in an OperationOutcome entry, or refused (400) under Prefer: handling=strict (a batch entry: as "
               "the batch's Prefer says; a transaction entry: strict)"},
        search=(("status", "token", "the study's status, comma: any of"),),
        documentation="Defined by researchers; a study changes only through its operations ($publish, $enrol, "
        "$leave): update, patch and delete are refused (403).",
    ),
    "ResearchSubject": TypeCapability(
        TYPE_INTERACTIONS, conditional=True,
        notes={"search-type": "GET lists the enrolments made by ResearchStudy/$enrol that the caller may see (a "
               "study's participants to its owner, a patient's own enrolments to that patient), then the "
               "ResearchSubjects stored by clients that the caller may read; by study (required, except for "
               "patients) and _count; any other parameter is ignored and named in an OperationOutcome entry, or "
               "refused (400) under Prefer: handling=strict (a batch entry: as the batch's Prefer says; a "
               "transaction entry: strict)"},
        search=(("study", "reference", "the study (ResearchStudy/{id}); one study per search"),),
    ),
    **{definitions: TypeCapability(
        TYPE_INTERACTIONS, conditional=True,
        notes={"read": f"this server's own {definitions}s are public (no token), at the id their canonical URL "
               "ends in; any other id is an ordinary read",
               **{write: f"refused (405) at the ids of this server's own {definitions}s, which are read only; "
                  "other ids are ordinary" + (_OWN_URL_NOTE if write != "delete" else _CONDITIONAL_NOTE)
                  for write in ("update", "patch", "delete")},
               "create": _OWN_URL_NOTE.removeprefix("; "),
               "search-type": f"lists this server's own {definitions}s (public), then, to an authenticated caller, "
               "the stored ones it may read; by url, _id and name, paged by _count, with _summary, _elements, _total "
               "and _sort (by name, title, url, date, status, _id, _lastUpdated: ours, then the stored ones, each "
               "in that order); any other parameter is ignored and named in an OperationOutcome entry, or refused "
               "(400) under Prefer: handling=strict (a batch entry: as the batch's Prefer says; a "
               "transaction entry: strict)"},
        search=(("url", "uri", "the canonical URL, exact (url|version: that version too); comma: any of"),
                ("_id", "token", "the logical id, exact; comma: any of"),
                ("name", "string", "the computer-friendly name, case-insensitive, starts with; comma: any of")),
    ) for definitions in sorted(definition_search.PUBLISHED_TYPES)},
}
class _ReadOnlyEndpoint(Forbidden):
    """A write to the access log, which its own endpoint (api/audit_events.py) answers 405: so in a Bundle too."""

    status = 405
    code = "not-supported"


# The refusal of an interaction a type does not support, where it is not the generic 403 (`_check_supported`).
_REFUSALS: Final[Mapping[str, Callable[[], Forbidden]]] = {
    "ResearchStudy": lambda: Forbidden(STUDY_EDITS_REFUSED),
    "AuditEvent": lambda: _ReadOnlyEndpoint(METHOD_NOT_ALLOWED),
}
# Interactions a type supports only outside Bundles, with why: a study is checked and given its owner and cohort by
# the research module (api/research.py), which a Bundle entry (the store's generic create) would bypass.
_NOT_IN_BUNDLES: Final = {("ResearchStudy", "create"): "a study is defined by POST /fhir/ResearchStudy (the research "
                          "module checks it and gives it its owner and cohort), not in a Bundle"}
# Result controls are interpreted here and only here: fhir_adapters.search.parse_search sets the result
# parameters aside (RESULT_PARAMETERS) and parses criteria. These are the ones this module reads itself.
_API_CONTROLS = frozenset({"_format", "_count", CURSOR_PARAM, "_offset", "_pretty"})
# Result controls this API does not honour: an error under `Prefer: handling=strict`, otherwise left out and
# named in the Bundle's OperationOutcome entry (FHIR R4 search.html#errors). `_total` (none, estimate,
# accurate) is honoured: the total, when given, is always exact.
_REFUSED_CONTROLS = frozenset({"_page", "_contained", "_containedType"})
# What a history answers (R4 http.html#history, and the general parameters of every interaction, http.html#general):
# `_at` and `_list` are not among them (ignored and said, or refused under strict handling, as in a search).
_HISTORY_PARAMS = frozenset({"_count", CURSOR_PARAM, "_since", "_summary", "_elements"})
# What a search of the definitions answers (fhir_adapters/definition_search.py): declared in TYPE_CAPABILITIES.
_DEFINITION_PARAMS = frozenset({*definition_search.CRITERIA, "_count", CURSOR_PARAM})

class RefusalLog(Protocol):
    """Records authenticated attempts refused before any access decision (wired to the consent policy)."""

    def start_attempt(self) -> None: ...

    def record_refusal(
        self, principal: Principal, action: str, resource_type: str, resource_id: str, patient_id: str, reason: str
    ) -> None: ...


# Route endpoint (and method) -> the access-log action of the attempt.
_ACTIONS = {
    ("fhir.instance", "GET"): "read", ("fhir.instance", "PUT"): "update", ("fhir.instance", "DELETE"): "delete",
    ("fhir.vread", "GET"): "vread", ("fhir.instance_history", "GET"): "history", ("fhir.type_history", "GET"): "history",
    ("fhir.type", "GET"): "search", ("fhir.type", "POST"): "create", ("fhir.search_post", "POST"): "search",
    ("fhir.type", "PUT"): "update", ("fhir.type", "DELETE"): "delete", ("fhir.instance", "PATCH"): "update",
    ("fhir.system", "POST"): "create", ("fhir.system_slash", "POST"): "create",
    ("fhir.consent_sign", "POST"): "update", ("fhir.consent_revoke", "POST"): "update",
}
# Search parameters that name the patient whose data a search is about.
_PATIENT_PARAMS = frozenset({"patient", "subject", "subject:Patient", "patient:Patient", "beneficiary", "for"})


def fhir_blueprint(
    store: ResourceStore,
    settings: Settings,
    authenticate: Authenticator | None = None,
    *,
    token_url: str | None = None,
    oauth_uris: Mapping[str, str] | None = None,
    refusals: RefusalLog | None = None,
    bundle_reads: Mapping[str, EntryRead] | None = None,
) -> Blueprint:
    """The /fhir blueprint bound to one store; no module-level state. `token_url`: the SMART token endpoint,
    `oauth_uris` the other SMART endpoints the CapabilityStatement names (authorize, manage).
    `bundle_reads`: GET entries of Bundles for the types another module serves (api/research.py `bundle_reads`),
    so that such an entry answers as that module's REST request does.

    `refusals`: where an authenticated request refused before the store decided anything (a bad parameter,
    a bad purpose header, an unacceptable format) is recorded, so that every attempt leaves an entry.
    """
    bp = Blueprint("fhir", __name__, url_prefix="/fhir")
    api = _FhirApi(store, settings, authenticate or Authenticator(settings), bundle_reads or {})
    api.token_url = token_url
    api.oauth_uris = dict(oauth_uris or {})

    if refusals is not None:
        log = refusals

        @bp.before_request
        def _start_attempt() -> None:
            log.start_attempt()

        @bp.errorhandler(Exception)
        def _refused(error: Exception) -> Response:
            principal = request.environ.get(CALLER_KEY)
            if isinstance(principal, Principal):
                try:
                    _record_refusal(log, principal, error)
                except (sa_exc.DBAPIError, KeyProviderUnavailable) as failure:
                    # The database or the key provider is down (or this replica's keys are out of date): the
                    # refusal cannot be logged, and nothing was served; the caller gets the outage's 503. Returned,
                    # not raised: raised from here, Flask would call this handler again and the server answer HTML.
                    if not isinstance(error, sa_exc.DBAPIError | KeyProviderUnavailable):
                        return error_response(failure)
            return error_response(error)

    # Every method, so that a write to /metadata is the 405 it is, not a request about a resource type "metadata".
    bp.add_url_rule("/metadata", "metadata", api.metadata, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    bp.add_url_rule(
        "/StructureDefinition/<resource_id>", "extension_definition", api.extension_definition, methods=["GET"]
    )
    bp.add_url_rule(
        "/OperationDefinition/<resource_id>", "operation_definition", api.operation_definition, methods=["GET"]
    )
    bp.add_url_rule("", "system", api.system_bundle, methods=["POST"])
    bp.add_url_rule("/", "system_slash", api.system_bundle, methods=["POST"])
    bp.add_url_rule("/<resource_type>", "type", api.type_endpoint, methods=["GET", "POST", "PUT", "DELETE"])
    bp.add_url_rule("/<resource_type>/_search", "search_post", api.search_post, methods=["POST"])
    bp.add_url_rule("/<resource_type>/_history", "type_history", api.type_history, methods=["GET"])
    bp.add_url_rule(
        "/<resource_type>/<resource_id>", "instance", api.instance, methods=["GET", "PUT", "DELETE", "PATCH"]
    )
    bp.add_url_rule("/<resource_type>/<resource_id>/_history", "instance_history", api.instance_history, methods=["GET"])
    bp.add_url_rule("/<resource_type>/<resource_id>/_history/<version_id>", "vread", api.vread, methods=["GET"])
    bp.add_url_rule("/Consent/<resource_id>/$sign", "consent_sign", api.consent_sign, methods=["POST"])
    bp.add_url_rule("/Consent/<resource_id>/$revoke", "consent_revoke", api.consent_revoke, methods=["POST"])
    return bp


class _FhirApi:
    def __init__(self, store: ResourceStore, settings: Settings, authenticate: Authenticator,
                 bundle_reads: Mapping[str, EntryRead]) -> None:
        self.store = store
        # Bundle entries of the definitions are answered here as their REST requests are (_definitions).
        self.bundle_reads: Mapping[str, EntryRead] = {
            **bundle_reads, **{t: self._definition_entry for t in definition_search.PUBLISHED_TYPES}}
        self.settings = settings
        self.authenticate = authenticate
        self.token_url: str | None = None
        self.oauth_uris: dict[str, str] = {}
        self._capability: dict[str, bytes] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _base(self) -> str:
        root = self.settings.base_url.rstrip("/") if self.settings.base_url else request.host_url.rstrip("/")
        return f"{root}/fhir"

    def _principal(self) -> Principal:
        return self.authenticate(request)

    def _shown(self, stored: StoredResource) -> dict[str, Any]:
        return self._shown_all([stored])[0]

    def _shown_all(self, items: list[StoredResource]) -> list[dict[str, Any]]:
        """Resources as returned: meta from the store; Consents with their on-chain state (one query)."""
        bodies = [item.stamped() for item in items]
        consents = [i for i, item in enumerate(items) if item.resource_type == "Consent" and item.resource]
        if consents:
            with self.store.engine.connect() as conn:
                states = chain_states(conn, self.store.tenant, [items[i].id for i in consents])
            for i in consents:
                bodies[i] = present_consent(bodies[i], states[items[i].id])
        return bodies

    def _read_subset(self, resource_type: str, stored: StoredResource) -> dict[str, Any]:
        """A read's resource, with `_summary=true|text|data` or `_elements` applied when asked (R4 3.1.1.5.8)."""
        body = self._shown(stored)
        if "_summary" in request.args or "_elements" in request.args:
            wanted = [(n, v) for n, v in request.args.items(multi=True) if n in ("_summary", "_elements")]
            controls = parse_controls(resource_type, wanted, strict=True)
            if controls.summary == "count":
                raise BadRequest("_summary=count applies to searches, not reads", expression="_summary")
            body = _subset(body, controls)
        return body

    def _body_resource(self) -> dict[str, Any]:
        http.require_json_body(request)
        return http.parse_json_object(http.read_body(request, self.settings.max_request_bytes))

    def _respond(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        response = Response(dump_resource(payload), status=status, content_type=http.FHIR_JSON)
        if headers:
            response.headers.update(headers)
        return response

    def _conditional_read(self, stored: StoredResource, headers: dict[str, str]) -> Response | None:
        """304 Not Modified when the caller's copy is current (RFC 7232 §3.2, §3.3, §4.1; R4 3.1.0.3 conditional
        read), else None. Asked only after the read was decided: a refused resource is the 404 of a missing one."""
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            versions = http.parse_if_none_match(if_none_match)
            if versions is None or stored.version_id in versions:
                return _no_content(304, headers)
            return None
        if_modified_since = request.headers.get("If-Modified-Since")  # ignored when If-None-Match is sent (§6)
        since = http.parse_http_date(if_modified_since) if if_modified_since is not None else None
        if since is not None and stored.last_updated.replace(microsecond=0) <= since:
            return _no_content(304, headers)
        return None

    def _resource_headers(self, stored: StoredResource, *, location: bool = False) -> dict[str, str]:
        headers = {"ETag": http.etag(stored.version_id), "Last-Modified": http.http_date(stored.last_updated)}
        if location:
            headers["Location"] = (
                f"{self._base()}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
            )
        return headers

    def _write_response(self, stored: StoredResource, status: int, *, verb: str = "") -> Response:
        """Prefer: return=minimal | representation | OperationOutcome (FHIR R4 http.html#ops). `verb`: what
        happened, for the OperationOutcome (default: created for 201, updated otherwise)."""
        headers = self._resource_headers(stored, location=True)
        prefer = _prefer_return(request.headers.get("Prefer", ""))
        if prefer == "minimal":
            return _no_content(status, headers)
        if prefer == "OperationOutcome":
            verb = verb or ("created" if status == 201 else "updated")
            outcome = operation_outcome(
                "information", "informational", f"{stored.resource_type}/{stored.id} {verb} (version {stored.version_id})"
            )
            return self._respond(outcome, status, headers)
        return self._respond(self._shown(stored), status, headers)

    # -- endpoints -----------------------------------------------------------------------------
    def metadata(self) -> Response:
        """CapabilityStatement (FHIR R4 http.html#capabilities): public, built from what this module does."""
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(valid_methods=["GET", "HEAD"])  # 405 with Allow (outcomes.error_response)
        http.check_response_format(request)
        base = self._base()
        body = self._capability.get(base)
        if body is None:
            body = dump_resource(
                capability_statement(
                    interactions=TYPE_INTERACTIONS,
                    system_interactions=SYSTEM_INTERACTIONS,
                    formats=tuple(sorted(http.JSON_MEDIA_TYPES - {"application/json+fhir"})) + ("json",),
                    software_name="HealthLedger",
                    base_url=base,
                    conditional_create=True,  # If-None-Exist on POST
                    conditional_update=True,  # PUT /Type?query, as in bundles
                    conditional_delete="single",  # DELETE /Type?query: one match (several: 412)
                    conditional_read="full-support",  # If-None-Match and If-Modified-Since: 304
                    versioning="versioned-update",  # If-Match is honoured
                    update_create=True,  # PUT to a new id creates it
                    oauth_token_url=self.token_url,
                    oauth_uris=self.oauth_uris,
                    overrides=TYPE_CAPABILITIES,
                    # Operations between hospitals only where this server is a consortium member (else 501).
                    operations=type_operations(federation=bool(self.settings.federation_org_id)),
                    system_operations=system_operations(federation=bool(self.settings.federation_org_id)),
                    security_description=(
                        "SMART on FHIR: Backend Services (client credentials with private_key_jwt) and the "
                        "standalone patient launch; bearer access tokens from /auth/token, discovery at "
                        "/fhir/.well-known/smart-configuration. Every access is decided by the patient's consents "
                        "and recorded in a verifiable access log."
                    ),
                )
            )
            if len(self._capability) < 16:  # one per base URL the server is reached by; bounded
                self._capability[base] = body
        return Response(body, status=200, content_type=http.FHIR_JSON)

    def extension_definition(self, resource_id: str) -> Response:
        """Our extensions' StructureDefinitions, public like the CapabilityStatement, at the id their canonical
        URL ends in (fhir_adapters/extensions.py); any other StructureDefinition id is an ordinary read."""
        if resource_id not in EXTENSIONS:
            return self._ordinary_get("StructureDefinition", resource_id)
        http.check_response_format(request)
        return self._respond(structure_definition(resource_id))

    def operation_definition(self, resource_id: str) -> Response:
        """Our operations' OperationDefinitions, public like the CapabilityStatement, at the id their canonical
        URL ends in (fhir_adapters/operation_definitions.py); any other id is an ordinary read."""
        if resource_id not in OURS:
            return self._ordinary_get("OperationDefinition", resource_id)
        http.check_response_format(request)
        return self._respond(operation_definition(resource_id))

    def _ordinary_get(self, resource_type: str, resource_id: str) -> Response:
        """`Type/{id}` or `Type/_history`, which the more specific definition routes would otherwise take."""
        if resource_id == "_history":
            return self.type_history(resource_type)
        return self.instance(resource_type, resource_id)

    def system_bundle(self) -> Response:
        principal = self._principal()
        http.check_response_format(request)
        bundle = self._body_resource()
        if bundle.get("resourceType") != "Bundle":
            raise BadRequest("POST /fhir takes a Bundle of type batch or transaction", expression="Bundle")
        refused = _unsupported_entries(bundle, frozenset(self.bundle_reads))
        # A batch's GET/HEAD entries are answered by the REST views themselves (api/bundle_entries.py): this
        # handler's as the batch's caller, the reads and searches other modules serve (READ_ENDPOINTS) as they
        # authenticate the same headers; anything else (their operations) stays the store's entry.
        entry_api = copy.copy(self)
        entry_api.authenticate = BatchCaller(principal)

        def view_of(endpoint: str) -> Callable[..., Any] | None:
            view = current_app.view_functions.get(endpoint)
            if getattr(view, "__self__", None) is self:
                return getattr(entry_api, view.__name__)  # type: ignore[union-attr,no-any-return]
            return view if endpoint in READ_ENDPOINTS else None

        base = self._base()
        result = execute_bundle(
            self.store, bundle, principal=principal, reads=self.bundle_reads, refused=refused,
            routed=functools.partial(answer_as_rest, view_of=view_of, base=base), base=base,
            prefer=_prefer_return(request.headers.get("Prefer", "")),
            max_count=self.settings.max_page_size,
        )
        return self._respond(self._present_consents(result), 200)

    def _present_consents(self, result: dict[str, Any]) -> dict[str, Any]:
        """The Consents a Bundle's entries return (written, read, or found by a transaction's search), with their
        on-chain state as REST shows them (`_shown_all`: status from the chain, the chain-state extension); one
        query for all. Entries the REST views answered (a batch's GETs) carry it already."""
        found: list[tuple[dict[str, Any], str]] = []  # (the dict holding the resource, its key)
        for entry in result.get("entry") or []:
            resource = entry.get("resource")
            holders = [(entry, resource)]
            if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
                holders = [(inner, inner.get("resource")) for inner in resource.get("entry") or []]
            for holder, body in holders:
                if (isinstance(body, dict) and body.get("resourceType") == "Consent" and isinstance(body.get("id"), str)
                        and not any(isinstance(e, dict) and e.get("url") == CHAIN_STATE_URL
                                    for e in body.get("extension") or [])):
                    found.append((holder, body["id"]))
        if found:
            with self.store.engine.connect() as conn:
                states = chain_states(conn, self.store.tenant, [consent_id for _, consent_id in found])
            for holder, consent_id in found:
                holder["resource"] = present_consent(holder["resource"], states[consent_id])
        return result

    def type_endpoint(self, resource_type: str) -> Response:
        _check_type(resource_type)
        if request.method in ("GET", "HEAD") and resource_type in definition_search.PUBLISHED_TYPES:
            return self._definitions(resource_type, list(request.args.items(multi=True)))
        principal = self._principal()
        http.check_response_format(request)
        _check_supported(resource_type, _TYPE_LEVEL[request.method])
        if request.method == "POST":
            return self._create(resource_type, principal)
        if request.method == "PUT":
            return self._conditional_update(resource_type, principal)
        if request.method == "DELETE":
            return self._conditional_delete(resource_type, principal)
        return self._search(resource_type, principal, list(request.args.items(multi=True)))

    def search_post(self, resource_type: str) -> Response:
        _check_type(resource_type)
        if resource_type in definition_search.PUBLISHED_TYPES:
            return self._definitions(resource_type, [*request.args.items(multi=True), *self._form()])
        principal = self._principal()
        http.check_response_format(request)
        _check_supported(resource_type, "search-type")
        return self._search(resource_type, principal, [*request.args.items(multi=True), *self._form()])

    def _form(self) -> list[tuple[str, str]]:
        """POST _search's parameters (R4 3.1.1.0.2): an application/x-www-form-urlencoded body, or none (the
        parameters all in the URL). An empty body carries no parameters whatever type it declares (fhir-kit-client
        sends application/fhir+json with it)."""
        kind = http.media_type(request.headers.get("Content-Type"))
        raw = http.read_body(request, self.settings.max_request_bytes)
        if not raw:
            return []
        if kind != http.FORM_MEDIA_TYPE:
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded parameters")
        try:
            return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=1000)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("search parameters are not valid form-encoded UTF-8") from None

    def _definitions(self, resource_type: str, params: list[tuple[str, str]]) -> Response:
        """`GET /fhir/OperationDefinition|StructureDefinition[?url=&_id=&name=]`: the definitions this server
        publishes at `/fhir/{Type}/{id}` (public, like them and the CapabilityStatement), then, to an authenticated
        caller, the ones stored by clients that it may read (decided like any search), paged by `_count`; any
        other parameter is ignored and named in an OperationOutcome entry, or refused under `Prefer:
        handling=strict` (R4 3.1.1.4)."""
        http.check_response_format(request)
        strict = prefers_strict(request.headers.get("Prefer"))
        search = screen_fixed(resource_type, params, _DEFINITION_PARAMS, strict=strict,
                              sortable=definition_search.SORTABLE)
        result = search.results
        count = self._definitions_count(search)
        cursor = search.last(CURSOR_PARAM)
        offset = decode_cursor(cursor) if cursor is not None else 0
        principal = self._optional_principal()
        if principal is None:
            page, total = _definitions_page(None, resource_type, search, result.sort, count, offset)
        else:
            with self.store.reading(principal) as uow:
                page, total = _definitions_page(uow, resource_type, search, result.sort, count, offset)
        base = self._base()
        next_offset = offset + count if 0 < count and offset + count < total else None
        kept = (*((n, v) for n, v in params if n in definition_search.CRITERIA), *result.kept)
        links = PageLinks(f"{base}/{resource_type}", kept, count, offset).links(next_offset)
        if count == 0:
            links = links[:1]
        return self._respond(searchset_bundle(
            ((f"{base}/{url}", _subset(body, result)) for url, body in page), total=search.shown_total(total),
            links=links, outcome=ignored_outcome(list(search.ignored))))

    def _definitions_count(self, search: FixedSearch) -> int:
        if search.results.summary == "count":
            return 0
        return parse_count(list(search.values.get("_count", ())), default=self.settings.default_page_size,
                           maximum=self.settings.max_page_size)

    def _optional_principal(self) -> Principal | None:
        """The caller of a public endpoint, if it says who it is: None without credentials (a token that does not
        authenticate is still a 401)."""
        try:
            return self._principal()
        except Unauthorized:
            if request.headers.get("Authorization"):
                raise
            return None

    def _definition_entry(self, uow: UnitOfWork, target: Target) -> StoredResource | dict[str, Any] | None:
        """A Bundle's GET entry of OperationDefinition or StructureDefinition (EntryRead): answered as the REST
        read and search answer it (strict handling, like every search entry; one page of `_count`)."""
        resource_type = target.resource_type
        if target.id is not None:
            if target.version is None and target.id in definition_search.published_ids(resource_type):
                return next(d for d in definition_search.published(resource_type) if d["id"] == target.id)
            return None  # a stored one: the ordinary read
        search = screen_fixed(resource_type, target.params or [], _DEFINITION_PARAMS, strict=True,
                              sortable=definition_search.SORTABLE)
        page, total = _definitions_page(uow, resource_type, search, search.results.sort, self._definitions_count(search), 0)
        bundle = searchset_bundle(((url, _subset(body, search.results)) for url, body in page),
                                  total=search.shown_total(total), links=[])
        del bundle["link"]
        return bundle

    def type_history(self, resource_type: str) -> Response:
        _check_type(resource_type)
        principal = self._principal()
        http.check_response_format(request)
        _check_supported(resource_type, "history-type")
        return self._history(resource_type, None, principal)

    def instance(self, resource_type: str, resource_id: str) -> Response:
        _check_type(resource_type)
        principal = self._principal()
        http.check_response_format(request)
        _check_supported(resource_type, _INSTANCE_LEVEL[request.method])
        if request.method == "PUT":
            return self._update(resource_type, resource_id, principal)
        _check_id(resource_id)
        if request.method == "PATCH":
            return self._patch(resource_type, resource_id, principal)
        if request.method == "DELETE":
            return self._delete(resource_type, resource_id, principal)
        stored = self.store.read(resource_type, resource_id, principal=principal)
        headers = self._resource_headers(stored)
        return self._conditional_read(stored, headers) or self._respond(
            self._read_subset(resource_type, stored), 200, headers)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> Response:
        _check_type(resource_type)
        principal = self._principal()
        http.check_response_format(request)
        _check_supported(resource_type, "vread")
        _check_id(resource_id)
        if not _VID.fullmatch(version_id):
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id[:20]!r}")
        stored = self.store.vread(resource_type, resource_id, int(version_id), principal=principal)
        headers = self._resource_headers(stored)
        return self._conditional_read(stored, headers) or self._respond(
            self._read_subset(resource_type, stored), 200, headers)

    def instance_history(self, resource_type: str, resource_id: str) -> Response:
        _check_type(resource_type)
        principal = self._principal()
        http.check_response_format(request)
        _check_supported(resource_type, "history-instance")
        _check_id(resource_id)
        return self._history(resource_type, resource_id, principal)

    # -- Consent operations: the patient's key signs or revokes its on-chain grants ----------------
    def consent_sign(self, resource_id: str) -> Response:
        return self._consent_operation(resource_id, sign_consent)

    def consent_revoke(self, resource_id: str) -> Response:
        return self._consent_operation(resource_id, revoke_consent)

    def _consent_operation(self, resource_id: str, operation: Any) -> Response:
        principal = self._principal()
        http.check_response_format(request)
        _check_id(resource_id)
        params = self._body_resource()
        password = _parameter(params, "password")
        with self.store.unit_of_work(principal) as uow:
            operation(uow, resource_id, password)
            current = uow.peek("Consent", resource_id)  # decided (and recorded) by the operation itself
            assert current is not None
            stored = uow.present(current)
        return self._respond(self._shown(stored), 200, self._resource_headers(stored))

    # -- interactions --------------------------------------------------------------------------
    def _create(self, resource_type: str, principal: Principal) -> Response:
        resource = self._body_resource()
        _check_body_type(resource, resource_type)
        if_none_exist = None
        header = request.headers.get("If-None-Exist")
        if header is not None:
            if_none_exist = _parse_condition(header)
            with fhir_errors():
                definition_search.check_conditional(resource_type, if_none_exist, "create")
        with self.store.unit_of_work(principal) as uow:
            refuse_own_url(uow, "create", resource)
            stored, created = uow.create(resource, if_none_exist=if_none_exist)
        if not created:
            # Conditional create matched one resource: 200 OK with it (as Prefer asks), nothing written
            # (http.html#ccreate).
            return self._write_response(stored, 200, verb="exists already, nothing created")
        return self._write_response(stored, 201)

    def _update(self, resource_type: str, resource_id: str, principal: Principal) -> Response:
        if not ID.fullmatch(resource_id):
            raise BadRequest("the id in the URL is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
        resource = self._body_resource()
        _check_body_type(resource, resource_type)
        body_id = resource.get("id")
        if body_id is None:
            raise InvalidResource("the resource must carry an id equal to the id in the URL", expression=f"{resource_type}.id")
        if body_id != resource_id:
            raise InvalidResource("the id in the resource does not match the id in the URL", expression=f"{resource_type}.id")
        if_match, if_none_match = _write_preconditions()
        check_writable(resource_type, resource_id)  # (a published id is refused as such, whatever the body says)
        with self.store.unit_of_work(principal) as uow:
            refuse_own_url(uow, "update", resource)
            stored, created = uow.update(
                resource_type, resource_id, resource, if_match=if_match, if_none_match=if_none_match)
        return self._write_response(stored, 201 if created else 200)

    def _conditions(self, what: str) -> list[tuple[str, str]]:
        """The search of a conditional update or delete: the query string (R4 3.1.0.4.3, 3.1.0.7.1)."""
        params = [(n, v) for n, v in request.args.items(multi=True) if n != "_format"]
        if not params:
            raise BadRequest(f"{what} of a type needs search parameters (Type?identifier=system|value) or an id")
        return params

    def _conditional_update(self, resource_type: str, principal: Principal) -> Response:
        params = self._conditions("PUT")
        resource = self._body_resource()
        _check_body_type(resource, resource_type)
        if_match, if_none_match = _write_preconditions()
        with self.store.unit_of_work(principal) as uow:
            stored, created = conditional_update(
                uow, resource_type, params, resource, if_match=if_match, if_none_match=if_none_match)
        return self._write_response(stored, 201 if created else 200)

    def _conditional_delete(self, resource_type: str, principal: Principal) -> Response:
        params = self._conditions("DELETE")
        if_match = http.parse_etag(request.headers["If-Match"]) if "If-Match" in request.headers else None
        with self.store.unit_of_work(principal) as uow:
            conditional_delete(uow, resource_type, params, if_match=if_match)
        return _no_content(204)

    def _patch(self, resource_type: str, resource_id: str, principal: Principal) -> Response:
        """JSON Patch (R4 http.html#patch; RFC 6902), honouring If-Match (store/patching.py)."""
        check_writable(resource_type, resource_id)  # (a published definition is not stored: refused, not missing)
        if http.media_type(request.headers.get("Content-Type")) != JSON_PATCH:
            raise UnsupportedMediaType(f"PATCH takes {JSON_PATCH} (RFC 6902); FHIRPath Patch is not supported")
        raw = http.read_body(request, self.settings.max_request_bytes)
        if not raw.strip():
            raise BadRequest("PATCH needs a JSON Patch document in the body")
        operations = loads_json(raw)
        if_match = http.parse_etag(request.headers["If-Match"]) if "If-Match" in request.headers else None
        stored = patch_resource(
            self.store, resource_type, resource_id, operations, if_match=if_match, principal=principal
        )
        return self._write_response(stored, 200)

    def _delete(self, resource_type: str, resource_id: str, principal: Principal) -> Response:
        if_match = http.parse_etag(request.headers["If-Match"]) if "If-Match" in request.headers else None
        stored = self.store.delete(resource_type, resource_id, if_match=if_match, principal=principal)
        return _no_content(204, {"ETag": http.etag(stored.version_id)} if stored is not None else None)

    def _search(self, resource_type: str, principal: Principal, params: list[tuple[str, str]]) -> Response:
        """Type search with its result controls (fhir_adapters.search.controls) and FHIR's lenient handling of
        what it does not support unless the client asks `Prefer: handling=strict` (R4 3.1.1.4)."""
        strict = prefers_strict(request.headers.get("Prefer"))
        controls: dict[str, list[str]] = {}
        criteria: list[tuple[str, str]] = []
        ignored: list[str] = []
        for name, value in params:
            base = name.partition(":")[0]
            if base in _REFUSED_CONTROLS:
                if strict:
                    raise UnsupportedSearch(f"'{base}' is not supported by this server")
                ignored.append(base)
            elif name in _API_CONTROLS:
                controls.setdefault(name, []).append(value)
            elif not is_control(name):
                criteria.append((name, value))
        count = parse_count(
            controls.get("_count", []),
            default=self.settings.default_page_size,
            maximum=self.settings.max_page_size,
        )
        offset = 0
        after: Position | None = None
        if CURSOR_PARAM in controls:
            cursor = read_cursor(controls[CURSOR_PARAM][-1])
            offset, after = cursor.offset, cursor.after
        elif "_offset" in controls:
            offset = parse_count(controls["_offset"], default=0, maximum=10**9, name="_offset")
        result = parse_controls(resource_type, params, strict=strict)
        if result.summary is not None and result.elements is not None:
            raise InvalidSearchValue("use either _summary or _elements, not both", expression="_elements")
        query = parse_search(resource_type, criteria, now=self.store.clock(), strict=strict)
        ignored += [*query.ignored, *result.ignored]
        endpoint = f"{self._base()}/{resource_type}"
        kept = [(n, v) for n, v in criteria if n not in ignored and n.partition(":")[0] not in ignored]
        kept += list(result.kept)
        outcome = ignored_outcome(ignored)
        show_total = result.total != "none" or result.summary == "count"
        if result.summary == "count" or count == 0:
            page = self.store.search(resource_type, query, count=0, offset=0, principal=principal)
            links = PageLinks(endpoint, tuple(kept), count, 0).links(None)[:1]
            return self._respond(searchset_bundle(
                [], total=page.total if show_total else None, links=links, outcome=outcome))
        found = run_search(
            self.store, resource_type, query, count=count, offset=offset, controls=result, principal=principal,
            after=after,
        )
        base = self._base()
        shown = [_subset(body, result) for body in self._shown_all(found.page.items)]
        entries = [(f"{base}/{item.resource_type}/{item.id}", body) for item, body in zip(found.page.items, shown)]
        included = [
            (f"{base}/{item.resource_type}/{item.id}", _subset(body, result))
            for item, body in zip(found.included, self._shown_all(found.included))
        ]
        # The next page starts past the last match shown (a keyset: its sort values, which the page shows unless
        # `_elements`/`_summary` cut them, and its id), not at an offset that what is written meanwhile shifts.
        next_after = None
        if found.page.next_offset is not None and found.page.items:
            last = found.page.items[-1]
            next_after = sort_position(last.resource or {}, ResourceMeta(last.id, last.last_updated), result.sort)
        links = PageLinks(endpoint, tuple(kept), count, offset, after).links(found.page.next_offset, next_after)
        return self._respond(searchset_bundle(
            entries, total=found.page.total if show_total else None, links=links, included=included, outcome=outcome
        ))

    def _history(self, resource_type: str, resource_id: str | None, principal: Principal) -> Response:
        """Instance or type history (R4 http.html#history) with `_since`, `_count`, and the parameters R4 gives
        every interaction (`_format`, `_pretty`, `_summary`, `_elements`); any other parameter is handled as a
        search's are (R4 3.1.1.4): ignored and said in the Bundle, or refused under `Prefer: handling=strict`.
        Everything is checked before the store is asked, so a refusal never depends on what is stored."""
        params = list(request.args.items(multi=True))
        strict = prefers_strict(request.headers.get("Prefer"))
        screened = screen_fixed(resource_type, params, _HISTORY_PARAMS, strict=strict, what="history parameter")
        values = screened.values
        count = parse_count(
            list(values.get("_count", ())), default=self.settings.default_page_size, maximum=self.settings.max_page_size
        )
        cursor = screened.last(CURSOR_PARAM)
        offset = decode_cursor(cursor) if cursor is not None else 0
        since = _parse_instant(values["_since"][0], "_since") if "_since" in values else None
        result = parse_controls(
            resource_type, [(n, v) for n, v in params if n in ("_summary", "_elements")], strict=True
        )
        if result.summary is not None and result.elements is not None:
            raise BadRequest("use either _summary or _elements, not both")
        if result.summary == "count":
            count = 0
        page = self.store.history(
            resource_type, resource_id, since=since, count=count, offset=offset, principal=principal
        )
        base = self._base()
        entries = []
        for item in page.items:
            url = f"{item.resource_type}/{item.id}"
            if item.deleted:
                method, status = "DELETE", "204 No Content"
            elif item.version_id == 1:  # created: by POST Type, or by PUT Type/id (update-as-create)
                method, status = "PUT" if item.by_update else "POST", "201 Created"
            else:
                method, status = "PUT", "200 OK"
            entries.append(
                HistoryEntry(
                    full_url=f"{base}/{url}",
                    request_url=item.resource_type if method == "POST" else url,
                    method=method,
                    status=status,
                    version_id=item.version_id,
                    last_modified=instant(item.last_updated),
                    resource=None if item.deleted or item.resource is None else _subset(item.stamped(), result),
                )
            )
        kept = [*((n, v) for n, v in params if n == "_since"), *result.kept]
        path = f"{resource_type}" + (f"/{resource_id}" if resource_id else "") + "/_history"
        # `_count=0` asks for the total only: no `next` link (it would point at the same empty page forever).
        next_offset = page.next_offset if count > 0 else None
        links = PageLinks(f"{base}/{path}", tuple(kept), count, offset).links(next_offset)
        if count == 0:
            links = links[:1]
        ignored = ignored_outcome(list(screened.ignored), "history")
        outcome = (links[0]["url"].removeprefix(f"{base}/"), ignored) if ignored is not None else None
        return self._respond(history_bundle(entries, total=page.total, links=links, outcome=outcome))


def _record_refusal(log: RefusalLog, principal: Principal, error: Exception) -> None:
    """One entry for an authenticated request that failed before (or without) any recorded decision."""
    rule = request.url_rule
    action = _ACTIONS.get((rule.endpoint if rule is not None else "", request.method), "read")
    args = request.view_args or {}
    endpoint = rule.endpoint if rule is not None else ""
    resource_type = {"fhir.system": "Bundle", "fhir.system_slash": "Bundle"}.get(endpoint, "")
    resource_type = "Consent" if endpoint.startswith("fhir.consent_") else str(args.get("resource_type", resource_type))
    resource_id = str(args.get("resource_id", ""))
    if not _TYPE.fullmatch(resource_type) or not is_resource_type(resource_type):
        resource_type = ""
    if not ID.fullmatch(resource_id):
        resource_id = ""
    patient_id = resource_id if resource_type == "Patient" else _named_patient(request.args.items(multi=True))
    status = getattr(error, "status", None) or getattr(error, "code", None) or 500
    log.record_refusal(principal, action, resource_type, resource_id, patient_id, f"http-{status}")


def _named_patient(params: Any) -> str:
    """The patient id a search names (`patient=Patient/x`, `subject=x`), if exactly one literal one."""
    named = set()
    for name, value in params:
        if name in _PATIENT_PARAMS:
            for piece in str(value).split(","):
                ref = piece.strip().removeprefix("Patient/")
                if ID.fullmatch(ref):
                    named.add(ref)
    return next(iter(named)) if len(named) == 1 else ""


def _definitions_page(
    uow: UnitOfWork | None, resource_type: str, search: FixedSearch, sort: tuple[SortKey, ...], count: int,
    offset: int,
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """One page of the definitions `search` selects, as (relative url, resource), and how many there are: the
    published ones first, then (on `uow`, the caller's view; None: an anonymous caller) the stored ones the
    caller may read, none under a published id (that id reads ours); each group in `sort` order. The stored ones
    are matched by the store's `keep` (its index has no `url` or `name` for them), sorted and paged by the store,
    so only those shown are recorded as shown (which is why the groups are not merged into one order)."""
    selected = definition_search.select(definition_search.published(resource_type), search)
    published = [(f"{resource_type}/{d['id']}", dict(d)) for d in definition_search.ordered(selected, sort)]
    page = published[offset:offset + count]
    if uow is None:
        return page, len(published)
    ours = definition_search.published_ids(resource_type)
    with fhir_errors():
        everything = parse_search(resource_type, [])
    stored = uow.search(resource_type, everything, count=count - len(page), offset=max(0, offset - len(published)),
                        sort=sort, keep=lambda resource: resource.get("id") not in ours
                        and bool(definition_search.select([resource], search)))
    page += [(f"{resource_type}/{item.id}", item.stamped()) for item in stored.items]
    return page, len(published) + (stored.total or 0)


# -- pure helpers ---------------------------------------------------------------------------------
def _check_type(resource_type: str) -> None:
    if not _TYPE.fullmatch(resource_type) or not is_resource_type(resource_type):
        shown = resource_type[:40] if resource_type.isprintable() else "?"
        raise UnknownResourceType(f"unknown resource type {shown!r}")


_TYPE_LEVEL: Final = {"GET": "search-type", "HEAD": "search-type", "POST": "create", "PUT": "update",
                      "DELETE": "delete"}
_INSTANCE_LEVEL: Final = {"GET": "read", "HEAD": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _check_supported(resource_type: str, interaction: str) -> None:
    """Refuse an interaction TYPE_CAPABILITIES does not declare for the type (before anything is read)."""
    capability = TYPE_CAPABILITIES.get(resource_type)
    if capability is not None and interaction not in capability.interactions:
        refusal = _REFUSALS.get(resource_type)
        raise refusal() if refusal else Forbidden(f"{interaction} is not supported on {resource_type} "
                                                  "(see GET /fhir/metadata)")


_WRITE_INTERACTIONS: Final = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _unsupported_entries(bundle: dict[str, Any], searched_elsewhere: frozenset[str]) -> dict[int, Forbidden]:
    """The entries of a batch that ask for what their type does not support (TYPE_CAPABILITIES), each with the
    refusal the same request outside a Bundle gets, by entry index: execute_bundle answers each of them on its own
    (R4 3.1.0.11.1). A transaction is all or nothing: its first such entry (by index) refuses it whole,
    naming the entry. A Bundle that does not parse is left to execute_bundle to refuse in its words."""
    try:
        plan = fhir_bundles.plan_bundle(bundle, searched_elsewhere=searched_elsewhere)
    except FhirInputError:
        return {}
    refused: dict[int, Forbidden] = {}
    for entry in sorted(plan.entries, key=lambda e: e.index):  # a transaction's come in processing order
        # An entry whose resource is invalid is refused like the same request outside a Bundle: by its type's
        # refusal first (POST /fhir/AuditEvent is a 405 whatever the body), by the validation otherwise.
        resource_type = entry.resource_type or _type_in_url(entry.url)
        if resource_type is None:
            continue
        if entry.method in ("GET", "HEAD"):
            by_id = "vread" if entry.version_id else "read"
            interaction = by_id if entry.id is not None and entry.conditional is None else "search-type"
        elif entry.method == "POST":
            interaction = "create"
        elif entry.method in _WRITE_INTERACTIONS:
            interaction = _WRITE_INTERACTIONS[entry.method]
        else:
            continue  # a method the plan refused already (entry.error)
        try:
            _check_supported(resource_type, interaction)
            if (resource_type, interaction) in _NOT_IN_BUNDLES:
                raise Forbidden(_NOT_IN_BUNDLES[(resource_type, interaction)])
        except Forbidden as refusal:
            if plan.type != "batch":
                # (403 for the Bundle as a whole, even naming a write to the access log: POST /fhir is allowed)
                raise Forbidden(f"entry {entry.index} ({entry.method} {resource_type}): {refusal}") from None
            refused[entry.index] = refusal
    return refused


def _type_in_url(url: str) -> str | None:
    """The resource type an entry's request URL names (`Type`, `Type/id`, `Type?query`), if it is one we serve:
    for an entry the plan could not read (an invalid resource), whose refusal by type still comes first."""
    head = url.split("?", 1)[0].split("/", 1)[0]
    return head if head in TYPE_CAPABILITIES else None


def _check_id(resource_id: str) -> None:
    if not ID.fullmatch(resource_id):
        raise NotFound("no resource with that id (ids are [A-Za-z0-9-.]{1,64})")


def _check_body_type(resource: dict[str, Any], resource_type: str) -> None:
    body_type = resource.get("resourceType")
    if body_type != resource_type:
        raise InvalidResource(
            f"resourceType in the body must be {resource_type!r} to match the URL",
            expression="resourceType",
        )


def _parameter(params: dict[str, Any], name: str) -> str:
    """A string parameter of a FHIR Parameters body (R4 parameters.html)."""
    if params.get("resourceType") != "Parameters":
        raise BadRequest("the operation takes a Parameters resource", expression="resourceType")
    for p in params.get("parameter") or []:
        if isinstance(p, dict) and p.get("name") == name:
            value = p.get("valueString")
            if isinstance(value, str) and value:
                return value
            raise BadRequest(f"parameter {name!r} needs a valueString", expression=f"Parameters.parameter[{name}]")
    raise BadRequest(f"parameter {name!r} is required", expression="Parameters.parameter")


def _parse_condition(header: str) -> list[tuple[str, str]]:
    """If-None-Exist carries a search query string (FHIR R4 http.html#ccreate)."""
    text = header.strip()
    if "?" in text:
        text = text.split("?", 1)[1]
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=100)
    except ValueError:
        raise BadRequest("If-None-Exist must be a search query like identifier=system|value") from None
    if not pairs:
        raise BadRequest("If-None-Exist must be a search query like identifier=system|value")
    return pairs


def _subset(body: dict[str, Any], controls: ResultControls) -> dict[str, Any]:
    """A resource as `_summary` / `_elements` ask (fhir_adapters.subsetting), after every decision."""
    return controls.subset(body)


def _parse_instant(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an instant like 2024-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _no_content(status: int, headers: dict[str, str] | None = None) -> Response:
    """A response without a body (204, 304, a 201/200 under `Prefer: return=minimal`): no Content-Type either
    (RFC 7231 §3.1.1.5 describes a body; there is none)."""
    response = Response(b"", status=status)
    response.headers.remove("Content-Type")
    if headers:
        response.headers.update(headers)
    return response


def _write_preconditions() -> tuple[int | None, IfNoneMatch | None]:
    """`If-Match` and `If-None-Match` of an update (RFC 7232 §3.1, §3.2; R4 3.1.0.5), as the store takes them."""
    if_match = http.parse_etag(request.headers["If-Match"]) if "If-Match" in request.headers else None
    header = request.headers.get("If-None-Match")
    if header is None:
        return if_match, None
    versions = http.parse_if_none_match(header)
    return if_match, ANY_VERSION if versions is None else versions


def _prefer_return(prefer: str) -> str:
    # RFC 7240 §2; FHIR R4 http.html#ops: return=minimal | representation | OperationOutcome.
    for token in prefer.split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in {"minimal", "representation", "OperationOutcome"}:
                return value
    return "representation"


def request_is_fhir(req: Request) -> bool:
    return req.path == "/fhir" or req.path.startswith("/fhir/")
