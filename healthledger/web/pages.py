"""The web app's pages: one blueprint at /app that every page blueprint is registered on.

Each area of the web app is a blueprint of its own module, over Jinja templates in `web/templates/`
(which extend `base.html`: the layout, with the CSRF token in a `csrf-token` meta tag for scripts):
`account` signs people in and out. Registered here, they share what every page needs: the response
headers below, the page for a rejected form (CSRF, `notice.html`), and the session clock. Sessions and CSRF themselves
are `healthledger.web.sessions`'s, set up on the app by `init_web`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flask import Blueprint, Flask, Response, render_template
from flask.blueprints import BlueprintSetupState
from flask_wtf.csrf import CSRFError
from sqlalchemy.orm import Session, sessionmaker

from healthledger.auth.users import AccountNames, LockoutPolicy
from healthledger.web.account import account_blueprint
from healthledger.web.sessions import WEB_PREFIX, set_clock, system_clock

_DEFAULT_LOCKOUT = LockoutPolicy()

# Every page: never cached (they show who is signed in), never framed, forms only to ourselves.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def web_blueprint(
    *,
    sessions: sessionmaker[Session],
    names: AccountNames,
    limiter_storage_uri: str = "memory://",
    login_limit: str = "10 per minute",
    clock: Callable[[], datetime] = system_clock,
    lockout: LockoutPolicy = _DEFAULT_LOCKOUT,
) -> Blueprint:
    """The web app under /app, with its page blueprints. Needs `init_web` on the app.

    `login_limit` (Flask-Limiter notation) counts sign-in attempts per client address; behind a reverse
    proxy the app must see the client's address (werkzeug ProxyFix) or every user shares one budget.
    """
    bp = Blueprint("web", __name__, url_prefix=WEB_PREFIX, template_folder="templates")

    @bp.record_once
    def _attach(setup: BlueprintSetupState) -> None:
        app = setup.app
        assert isinstance(app, Flask)
        set_clock(app, clock)

    @bp.after_request
    def _page_headers(response: Response) -> Response:
        response.headers.update(PAGE_HEADERS)
        return response

    @bp.errorhandler(CSRFError)
    def _stale_form(_error: CSRFError) -> tuple[str, int]:
        return render_template(
            "notice.html", heading="The form has expired",
            message="This page was open too long or was sent from somewhere else. Go back, reload it and try again.",
        ), 400

    bp.register_blueprint(account_blueprint(
        sessions=sessions, names=names, limiter_storage_uri=limiter_storage_uri, login_limit=login_limit,
        clock=clock, lockout=lockout,
    ))
    return bp
