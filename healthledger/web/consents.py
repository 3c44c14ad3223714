"""Who can see my data, and requests: the patient's Consents in plain words with their on-chain state,
revoking one (signed with the patient's key), and answering a Consent that someone else recorded for the
patient (approve = sign its grant with the patient's key; decline = status `rejected`).

All through the /fhir API as the patient: `GET /fhir/Consent?patient=...`, `POST /fhir/Consent/{id}/$sign`,
`$revoke`, `PUT /fhir/Consent/{id}`. Whoever recorded a request reads its outcome from the same API (the
Consent's status and its chain-state extension).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import structlog
from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from fhir_adapters.readable.consents import CHAIN_STATE_URL, ConsentView, describe_consent
from fhir_adapters.readable.studies import describe_study
from healthledger.errors import BadRequest, HealthLedgerError
from healthledger.ledger.members import member_by_id
from healthledger.web.context import require_person
from healthledger.web.directory import names_for
from healthledger.web.fhir_client import FhirCallError, FhirClient
from healthledger.web.forms import ConfirmWithPasswordForm, show_error
from healthledger.web.notices import patient_consents

log = structlog.get_logger(__name__)


def password_parameters(password: str) -> dict[str, Any]:
    """The Parameters body of `$sign` and `$revoke`: the password that unlocks the patient's key."""
    return {"resourceType": "Parameters", "parameter": [{"name": "password", "valueString": password}]}


def signing_refusal(error: FhirCallError) -> HealthLedgerError:
    """What the patient reads when `$sign` or `$revoke` is refused: a key that does not open (403) is their
    password, said next to the password field; anything else as the API put it."""
    if error.status == 403:
        return BadRequest("That password is not right: use the one you sign in with", expression="password")
    return error


def consent_view(
    api: FhirClient, consent: dict[str, Any], sessions: sessionmaker[Session] | None = None
) -> ConsentView:
    refs = [((a or {}).get("reference") or {}).get("reference", "")
            for a in (consent.get("provision") or {}).get("actor") or []]
    return describe_consent(consent, names_for(api, [r for r in refs if r], sessions))


def study_granted(view: ConsentView) -> str:
    """The study id a study consent (the one `$enrol` signs) grants, or "": such a consent ends by leaving the
    study (`$leave`), which revokes it and withdraws the enrolment, never by revoking it alone."""
    for reference, _ in view.who:
        if reference.startswith("ResearchStudy/"):
            return reference.removeprefix("ResearchStudy/")
    return ""


_STUDY_WORDS = "_healthledger_web_study_words"


def _study_data(study_id: str) -> tuple[str, str] | None:
    """(title, what the study receives, dated: "your year of birth and sex (...); test results ..., dated from 1
    January 2015 on") as its page says it, read as the signed-in patient; None when it cannot be read."""
    cache: dict[str, tuple[str, str] | None] = g.setdefault(_STUDY_WORDS, {})
    if study_id not in cache:
        try:
            shown = describe_study(FhirClient().read("ResearchStudy", study_id), {})
        except FhirCallError:
            cache[study_id] = None
        else:
            cache[study_id] = (shown.title, f"{'; '.join(shown.data)}, dated {shown.data_period}")
    return cache[study_id]


def consent_summary(view: ConsentView) -> str:
    """The consent in one sentence, in the tense of its state: what it allows while it stands, what it allowed
    once revoked, ended or declined. A study consent says what the study receives (from the study's terms:
    the year of birth and sex, the kinds of data and from when), de-identified, for as long as the patient
    takes part: its own provision names no end date, leaving ends it."""
    study_id = study_granted(view)
    study = _study_data(study_id) if study_id else None
    ended = view.status in ("inactive", "entered-in-error") or view.chain_state in ("revoking", "revoked", "expired")
    if study is not None:
        title, data = study
        if ended:
            return (f"You left the study: {title} receives nothing more from your record. While you took part it "
                    f"could receive {data}, de-identified under your study pseudonym.")
        return (f"{title} receives {data}, de-identified under your study pseudonym, for health research, for as "
                "long as you take part.")
    allowed = f"{view.kinds_text} for {view.purposes_text}, {view.period_text}"
    if view.status == "rejected":
        return f"You declined: {view.who_text} asked to see {allowed}."
    if not ended:
        return view.sentence
    state = "Ended" if view.chain_state == "expired" else "Revoked"
    if view.permits:
        return f"{state}: {view.who_text} may no longer see your data under this consent. It let them see {allowed}."
    return f"{state}: it no longer applies. It kept {view.who_text} from seeing {allowed}."


def locator_members(view: ConsentView, sessions: sessionmaker[Session], own_member: str) -> list[str]:
    """The names of the other member hospitals a live Consent grants, for which a record locator can be made
    (docs/federation.md); none when this server is no consortium member (`own_member` empty)."""
    if not own_member or not view.is_live or not view.permits:
        return []
    with sessions() as session:
        found = [(name, member_by_id(session, ref.removeprefix("Organization/"))) for ref, name in view.who
                 if ref.startswith("Organization/")]
    return [name for name, m in found if m is not None and m.active and m.org_id != own_member]


def consents_blueprint(*, sessions: sessionmaker[Session], own_member: str = "") -> Blueprint:
    """`own_member`: this server's id in the consortium's directory ("" = not a member: no record locators)."""
    bp = Blueprint("consents", __name__)
    api = FhirClient()
    bp.add_app_template_global(consent_summary, "consent_summary")

    def consent_page(view: ConsentView, form: ConfirmWithPasswordForm, **extra: Any) -> str:
        study_id = study_granted(view)
        return render_template("consent.html", c=view, form=form, study_id=study_id,
                               study=_study_data(study_id) if study_id else None,
                               members=locator_members(view, sessions, own_member), **extra)

    def own_consent(consent_id: str) -> tuple[dict[str, Any], ConsentView]:
        """The signed-in patient's Consent, or 404 (the API decides: another patient's looks missing)."""
        principal = require_person(sessions, "patient")
        try:
            consent = api.read("Consent", consent_id)
        except FhirCallError as exc:
            abort(404 if exc.status in (400, 404, 410) else exc.status)
        if (consent.get("patient") or {}).get("reference") != f"Patient/{principal.patient_id}":
            abort(404)
        return consent, consent_view(api, consent, sessions)

    @bp.get("/consents")
    def consents() -> str:
        principal = require_person(sessions, "patient")
        views = patient_consents(api, principal.patient_id, sessions)
        return render_template(
            "consents.html",
            sharing=[v for v in views if v.permits and v.status == "active" or v.chain_state == "pending"],
            refusing=[v for v in views if not v.permits and v.status == "active"],
            waiting=[v for v in views if v.answerable_on(_today())],
            ended=[v for v in views if v.status in ("inactive", "rejected", "entered-in-error")
                   or v.is_request and not v.answerable_on(_today())],
        )

    @bp.get("/consents/<consent_id>")
    def consent(consent_id: str) -> str:
        _, view = own_consent(consent_id)
        return consent_page(view, ConfirmWithPasswordForm(), answerable=view.answerable_on(_today()))

    @bp.post("/consents/<consent_id>/revoke")
    def revoke(consent_id: str) -> BaseResponse | tuple[str, int]:
        """Revoke the Consent; a study consent by leaving its study (`$leave`: the consent revoked and the
        enrolment withdrawn together, as the study's own page does)."""
        _, view = own_consent(consent_id)
        study_id = study_granted(view)
        form = ConfirmWithPasswordForm(request.form)
        if form.validate():
            operation = f"ResearchStudy/{study_id}/$leave" if study_id else f"Consent/{consent_id}/$revoke"
            try:
                api.operation(operation, password_parameters(form.password.data or ""))
            except FhirCallError as exc:
                if exc.status >= 500:
                    raise
                show_error(form, signing_refusal(exc), default="password")
            else:
                if study_id:
                    log.info("web.study_left")
                    flash(f"You left the study. Your consent is revoked: {view.who_text} receives nothing more "
                          "from your record. The ledger records the revocation in a moment.", "success")
                else:
                    log.info("web.consent_revoked")
                    flash(f"Revoked. {view.who_text} can no longer see your data under this consent. "
                          "The ledger records the revocation in a moment.", "success")
                return redirect(url_for("web.consents.consent", consent_id=consent_id), 303)
        return consent_page(view, form, revoke_open=True), 400

    @bp.post("/consents/<consent_id>/record-locator")
    def record_locator(consent_id: str) -> tuple[str, int]:
        """A one-time record locator for the member hospital this Consent grants (docs/federation.md): the patient
        hands it to that hospital's intake. Shown once; only a hash of it is kept. Offered only where it applies
        (`locator_members`); anywhere else this is the page's 404."""
        _, view = own_consent(consent_id)
        if not locator_members(view, sessions, own_member):
            abort(404)
        try:
            answer = api.operation(f"Consent/{consent_id}/$record-locator", {"resourceType": "Parameters"})
        except FhirCallError as exc:
            if exc.status >= 500:
                raise
            flash(exc.message, "error")
            return consent_page(view, ConfirmWithPasswordForm()), exc.status
        values = {p.get("name"): p.get("valueString") for p in answer.get("parameter") or [] if isinstance(p, dict)}
        log.info("web.record_locator_made")
        return consent_page(view, ConfirmWithPasswordForm(), locator=values.get("locator", "")), 200

    @bp.get("/requests")
    def requests() -> str:
        principal = require_person(sessions, "patient")
        views = [v for v in patient_consents(api, principal.patient_id, sessions) if v.answerable_on(_today())]
        return render_template("requests.html", requests=views, answer_forms={v.id: _answer_form(v.id) for v in views})

    @bp.post("/requests/<consent_id>/approve")
    def approve(consent_id: str) -> BaseResponse | tuple[str, int]:
        principal = require_person(sessions, "patient")
        _, view = own_consent(consent_id)
        form = _answer_form(consent_id, request.form)
        if not view.answerable_on(_today()):
            flash(_NOT_OPEN, "info")
            return redirect(url_for("web.consents.consent", consent_id=consent_id), 303)
        if form.validate():
            try:
                api.operation(f"Consent/{consent_id}/$sign", password_parameters(form.password.data or ""))
            except FhirCallError as exc:
                show_error(form, signing_refusal(exc), default="password")
            else:
                log.info("web.request_approved")
                flash(f"Approved and signed with your key. {view.who_text} can see it once the ledger confirms.",
                      "success")
                return redirect(url_for("web.consents.consent", consent_id=consent_id), 303)
        views = [v for v in patient_consents(api, principal.patient_id, sessions) if v.answerable_on(_today())]
        forms = {v.id: (form if v.id == consent_id else _answer_form(v.id)) for v in views}
        return render_template("requests.html", requests=views, answer_forms=forms), 400

    @bp.post("/requests/<consent_id>/decline")
    def decline(consent_id: str) -> BaseResponse:
        consent, view = own_consent(consent_id)
        if not view.answerable_on(_today()):
            flash(_NOT_OPEN, "info")
            return redirect(url_for("web.consents.requests"), 303)
        declined = {k: v for k, v in consent.items() if k != "meta"}
        # The chain-state extension is how the API shows the Consent, not part of what was recorded.
        kept = [e for e in consent.get("extension") or [] if e.get("url") != CHAIN_STATE_URL]
        declined.pop("extension", None)
        if kept:
            declined["extension"] = kept
        declined["status"] = "rejected"
        api.update(declined)
        log.info("web.request_declined")
        flash(f"Declined. {view.who_text} will see that you said no.", "success")
        return redirect(url_for("web.consents.requests"), 303)

    return bp


_NOT_OPEN = "That request was already answered, or its time has passed."


def _today() -> date:
    return datetime.now(UTC).date()


def _answer_form(consent_id: str, formdata: Any = None) -> ConfirmWithPasswordForm:
    """Each request on the page has its own password field (ids stay unique)."""
    return ConfirmWithPasswordForm(formdata, prefix=f"r{consent_id}")
