"""The researcher portal (role researcher): their studies, a form to create one over the supported criteria,
publishing it, private feasibility counts with their privacy budget and their history, anonymous enrolment counts
over time, the de-identified Bulk Data export (kick-off, progress, files, past exports) and "My activity", the
access log of their own requests.

Everything goes through the research API as the signed-in researcher (README "Research"): `POST
/fhir/ResearchStudy`, `GET /fhir/ResearchStudy[/{id}]`, `POST .../$publish`, `POST .../$feasibility`, `GET
/fhir/ResearchSubject?study=` (pseudonyms: only their dates are shown, as counts), `GET /fhir/Group/{cohort}/$export`
with `Prefer: respond-async`, `GET /fhir/$export-status/{job}` and `GET /fhir/$export-file/{job}/{name}`, `GET
/fhir/ResearchStudy/{id}/$feasibility-releases` and `$export-jobs` (the histories), `GET /fhir/AuditEvent` (their
own requests, which name no patient: docs/trust-model.md). The API decides who may do what; a refusal is shown
next to the field it is about, in the API's own words.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import structlog
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from fhir_adapters.readable.access import describe_access
from fhir_adapters.readable.studies import StudyView, describe_study
from fhir_adapters.readable.text import display_of, human_date, parse_date
from fhir_adapters.research_study import study_reference
from healthledger.auth.models import User
from healthledger.auth.users import AccountNames
from healthledger.principal import Principal
from healthledger.web.context import page_guard
from healthledger.web.directory import names_for
from healthledger.web.fhir_client import FhirCallError, FhirClient, entries, refusal_text
from healthledger.web.study_form import StudyForm, field_for_refusal, study_resource

log = structlog.get_logger(__name__)
ACTIVITY_PAGE = 50  # entries per page of "My activity"


@dataclass(frozen=True)
class EnrolmentDay:
    day: str
    joined: int
    left: int
    taking_part: int


@dataclass(frozen=True)
class ChartBar:
    x: float
    y: float
    width: float
    height: float


CHART_WIDTH, CHART_HEIGHT = 600.0, 120.0


def enrolment_chart(days: list[EnrolmentDay]) -> list[ChartBar]:
    """One bar per day with joining or leaving: how many take part at its end (an inline SVG, no script)."""
    most = max((d.taking_part for d in days), default=0)
    if not days or most == 0:
        return []
    step = CHART_WIDTH / len(days)
    bars = []
    for i, day in enumerate(days):
        height = CHART_HEIGHT * day.taking_part / most
        bars.append(ChartBar(i * step + step * 0.1, CHART_HEIGHT - height, step * 0.8, height))
    return bars


@dataclass(frozen=True)
class FeasibilityAnswer:
    result: str
    below_threshold: bool
    interval: str
    epsilon: float
    spent: float
    remaining: float
    budget: float
    researcher_remaining: float
    repeat: bool
    released: str
    mechanism: str


def enrolment_days(subjects: list[dict[str, Any]]) -> list[EnrolmentDay]:
    """Counts per day of joining and leaving, and how many take part at the end of each day (no pseudonyms)."""
    joined = Counter(str((s.get("period") or {}).get("start") or "") for s in subjects)
    left = Counter(str((s.get("period") or {}).get("end") or "") for s in subjects if (s.get("period") or {}).get("end"))
    days = sorted(d for d in set(joined) | set(left) if d)
    out, running = [], 0
    for day in days:
        running += joined[day] - left[day]
        out.append(EnrolmentDay(human_date(day), joined[day], left[day], running))
    return out


def feasibility_answer(parameters: dict[str, Any]) -> FeasibilityAnswer:
    values = {p.get("name"): next((v for k, v in p.items() if k.startswith("value")), None)
              for p in parameters.get("parameter") or [] if isinstance(p, dict)}
    interval = values.get("interval") or {}
    low, high = (interval.get("low") or {}).get("value"), (interval.get("high") or {}).get("value")
    released = parse_date(values.get("releasedAt"))
    return FeasibilityAnswer(
        result=str(values.get("result") or ""), below_threshold=values.get("countBelow") is not None,
        interval=f"{low} to {high}" if low is not None else "", epsilon=float(values.get("epsilon") or 0),
        spent=float(values.get("epsilonSpent") or 0), remaining=float(values.get("epsilonRemaining") or 0),
        budget=float(values.get("epsilonBudget") or 0),
        researcher_remaining=float(values.get("researcherEpsilonRemaining") or 0),
        repeat=bool(values.get("repeat")), released=human_date(released) if released else "",
        mechanism=str(values.get("mechanism") or ""),
    )


@dataclass(frozen=True)
class PastRelease:
    released: str
    result: str
    interval: str
    epsilon: float
    reference_date: str
    criteria_hash: str
    yours: bool


@dataclass(frozen=True)
class PastExport:
    job: str
    status: str
    requested: str
    finished: str
    expires: str
    counts: list[tuple[str, int]]


EXPORT_STATES = {"queued": "Waiting to start", "running": "Being prepared", "complete": "Ready",
                 "failed": "Failed", "expired": "Expired (files removed)"}


def _parts(parameter: dict[str, Any]) -> dict[str, Any]:
    return {str(p.get("name")): next((v for k, v in p.items() if k.startswith("value")), p.get("part"))
            for p in parameter.get("part") or [] if isinstance(p, dict)}


def past_releases(parameters: dict[str, Any]) -> list[PastRelease]:
    """`$feasibility-releases` as rows (newest first, as the API lists them)."""
    out = []
    for p in parameters.get("parameter") or []:
        v = _parts(p)
        interval = v.get("interval") or {}
        low, high = (interval.get("low") or {}).get("value"), (interval.get("high") or {}).get("value")
        released = parse_date(v.get("releasedAt"))
        out.append(PastRelease(
            released=human_date(released) if released else "", result=str(v.get("result") or ""),
            interval=f"{low} to {high}" if low is not None else "", epsilon=float(v.get("epsilon") or 0),
            reference_date=human_date(str(v.get("referenceDate") or "")), criteria_hash=str(v.get("criteriaHash") or ""),
            yours=bool(v.get("askedByYou")),
        ))
    return out


def past_exports(parameters: dict[str, Any]) -> list[PastExport]:
    """`$export-jobs` as rows: state, dates and resources delivered per type (nothing per patient)."""
    out = []
    for p in parameters.get("parameter") or []:
        v = _parts(p)
        counts = []
        for o in p.get("part") or []:
            if isinstance(o, dict) and o.get("name") == "output":
                part = _parts(o)
                counts.append((str(part.get("type") or ""), int(part.get("count") or 0)))
        status = str(v.get("status") or "")
        out.append(PastExport(job=str(v.get("job") or ""), status=EXPORT_STATES.get(status, status),
                              requested=_day(v, "requestedAt"), finished=_day(v, "finishedAt"),
                              expires=_day(v, "expiresAt"), counts=counts))
    return out


def _day(values: dict[str, Any], name: str) -> str:
    moment = parse_date(values.get(name))
    return human_date(moment) if moment else ""


@dataclass(frozen=True)
class ActivityEntry:
    id: str
    when: str
    what: str
    target: str
    outcome: str
    explanation: str


# First matching reason prefix -> what the researcher reads (the log's machine reasons, research/ and api/).
_RESEARCH_REASONS: tuple[tuple[str, str], ...] = (
    ("feasibility:release", "A private count was released and charged to the privacy budget."),
    ("feasibility:repeat", "An earlier count was repeated: no budget spent."),
    ("feasibility:budget-spent", "Refused: the privacy budget is spent."),
    ("feasibility:history", "Refused: not a study of yours (or no such study)."),
    ("feasibility:not-owner", "Refused: not a study of yours (or no such study)."),
    ("export:kick-off", "You requested a de-identified export."),
    ("export:manifest", "The export was completed; its manifest's hash was recorded."),
    ("export:download:not-found", "Refused: no such export file (cancelled, expired or not yours)."),
    ("export:download", "You downloaded a file of an export."),
    ("export:cancel:not-found", "Refused: no such export (cancelled, expired or not yours)."),
    ("export:cancel", "You cancelled an export and its files were removed."),
    ("export:status:not-found", "Refused: no such export (cancelled, expired or not yours)."),
    ("export:history", "Refused: not a study of yours (or no such study)."),
    ("export:not-owner", "Refused: not a study of yours (or no such study)."),
    ("audit:own-requests", "You read this activity log."),
    # Every entry shown here names no patient (the API's rule), so these reads touched no patient's data.
    ("no-patient-compartment", "Allowed: no patient's data."),
    ("unrestricted", "Allowed: no patient's data."),
)


def activity_entry(event: dict[str, Any]) -> ActivityEntry:
    """One of the researcher's own AuditEvents in words."""
    seen = describe_access(event)
    reason = str(event.get("outcomeDesc") or "")
    explanation = next((words for prefix, words in _RESEARCH_REASONS if reason.startswith(prefix)), "")
    action = reason.split(":")[0] if reason.split(":")[0] in ("feasibility", "export") else ""
    what = {"feasibility": "Feasibility count", "export": "Export"}.get(action, seen.action[:1].upper() + seen.action[1:])
    return ActivityEntry(id=seen.id, when=seen.when, what=what, target=seen.resource or seen.what,
                         outcome=seen.outcome, explanation=explanation or seen.why)


def _file_sha256(output: dict[str, Any]) -> str:
    """A manifest file's SHA-256 (Bulk Data manifests carry extensions as an object keyed by URL)."""
    extension = output.get("extension")
    if isinstance(extension, dict):
        return next((str(v) for k, v in extension.items() if k.endswith("export-file-sha256")), "")
    return ""


def research_portal_blueprint(*, sessions: sessionmaker[Session], names: AccountNames | None = None) -> Blueprint:
    """`names`: how the owner of a colleague's study is named on its page (without: "a colleague")."""
    bp = Blueprint("research", __name__, url_prefix="/research")
    api = FhirClient()
    researcher = page_guard(sessions, "researcher")

    def owner_name(shown: StudyView) -> str:
        """The display name of the researcher who owns the study (a colleague of the same organisation)."""
        user_id = (shown.terms.owner_principal or "").removeprefix("user:")
        if names is not None and user_id:
            with sessions() as session:
                user = session.get(User, user_id)
                name = names.display_name(session, user) if user is not None else ""
            if name:
                return name
        return "a colleague"

    def is_owner(principal: Principal, shown: StudyView) -> bool:
        """Counts, participants and exports are the owner's alone (the API answers anyone else as for a study that
        does not exist): a colleague's page says so instead of offering them."""
        return bool(shown.terms.owner_principal) and shown.terms.owner_principal == principal.actor_id

    def owner_only(study_id: str, shown: StudyView, what: str) -> BaseResponse:
        flash(f"Only the study's owner, {owner_name(shown)}, can {what}.", "info")
        return redirect(url_for("web.research.study", study_id=study_id), 303)

    def choices(resource_type: str) -> list[tuple[str, str]]:
        try:
            found = api.search_all(resource_type, [("_count", "100")], max_pages=2).resources
        except FhirCallError:
            return []
        pairs = [(f"{resource_type}/{r['id']}", display_of(r) or str(r["id"])) for r in found if r.get("id")]
        return sorted(pairs, key=lambda pair: pair[1].casefold())

    def view(study: dict[str, Any]) -> StudyView:
        refs = [str((study.get(k) or {}).get("reference") or "") for k in ("sponsor", "principalInvestigator")]
        return describe_study(study, names_for(api, [r for r in refs if r]))

    def own_study(study_id: str) -> tuple[dict[str, Any], StudyView]:
        """The study, if it is the researcher's organisation's (others' published studies are not managed here)."""
        principal = researcher()
        study = api.read("ResearchStudy", study_id)  # 404 for another's draft: the API's answer
        shown = view(study)
        if shown.owner_organization != principal.organization:
            abort(404)
        return study, shown

    @bp.get("")
    def studies() -> str:
        principal = researcher()
        mine = [view(s) for s in api.search_all("ResearchStudy", [("_count", "500")]).resources]
        mine = [s for s in mine if s.owner_organization == principal.organization]
        return render_template("research_studies.html", studies=mine)

    def new_page(form: StudyForm, status: int = 200) -> tuple[str, int]:
        return render_template("research_new.html", form=form), status

    def study_form(formdata: Any = None) -> StudyForm:
        form = StudyForm(formdata) if formdata is not None else StudyForm(data={"sexes": ["female", "male", "other", "unknown"]})
        return form.with_choices(choices("Organization"), choices("Practitioner"))

    @bp.get("/new")
    def new_study() -> tuple[str, int]:
        principal = researcher()
        form = study_form()
        form.sponsor.data = principal.organization
        return new_page(form)

    @bp.post("/new")
    def create_study() -> BaseResponse | tuple[str, int]:
        researcher()
        form = study_form(request.form)
        if not form.validate():
            return new_page(form, 400)
        try:
            created = api.create(study_resource(form))
        except FhirCallError as exc:
            if exc.status >= 500:
                raise
            name = field_for_refusal(exc.message, exc.expression)
            form[name].errors = [*form[name].errors, exc.message[:1].upper() + exc.message[1:]]
            return new_page(form, 400)
        log.info("web.study_created")
        flash("The study is saved as a draft. Check it, then publish it.", "success")
        return redirect(url_for("web.research.study", study_id=created["id"]), 303)

    def listing(path: str) -> dict[str, Any]:
        """A history of the study; empty when the API answers 404 (a colleague's study: the owner's alone)."""
        response = api.call("GET", path)
        if response.status == 404:
            return {}
        return FhirClient._ok(response)

    def study_page(study_id: str, *, answer: FeasibilityAnswer | None = None, refusal: str = "",
                   status: int = 200) -> tuple[str, int]:
        _, shown = own_study(study_id)
        if not is_owner(researcher(), shown):
            return render_template("research_study.html", s=shown, owner=False, owner_name=owner_name(shown),
                                   criteria_json=json.dumps(shown.terms.criteria)), status
        days: list[EnrolmentDay] = []
        if shown.status != "draft":
            days = enrolment_days(list(entries(api.search("ResearchSubject", [("study", study_reference(study_id))]))))
        releases = past_releases(listing(f"ResearchStudy/{study_id}/$feasibility-releases"))
        exports = past_exports(listing(f"ResearchStudy/{study_id}/$export-jobs"))
        return render_template("research_study.html", s=shown, owner=True, days=days, answer=answer, refusal=refusal,
                               chart=enrolment_chart(days), chart_size=(CHART_WIDTH, CHART_HEIGHT),
                               releases=releases, exports=exports,
                               criteria_json=json.dumps(shown.terms.criteria)), status

    @bp.get("/activity")
    def activity() -> str:
        """Their own requests, newest first, a page at a time (the API lists the log oldest first)."""
        researcher()
        try:
            page = max(1, int(request.args.get("page", "1")))
        except ValueError:
            page = 1
        total = int(api.search("AuditEvent", [("_summary", "count")]).get("total") or 0)
        pages = max(1, -(-total // ACTIVITY_PAGE))
        page = min(page, pages)
        end = total - ACTIVITY_PAGE * (page - 1)
        start = max(0, end - ACTIVITY_PAGE)
        events = []
        if end > 0:
            events = list(entries(api.search("AuditEvent", [("_offset", str(start)), ("_count", str(end - start))])))
        shown = [activity_entry(e) for e in reversed(events)]
        return render_template("research_activity.html", entries=shown, page=page, pages=pages, total=total)

    @bp.get("/<study_id>")
    def study(study_id: str) -> tuple[str, int]:
        return study_page(study_id)

    @bp.post("/<study_id>/publish")
    def publish(study_id: str) -> BaseResponse:
        own_study(study_id)
        api.operation(f"ResearchStudy/{study_id}/$publish", {"resourceType": "Parameters"})
        log.info("web.study_published")
        flash("Sent to the ledger. The study opens to patients once the ledger confirms it.", "success")
        return redirect(url_for("web.research.study", study_id=study_id), 303)

    @bp.post("/<study_id>/feasibility")
    def feasibility(study_id: str) -> BaseResponse | tuple[str, int]:
        _, shown = own_study(study_id)
        if not is_owner(researcher(), shown):
            return owner_only(study_id, shown, "ask how many patients meet the criteria")
        response = api.call("POST", f"ResearchStudy/{study_id}/$feasibility")
        if response.status >= 400:
            refusal = refusal_text(response)
            return study_page(study_id, refusal=refusal, status=response.status if response.status < 500 else 502)
        return study_page(study_id, answer=feasibility_answer(response.body or {}))

    @bp.post("/<study_id>/export")
    def export(study_id: str) -> BaseResponse:
        _, shown = own_study(study_id)
        if not is_owner(researcher(), shown):
            return owner_only(study_id, shown, "request an export")
        if not shown.cohort_group_id:
            abort(404)
        response = api.call("GET", f"Group/{shown.cohort_group_id}/$export",
                            headers={"Prefer": "respond-async"})
        if response.status != 202:
            flash(refusal_text(response) or "The export could not start.", "error")
            return redirect(url_for("web.research.study", study_id=study_id), 303)
        job = response.headers.get("Content-Location", "").rstrip("/").rpartition("/")[2]
        log.info("web.export_requested")
        return redirect(url_for("web.research.export_status", study_id=study_id, job=job), 303)

    @bp.get("/<study_id>/export/<job>")
    def export_status(study_id: str, job: str) -> tuple[str, int]:
        _, shown = own_study(study_id)
        response = api.call("GET", f"$export-status/{job}")
        state, progress, files, error = "in-progress", "", [], ""
        if response.status == 200:
            state = "complete"
            manifest = response.body or {}
            files = [{"name": str(f.get("url", "")).rstrip("/").rpartition("/")[2], "type": f.get("type"),
                      "count": f.get("count"), "sha256": _file_sha256(f)}
                     for f in manifest.get("output") or []]
        elif response.status in (202, 429):
            progress = response.headers.get("X-Progress", "")
        else:
            state, error = "error", refusal_text(response) or f"the export failed ({response.status})"
        taking_part = None
        if state == "complete" and not files:  # why nothing: nobody takes part, or their data holds nothing asked
            subjects = entries(api.search("ResearchSubject", [("study", study_reference(study_id))]))
            taking_part = sum(1 for subject in subjects if subject.get("status") != "withdrawn")
        return render_template("research_export.html", s=shown, job=job, state=state, progress=progress,
                               files=files, error=error, taking_part=taking_part), 200 if state != "error" else 404

    @bp.get("/<study_id>/export/<job>/<name>")
    def export_file(study_id: str, job: str, name: str) -> Response:
        own_study(study_id)
        response = api.call("GET", f"$export-file/{job}/{name}")
        if response.status != 200:
            abort(404)
        return Response(response.content, mimetype="application/fhir+ndjson", headers={
            "Content-Disposition": f'attachment; filename="{study_id}-{name}"'})

    return bp
