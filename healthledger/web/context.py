"""What every page handler shares: who is signed in (or the way back to sign-in), the navigation, and
versioned URLs of the app's own static files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from urllib.parse import urlsplit

from flask import abort, current_app, redirect, request, url_for
from sqlalchemy.orm import Session, sessionmaker

from healthledger.principal import Principal
from healthledger.web.sessions import WEB_PREFIX, session_principal

# Every page: only the app's own files, no inline script or style, nothing from another origin (CSP Level 3);
# never framed; forms only to ourselves (the consent screen of SMART App Launch widens `form-action`).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "worker-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

# (endpoint, label) of the patient's areas, in the order of the navigation bar. Areas whose blueprint is
# not registered are left out.
PATIENT_NAV = (
    ("web.account.home", "Home"),
    ("web.records.records", "My records"),
    ("web.consents.consents", "Who can see my data"),
    ("web.sharing.share", "Share my data"),
    ("web.consents.requests", "Requests"),
    ("web.history.history", "Access history"),
    ("web.studies.studies", "Research studies"),
    ("web.notices.notices", "Notices"),
    ("web.apps.apps", "Apps"),
    ("web.account.account", "Account"),
)
# The researcher portal's areas.
RESEARCHER_NAV = (
    ("web.research.studies", "My studies"),
    ("web.research.new_study", "Create a study"),
    ("web.research.activity", "My activity"),
    ("web.account.account", "Account"),
)


@dataclass(frozen=True)
class NavItem:
    url: str
    label: str
    current: bool


def navigation(principal: Principal | None) -> list[NavItem]:
    """The navigation bar for `principal` (none before sign-in)."""
    areas = {"patient": PATIENT_NAV, "researcher": RESEARCHER_NAV}.get(principal.role) if principal else None
    if not areas:
        return []
    views = current_app.view_functions
    here = request.endpoint or ""
    return [
        NavItem(url_for(endpoint), label, here == endpoint or here in _SUB_PAGES.get(endpoint, ()))
        for endpoint, label in areas
        if endpoint in views
    ]


# Pages that belong to the navigation item of the listed endpoint.
_SUB_PAGES = {
    "web.consents.consents": ("web.consents.consent", "web.consents.revoke"),
    "web.consents.requests": ("web.consents.approve", "web.consents.decline"),
    "web.account.account": ("web.account.change_password",),
    "web.history.history": ("web.history.entry",),
    "web.apps.apps": ("web.apps.revoke",),
    "web.studies.studies": ("web.studies.study", "web.studies.leave"),
    "web.research.studies": ("web.research.study", "web.research.publish", "web.research.feasibility",
                             "web.research.export", "web.research.export_status"),
}


def safe_next(target: str | None) -> str | None:
    """A place to return to after sign-in: only a path of this web app (no scheme, host or `//`)."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(WEB_PREFIX + "/") or target.startswith("//"):
        return None
    if any(c in target for c in "\\\r\n"):
        return None
    return target


def require_person(sessions: sessionmaker[Session], *roles: str) -> Principal:
    """The signed-in person of this request, of one of `roles` (any, if none given); otherwise the request
    ends here: a redirect to sign-in (coming back afterwards), or 403 for another role."""
    principal = session_principal(sessions)
    if principal is None:
        back = request.full_path.rstrip("?") if request.method == "GET" else None
        abort(redirect(url_for("web.account.sign_in_form", next=safe_next(back)), 303))
    if roles and principal.role not in roles:
        abort(403)
    return principal


def page_guard(sessions: sessionmaker[Session], *roles: str) -> Callable[[], Principal]:
    """`require_person` bound to the sessions and roles of one blueprint."""
    return lambda: require_person(sessions, *roles)


# -- static files -----------------------------------------------------------------------------------------
_STATIC = files("healthledger.web") / "static"
_VERSIONS: dict[str, str] = {}


def asset_version(filename: str) -> str:
    """The first 12 hex digits of the SHA-256 of a static file: its URL changes whenever it does, so the
    browser may cache it for good (`Cache-Control: immutable`)."""
    version = _VERSIONS.get(filename)
    if version is None:
        version = hashlib.sha256((_STATIC / filename).read_bytes()).hexdigest()[:12]
        _VERSIONS[filename] = version
    return version


def asset(filename: str) -> str:
    return url_for("web.static", filename=filename, v=asset_version(filename))
