"""Research studies for a patient: the open studies in plain words (purpose, sponsor, who can join, which data),
what the researcher will and will not learn, joining by a zero-knowledge proof made on the patient's own device,
and leaving.

Through the research API as the patient (README "Research"): `GET /fhir/ResearchStudy?status=active`, `GET
/fhir/ResearchSubject?study=` (their own enrolment only). Checking eligibility and joining happen in the page
(`static/js/study-join.js`): it fetches the patient's credential (`$eligibility-credential`, with the password),
checks the published criteria locally, proves in a Web Worker and sends `$enrol` with the password, so the
server signs the study consent with the study pseudonym. Leaving is `$leave` with the password (a form here).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import structlog
from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from fhir_adapters.readable.studies import StudyView, describe_study
from fhir_adapters.readable.text import human_date
from fhir_adapters.research_study import study_reference
from healthledger.web.consents import password_parameters, signing_refusal
from healthledger.web.context import page_guard
from healthledger.web.directory import names_for
from healthledger.web.fhir_client import FhirCallError, FhirClient, entries
from healthledger.web.forms import ConfirmWithPasswordForm, show_error

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Enrolment:
    """The patient's own ResearchSubject for a study, in words."""

    taking_part: bool
    since: str
    left: str
    pseudonym: str
    consent: str  # "Consent/{id}"


def study_views(api: FhirClient, today: date) -> list[StudyView]:
    """The open studies, in words (sponsor and investigator names as the API gives them)."""
    found = api.search_all("ResearchStudy", [("status", "active")]).resources
    refs = [str((s.get(k) or {}).get("reference") or "") for s in found for k in ("sponsor", "principalInvestigator")]
    names = names_for(api, [r for r in refs if r])
    return [describe_study(s, names, today=today) for s in found]


def enrolment(subject: dict[str, Any]) -> Enrolment:
    period: dict[str, Any] = subject.get("period") or {}
    return Enrolment(
        taking_part=subject.get("status") != "withdrawn", since=human_date(period.get("start")),
        left=human_date(period.get("end")) if period.get("end") else "",
        pseudonym=str(((subject.get("individual") or {}).get("identifier") or {}).get("value") or ""),
        consent=str((subject.get("consent") or {}).get("reference") or ""),
    )


def my_enrolment(api: FhirClient, study_id: str) -> Enrolment | None:
    for subject in entries(api.search("ResearchSubject", [("study", study_reference(study_id))])):
        return enrolment(subject)
    return None


def my_enrolments(api: FhirClient) -> dict[str, Enrolment]:
    """study id -> the patient's enrolment, for every study they joined (`GET /fhir/ResearchSubject`)."""
    return {str((s.get("study") or {}).get("reference") or "").removeprefix("ResearchStudy/"): enrolment(s)
            for s in api.search_all("ResearchSubject").resources}


def studies_blueprint(*, sessions: sessionmaker[Session]) -> Blueprint:
    bp = Blueprint("studies", __name__)
    api = FhirClient()
    patient = page_guard(sessions, "patient")

    def today() -> date:
        return datetime.now(UTC).date()

    @bp.get("/studies")
    def studies() -> str:
        patient()
        mine = my_enrolments(api)
        shown = [(s, mine.get(s.id)) for s in study_views(api, today())]
        return render_template("studies.html", studies=shown)

    def page(study_id: str, form: ConfirmWithPasswordForm, status: int = 200) -> tuple[str, int]:
        principal = patient()
        study = api.read("ResearchStudy", study_id)
        refs = [str((study.get(k) or {}).get("reference") or "") for k in ("sponsor", "principalInvestigator")]
        shown = describe_study(study, names_for(api, [r for r in refs if r]), today=today())
        return render_template("study.html", s=shown, mine=my_enrolment(api, study_id), form=form,
                               patient_id=principal.patient_id), status

    @bp.get("/studies/<study_id>")
    def study(study_id: str) -> tuple[str, int]:
        return page(study_id, ConfirmWithPasswordForm())

    @bp.post("/studies/<study_id>/leave")
    def leave(study_id: str) -> BaseResponse | tuple[str, int]:
        patient()
        form = ConfirmWithPasswordForm(request.form)
        if not form.validate():
            return page(study_id, form, 400)
        try:
            api.operation(f"ResearchStudy/{study_id}/$leave", password_parameters(form.password.data or ""))
        except FhirCallError as exc:
            if exc.status >= 500:
                raise
            show_error(form, signing_refusal(exc), default="password")
            return page(study_id, form, 400)
        log.info("web.study_left")
        flash("You left the study. Your study consent is revoked: the study receives nothing more from your record.",
              "success")
        return redirect(url_for("web.studies.study", study_id=study_id), 303)

    return bp
