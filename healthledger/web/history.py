"""Access history: every access to the patient's data, in words, filtered, charted over time, each with a
"verify" action (its RFC 6962 inclusion proof checked in the page by `static/js/verify.js`) and, when a
consent allowed it, a way to revoke that consent from the entry itself.

Read through the /fhir AuditEvent API as the patient (`web.access_log`). Filtering beyond dates happens
here, over the newest entries of the chosen range (the page says when older ones were not read).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from flask import Blueprint, render_template, request
from sqlalchemy.orm import Session, sessionmaker

from fhir_adapters.readable.access import AccessView
from fhir_adapters.readable.text import human_date
from healthledger.web.access_log import latest_accesses
from healthledger.web.context import require_person
from healthledger.web.fhir_client import FhirClient
from healthledger.web.forms import HISTORY_KIND_TYPES, HistoryFilterForm

DEFAULT_DAYS = 30
PER_PAGE = 50
READ_LIMIT = 2000
CHART_WIDTH, CHART_HEIGHT, CHART_TOP = 600, 160, 12


@dataclass(frozen=True)
class Bar:
    label: str  # the bucket's first day, in words
    start: date
    permitted: int
    denied: int
    x: float
    width: float
    y_permitted: float
    h_permitted: float
    y_denied: float
    h_denied: float


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    bucket: str  # "day" | "week"
    most: int
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT


def access_chart(accesses: list[AccessView], start: date, end: date) -> Chart:
    """Accesses per day (per week beyond two months), permitted and denied stacked, scaled to the SVG box."""
    days = (end - start).days + 1
    step = 1 if days <= 62 else 7
    buckets = [start + timedelta(days=i) for i in range(0, days, step)]
    permitted: Counter[date] = Counter()
    denied: Counter[date] = Counter()
    for access in accesses:
        day = access.recorded.date()
        if not start <= day <= end:
            continue
        bucket = start + timedelta(days=((day - start).days // step) * step)
        (permitted if access.outcome == "permitted" else denied)[bucket] += 1
    most = max([permitted[b] + denied[b] for b in buckets] + [1])
    width = CHART_WIDTH / max(len(buckets), 1)
    scale = (CHART_HEIGHT - CHART_TOP) / most
    bars = []
    for i, bucket in enumerate(buckets):
        hp, hd = permitted[bucket] * scale, denied[bucket] * scale
        bars.append(Bar(
            human_date(bucket), bucket, permitted[bucket], denied[bucket], x=i * width + width * 0.1,
            width=max(width * 0.8, 1.0), y_permitted=CHART_HEIGHT - hp, h_permitted=hp,
            y_denied=CHART_HEIGHT - hp - hd, h_denied=hd,
        ))
    return Chart(bars, "day" if step == 1 else "week", most)


@dataclass(frozen=True)
class HospitalReads:
    """Another member hospital's accesses, summed: "Hospital B read 12 records for treatment"."""

    organization: str
    purpose: str
    records: int  # distinct records disclosed
    refused: int  # attempts refused (a revoked grant, a record the Consent does not cover)

    @property
    def sentence(self) -> str:
        noun = "record" if self.records == 1 else "records"
        text = f"{self.organization} read {self.records} {noun}"
        text += f" for {self.purpose}" if self.purpose else ""
        if self.refused:
            text += f"; {self.refused} {'attempt was' if self.refused == 1 else 'attempts were'} refused"
        return text


def access_headline(access: AccessView) -> str:
    """What happened, after who: "read your test results". A research export delivers a de-identified copy
    (Safe Harbor, under the study pseudonym: docs/research.md), never the record as the patient sees it, so it
    says what was delivered: of a Patient, only the year of birth and sex."""
    if access.action == "exported" and access.purpose == "health research":
        if access.resource_type == "Patient":
            return ("received your year of birth and sex, de-identified: under your study pseudonym, without your "
                    "name, address or record number")
        return (f"received a de-identified copy of your {access.what}: under your study pseudonym, without your "
                "name, address or record number")
    return f"{access.action} your {access.what}"


def other_hospitals(accesses: list[AccessView]) -> list[HospitalReads]:
    """Accesses by other member hospitals (`member:` actors, docs/federation.md), per organisation and purpose."""
    records: dict[tuple[str, str], set[str]] = {}
    refused: Counter[tuple[str, str]] = Counter()
    for access in accesses:
        if not access.actor_id.startswith("member:"):
            continue
        key = (access.organization or access.actor_id.removeprefix("member:").partition("/")[0], access.purpose)
        records.setdefault(key, set())
        if access.outcome == "permitted":
            if access.resource:
                records[key].add(access.resource)
        else:
            refused[key] += 1
    return [HospitalReads(org, purpose, len(seen), refused[(org, purpose)])
            for (org, purpose), seen in sorted(records.items())]


def history_blueprint(*, sessions: sessionmaker[Session]) -> Blueprint:
    bp = Blueprint("history", __name__)
    api = FhirClient()

    @bp.get("/history")
    def history() -> tuple[str, int]:
        principal = require_person(sessions, "patient")
        today = datetime.now(UTC).date()
        form = HistoryFilterForm(request.args)
        if not request.args:
            form = HistoryFilterForm(data={"start": today - timedelta(days=DEFAULT_DAYS), "end": today,
                                           "outcome": "all", "who": "others", "kind": "all"})
        valid = form.validate() if request.args else True
        start = form.start.data if valid and form.start.data else today - timedelta(days=DEFAULT_DAYS)
        end = form.end.data if valid and form.end.data else today
        outcome = form.outcome.data if valid and form.outcome.data else "all"
        who = form.who.data if valid and form.who.data else "others"
        kinds = HISTORY_KIND_TYPES.get(form.kind.data or "") if valid else None
        window = latest_accesses(api, principal.patient_id, principal.actor_id, start=start, end=end,
                                 limit=READ_LIMIT)
        shown = [a for a in window.accesses if _matches(a, outcome, who)
                 and (kinds is None or a.resource_type in kinds)]
        page = max(1, min(_int(request.args.get("page"), 1), (len(shown) + PER_PAGE - 1) // PER_PAGE or 1))
        entries = shown[(page - 1) * PER_PAGE: page * PER_PAGE]
        args = {k: v for k, v in request.args.items() if k != "page"}
        return render_template(
            "history.html", form=form, entries=entries, total=len(shown), page=page,
            pages=(len(shown) + PER_PAGE - 1) // PER_PAGE, args=args, chart=access_chart(shown, start, end),
            start=human_date(start), end=human_date(end), truncated=window.truncated,
            hospitals=other_hospitals(shown), headline=access_headline,
        ), (200 if valid else 400)

    return bp


def _matches(access: AccessView, outcome: str, who: str) -> bool:
    if outcome == "permitted" and access.outcome != "permitted":
        return False
    if outcome == "denied" and access.outcome == "permitted":
        return False
    if who == "others" and access.who_is_me:
        return False
    return not (who == "break-glass" and not access.break_glass)


def _int(text: str | None, default: int) -> int:
    return int(text) if text and text.isdigit() and len(text) < 7 else default
