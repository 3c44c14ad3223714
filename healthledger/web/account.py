"""Signing in and out of the web app: the sign-in form, sign-in, sign-out and the signed-in home page.

Sign-in attempts are limited per client address by Flask-Limiter in front of the per-account lockout
(`healthledger.auth.users.LockoutPolicy`); every failure (unknown user, wrong password, locked, disabled)
gives the same page and status. What a session is, and the CSRF rule every form here obeys, are
`healthledger.web.sessions`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog
from flask import Blueprint, Flask, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import TooManyRequests
from werkzeug.wrappers import Response as BaseResponse

from healthledger.auth.users import AccountNames, LockoutPolicy, LoginFailed
from healthledger.web.sessions import WEB_PREFIX, session_principal, sign_in, sign_out, under

log = structlog.get_logger(__name__)


def account_blueprint(
    *,
    sessions: sessionmaker[Session],
    names: AccountNames,
    limiter_storage_uri: str,
    login_limit: str,
    clock: Callable[[], datetime],
    lockout: LockoutPolicy,
) -> Blueprint:
    """The account pages, registered on the web app's blueprint (`healthledger.web.pages.web_blueprint`)."""
    bp = Blueprint("account", __name__)
    limiter = Limiter(
        get_remote_address, storage_uri=limiter_storage_uri, headers_enabled=True, key_prefix="healthledger-web"
    )
    # Flask-Limiter checks every request of the app; only the web app's are limited, and the FHIR API's
    # hot path should not pay ~0.05-0.1 ms to find that out.
    limiter.request_filter(lambda: not under(request.path, WEB_PREFIX))

    @bp.record_once
    def _attach(setup: BlueprintSetupState) -> None:
        app = setup.app
        assert isinstance(app, Flask)
        limiter.init_app(app)

    @bp.errorhandler(TooManyRequests)
    def _too_many(_error: TooManyRequests) -> tuple[str, int]:
        return render_template(
            "notice.html", heading="Too many sign-in attempts",
            message="There were too many sign-in attempts from your network. Wait a minute, then try again.",
        ), 429

    @bp.get("/login")
    def sign_in_form() -> BaseResponse | str:
        if session_principal(sessions) is not None:
            return redirect(url_for("web.account.home"), 303)
        return render_template("login.html", error=None)

    @bp.post("/login", endpoint="sign_in")
    @limiter.limit(login_limit)
    def sign_in_submit() -> BaseResponse | tuple[str, int, dict[str, str]]:
        username, password = request.form.get("username", ""), request.form.get("password", "")
        try:
            user_id = sign_in(sessions, names, username, password, now=clock(), lockout=lockout)
        except LoginFailed as failure:
            log.info("web.sign_in_failed")
            # RFC 9110 §15.5.2: a 401 names a scheme; browsers show the page for schemes they do not know.
            challenge = {"WWW-Authenticate": 'Cookie realm="healthledger"'}
            return render_template("login.html", error=failure.message), failure.status, challenge
        log.info("web.sign_in", user_id=user_id)
        return redirect(url_for("web.account.home"), 303)

    @bp.post("/logout", endpoint="sign_out")
    def sign_out_submit() -> BaseResponse:
        sign_out(sessions)
        return redirect(url_for("web.account.sign_in_form"), 303)

    @bp.get("/")
    def home() -> BaseResponse | str:
        principal = session_principal(sessions)
        if principal is None:
            return redirect(url_for("web.account.sign_in_form"), 303)
        return render_template("home.html", principal=principal, account=principal.actor_id)

    return bp
