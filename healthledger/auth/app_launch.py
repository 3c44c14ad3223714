"""SMART App Launch 2.x, standalone patient launch: third-party apps a patient authorises to read (and, if
they allow it, write) their own record through the FHIR API.

The protocol, step by step (OAuth 2.0, RFC 6749 §4.1, with PKCE, RFC 7636, required for every app):
1. The app sends the patient's browser to the authorization endpoint with `response_type=code`, its
   `client_id` and a registered `redirect_uri` (exact match), `scope`, `state`, `aud` (our FHIR base URL)
   and `code_challenge` with `code_challenge_method=S256`. `check_request` validates them: an unknown app
   or redirect URI is shown to the person (never redirected to: RFC 6749 §4.1.2.1); anything else wrong
   goes back to the app as an OAuth error.
2. The patient signs in to the web app and sees a consent screen (healthledger.web.apps) listing what the
   app asks for in plain words; they may narrow it. `authorize` records their decision as an
   `AppAuthorization` and hands back a one-time code (60 s, stored as a hash with its challenge).
3. The app exchanges the code at the token endpoint (`AppLaunch.token`, grant `authorization_code`) with
   the code verifier, authenticating if it has credentials (public apps send only their id). It gets an
   access token bound to the authorisation (claims `patient`, `auth`), the `patient` id, and, when it asked
   for them, an ID token (`openid` + `fhirUser`: the patient's FHIR URL) and a refresh token
   (`offline_access`). A code used twice revokes what it gave (RFC 6749 §4.1.2).
4. Refresh tokens rotate at every use; a spent one coming back revokes the authorisation (RFC 9700
   §4.14.2). The patient can see and revoke each app's authorisation (`authorizations_of`, `revoke`):
   access tokens check it on every request (`TokenService.authenticate`), so revoking takes effect at once.

Scopes: what an app may get is what it asked for, within what it is registered for, narrowed by the patient;
resource scopes only in the `patient/` context (SMART v1 `patient/*.read` and v2 `patient/*.rs` forms), plus
`openid`, `fhirUser`, `launch/patient`, `offline_access`. Every request with the token is then decided like
the patient's own: scopes first, then the consent engine (the patient's own data), and logged with the app
as the actor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from healthledger.auth.models import ApiClient, AppAuthorization, AuthorizationCode, RefreshToken, User
from healthledger.auth.scopes import InvalidScope, ResourceScope, parse_scope
from healthledger.auth.tokens import OAuthError, TokenRequest, TokenService
from healthledger.errors import HealthLedgerError

CODE_LIFETIME = timedelta(seconds=60)
REFRESH_LIFETIME = timedelta(days=365)
NON_RESOURCE_SCOPES = ("openid", "fhirUser", "launch/patient", "offline_access")
_VERIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class AuthorizeError(HealthLedgerError):
    """A request that cannot go back to the app (unknown app, redirect URI not registered): shown to the person."""

    status = 400
    code = "invalid"


@dataclass(frozen=True)
class AuthorizeRedirect(Exception):
    """An OAuth error for the app, sent back to its redirect URI (RFC 6749 §4.1.2.1)."""

    redirect_uri: str
    error: str
    description: str
    state: str

    @property
    def location(self) -> str:
        return with_query(self.redirect_uri, {"error": self.error, "error_description": self.description,
                                              "state": self.state})


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request: which app, where to send the answer, what it asks for."""

    client_id: str
    client_name: str
    redirect_uri: str
    state: str
    code_challenge: str
    nonce: str
    requested: tuple[str, ...]  # the scopes asked for that can be granted, as the app wrote them
    refused: tuple[str, ...]  # asked for but never grantable here (not registered, other contexts)

    @property
    def redirect_origin(self) -> str:
        parts = urlsplit(self.redirect_uri)
        return f"{parts.scheme}://{parts.netloc}"


def with_query(uri: str, params: Mapping[str, str]) -> str:
    kept = {k: v for k, v in params.items() if v}
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode(kept)}"


def redirect_uris_of(client: ApiClient) -> list[str]:
    uris = json.loads(client.redirect_uris) if client.redirect_uris else []
    return [str(u) for u in uris] if isinstance(uris, list) else []


def grantable(scope: str, registered: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(grantable, refused) scopes of a request, each kept as the app wrote it: patient-context resource
    scopes that intersect the app's registration, and the non-resource scopes it is registered for."""
    allowed: list[ResourceScope | str] = []
    for token in registered.split():
        try:
            parsed = parse_scope(token)
        except InvalidScope:
            continue
        if parsed is not None:
            allowed.append(parsed)
    ok: list[str] = []
    refused: list[str] = []
    for token in dict.fromkeys(scope.split()):
        try:
            wanted = parse_scope(token)
        except InvalidScope:
            refused.append(token)
            continue
        if isinstance(wanted, str):
            (ok if wanted in NON_RESOURCE_SCOPES and wanted in allowed else refused).append(token)
        elif wanted is not None and wanted.context == "patient" and any(
            isinstance(a, ResourceScope) and _overlaps(wanted, a) for a in allowed
        ):
            ok.append(token)
        else:
            refused.append(token)
    return tuple(ok), tuple(refused)


def _overlaps(want: ResourceScope, have: ResourceScope) -> bool:
    return (
        want.context == have.context
        and (have.resource_type == "*" or want.resource_type in ("*", have.resource_type))
        and bool(set(want.permissions) & set(have.permissions))
    )


def check_request(session: Session, params: Mapping[str, str], *, fhir_base: str) -> AuthorizationRequest:
    """Validate an authorization request (step 1). AuthorizeError or AuthorizeRedirect when it is wrong."""
    client_id = params.get("client_id", "")
    client = session.get(ApiClient, client_id) if client_id else None
    if client is None or client.disabled or not client.redirect_uris:
        raise AuthorizeError("this app is not registered here (or is disabled)")
    redirect_uri = params.get("redirect_uri", "")
    registered = redirect_uris_of(client)
    if not redirect_uri and len(registered) == 1:
        redirect_uri = registered[0]
    if redirect_uri not in registered:
        raise AuthorizeError("the app asked to send the answer to an address it did not register")
    state = params.get("state", "")

    def refuse(error: str, description: str) -> AuthorizeRedirect:
        return AuthorizeRedirect(redirect_uri, error, description, state)

    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", "only response_type=code is supported")
    challenge, method = params.get("code_challenge", ""), params.get("code_challenge_method", "")
    if method != "S256" or not 43 <= len(challenge) <= 128:
        raise refuse("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    if params.get("aud", "").rstrip("/") != fhir_base.rstrip("/"):
        raise refuse("invalid_request", f"aud must be this server's FHIR base URL, {fhir_base}")
    if params.get("launch"):
        raise refuse("invalid_request", "only the standalone launch is supported (no launch parameter)")
    requested, refused = grantable(params.get("scope", ""), client.scopes)
    if not requested:
        raise refuse("invalid_scope", "none of the requested scopes can be granted to this app")
    return AuthorizationRequest(client.client_id, client.name, redirect_uri, state, challenge,
                                params.get("nonce", "")[:255], requested, refused)


def authorize(
    session: Session, request: AuthorizationRequest, *, user_id: str, patient_id: str, chosen: Sequence[str],
    now: datetime,
) -> str:
    """Record the patient's authorisation of the app for the `chosen` scopes (a subset of what it asked
    for) and return the redirect to the app with a one-time code (step 2)."""
    scopes = [s for s in request.requested if s in set(chosen) or s == "launch/patient"]
    authorization = AppAuthorization(
        authorization_id=secrets.token_hex(16), client_id=request.client_id, user_id=user_id, patient_id=patient_id,
        scopes=" ".join(scopes), created_at=now,
    )
    session.add(authorization)
    code = secrets.token_urlsafe(32)
    session.add(AuthorizationCode(
        code_hash=_digest(code), authorization_id=authorization.authorization_id, redirect_uri=request.redirect_uri,
        code_challenge=request.code_challenge, nonce=request.nonce, expires_at=now + CODE_LIFETIME,
    ))
    session.flush()
    return with_query(request.redirect_uri, {"code": code, "state": request.state})


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _verifier_matches(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.1 (43-128 unreserved characters) and §4.6 (S256)."""
    if not 43 <= len(verifier) <= 128 or not set(verifier) <= _VERIFIER_CHARS:
        return False
    return hmac.compare_digest(_s256(verifier), challenge)


def _s256(verifier: str) -> str:
    """RFC 7636 §4.6: BASE64URL(SHA256(ASCII(code_verifier))), without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class AppAccess:
    """One of a patient's authorised apps, for the page where they see and revoke them."""

    authorization_id: str
    client_id: str
    client_name: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None


class AppLaunch:
    """The token endpoint's authorization_code and refresh_token grants, and patients' authorisations."""

    def __init__(self, sessions: sessionmaker[Session], tokens: TokenService) -> None:
        self._sessions = sessions
        self._tokens = tokens

    @property
    def fhir_base(self) -> str:
        return self._tokens.issuer + "/fhir"

    def token(self, req: TokenRequest) -> dict[str, Any]:
        if req.grant_type == "authorization_code":
            return self._exchange_code(req)
        if req.grant_type == "refresh_token":
            return self._refresh(req)
        raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code or refresh_token here")

    def _replayed(self, authorization_id: str, now: datetime, message: str) -> OAuthError:
        """A spent code or refresh token came back: revoke what it gave, in a transaction of its own (the
        request's own transaction rolls back with the error)."""
        with self._sessions.begin() as session:
            session.execute(update(AppAuthorization).where(
                AppAuthorization.authorization_id == authorization_id, AppAuthorization.revoked_at.is_(None),
            ).values(revoked_at=now))
        return OAuthError("invalid_grant", message)

    def _exchange_code(self, req: TokenRequest) -> dict[str, Any]:
        now_epoch = self._tokens.now()
        now = datetime.fromtimestamp(now_epoch, UTC)
        replayed = ""
        with self._sessions.begin() as session:
            client = self._tokens.authenticate_client(session, req, now_epoch)
            row = session.get(AuthorizationCode, _digest(req.code)) if req.code else None
            authorization = session.get(AppAuthorization, row.authorization_id) if row is not None else None
            if row is None or authorization is None or authorization.client_id != client.client_id:
                raise OAuthError("invalid_grant", "the authorization code is not valid")
            if row.used_at is not None:
                replayed = authorization.authorization_id
            else:
                if _aware(row.expires_at) <= now or authorization.revoked_at is not None:
                    raise OAuthError("invalid_grant", "the authorization code has expired")
                if req.redirect_uri != row.redirect_uri:
                    raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
                if not _verifier_matches(req.code_verifier, row.code_challenge):
                    raise OAuthError("invalid_grant", "the code_verifier does not match the code_challenge (PKCE)")
                row.used_at = now
                return self._respond(session, authorization, authorization.scopes.split(), now, nonce=row.nonce)
        raise self._replayed(replayed, now, "the authorization code was already used")

    def _refresh(self, req: TokenRequest) -> dict[str, Any]:
        now_epoch = self._tokens.now()
        now = datetime.fromtimestamp(now_epoch, UTC)
        replayed = ""
        with self._sessions.begin() as session:
            client = self._tokens.authenticate_client(session, req, now_epoch)
            row = session.get(RefreshToken, _digest(req.refresh_token)) if req.refresh_token else None
            authorization = session.get(AppAuthorization, row.authorization_id) if row is not None else None
            if row is None or authorization is None or authorization.client_id != client.client_id:
                raise OAuthError("invalid_grant", "the refresh token is not valid")
            if row.used_at is not None:
                replayed = authorization.authorization_id  # stolen and replayed, or a bug: stop it either way
            elif authorization.revoked_at is not None or _aware(row.expires_at) <= now:
                raise OAuthError("invalid_grant", "the patient disconnected this app, or the refresh token expired")
            if not replayed:
                user = session.get(User, authorization.user_id)
                if user is None or user.disabled:
                    raise OAuthError("invalid_grant", "the patient's account is disabled")
                granted = row.scopes.split()
                if req.scope.strip():
                    # RFC 6749 §6: a refresh may narrow, never widen. Clients often send the scope they first
                    # asked for (authlib does), which the patient may have narrowed: keep what is in both.
                    narrower = [s for s in granted if s in set(req.scope.split())]
                    if not narrower:
                        raise OAuthError("invalid_scope", "none of the scopes asked for was granted")
                    granted = narrower
                row.used_at = now
                return self._respond(session, authorization, granted, now, nonce="", refreshed=True)
        raise self._replayed(replayed, now, "the refresh token was already used; the app must be authorised again")

    def _respond(
        self, session: Session, authorization: AppAuthorization, scopes: list[str], now: datetime, *, nonce: str,
        refreshed: bool = False,
    ) -> dict[str, Any]:
        now_epoch = int(now.timestamp())
        patient = authorization.patient_id
        access = self._tokens.access_token(
            authorization.client_id, " ".join(s for s in scopes if s not in ("openid", "offline_access")), now_epoch,
            patient=patient, auth=authorization.authorization_id,
        )
        authorization.last_used_at = now
        body: dict[str, Any] = {
            "access_token": access, "token_type": "Bearer", "expires_in": self._tokens.lifetime,
            "scope": " ".join(scopes), "patient": patient, "need_patient_banner": True,
        }
        if "openid" in scopes and "fhirUser" in scopes and not refreshed:
            body["id_token"] = self._tokens.id_token({
                "sub": authorization.user_id, "aud": authorization.client_id, "iat": now_epoch,
                "exp": now_epoch + self._tokens.lifetime, "fhirUser": f"{self.fhir_base}/Patient/{patient}",
                **({"nonce": nonce} if nonce else {}),
            })
        if "offline_access" in scopes:
            refresh = secrets.token_urlsafe(32)
            session.add(RefreshToken(token_hash=_digest(refresh), authorization_id=authorization.authorization_id,
                                     scopes=" ".join(scopes), expires_at=now + REFRESH_LIFETIME))
            body["refresh_token"] = refresh
        return body

    # -- the patient's view ---------------------------------------------------------------------------
    def authorizations_of(self, user_id: str) -> list[AppAccess]:
        with self._sessions() as session:
            rows = session.execute(
                select(AppAuthorization, ApiClient.name)
                .join(ApiClient, ApiClient.client_id == AppAuthorization.client_id)
                .where(AppAuthorization.user_id == user_id, AppAuthorization.revoked_at.is_(None))
                .order_by(AppAuthorization.created_at.desc())
            ).all()
        return [AppAccess(a.authorization_id, a.client_id, name, tuple(a.scopes.split()), a.created_at, a.last_used_at)
                for a, name in rows]

    def revoke(self, user_id: str, authorization_id: str, now: datetime) -> bool:
        """Revoke one of the user's authorisations: its access tokens stop at once, its refresh tokens too."""
        with self._sessions.begin() as session:
            done = session.execute(
                update(AppAuthorization)
                .where(AppAuthorization.authorization_id == authorization_id, AppAuthorization.user_id == user_id,
                       AppAuthorization.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return bool(done.rowcount)  # type: ignore[attr-defined]


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
