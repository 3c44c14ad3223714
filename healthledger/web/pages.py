"""The web app's pages: one blueprint at /app that every page blueprint is registered on.

Each area of the web app is a blueprint of its own module, over Jinja templates in `web/templates/`
(which extend `base.html`: the layout, with the CSRF token in a `csrf-token` meta tag for scripts) and
the app's own static files in `web/static/` (nothing is fetched from elsewhere): `account` (sign in and
out, home, a new password), `enrolment` (sign-up with the hospital's code, recovery), `records`,
`consents` (who can see my data, requests), `sharing`, `history` (the access log, verified in the
page), `notices`. Registered here, they share what every page needs: the response headers below (a
strict CSP: no inline script or style), the layout's context, the page for a rejected form (CSRF,
`notice.html`), the sign-in rate limiter and the session clock. Every page reads and writes patient data
through the /fhir API as the signed-in person (`web.fhir_client`). Sessions and CSRF themselves are
`healthledger.web.sessions`'s, set up on the app by `init_web`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, render_template, request
from flask.blueprints import BlueprintSetupState
from flask_wtf.csrf import CSRFError
from limits import parse_many
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException, NotFound, TooManyRequests

from healthledger.auth.app_launch import AppLaunch
from healthledger.auth.users import AccountNames, LockoutPolicy
from healthledger.keys import KeyProvider
from healthledger.store.repository import ResourceStore
from healthledger.web.account import account_blueprint, attach_limiter, attempt_limiter
from healthledger.web.apps import apps_blueprint
from healthledger.web.consents import consents_blueprint
from healthledger.web.context import CONTENT_SECURITY_POLICY, asset, navigation
from healthledger.web.enrolment import enrolment_blueprint
from healthledger.web.fhir_client import FhirCallError
from healthledger.web.history import history_blueprint
from healthledger.web.notices import notices_blueprint
from healthledger.web.proving import WORKER_POLICY, proving_blueprint
from healthledger.web.records import records_blueprint
from healthledger.web.research_portal import research_portal_blueprint
from healthledger.web.sessions import WEB_PREFIX, session_principal, set_clock, system_clock, under
from healthledger.web.sharing import sharing_blueprint
from healthledger.web.studies import studies_blueprint

_DEFAULT_LOCKOUT = LockoutPolicy()

# Every page: never cached (they show who is signed in), and the policy of `context.CONTENT_SECURITY_POLICY`.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Static files are addressed by a hash of their content (`context.asset`): cached for good.
STATIC_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class AccountServices:
    """What creating and recovering patient accounts needs: the store's key machinery (the enrolment code's
    keyed index) and the key provider (the recovery wrap of a patient's signing key)."""

    store: ResourceStore
    key_provider: KeyProvider


def web_blueprint(
    *,
    sessions: sessionmaker[Session],
    names: AccountNames,
    limiter_storage_uri: str = "memory://",
    login_limit: str = "10 per minute",
    clock: Callable[[], datetime] = system_clock,
    lockout: LockoutPolicy = _DEFAULT_LOCKOUT,
    accounts: AccountServices | None = None,
    app_launch: AppLaunch | None = None,
    own_member: str = "",
    workers: int = 1,
) -> Blueprint:
    """The web app under /app, with its page blueprints. Needs `init_web` on the app.

    `login_limit` (Flask-Limiter notation) counts sign-in attempts per client address, and so do sign-up and
    recovery; behind a reverse proxy the app must see the client's address (werkzeug ProxyFix) or every
    user shares one budget. Sign-up and recovery are offered when `accounts` is given; the consent screen of
    SMART App Launch and the patient's list of apps when `app_launch` is. `own_member`: this server's id in the
    consortium's directory (the share form offers the other member hospitals). `workers`: the server's worker
    processes; with `memory://` storage each counts on its own, so each gets its share of `login_limit`
    (`per_process_limit`) and one address never has more than `login_limit` in all.
    """
    bp = Blueprint(
        "web", __name__, url_prefix=WEB_PREFIX, template_folder="templates",
        static_folder="static", static_url_path="/static",
    )

    @bp.record_once
    def _attach(setup: BlueprintSetupState) -> None:
        app = setup.app
        assert isinstance(app, Flask)
        set_clock(app, clock)

    @bp.after_request
    def _page_headers(response: Response) -> Response:
        own_policy = response.headers.get("Content-Security-Policy")  # a page that needs more sets its own
        response.headers.update(PAGE_HEADERS)
        if own_policy:
            response.headers["Content-Security-Policy"] = own_policy
        if request.endpoint == "web.static":
            if request.args.get("v"):
                response.headers["Cache-Control"] = STATIC_CACHE
            if (request.view_args or {}).get("filename", "").endswith("-worker.js"):
                response.headers["Content-Security-Policy"] = WORKER_POLICY  # a worker's own policy (CSP3 §4.2)
        return response

    @bp.app_context_processor
    def _layout() -> dict[str, Any]:
        if not under(request.path, WEB_PREFIX):
            return {}
        principal = session_principal(sessions)
        return {"principal": principal, "nav": navigation(principal), "asset": asset, "has_page": has_page}

    @bp.app_template_filter("first_upper")
    def _first_upper(text: str) -> str:
        """Sentence case without lowering the rest (Jinja's `capitalize` would: "1 december")."""
        return text[:1].upper() + text[1:]

    @bp.errorhandler(CSRFError)
    def _stale_form(_error: CSRFError) -> tuple[str, int]:
        return render_template(
            "notice.html", heading="The form has expired",
            message="This page was open too long or was sent from somewhere else. Go back, reload it and try again.",
        ), 400

    @bp.errorhandler(TooManyRequests)
    def _too_many(_error: TooManyRequests) -> tuple[str, int]:
        return render_template(
            "notice.html", heading="Too many attempts",
            message="There were too many attempts from your network. Wait a minute, then try again.",
        ), 429

    @bp.errorhandler(FhirCallError)
    def _api_refused(error: FhirCallError) -> tuple[str, int]:
        # A page's own request to the API failed where the page could not say more (the index is stale,
        # the chain is down...): the API's message is safe to show. What the API does not find (or may not
        # show: the same answer) is the app's own "not found" page, not the API's wording.
        if error.status in (404, 410):
            return _error_page(404)
        status = error.status if error.status >= 400 else 500
        return render_template("notice.html", heading="That did not work", message=error.message), status

    @bp.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> HTTPException | tuple[str, int]:
        # A page that ends with an HTTP error (a page or record that is not there or not the caller's, a page
        # of another role) answers in the app's own layout; a redirect raised by a guard passes through.
        if error.response is not None or error.code is None or error.code < 400:
            return error
        return _error_page(error.code)

    @bp.route("/<path:_unknown>", methods=["GET", "POST"])
    def _no_such_page(_unknown: str) -> Response:
        raise NotFound()  # inside /app: the layout's "not found" page above (Flask's own is unstyled)

    login_limit = per_process_limit(login_limit, limiter_storage_uri, workers)
    limiter = attempt_limiter(limiter_storage_uri)
    attach_limiter(bp, limiter)
    bp.register_blueprint(account_blueprint(
        sessions=sessions, names=names, limiter=limiter, login_limit=login_limit, clock=clock, lockout=lockout,
    ))
    if accounts is not None:
        bp.register_blueprint(enrolment_blueprint(
            sessions=sessions, names=names, store=accounts.store, key_provider=accounts.key_provider,
            limiter=limiter, attempt_limit=login_limit, clock=clock, lockout=lockout,
        ))
    bp.register_blueprint(records_blueprint(sessions=sessions))
    bp.register_blueprint(consents_blueprint(sessions=sessions, own_member=own_member))
    bp.register_blueprint(sharing_blueprint(sessions=sessions, own_member=own_member))
    bp.register_blueprint(history_blueprint(sessions=sessions))
    bp.register_blueprint(notices_blueprint(sessions=sessions))
    bp.register_blueprint(proving_blueprint())
    bp.register_blueprint(studies_blueprint(sessions=sessions))
    bp.register_blueprint(research_portal_blueprint(sessions=sessions, names=names))
    if app_launch is not None:
        bp.register_blueprint(apps_blueprint(sessions=sessions, app_launch=app_launch))
    return bp


_ERROR_WORDS = {
    404: ("Page not found", ("There is nothing to show at this address. The link may be old or mistyped, or it "
                            "may lead to something that is not part of your account.")),
    403: ("Not a page for your account", ("This page belongs to another kind of account (patients or "
                                          "researchers) than the one you are signed in with.")),
    405: ("That did not work", "This page cannot be used that way. Go back and use the page's own buttons."),
}


def _error_page(code: int) -> tuple[str, int]:
    """The app's own page for an HTTP error: the layout (navigation for who is signed in), plain words and a
    link home. A page or record the caller may not see gets the 404 page, the same as one that does not exist."""
    heading, message = _ERROR_WORDS.get(code, ("That did not work", "Something went wrong. Try again in a moment."))
    return render_template("notice.html", heading=heading, message=message), code


def per_process_limit(limit: str, storage_uri: str, workers: int) -> str:
    """The limit each process enforces so that `workers` processes enforce `limit` together: unchanged for a shared
    storage (redis://, memcached://...); with `memory://` (every process counts alone) each amount divided by the
    workers, rounded up (10 per minute over 2 workers: 5 per minute in each, so at most 10 in all)."""
    if workers <= 1 or not storage_uri.startswith("memory://"):
        return limit
    items = parse_many(limit)
    return "; ".join(f"{-(-item.amount // workers)} per {item.multiples} {item.GRANULARITY.name}" for item in items)


def has_page(endpoint: str) -> bool:
    """Is this page part of the app as configured (templates link only to pages that exist)?"""
    return endpoint in current_app.view_functions
