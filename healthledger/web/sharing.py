"""Share my data: a guided form (who, what for, which kinds of data, from when until when) that records a
Consent and signs its grant with the patient's key, then shows its progress until the chain confirms it.

Through the /fhir API as the patient: the recipients offered are the organisations and clinicians the API
lists (`GET /fhir/Organization`, `/fhir/Practitioner`) and the active member hospitals of the consortium's
directory other than this one (`Organization/{member id}`, docs/federation.md); the Consent is `POST /fhir/Consent` (status
`proposed`) then `POST /fhir/Consent/{id}/$sign` with the patient's password. If signing fails (a wrong
password), the unsigned draft is deleted again and the form comes back with everything the person chose.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import structlog
from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from fhir_adapters.readable.consents import CATEGORIES, EVERYTHING, OFFERED_PURPOSES, PURPOSES, draft_consent
from fhir_adapters.readable.text import display_of
from healthledger.ledger.members import list_members
from healthledger.web.consents import password_parameters, signing_refusal
from healthledger.web.context import require_person
from healthledger.web.fhir_client import FhirCallError, FhirClient
from healthledger.web.forms import ShareForm, options, show_error

log = structlog.get_logger(__name__)
RECIPIENT_TYPES = (("Organization", "organisation"), ("Practitioner", "clinician"))
MAX_RECIPIENTS = 200


def sharing_blueprint(
    *, sessions: sessionmaker[Session], today: Callable[[], date] | None = None, own_member: str = ""
) -> Blueprint:
    """`own_member`: this server's directory id (never offered: a hospital does not share with itself)."""
    bp = Blueprint("sharing", __name__)
    api = FhirClient()
    current_day = today or (lambda: datetime.now(UTC).date())

    def recipients() -> list[tuple[str, str]]:
        """(reference, "Name (organisation)") of everyone the patient may share with, by name."""
        found = []
        for rtype, kind in RECIPIENT_TYPES:
            for resource in api.search_all(rtype, [("_count", "100")], max_pages=2).resources:
                name = display_of(resource)
                if name and resource.get("id"):
                    found.append((f"{rtype}/{resource['id']}", f"{name} ({kind})"))
        offered = {reference for reference, _ in found}
        with sessions() as session:
            found += [(ref, f"{m.name} (member hospital)") for m in list_members(session)
                      if m.active and m.org_id != own_member and (ref := f"Organization/{m.org_id}") not in offered]
        return sorted(found, key=lambda pair: pair[1].casefold())[:MAX_RECIPIENTS]

    def build_form(formdata: object = None) -> ShareForm:
        form = ShareForm(formdata) if formdata is not None else ShareForm(data={"start": current_day()})
        form.recipient.choices = options(recipients())
        form.purpose.choices = options(
            [(code, PURPOSES[code][:1].upper() + PURPOSES[code][1:]) for code in OFFERED_PURPOSES])
        form.categories.choices = options([(EVERYTHING, "Everything in my record")] + [
            (key, words[:1].upper() + words[1:]) for key, words, _ in CATEGORIES])
        return form

    def page(form: ShareForm, status: int = 200) -> tuple[str, int]:
        return render_template("share.html", form=form, today=current_day().isoformat()), status

    @bp.get("/share")
    def share() -> tuple[str, int]:
        require_person(sessions, "patient")
        form = build_form()
        preselect = request.args.get("recipient", "")
        if preselect in {c.value for c in form.recipient.choices or []}:
            form.recipient.data = preselect
        return page(form)

    @bp.post("/share")
    def share_submit() -> BaseResponse | tuple[str, int]:
        principal = require_person(sessions, "patient")
        form = build_form(request.form)
        valid = form.validate()
        today = current_day()
        if form.start.data is not None and form.start.data < today and not form.start.errors:
            form.start.errors = [*form.start.errors, "The first day cannot be in the past"]
            valid = False
        if form.end.data is not None and form.end.data <= today and not form.end.errors:
            form.end.errors = [*form.end.errors, "The last day must be in the future"]
            valid = False
        if not valid:
            return page(form, 400)
        recipient = form.recipient.data or ""
        names = {c.value: c.label for c in form.recipient.choices or []}
        consent = draft_consent(
            patient_id=principal.patient_id, recipient=recipient,
            recipient_display=names.get(recipient, "").rpartition(" (")[0],
            purpose=form.purpose.data or "", categories=form.categories.data or [],
            start=form.start.data or today, end=form.end.data, today=today,
        )
        try:
            created = api.create(consent)
        except FhirCallError as exc:
            show_error(form, exc, default="recipient")
            return page(form, 400)
        consent_id = str(created["id"])
        try:
            api.operation(f"Consent/{consent_id}/$sign", password_parameters(form.password.data or ""))
        except FhirCallError as exc:
            api.delete("Consent", consent_id)  # nothing was signed: no half-made consent is left behind
            show_error(form, signing_refusal(exc), default="password")
            return page(form, 400 if exc.status < 500 else exc.status)
        log.info("web.consent_shared")
        flash("Signed with your key and sent to the ledger.", "success")
        return redirect(url_for("web.consents.consent", consent_id=consent_id), 303)

    return bp
