"""Apps: the consent screen of SMART App Launch, where a signed-in patient sees in plain words what a
third-party app asks for, narrows it, and allows or refuses; and the page listing the apps they authorised,
each of which they can disconnect (its tokens stop at once).

The protocol is `healthledger.auth.app_launch`'s; this module is its page. The screen answers with a
redirect to the app's registered address, so its Content-Security-Policy lets the form lead there (CSP
`form-action` also governs where a form submission is redirected) and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from fhir_adapters.readable.consents import type_words
from healthledger.auth.app_launch import (
    AppAccess,
    AppLaunch,
    AuthorizationRequest,
    AuthorizeError,
    AuthorizeRedirect,
    authorize,
    check_request,
)
from healthledger.auth.models import AuthorizationCode
from healthledger.auth.scopes import InvalidScope, ResourceScope, parse_scope
from healthledger.web.context import CONTENT_SECURITY_POLICY, require_person

log = structlog.get_logger(__name__)
REQUEST_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud", "code_challenge",
                  "code_challenge_method", "nonce", "launch")
_VERBS = {"c": "add to", "r": "read", "u": "change", "d": "delete", "s": "search"}
_FIXED = {
    "launch/patient": "Open your record (it is told which record is yours)",
    "openid": "Confirm who you are when you sign in",
    "fhirUser": "Know which patient record is yours",
    "offline_access": "Keep access after you close it, until you disconnect it here",
}


@dataclass(frozen=True)
class ScopeChoice:
    scope: str
    words: str
    required: bool


def scope_words(scope: str) -> str:
    """A SMART scope as something a patient can decide about."""
    if scope in _FIXED:
        return _FIXED[scope]
    try:
        parsed = parse_scope(scope)
    except InvalidScope:
        return scope
    if not isinstance(parsed, ResourceScope):
        return scope
    verbs = [_VERBS[p] for p in parsed.permissions if p != "s" or "r" not in parsed.permissions]
    if len(verbs) > 1:
        verbs = [", ".join(verbs[:-1]) + " and " + verbs[-1]]
    what = "all your health records" if parsed.resource_type == "*" else f"your {type_words(parsed.resource_type)}"
    return f"{verbs[0][:1].upper()}{verbs[0][1:]} {what}"


@dataclass(frozen=True)
class ConnectedApp:
    """One app as the patient sees it: every completed authorisation of theirs for it, together (each consent
    screen they answered makes one; only those whose one-time code the app exchanged connected it)."""

    client_id: str
    client_name: str
    scopes: tuple[str, ...]  # what it may do under any of them, in the order first asked
    connected_at: datetime  # the first
    last_used_at: datetime | None


def connected_apps(accesses: list[AppAccess], completed: set[str]) -> list[ConnectedApp]:
    """The patient's apps, one per app, from their live authorisations of which `completed` (ids) were
    exchanged for tokens; an app with none completed is not connected and not listed."""
    by_app: dict[str, list[AppAccess]] = {}
    for access in accesses:
        if access.authorization_id in completed:
            by_app.setdefault(access.client_id, []).append(access)
    apps = []
    for client_id, group in by_app.items():
        used = [a.last_used_at for a in group if a.last_used_at is not None]
        apps.append(ConnectedApp(
            client_id=client_id, client_name=group[0].client_name,
            scopes=tuple(dict.fromkeys(s for a in sorted(group, key=lambda a: a.created_at) for s in a.scopes)),
            connected_at=min(a.created_at for a in group), last_used_at=max(used) if used else None,
        ))
    return sorted(apps, key=lambda app: app.client_name.casefold())


def apps_blueprint(
    *, sessions: sessionmaker[Session], app_launch: AppLaunch, clock: Callable[[], datetime] | None = None,
) -> Blueprint:
    bp = Blueprint("apps", __name__)
    now = clock or (lambda: datetime.now(UTC))

    def checked(params: dict[str, str]) -> AuthorizationRequest:
        with sessions() as session:
            return check_request(session, params, fhir_base=app_launch.fhir_base)

    def screen(req: AuthorizationRequest, params: dict[str, str]) -> BaseResponse:
        choices = [ScopeChoice(s, scope_words(s), s == "launch/patient") for s in req.requested]
        page = render_template("authorize.html", req=req, params=params, choices=choices,
                               refused=[scope_words(s) for s in req.refused])
        response = BaseResponse(page, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
            "form-action 'self'", f"form-action 'self' {req.redirect_origin}")
        return response

    def refusal(error: AuthorizeError) -> tuple[str, int]:
        return render_template("notice.html", heading="This app cannot connect",
                               message=f"{error.message}. Nothing was shared. Tell the app's makers."), 400

    @bp.get("/authorize")
    def authorize_screen() -> BaseResponse | tuple[str, int]:
        params = {k: request.args.get(k, "") for k in REQUEST_PARAMS}
        try:
            req = checked(params)
        except AuthorizeError as error:
            return refusal(error)
        except AuthorizeRedirect as back:
            return redirect(back.location, 303)
        principal = require_person(sessions)
        if principal.role != "patient" or not principal.patient_id:
            return render_template("notice.html", heading="Only patients connect apps",
                                   message="Apps are connected to a patient's own record, by that patient."), 403
        return screen(req, params)

    @bp.post("/authorize")
    def authorize_decision() -> BaseResponse | tuple[str, int]:
        principal = require_person(sessions, "patient")
        params = {k: request.form.get(k, "") for k in REQUEST_PARAMS}
        try:
            req = checked(params)
        except AuthorizeError as error:
            return refusal(error)
        except AuthorizeRedirect as back:
            return redirect(back.location, 303)
        if request.form.get("decision") != "allow":
            log.info("web.app_refused", client_id=req.client_id)
            return redirect(AuthorizeRedirect(req.redirect_uri, "access_denied", "the patient did not allow it",
                                              req.state).location, 303)
        chosen = request.form.getlist("allow_scope")
        with sessions.begin() as session:
            location = authorize(session, req, user_id=principal.actor_id.removeprefix("user:"),
                                 patient_id=principal.patient_id, chosen=chosen, now=now())
        log.info("web.app_authorised", client_id=req.client_id)
        return redirect(location, 303)

    def completed(accesses: list[AppAccess]) -> set[str]:
        """Which of these authorisations the app finished: their one-time code was exchanged for tokens."""
        ids = [a.authorization_id for a in accesses]
        if not ids:
            return set()
        with sessions() as session:
            return set(session.scalars(select(AuthorizationCode.authorization_id).where(
                AuthorizationCode.authorization_id.in_(ids), AuthorizationCode.used_at.is_not(None))))

    @bp.get("/apps")
    def apps() -> str:
        principal = require_person(sessions, "patient")
        accesses = app_launch.authorizations_of(principal.actor_id.removeprefix("user:"))
        return render_template("apps.html", connected=connected_apps(accesses, completed(accesses)),
                               scope_words=scope_words)

    @bp.post("/apps/<client_id>/revoke")
    def revoke(client_id: str) -> BaseResponse:
        """Disconnect the app: every authorisation of the patient's for it, completed or not, stops now."""
        principal = require_person(sessions, "patient")
        user_id = principal.actor_id.removeprefix("user:")
        stopped = [app_launch.revoke(user_id, a.authorization_id, now())
                   for a in app_launch.authorizations_of(user_id) if a.client_id == client_id]
        if any(stopped):
            log.info("web.app_disconnected")
            flash("Disconnected. The app can no longer read or change your record.", "success")
        return redirect(url_for("web.apps.apps"), 303)

    return bp
