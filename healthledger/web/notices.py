"""Notices for a patient: emergency ("break the glass") accesses to their data, consents about to expire,
requests waiting for their answer, open research studies they may be eligible for. Derived from their Consents and access log each time (read through the
/fhir API), so there is nothing to keep in step; the home page shows how many there are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, render_template, url_for
from sqlalchemy.orm import Session, sessionmaker

from fhir_adapters.readable.consents import ConsentView, describe_consent
from fhir_adapters.readable.text import human_date
from healthledger.errors import HealthLedgerError
from healthledger.research.credentials import attributes_from_json
from healthledger.research.studies import PublishedCircuit, compiled_from_inputs
from healthledger.web.access_log import latest_accesses
from healthledger.web.context import require_person
from healthledger.web.directory import names_for
from healthledger.web.fhir_client import FhirCallError, FhirClient

EXPIRY_WARNING = timedelta(days=30)
BREAK_GLASS_WINDOW = timedelta(days=90)
BREAK_GLASS_SCAN = 500  # newest entries looked at for emergency accesses


@dataclass(frozen=True)
class Notice:
    kind: str  # break-glass | expiring | request | study
    title: str
    text: str
    link: str
    link_text: str
    when: str = ""


def patient_consents(
    api: FhirClient, patient_id: str, sessions: sessionmaker[Session] | None = None
) -> list[ConsentView]:
    """Every Consent of the patient, in plain words (newest first); with `sessions`, member hospitals named as the
    consortium's directory names them."""
    resources = api.search_all("Consent", [("patient", f"Patient/{patient_id}")]).resources
    refs = [
        ((a or {}).get("reference") or {}).get("reference", "")
        for c in resources for a in ((c.get("provision") or {}).get("actor") or [])
    ]
    refs += [g.get("valueString", "") for c in resources for e in c.get("extension") or []
             for part in e.get("extension") or [] for g in part.get("extension") or []
             if g.get("url") == "grantee"]
    names = names_for(api, [r for r in refs if r and r != "*"], sessions)
    views = [describe_consent(c, names) for c in resources]
    return sorted(views, key=lambda v: (v.start or date.min, v.id), reverse=True)


def patient_notices(api: FhirClient, patient_id: str, me: str = "", *, today: date | None = None,
                    sessions: sessionmaker[Session] | None = None) -> list[Notice]:
    today = today or datetime.now(UTC).date()
    notices: list[Notice] = []
    consents = patient_consents(api, patient_id, sessions)
    for view in consents:
        if view.answerable_on(today):
            notices.append(Notice(
                "request", f"{view.who_text} asks to see your data",
                view.sentence, url_for("web.consents.requests"), "Answer the request", view.recorded))
        elif view.is_live and view.permits and view.end is not None and today <= view.end <= today + EXPIRY_WARNING:
            days = (view.end - today).days
            notices.append(Notice(
                "expiring", f"Your consent for {view.who_text} ends {'today' if days == 0 else f'in {days} days'}",
                view.sentence, url_for("web.consents.consent", consent_id=view.id), "See the consent",
                human_date(view.end)))
    notices += study_notices(api, patient_id)
    window = latest_accesses(api, patient_id, me, start=today - BREAK_GLASS_WINDOW, limit=BREAK_GLASS_SCAN)
    for access in window.accesses:
        if access.break_glass:
            reason = f" The reason they gave: \u201c{access.break_glass_reason}\u201d." if access.break_glass_reason else ""
            notices.append(Notice(
                "break-glass", f"Emergency access by {access.who}",
                f"{access.who}{' (' + access.organization + ')' if access.organization else ''} {access.action} "
                f"your {access.what} in an emergency, without your consent.{reason}",
                url_for("web.history.history", who="break-glass"), "See it in your access history", access.when))
    return notices


def _credential_inputs(api: FhirClient, patient_id: str) -> dict[str, Any] | None:
    """The patient's credential attributes (circuitInputs without the secret), or None before it is activated."""
    try:
        params = api.read("Patient", f"{patient_id}/$eligibility-credential")
    except FhirCallError:
        return None
    for p in params.get("parameter") or []:
        if p.get("name") == "circuitInputs" and isinstance(p.get("valueString"), str):
            found: dict[str, Any] = json.loads(p["valueString"])
            return found
    return None


def study_notices(api: FhirClient, patient_id: str) -> list[Notice]:
    """Open studies the patient has not joined and may be eligible for: by their credential's attributes against
    the published criteria (the same check their device makes before joining), or every open study while
    they have not opened their credential yet (only their password does that)."""
    studies = api.search_all("ResearchStudy", [("status", "active")]).resources
    if not studies:
        return []
    attributes = _credential_inputs(api, patient_id)
    joined = {str((s.get("study") or {}).get("reference") or "") for s in api.search_all("ResearchSubject").resources}
    found = []
    for study in studies:
        study_id = str(study.get("id") or "")
        if f"ResearchStudy/{study_id}" in joined:
            continue  # joined (or left): nothing to tell
        if attributes is not None:
            try:
                circuit = PublishedCircuit.from_study(study)
                if not compiled_from_inputs(circuit.inputs).is_satisfied_by(attributes_from_json(attributes)):
                    continue
            except (HealthLedgerError, KeyError, ValueError):
                continue
        found.append(Notice(
            "study", f"You may be able to join the study \u201c{study.get('title') or 'Untitled'}\u201d",
            "A research study is looking for participants like you. Your device can check whether you meet its "
            "criteria without telling the researcher anything.",
            url_for("web.studies.study", study_id=study_id), "Read about the study"))
    return found


def notices_blueprint(*, sessions: sessionmaker[Session]) -> Blueprint:
    bp = Blueprint("notices", __name__)
    api = FhirClient()

    @bp.get("/notices")
    def notices() -> str:
        principal = require_person(sessions, "patient")
        found = patient_notices(api, principal.patient_id, principal.actor_id, sessions=sessions)
        return render_template("notices.html", notices=found)

    return bp
