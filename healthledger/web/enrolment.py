"""Creating a patient account with the hospital's enrolment code, and recovering it with the recovery code.

Both forms take a secret, so both are rate-limited per address like sign-in. The recovery code of the new
signing key is shown once, on the page that answers the form, and never stored (the browser is told not to
cache the page). Sign-up signs the new patient in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog
from flask import Blueprint, redirect, render_template, request, url_for
from flask_limiter import Limiter
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from healthledger.auth.enrolment import EnrolmentCodes, recover_account
from healthledger.auth.users import AccountNames, LockoutPolicy
from healthledger.errors import HealthLedgerError
from healthledger.keys import KeyProvider
from healthledger.store.repository import ResourceStore
from healthledger.web.forms import PASSWORD_RULE, RecoverForm, SignUpForm, show_error
from healthledger.web.sessions import session_principal, sign_in

log = structlog.get_logger(__name__)


def enrolment_blueprint(
    *,
    sessions: sessionmaker[Session],
    names: AccountNames,
    store: ResourceStore,
    key_provider: KeyProvider,
    limiter: Limiter,
    attempt_limit: str,
    clock: Callable[[], datetime],
    lockout: LockoutPolicy,
) -> Blueprint:
    bp = Blueprint("enrolment", __name__)
    codes = EnrolmentCodes(store, names)

    @bp.get("/signup")
    def signup() -> BaseResponse | str:
        if session_principal(sessions) is not None:
            return redirect(url_for("web.account.home"), 303)
        form = SignUpForm(data={"code": request.args.get("code", "")[:40]})
        return render_template("signup.html", form=form, password_rule=PASSWORD_RULE)

    @bp.post("/signup")
    @limiter.limit(attempt_limit)
    def signup_submit() -> str | tuple[str, int]:
        form = SignUpForm(request.form)

        def again(status: int = 400) -> tuple[str, int]:
            return render_template("signup.html", form=form, password_rule=PASSWORD_RULE), status

        now = clock()
        if not form.validate():
            if not form.code.errors:  # every problem at once: the code too, though the rest was not right
                try:
                    with sessions() as db:
                        codes.patient_for(db, form.code.data or "", now)
                except HealthLedgerError as exc:
                    show_error(form, exc, default="code")
            return again()
        try:
            with sessions.begin() as db:
                enrolled = codes.redeem(db, key_provider, code=form.code.data or "", username=form.username.data or "",
                                        password=form.password.data or "", now=now)
        except HealthLedgerError as exc:
            show_error(form, exc, default="code")
            log.info("web.sign_up_failed")
            return again(exc.status if exc.status < 500 else 400)
        sign_in(sessions, names, form.username.data or "", form.password.data or "", now=now, lockout=lockout)
        log.info("web.signed_up", user_id=enrolled.user_id)
        return render_template("recovery_code.html", recovery_code=enrolled.recovery_code, first_time=True)

    @bp.get("/recover")
    def recover() -> str:
        return render_template("recover.html", form=RecoverForm(), password_rule=PASSWORD_RULE)

    @bp.post("/recover")
    @limiter.limit(attempt_limit)
    def recover_submit() -> str | tuple[str, int]:
        form = RecoverForm(request.form)

        def again(status: int = 400) -> tuple[str, int]:
            return render_template("recover.html", form=form, password_rule=PASSWORD_RULE), status

        if not form.validate():
            return again()
        now = clock()
        try:
            with sessions.begin() as db:
                fresh = recover_account(db, names, key_provider, username=form.username.data or "",
                                        recovery_code=form.recovery_code.data or "",
                                        new_password=form.password.data or "", now=now)
        except HealthLedgerError as exc:
            show_error(form, exc, default="recovery_code")
            log.info("web.recovery_failed")
            return again(exc.status if exc.status < 500 else 400)
        sign_in(sessions, names, form.username.data or "", form.password.data or "", now=now, lockout=lockout)
        log.info("web.recovered")
        return render_template("recovery_code.html", recovery_code=fresh, first_time=False)

    return bp
