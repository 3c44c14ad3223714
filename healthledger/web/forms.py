"""The web app's forms (WTForms over `request.form`): each field's rules, and its message shown next to it.

CSRF is checked for every form by `healthledger.web.sessions` before a handler runs, so these are plain
`wtforms.Form`s. A form that fails keeps what the person typed (except passwords, never sent back).
"""

from __future__ import annotations

from typing import Any

from wtforms import Form, PasswordField, RadioField, SelectField, SelectMultipleField, StringField, widgets
from wtforms.fields import DateField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, Optional, ValidationError

from fhir_adapters.readable.consents import CATEGORIES
from healthledger.auth.users import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS
from healthledger.errors import HealthLedgerError

# The access history's kinds of data: the share form's categories, and the record's other parts.
HISTORY_KINDS = [("all", "All kinds"), *((key, words[:1].upper() + words[1:]) for key, words, _ in CATEGORIES),
                 ("patient", "Name and date of birth"), ("consents", "Consents"), ("log", "Access history")]
HISTORY_KIND_TYPES: dict[str, tuple[str, ...]] = {
    **{key: types for key, _, types in CATEGORIES}, "patient": ("Patient",), "consents": ("Consent",),
    "log": ("AuditEvent",),
}
PASSWORD_RULE = f"At least {MIN_PASSWORD_CHARS} characters. A few unrelated words make a good one."


def _password(label: str, *, new: bool = False, missing: str = "Enter your password") -> PasswordField:
    checks: list[Any] = [DataRequired(message=missing)]
    if new:
        checks.append(Length(min=MIN_PASSWORD_CHARS, max=MAX_PASSWORD_CHARS,
                             message=f"Use at least {MIN_PASSWORD_CHARS} characters"))
    else:
        checks.append(Length(max=MAX_PASSWORD_CHARS, message="That is longer than any password here"))
    return PasswordField(label, checks)


def _confirm(label: str, other: str) -> PasswordField:
    return PasswordField(label, [DataRequired(message="Enter the new password again"),
                                 EqualTo(other, message="The two passwords are not the same")])


_USERNAME = [
    DataRequired(message="Choose a username"),
    Length(min=3, max=120, message="A username has 3 to 120 characters"),
]


def _no_spaces(_form: Form, field: StringField) -> None:
    if field.data and any(c.isspace() for c in field.data.strip()):
        raise ValidationError("A username has no spaces")


class SignUpForm(Form):
    code = StringField("Enrolment code", [DataRequired(message="Enter the code the hospital gave you"),
                                          Length(max=40, message="That is longer than an enrolment code")])
    username = StringField("Username", [*_USERNAME, _no_spaces])
    password = _password("New password", new=True, missing="Choose a password")
    confirm = _confirm("New password again", "password")


class RecoverForm(Form):
    username = StringField("Username", [DataRequired(message="Enter your username"), Length(max=120)])
    recovery_code = StringField("Recovery code", [DataRequired(message="Enter your recovery code"),
                                                  Length(max=80, message="That is longer than a recovery code")])
    password = _password("New password", new=True, missing="Choose a new password")
    confirm = _confirm("New password again", "password")


class PasswordForm(Form):
    current_password = _password("Current password", missing="Enter your current password")
    password = _password("New password", new=True, missing="Choose a new password")
    confirm = _confirm("New password again", "password")


class ConfirmWithPasswordForm(Form):
    """One confirmation of an action that signs with the patient's key (revoke, approve)."""

    password = _password("Your password")


class MultiCheckboxField(SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


def options(pairs: list[tuple[str, str]]) -> list[SelectChoice]:
    """(value, label) pairs as WTForms choices."""
    return [SelectChoice(value, label) for value, label in pairs]


def _one_of(message: str) -> Any:
    """A choice that must be one of the field's choices (WTForms' own message is not for patients)."""

    def check(_form: Form, field: Any) -> None:
        allowed = {choice.value for choice in field.choices or []}
        picked = field.data if isinstance(field.data, list) else [field.data]
        if not field.data or any(value not in allowed for value in picked):
            raise ValidationError(message)

    return check


class ShareForm(Form):
    recipient = RadioField("Who may see it", validate_choice=False,
                           validators=[_one_of("Choose who may see your data")])
    purpose = RadioField("What for", validate_choice=False,
                         validators=[_one_of("Choose what they may use it for")])
    categories = MultiCheckboxField("Which kinds of data", validate_choice=False,
                                    validators=[_one_of("Choose at least one kind of data")])
    start = DateField("From", [DataRequired(message="Enter the first day, for example 2027-01-31")],
                      format="%Y-%m-%d")
    end = DateField("Until (optional)", [Optional()], format="%Y-%m-%d")
    password = _password("Your password")

    def validate_end(self, field: DateField) -> None:
        if field.data is not None and self.start.data is not None and field.data <= self.start.data:
            raise ValidationError("The last day must be after the first day")


class HistoryFilterForm(Form):
    start = DateField("From", [Optional()], format="%Y-%m-%d")
    end = DateField("To", [Optional()], format="%Y-%m-%d")
    outcome = RadioField("Outcome", choices=options([("all", "All"), ("permitted", "Permitted"), ("denied", "Denied")]),
                         default="all", validate_choice=False, validators=[_one_of("Choose an outcome")])
    who = RadioField("Who", choices=options([("others", "Everyone but me"), ("all", "Everyone, me included"),
                                             ("break-glass", "Emergency access only")]),
                     default="others", validate_choice=False, validators=[_one_of("Choose whose accesses to show")])
    kind = SelectField("Which data", choices=options(HISTORY_KINDS), default="all", validate_choice=False,
                       validators=[_one_of("Choose a kind of data")])

    def validate_end(self, field: DateField) -> None:
        if field.data is not None and self.start.data is not None and field.data < self.start.data:
            raise ValidationError("The end date must not be before the start date")


def show_error(form: Form, error: HealthLedgerError, *, default: str, fields: dict[str, str] | None = None) -> None:
    """Put a refusal (from the API or an account operation) next to the field it names, else `default`'s.

    `error.expression` names the field (`username`, `password`...) or a FHIR path; `fields` maps other
    names to this form's fields.
    """
    name = (fields or {}).get(error.expression or "", error.expression or "")
    if name not in form._fields:
        name = default
    message = error.message[:1].upper() + error.message[1:]
    field = form[name]
    field.errors = [*field.errors, message]
