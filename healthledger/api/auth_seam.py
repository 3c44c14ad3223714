"""Who is calling: the one seam where API authentication plugs in.

A request is authenticated by, in order: an `Authorization: Bearer` access token issued by our token
endpoint (RFC 6750 §2.1) to a backend client (SMART Backend Services) or to an app a patient authorised
(SMART App Launch: the app acts for that patient), the development bearer token (when configured), or the
web app's signed-in session. The principal's purpose of use defaults to what its registration
says and may be stated per request with `X-Purpose-Of-Use` (an HL7 v3 PurposeOfUse code); breaking the
glass is `X-Purpose-Of-Use: ETREAT` with the justification in `X-Break-Glass-Reason`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import replace

from flask import Request

from healthledger.auth.tokens import TokenService
from healthledger.config import Settings
from healthledger.errors import BadRequest, Forbidden, Unauthorized
from healthledger.principal import ETREAT, PURPOSES, Principal
from healthledger.store.access import DEV_CLIENT

_BEARER = "bearer "
PURPOSE_HEADER = "X-Purpose-Of-Use"
# Where the authenticated caller is kept for the rest of the request (before its stated purpose is
# checked): a request refused after authentication is still an attempt by someone, and is recorded.
CALLER_KEY = "healthledger.caller"
BREAK_GLASS_HEADER = "X-Break-Glass-Reason"
MAX_REASON_CHARS = 500


class Authenticator:
    """Turns a request into a Principal, or raises Unauthorized (401 with WWW-Authenticate)."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenService | None = None,
        session_principal: Callable[[], Principal | None] | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.session_principal = session_principal

    def __call__(self, request: Request) -> Principal:
        principal = self._who(request.headers.get("Authorization", ""))
        request.environ[CALLER_KEY] = principal
        stated_purpose = request.headers.get(PURPOSE_HEADER)
        if principal.consent_reference and (stated_purpose or principal.purpose) != principal.purpose:
            raise Forbidden("a member hospital's token holds for the purpose of use it was issued for")
        stated = with_stated_purpose(
            principal, request.headers.get(PURPOSE_HEADER), request.headers.get(BREAK_GLASS_HEADER)
        )
        request.environ[CALLER_KEY] = stated
        return stated

    def _who(self, authorization: str) -> Principal:
        if not authorization:
            session = self.session_principal() if self.session_principal is not None else None
            if session is not None:
                return session
            raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
        if authorization.strip().lower() == _BEARER.strip():  # the scheme and nothing after it (or only spaces)
            raise Unauthorized("empty bearer token: send 'Authorization: Bearer <token>'")
        if authorization[: len(_BEARER)].lower() != _BEARER:
            raise Unauthorized("unsupported authorization scheme: use 'Bearer <token>'")
        token = authorization[len(_BEARER) :].strip()
        dev = self.settings.accepted_dev_token
        # Constant-time comparison so the token cannot be guessed byte by byte from response timings.
        if dev and hmac.compare_digest(token.encode(), dev.encode()):
            return DEV_CLIENT
        if self.tokens is None or token.count(".") != 2:
            raise Unauthorized("invalid bearer token")
        grant = self.tokens.authenticate(token)
        if grant.member:
            # Another member hospital (healthledger.federation): the user it named, reading under one Consent, for
            # the purpose its token was issued for; the access log names both.
            return Principal(
                actor_id=f"member:{grant.member}/{grant.acting_user}",
                role=grant.role,
                organization=grant.organization,
                purpose=grant.default_purpose,
                scopes=tuple(grant.scopes),
                scope_context="system",
                via="api",
                consent_reference=grant.consent_reference,
            )
        if grant.patient_id:
            # An app the patient authorised (SMART App Launch): it acts for the patient, within its `patient/`
            # scopes; the access log names the app.
            return Principal(
                actor_id=f"client:{grant.client_id}",
                role="patient",
                purpose=grant.default_purpose,
                patient_id=grant.patient_id,
                scopes=tuple(grant.scopes),
                scope_context="patient",
                via="api",
            )
        return Principal(
            actor_id=f"client:{grant.client_id}",
            role=grant.role,
            organization=grant.organization,
            purpose=grant.default_purpose,
            scopes=tuple(grant.scopes),
            scope_context="system",
            via="api",
            registered_scopes=tuple(grant.registered_scopes),
            consult_for_others=grant.consult_for_others,
        )


def with_stated_purpose(principal: Principal, purpose: str | None, reason: str | None) -> Principal:
    """The principal acting for the purpose the request states (validated), with its break-glass reason."""
    if purpose is None and reason is None:
        return principal
    code = (purpose or principal.purpose).strip()
    if code not in PURPOSES:
        raise BadRequest(f"{PURPOSE_HEADER} must be an HL7 v3 PurposeOfUse code such as TREAT, ETREAT or HRESCH")
    text = (reason or "").strip()
    if text and code != ETREAT:
        raise BadRequest(f"{BREAK_GLASS_HEADER} is only for {PURPOSE_HEADER}: {ETREAT} (breaking the glass)")
    if code == ETREAT and not text:
        raise BadRequest(f"breaking the glass ({ETREAT}) needs a justification in {BREAK_GLASS_HEADER}")
    if len(text) > MAX_REASON_CHARS or not text.isprintable():
        raise BadRequest(f"{BREAK_GLASS_HEADER} must be printable text of at most {MAX_REASON_CHARS} characters")
    return replace(principal, purpose=code, break_glass_reason=text)
