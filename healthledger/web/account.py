"""Signing in and out of the web app, the signed-in home page, and the account page (a new password).

Sign-in attempts are limited per client address by Flask-Limiter in front of the per-account lockout
(`healthledger.auth.users.LockoutPolicy`); every failure (unknown user, wrong password, locked, disabled)
gives the same page and status. The same limiter guards the other forms that take a secret (sign-up with an
enrolment code, recovery): `attempt_limit` hands it to their blueprint. What a session is, and the CSRF rule
every form here obeys, are `healthledger.web.sessions`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog
from flask import Blueprint, Flask, flash, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from fhir_adapters.readable.text import human_name
from healthledger.auth.enrolment import change_password
from healthledger.auth.models import User
from healthledger.auth.users import AccountNames, LockoutPolicy, LoginFailed
from healthledger.errors import HealthLedgerError
from healthledger.web.context import require_person, safe_next
from healthledger.web.fhir_client import FhirCallError, FhirClient
from healthledger.web.forms import PASSWORD_RULE, PasswordForm, show_error
from healthledger.web.notices import patient_notices
from healthledger.web.sessions import WEB_PREFIX, session_principal, sign_in, sign_out, under

log = structlog.get_logger(__name__)


def account_blueprint(
    *,
    sessions: sessionmaker[Session],
    names: AccountNames,
    limiter: Limiter,
    login_limit: str,
    clock: Callable[[], datetime],
    lockout: LockoutPolicy,
) -> Blueprint:
    """The account pages, registered on the web app's blueprint (`healthledger.web.pages.web_blueprint`)."""
    bp = Blueprint("account", __name__)
    api = FhirClient()

    @bp.get("/login")
    def sign_in_form() -> BaseResponse | str:
        target = safe_next(request.args.get("next"))
        if session_principal(sessions) is not None:
            return redirect(target or url_for("web.account.home"), 303)
        return render_template("login.html", error=None, next=target)

    @bp.post("/login", endpoint="sign_in")
    @limiter.limit(login_limit)
    def sign_in_submit() -> BaseResponse | tuple[str, int, dict[str, str]]:
        username, password = request.form.get("username", ""), request.form.get("password", "")
        target = safe_next(request.form.get("next"))
        try:
            user_id = sign_in(sessions, names, username, password, now=clock(), lockout=lockout)
        except LoginFailed as failure:
            log.info("web.sign_in_failed")
            # RFC 9110 §15.5.2: a 401 names a scheme; browsers show the page for schemes they do not know.
            challenge = {"WWW-Authenticate": 'Cookie realm="healthledger"'}
            page = render_template("login.html", error=failure.message, next=target, username=username)
            return page, failure.status, challenge
        log.info("web.sign_in", user_id=user_id)
        return redirect(target or url_for("web.account.home"), 303)

    @bp.post("/logout", endpoint="sign_out")
    def sign_out_submit() -> BaseResponse:
        sign_out(sessions)  # no message is flashed: it would set a new cookie on the way out
        return redirect(url_for("web.account.sign_in_form"), 303)

    @bp.get("/")
    def home() -> BaseResponse | str:
        principal = session_principal(sessions)
        if principal is None:
            return redirect(url_for("web.account.sign_in_form"), 303)
        if principal.role != "patient" or not principal.patient_id:
            return render_template("home.html", principal=principal, account=principal.actor_id)
        # The dashboard still shows when a part of it cannot be read just now (the API says why elsewhere).
        try:
            name = human_name(api.read("Patient", principal.patient_id))
        except FhirCallError:
            name = ""
        try:
            notices = patient_notices(api, principal.patient_id, principal.actor_id, sessions=sessions)
        except FhirCallError:
            notices = []
        return render_template("patient_home.html", name=name, notices=notices)

    @bp.get("/account")
    def account() -> str:
        require_person(sessions)
        return render_template("account.html", form=PasswordForm(), password_rule=PASSWORD_RULE)

    @bp.post("/account/password")
    def change_password_submit() -> BaseResponse | tuple[str, int]:
        principal = require_person(sessions)
        form = PasswordForm(request.form)

        def again(status: int = 400) -> tuple[str, int]:
            return render_template("account.html", form=form, password_rule=PASSWORD_RULE), status

        if not form.validate():
            return again()
        user_id = principal.actor_id.removeprefix("user:")
        try:
            with sessions.begin() as db:
                user = db.get(User, user_id)
                assert user is not None
                username = names.open(db, user)
                change_password(db, user, form.current_password.data or "", form.password.data or "", now=clock())
        except HealthLedgerError as exc:
            show_error(form, exc, default="current_password")
            return again(exc.status if exc.status < 500 else 400)
        # A new password ends every session begun before it, this one included: start a fresh one here.
        sign_in(sessions, names, username, form.password.data or "", now=clock(), lockout=lockout)
        log.info("web.password_changed", user_id=user_id)
        flash("Your password is changed. Other devices signed in to your account are signed out.", "success")
        return redirect(url_for("web.account.account"), 303)

    return bp


def attempt_limiter(limiter_storage_uri: str) -> Limiter:
    """Flask-Limiter for the web app's forms that take a secret, counting per client address."""
    limiter = Limiter(
        get_remote_address, storage_uri=limiter_storage_uri, headers_enabled=True, key_prefix="healthledger-web"
    )
    # Flask-Limiter checks every request of the app; only the web app's are limited, and the FHIR API's
    # hot path should not pay ~0.05-0.1 ms to find that out.
    limiter.request_filter(lambda: not under(request.path, WEB_PREFIX))
    return limiter


def attach_limiter(bp: Blueprint, limiter: Limiter) -> None:
    @bp.record_once
    def _attach(setup: BlueprintSetupState) -> None:
        app = setup.app
        assert isinstance(app, Flask)
        limiter.init_app(app)
