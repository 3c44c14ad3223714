"""The researcher's "new study" form: a field for each criterion the eligibility circuit supports (age range,
sex, condition codes present / absent, lab bounds), the study's data and windows, turned into the
ResearchStudy the API takes (`fhir_adapters.research_study` names the extensions). Nobody types JSON.

The form checks what a field's type needs (a number, a date) and what every study must have (`study_problems`:
the API's rules that need nothing but the form, so that all of them are reported at once, each next to its field);
what a study may ask for is still the API's decision (`healthledger.research.studies.check_study`), and its
refusal is put next to the field it is about (`field_for_refusal`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from wtforms import DecimalField, Form, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields import DateField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from fhir_adapters.readable.studies import DATA_WORDS, LAB_WORDS
from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    MAX_PARTICIPANTS_URL,
)
from healthledger.research.studies import ETHICS_APPROVAL_URL
from healthledger.web.forms import MultiCheckboxField, options

SEXES = (("female", "Female"), ("male", "Male"), ("other", "Other"), ("unknown", "Not recorded"))
LABS = tuple(LAB_WORDS)  # hba1c, bmi, egfr: the circuit's lab slots
MAX_CODES = 8  # the circuit's inclusion and exclusion slots (zk.criteria.INCLUSION_SLOTS / EXCLUSION_SLOTS)
CATEGORY_CHOICES = [(t, f"{t}: {w}") for t, w in DATA_WORDS.items()]


def _codes(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").replace(",", "\n").splitlines() if line.strip()]


def _code_list(_form: Form, field: TextAreaField) -> None:
    codes = _codes(field.data)
    if len(codes) > MAX_CODES:
        raise ValidationError(f"At most {MAX_CODES} codes")
    bad = [c for c in codes if "|" not in c or not c.rpartition("|")[2] or any(ch.isspace() for ch in c)]
    if bad:
        raise ValidationError(f"Write each code as system|code, for example http://snomed.info/sct|44054006 "
                              f"(not {bad[0][:40]!r})")


def _lab_bound(label: str) -> DecimalField:
    return DecimalField(label, [Optional(), NumberRange(min=0, message="A bound cannot be negative")],
                        places=None)


class StudyForm(Form):
    title = StringField("Title", [DataRequired(message="Give the study a title"), Length(max=200)])
    description = TextAreaField("What the study is for", [Optional(), Length(max=2000)])
    sponsor = SelectField("Sponsor", validate_choice=False)
    investigator = SelectField("Principal investigator", validate_choice=False)
    ethics_board = StringField("Ethics board", [Optional(), Length(max=200)])
    ethics_number = StringField("Ethics approval number", [Optional(), Length(max=100)])
    enrol_start = DateField("Enrolment opens", [Optional()], format="%Y-%m-%d")
    enrol_end = DateField("Enrolment closes", [Optional()], format="%Y-%m-%d")
    max_participants = IntegerField("Most participants", [Optional(), NumberRange(min=1, message="At least 1")])
    categories = MultiCheckboxField("Data the study receives", validate_choice=False)
    data_start = DateField("Data from", [Optional()], format="%Y-%m-%d")
    data_end = DateField("Data until (optional)", [Optional()], format="%Y-%m-%d")
    min_age = IntegerField("Youngest age (years)", [Optional(), NumberRange(min=0, max=150, message="0 to 150")])
    max_age = IntegerField("Oldest age (years)", [Optional(), NumberRange(min=0, max=150, message="0 to 150")])
    sexes = MultiCheckboxField("Sex", validate_choice=False)
    conditions_in = TextAreaField("Has at least one of these condition codes", [Optional(), _code_list])
    conditions_not_in = TextAreaField("Has none of these condition codes", [Optional(), _code_list])
    hba1c_min = _lab_bound("HbA1c at least (%)")
    hba1c_max = _lab_bound("HbA1c at most (%)")
    bmi_min = _lab_bound("Body mass index at least (kg/m²)")
    bmi_max = _lab_bound("Body mass index at most (kg/m²)")
    egfr_min = _lab_bound("eGFR at least (mL/min/1.73 m²)")
    egfr_max = _lab_bound("eGFR at most (mL/min/1.73 m²)")

    def validate_max_age(self, field: IntegerField) -> None:
        if field.data is not None and self.min_age.data is not None and field.data < self.min_age.data:
            raise ValidationError("The oldest age must not be below the youngest")

    def validate(self, extra_validators: Any = None) -> bool:
        """The fields' own checks, then `study_problems` on every field they found nothing wrong with."""
        valid = super().validate(extra_validators)
        for name, message in study_problems(self):
            if not self[name].errors:
                self[name].errors = [*self[name].errors, message]
                valid = False
        return valid

    def with_choices(self, organisations: list[tuple[str, str]], investigators: list[tuple[str, str]]) -> StudyForm:
        self.sponsor.choices = options([("", "Choose…"), *organisations])
        # Left empty, the server names the researcher themself (a Practitioner kept for their account).
        self.investigator.choices = options([("", "Me (I lead this study)"), *investigators])
        self.categories.choices = options(CATEGORY_CHOICES)
        self.sexes.choices = options(list(SEXES))
        return self


def study_problems(form: StudyForm) -> list[tuple[str, str]]:
    """(field, what is wrong) for each rule of `check_study` that the form alone can check: what every study
    needs (a sponsor, its ethics approval, an enrolment window ending in the future, a most participants, data
    kinds and a start, a criterion) and dates in order."""
    today = datetime.now(UTC).date()
    problems = []
    if not form.sponsor.data:
        problems.append(("sponsor", "Choose the organisation that sponsors the study"))
    if not (form.ethics_number.data or "").strip():
        problems.append(("ethics_number", "Give the number of the study's ethics approval (a study needs one)"))
    if form.enrol_end.data is None:
        problems.append(("enrol_end", "Say when enrolment closes"))
    elif form.enrol_end.data <= today:
        problems.append(("enrol_end", "This date is today or in the past: enrolment must close after today"))
    elif form.enrol_start.data is not None and form.enrol_start.data >= form.enrol_end.data:
        problems.append(("enrol_start", "Enrolment must open before it closes"))
    if form.max_participants.data is None:
        problems.append(("max_participants", "Say how many people may take part at most"))
    if not form.categories.data:
        problems.append(("categories", "Choose at least one kind of data the study receives"))
    if form.data_start.data is None:
        problems.append(("data_start", "Say from which date the study wants data"))
    elif form.data_end.data is not None and form.data_end.data < form.data_start.data:
        problems.append(("data_end", "The data period ends before it starts"))
    if not criteria_document(form):
        problems.append(("min_age", "Give at least one criterion of who can join (an age range, for example)"))
    return problems


def _bound(low: Any, high: Any) -> dict[str, Any] | None:
    def num(v: Any) -> Any:
        return float(v) if isinstance(v, Decimal) else v

    if low is not None and high is not None:
        return {"$between": [num(low), num(high)]}
    if low is not None:
        return {"$gte": num(low)}
    if high is not None:
        return {"$lte": num(high)}
    return None


def criteria_document(form: StudyForm) -> dict[str, Any]:
    """The zk criteria language document of the form's criteria fields (zk/criteria.py)."""
    doc: dict[str, Any] = {}
    age = _bound(form.min_age.data, form.max_age.data)
    if age:
        doc["age"] = age
    sexes = [s for s in form.sexes.data or [] if s in dict(SEXES)]
    if sexes and len(sexes) < len(SEXES):
        doc["sex"] = {"$in": sexes}
    conditions: dict[str, Any] = {}
    if _codes(form.conditions_in.data):
        conditions["$in"] = _codes(form.conditions_in.data)
    if _codes(form.conditions_not_in.data):
        conditions["$nin"] = _codes(form.conditions_not_in.data)
    if conditions:
        doc["conditions"] = conditions
    for lab in LABS:
        bound = _bound(form[f"{lab}_min"].data, form[f"{lab}_max"].data)
        if bound:
            doc[lab] = bound
    return doc


def study_resource(form: StudyForm) -> dict[str, Any]:
    """The ResearchStudy the form describes, as `POST /fhir/ResearchStudy` takes it (README "Research")."""
    study: dict[str, Any] = {"resourceType": "ResearchStudy", "title": (form.title.data or "").strip()}
    if (form.description.data or "").strip():
        study["description"] = form.description.data.strip()  # type: ignore[union-attr]
    if form.sponsor.data:
        study["sponsor"] = {"reference": form.sponsor.data}
    if form.investigator.data:
        study["principalInvestigator"] = {"reference": form.investigator.data}
    period = {k: v.isoformat() for k, v in (("start", form.enrol_start.data), ("end", form.enrol_end.data)) if v}
    if period:
        study["period"] = period
    ext: list[dict[str, Any]] = []
    if (form.ethics_number.data or "").strip():
        identifier: dict[str, Any] = {"value": form.ethics_number.data.strip()}  # type: ignore[union-attr]
        if (form.ethics_board.data or "").strip():
            identifier["assigner"] = {"display": form.ethics_board.data.strip()}  # type: ignore[union-attr]
        ext.append({"url": ETHICS_APPROVAL_URL, "valueIdentifier": identifier})
    criteria = criteria_document(form)
    if criteria:
        ext.append({"url": CRITERIA_URL, "valueString": json.dumps(criteria)})
    for category in form.categories.data or []:
        ext.append({"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": category}]})
    data_period = {k: v.isoformat() for k, v in (("start", form.data_start.data), ("end", form.data_end.data)) if v}
    if data_period:
        ext.append({"url": DATA_PERIOD_URL, "valuePeriod": data_period})
    if form.max_participants.data is not None:
        ext.append({"url": MAX_PARTICIPANTS_URL, "valuePositiveInt": form.max_participants.data})
    if ext:  # (R4 JSON allows no empty array)
        study["extension"] = ext
    return study


# (words in the API's message, the field it is about), first match wins; checked after the expression.
_MESSAGE_FIELDS = (
    ("ethics", "ethics_number"), ("data category", "categories"), ("data it requests", "categories"),
    ("data period", "data_start"), ("from when it wants data", "data_start"),
    ("maximum number of participants", "max_participants"), ("enrolment window ends before", "enrol_start"),
    ("enrolment window", "enrol_end"), ("title", "title"), ("sponsor", "sponsor"),
    ("principalinvestigator", "investigator"), ("eligibility criteria", "min_age"),
    ("hba1c", "hba1c_min"), ("bmi", "bmi_min"), ("egfr", "egfr_min"), ("conditions", "conditions_in"),
    ("code", "conditions_in"), ("sex", "sexes"), ("age", "min_age"),
)


def field_for_refusal(message: str, expression: str | None) -> str:
    """The form field an API refusal of a new study is about (the API names an element or an extension)."""
    expr = (expression or "").lower()
    if expr.endswith(".title"):
        return "title"
    if expr.endswith(".sponsor"):
        return "sponsor"
    if expr.endswith(".principalinvestigator"):
        return "investigator"
    text = message.lower()
    if "circuit cannot express" in text:
        text = text.split("criteria:", 1)[-1]  # the compiler's own words name the attribute
    for words, name in _MESSAGE_FIELDS:
        if words in text:
            return name
    return "title"
