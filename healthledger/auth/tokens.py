"""OAuth 2.0 client credentials for SMART Backend Services: client authentication, access tokens.

- Client authentication: `private_key_jwt` (RFC 7523 §2.2 / SMART Backend Services: an assertion
  signed RS384 or ES384 with a key from the client's registered JWKS, `iss` = `sub` = client id,
  `aud` = our token endpoint, `exp` at most five minutes ahead, `jti` never seen before), or a client
  secret (`client_secret_basic` / `client_secret_post`, RFC 6749 §2.3.1) for development.
- Access tokens are JWTs signed ES256 by a server key (wrapped by the key provider); they live
  minutes, and a disabled client's tokens stop working at once because each use re-checks the client.
All JWT parsing and verification is joserfc's; this module states the protocol's rules.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import requests
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, KeySetSerialization
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fhir_adapters.validation import check_json_text_nesting
from healthledger.auth.models import ApiClient, SeenAssertion
from healthledger.auth.scopes import (
    InvalidScope,
    ResourceScope,
    format_scopes,
    grant_scopes,
    parse_scopes,
    registered_scopes,
)
from healthledger.db import driver_fetch_one
from healthledger.errors import BadRequest, HealthLedgerError, Unauthorized
from healthledger.keys import KEY_FILES, TOKEN_SIGNING_KEY, KeyProvider

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")  # SMART Backend Services: servers SHALL support both
MAX_ASSERTION_LIFETIME = 300  # seconds; SMART: exp no more than five minutes in the future
CLOCK_LEEWAY = 30  # seconds: for what other parties' clocks stamped (client assertions, member hospitals' tokens)
# Our own access tokens were stamped by a replica of this service, whose clocks differ by far less (NTP): an
# expired token is refused within seconds, not half a minute.
ACCESS_TOKEN_LEEWAY = 5  # seconds
ACCESS_TOKEN_ALGORITHM = "ES256"

_hasher = PasswordHasher()  # argon2id with the library's current defaults
_VERIFIED_TOKENS = 4096  # per worker: tokens whose signature was checked (until they expire)
# What a token's client is now (disabled, role, organisation, ...): on every request's path, so through the
# driver (healthledger.db.driver_fetch_one).
_CLIENT_STATE_SQL = (
    "SELECT disabled, role, organization, default_purpose, scopes, consult_for_others FROM api_clients "
    "WHERE client_id = ?"
)
_CLIENT_COLUMNS = 6


class Piggyback(Protocol):
    """Columns another module reads on every request, added to the client lookup's SELECT (one round trip for
    both; healthledger.consent.index.Freshness). `params` bind before the lookup's own; `received` gets the values."""

    @property
    def columns(self) -> str: ...

    @property
    def params(self) -> tuple[str, ...]: ...

    def received(self, *values: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class _ClientState:
    disabled: bool
    role: str
    organization: str
    default_purpose: str
    scopes: str
    consult_for_others: bool

    @classmethod
    def of(cls, row: tuple[Any, ...] | None) -> _ClientState | None:
        if row is None:
            return None
        disabled, role, organization, purpose, scopes, consult = row
        return cls(bool(disabled), role, organization, purpose, scopes, bool(consult))


# An app's token is as good as the patient's authorisation of it, and the patient's account: on every request
# of an app's token, so through the driver too (through SQLAlchemy on a pooled connection it cost ~150 µs CPU on
# PostgreSQL, with the BEGIN and ROLLBACK of its transaction). Only `revoked_at IS NULL` and the truth of
# `disabled` are read, so the driver's own types for them (SQLite's text and 0/1) do as well as SQLAlchemy's.
_AUTHORIZATION_STATE_SQL = (
    "SELECT a.revoked_at, a.patient_id, u.disabled FROM app_authorizations a JOIN users u ON u.user_id = a.user_id "
    "WHERE a.authorization_id = ?"
)


def _check_assertion_claims(claims: dict[str, Any], client_id: str, token_endpoint: str, now: int) -> None:
    """The claims a client assertion must carry (SMART Backend Services, RFC 7523 §3), each refusal naming the
    claim and what is allowed (values are the client's own: echoing them, shortened, discloses nothing)."""
    def say(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value)[:80]
        return repr(text[:80])

    for name in ("iss", "sub"):
        if claims.get(name) != client_id:
            raise OAuthError("invalid_client", f"client_assertion {name} must be the client id {client_id!r} "
                             f"(it is {say(claims.get(name))})", 401)
    aud = claims.get("aud")
    if aud != token_endpoint and not (isinstance(aud, list) and token_endpoint in aud):
        raise OAuthError("invalid_client", f"client_assertion aud must be this server's token endpoint "
                         f"{token_endpoint} (it is {say(aud)})", 401)
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise OAuthError("invalid_client", "client_assertion needs an exp claim (seconds since the epoch)", 401)
    if exp > now + MAX_ASSERTION_LIFETIME + CLOCK_LEEWAY:
        raise OAuthError("invalid_client", f"client_assertion exp is {int(exp) - now} s ahead; at most "
                         f"{MAX_ASSERTION_LIFETIME} s (five minutes) is allowed (authlib, for one, defaults to an "
                         "hour: pass a shorter expiry)", 401)
    if exp < now - CLOCK_LEEWAY:
        raise OAuthError("invalid_client", f"client_assertion expired {now - int(exp)} s ago (exp)", 401)
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise OAuthError("invalid_client", "client_assertion needs a jti claim (a unique id, never reused)", 401)


class OAuthError(HealthLedgerError):
    """An RFC 6749 §5.2 error response: `error` code and a description safe to show."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description, status=status)
        self.error = error

    def as_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.message}


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str = ""
    scope: str = ""
    client_assertion_type: str = ""
    client_assertion: str = ""
    client_id: str = ""
    client_secret: str = ""
    # authorization_code and refresh_token grants (SMART App Launch; healthledger.auth.app_launch)
    code: str = ""
    redirect_uri: str = ""
    code_verifier: str = ""
    refresh_token: str = ""


@dataclass(frozen=True)
class AccessGrant:
    """What a valid access token lets its bearer do; the API builds its principal from this."""

    client_id: str
    scopes: tuple[ResourceScope | str, ...]  # granted to this token
    role: str
    organization: str
    default_purpose: str
    expires_at: int
    registered_scopes: tuple[ResourceScope | str, ...] = ()  # what the client is registered for
    consult_for_others: bool = False  # may name other actors in CDS Hooks consults
    # An app a patient authorised (SMART App Launch): whose record, and under which authorisation.
    patient_id: str = ""
    authorization_id: str = ""
    # Another member hospital (healthledger.federation): its directory id, the user it named, the Consent it
    # relies on. "" for everyone else.
    member: str = ""
    acting_user: str = ""
    consent_reference: str = ""


@dataclass(frozen=True)
class FederatedIssue:
    """What a member's token request earned: the token's subject, scope and extra claims (all strings)."""

    client_id: str
    scope: str
    claims: dict[str, str]
    jti: str
    assertion_exp: int


class FederatedClients(Protocol):
    """Members of the consortium, who get tokens with no registration here (healthledger.federation.exchange).

    `handles` says whether an (unverified) assertion is a member's; `issue` checks it against the directory and
    the Consent it names (raising OAuthError); `check` re-checks a token's member on every use (removed, or its
    key rotated since: Unauthorized)."""

    def handles(self, unverified: dict[str, Any]) -> bool: ...

    def issue(self, session: Session, req: TokenRequest, now: int) -> FederatedIssue: ...

    def check(self, claims: dict[str, Any], grant: AccessGrant) -> AccessGrant: ...


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


class TokenSigner:
    """The server's ES256 key for access tokens, created on first use and stored wrapped by the KEK
    (`healthledger.keys.TOKEN_SIGNING_KEY`; key rotation rewraps it)."""

    def __init__(self, key: ECKey) -> None:
        key.ensure_kid()  # the RFC 7638 thumbprint, so verifiers can pick it out of our JWKS
        self.key = key

    @classmethod
    def load_or_create(cls, keys_dir: Path, provider: KeyProvider) -> TokenSigner:
        def generate() -> bytes:
            key = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": ACCESS_TOKEN_ALGORITHM}, auto_kid=True)
            return json.dumps(key.as_dict(private=True)).encode()

        jwk = KEY_FILES.file(keys_dir, TOKEN_SIGNING_KEY).load_or_create(provider, generate)
        return cls(ECKey.import_key(json.loads(jwk)))

    def public_jwks(self) -> dict[str, Any]:
        return dict(KeySet([self.key]).as_dict(private=False))


class JwksCache:
    """Fetches a client's JWKS by URL (HTTPS in production), caching it for `ttl` seconds."""

    def __init__(self, ttl: float = 300.0, fetch: Callable[[str], dict[str, Any]] | None = None) -> None:
        self._ttl = ttl
        self._fetch = fetch or self._http_get
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _http_get(url: str) -> dict[str, Any]:
        resp = requests.get(url, timeout=5)
        resp.raise_for_status()
        check_json_text_nesting(resp.content)  # requests parses with the stdlib's recursive json.loads
        return resp.json()  # type: ignore[no-any-return]

    def get(self, url: str, *, refresh: bool = False) -> dict[str, Any]:
        with self._lock:
            hit = self._cache.get(url)
            if hit and not refresh and time.monotonic() - hit[0] < self._ttl:
                return hit[1]
        try:
            jwks = self._fetch(url)
        except (requests.RequestException, ValueError) as exc:
            raise OAuthError("invalid_client", "the client's JWKS URL could not be fetched", 401) from exc
        with self._lock:
            self._cache[url] = (time.monotonic(), jwks)
        return jwks


class TokenService:
    """Issues and checks access tokens. Time comes from `clock` (seconds since the epoch)."""

    def __init__(
        self,
        sessions: sessionmaker,  # type: ignore[type-arg]
        signer: TokenSigner,
        *,
        issuer: str,
        token_endpoint: str,
        lifetime_seconds: int = 300,
        clock: Callable[[], float] = time.time,
        jwks_cache: JwksCache | None = None,
        federation: FederatedClients | None = None,
        piggyback: Piggyback | None = None,
    ) -> None:
        self._sessions = sessions
        self._client_sql, self._piggyback = _CLIENT_STATE_SQL, piggyback
        if piggyback is not None:
            select_list, rest = _CLIENT_STATE_SQL.split(" FROM ", 1)
            self._client_sql = f"{select_list}, {piggyback.columns} FROM {rest}"
        self.federation = federation
        self._signer = signer
        self.issuer = issuer.rstrip("/")
        self.token_endpoint = token_endpoint
        self._lifetime = lifetime_seconds
        self._clock = clock
        self._jwks = jwks_cache or JwksCache()
        self._engine = sessions.kw["bind"]
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._verified_lock = threading.Lock()

    # -- token endpoint -----------------------------------------------------------------------
    def issue(self, req: TokenRequest) -> dict[str, Any]:
        if req.grant_type != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        if not req.scope.strip():
            raise OAuthError("invalid_scope", "scope is required")
        now = int(self._clock())
        if self.federation is not None and req.client_assertion and self.federation.handles(_unverified(req)):
            with self._sessions.begin() as session:
                issued = self.federation.issue(session, req, now)
                self._remember_jti(session, issued.client_id, issued.jti, issued.assertion_exp, now)
                token = self.access_token(issued.client_id, issued.scope, now, **issued.claims)
            return {"access_token": token, "token_type": "bearer", "expires_in": self._lifetime, "scope": issued.scope}
        with self._sessions.begin() as session:
            if not (req.client_assertion or req.client_assertion_type or (req.client_id and req.client_secret)):
                raise OAuthError("invalid_client", "client authentication is required", 401)
            client = self.authenticate_client(session, req, now)
            if client.auth_method == "none" or client.redirect_uris:
                raise OAuthError("unauthorized_client", "an app gets tokens by the authorization code grant")
            try:
                granted = grant_scopes(req.scope, client.scopes)
            except InvalidScope as exc:
                raise OAuthError("invalid_scope", exc.message) from exc
            scope = format_scopes(granted)
            token = self.access_token(client.client_id, scope, now)
        return {"access_token": token, "token_type": "bearer", "expires_in": self._lifetime, "scope": scope}

    @property
    def lifetime(self) -> int:
        return self._lifetime

    def now(self) -> int:
        return int(self._clock())

    def access_token(self, client_id: str, scope: str, now: int, **context: str) -> str:
        """A signed access token for `client_id` with `scope`; `context` adds claims (an app's `patient` and
        `auth`, its authorisation id)."""
        claims = {
            "iss": self.issuer,
            "sub": client_id,
            "aud": self.issuer,
            "iat": now,
            "exp": now + self._lifetime,
            "jti": secrets.token_urlsafe(16),
            "scope": scope,
            **context,
        }
        return jwt.encode(
            {"alg": ACCESS_TOKEN_ALGORITHM, "kid": self._signer.key.kid, "typ": "at+jwt"},
            claims,
            self._signer.key,
            algorithms=[ACCESS_TOKEN_ALGORITHM],
        )

    def id_token(self, claims: dict[str, Any]) -> str:
        """An OpenID Connect ID token (Core 1.0 §2), signed like access tokens (ES256, our JWKS)."""
        return jwt.encode(
            {"alg": ACCESS_TOKEN_ALGORITHM, "kid": self._signer.key.kid, "typ": "JWT"},
            {"iss": self.issuer, **claims},
            self._signer.key,
            algorithms=[ACCESS_TOKEN_ALGORITHM],
        )

    def authenticate_client(self, session: Session, req: TokenRequest, now: int) -> ApiClient:
        """The client a token request comes from: by assertion, by secret, or a public app by its id alone
        (an app registered without credentials; PKCE then stands in for them)."""
        if req.client_assertion or req.client_assertion_type:
            return self._authenticate_assertion(session, req, now)
        if req.client_id and req.client_secret:
            return self._authenticate_secret(session, req)
        if req.client_id:
            client = self._client(session, req.client_id)
            if client.auth_method != "none":
                raise OAuthError("invalid_client", "this client must authenticate", 401)
            return client
        raise OAuthError("invalid_client", "client authentication is required", 401)

    def _client(self, session: Session, client_id: str) -> ApiClient:
        client = session.get(ApiClient, client_id) if client_id else None
        if client is None or client.disabled:
            raise OAuthError("invalid_client", "unknown or disabled client", 401)
        return client

    def _authenticate_secret(self, session: Session, req: TokenRequest) -> ApiClient:
        client = self._client(session, req.client_id)
        if client.auth_method != "client_secret" or not client.secret_hash:
            raise OAuthError("invalid_client", "this client must authenticate with a signed JWT assertion", 401)
        try:
            _hasher.verify(client.secret_hash, req.client_secret)
        except VerificationError:
            raise OAuthError("invalid_client", "client authentication failed", 401) from None
        return client

    def _authenticate_assertion(self, session: Session, req: TokenRequest, now: int) -> ApiClient:
        if req.client_assertion_type != ASSERTION_TYPE:
            raise OAuthError("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}", 401)
        try:
            check_jose_nesting(req.client_assertion)
            compact = jws.extract_compact(req.client_assertion.encode())
            unverified = json.loads(compact.payload)
            header = dict(compact.protected)
            client_id = unverified.get("iss") if isinstance(unverified, dict) else None
        except (JoseError, ValueError, UnicodeError):
            raise OAuthError("invalid_client", "client_assertion is not a well-formed JWT", 401) from None
        if not isinstance(client_id, str) or (req.client_id and req.client_id != client_id):
            raise OAuthError("invalid_client", "client_assertion iss must be the client id", 401)
        client = self._client(session, client_id)
        if client.auth_method != "private_key_jwt":
            raise OAuthError("invalid_client", "this client is registered for secret authentication", 401)
        self._check_header(client, header)
        claims = self._verify_assertion(client, req.client_assertion)
        _check_assertion_claims(claims, client.client_id, self.token_endpoint, now)
        registry = JWTClaimsRegistry(
            now=now,
            leeway=CLOCK_LEEWAY,
            iss={"essential": True, "value": client.client_id},
            sub={"essential": True, "value": client.client_id},
            aud={"essential": True, "value": self.token_endpoint},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise OAuthError("invalid_client", f"client_assertion rejected: {exc.error}", 401) from None
        exp = int(claims["exp"])
        self._remember_jti(session, client.client_id, str(claims["jti"]), exp, now)
        return client

    def _check_header(self, client: ApiClient, header: dict[str, Any]) -> None:
        """SMART Backend Services: `alg` RS384 or ES384, and `kid` naming one of the client's registered keys
        (required even when the client has one key). Each refusal names the header and what is allowed."""
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            shown = str(alg)[:20] if isinstance(alg, str) and alg.isprintable() else "none"
            raise OAuthError("invalid_client", f"client_assertion header alg {shown!r} is not allowed: use "
                             f"{' or '.join(ASSERTION_ALGORITHMS)}", 401)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise OAuthError("invalid_client", "client_assertion header has no 'kid': SMART Backend Services "
                             "requires the kid of the key that signed it, one of this client's registered keys", 401)
        if client.jwks_url:
            return  # the keys are fetched (and refetched on rotation) when the signature is checked
        registered = [k.get("kid") for k in json.loads(client.jwks or "{}").get("keys", []) if isinstance(k, dict)]
        if kid not in registered:
            listed = ", ".join(repr(str(k)[:40]) for k in registered[:5] if k)
            raise OAuthError("invalid_client", f"client_assertion header kid {kid[:40]!r} is not one of this "
                             f"client's registered keys ({listed})", 401)

    def _verify_assertion(self, client: ApiClient, assertion: str) -> dict[str, Any]:
        def keys(refresh: bool) -> KeySet:
            data = self._jwks.get(client.jwks_url, refresh=refresh) if client.jwks_url else json.loads(client.jwks or "{}")
            return KeySet.import_key_set(cast(KeySetSerialization, data))

        for refresh in (False, True) if client.jwks_url else (False,):
            try:
                return jwt.decode(assertion, keys(refresh), algorithms=list(ASSERTION_ALGORITHMS)).claims
            except JoseError as exc:
                last = exc
                continue  # a rotated key: fetch the JWKS once more before giving up
        raise OAuthError("invalid_client", f"client_assertion signature rejected: {last.error}", 401)

    def _remember_jti(self, session: Session, client_id: str, jti: str, exp: int, now: int) -> None:
        expires = datetime.fromtimestamp(exp + CLOCK_LEEWAY, UTC)
        session.execute(
            delete(SeenAssertion).where(SeenAssertion.expires_at < datetime.fromtimestamp(now, UTC))
        )
        try:
            with session.begin_nested():
                session.add(SeenAssertion(client_id=client_id, jti=jti[:255], expires_at=expires))
        except IntegrityError:
            raise OAuthError("invalid_client", "client_assertion jti was already used", 401) from None

    # -- resource server -----------------------------------------------------------------------
    def authenticate(self, bearer: str) -> AccessGrant:
        """Check an access token; Unauthorized (401) if it is not one of ours, expired, or its client is disabled.

        A token's signature is verified once per worker and remembered until it expires (it is on every
        request); its client is looked up every time, so disabling a client stops its tokens at once.
        """
        now = int(self._clock())
        with self._verified_lock:
            claims = self._verified.get(bearer)
        if claims is None:
            try:
                check_jose_nesting(bearer)  # the header is parsed before the signature is checked
                token = jwt.decode(bearer, self._signer.key, algorithms=[ACCESS_TOKEN_ALGORITHM])
                JWTClaimsRegistry(
                    now=now,
                    leeway=ACCESS_TOKEN_LEEWAY,
                    iss={"essential": True, "value": self.issuer},
                    aud={"essential": True, "value": self.issuer},
                    exp={"essential": True},
                    sub={"essential": True},
                ).validate(token.claims)
                claims = {
                    "sub": str(token.claims["sub"]),
                    "exp": int(token.claims["exp"]),
                    "scopes": tuple(parse_scopes(token.claims.get("scope", ""))),
                    "patient": str(token.claims.get("patient") or ""),
                    "auth": str(token.claims.get("auth") or ""),
                    "member": {k: str(token.claims[k]) for k in MEMBER_CLAIMS if k in token.claims},
                }
            except (JoseError, ValueError, TypeError):
                raise Unauthorized("invalid or expired access token") from None
            with self._verified_lock:
                self._verified[bearer] = claims
                while len(self._verified) > _VERIFIED_TOKENS:
                    self._verified.popitem(last=False)
        if now > claims["exp"] + ACCESS_TOKEN_LEEWAY:
            raise Unauthorized("invalid or expired access token")
        if claims["member"]:
            if self.federation is None:
                raise Unauthorized("invalid or expired access token")
            return self.federation.check(
                claims["member"],
                AccessGrant(client_id=claims["sub"], scopes=claims["scopes"], role="", organization="",
                            default_purpose="", expires_at=claims["exp"]),
            )
        if self._piggyback is None:
            row = driver_fetch_one(self._engine, self._client_sql, (claims["sub"],))
        else:
            row = driver_fetch_one(self._engine, self._client_sql, (*self._piggyback.params, claims["sub"]))
            if row is not None:
                self._piggyback.received(*row[_CLIENT_COLUMNS:])
        client = _ClientState.of(row[:_CLIENT_COLUMNS] if row is not None else None)
        authorization = None
        if claims.get("auth"):
            authorization = driver_fetch_one(self._engine, _AUTHORIZATION_STATE_SQL, (claims["auth"],))
        if client is None or client.disabled:
            raise Unauthorized("the client of this access token is disabled")
        if claims.get("auth") and (
            authorization is None or authorization[0] is not None or authorization[2]
            or authorization[1] != claims.get("patient")
        ):
            raise Unauthorized("the patient has disconnected this app")
        return AccessGrant(
            client_id=claims["sub"],
            scopes=claims["scopes"],
            role=client.role,
            organization=client.organization,
            default_purpose=client.default_purpose,
            expires_at=claims["exp"],
            registered_scopes=registered_scopes(client.scopes),
            consult_for_others=bool(client.consult_for_others),
            patient_id=claims["patient"] if claims.get("auth") else "",
            authorization_id=claims["auth"],
        )


# Claims a member hospital's access token carries (healthledger.federation.exchange sets them).
MEMBER_CLAIMS = ("org", "pou", "usr", "cst", "kth")


def _unverified(req: TokenRequest) -> dict[str, Any]:
    """An assertion's payload before any check (only to route it), {} when it is not a readable JWT."""
    try:
        check_jose_nesting(req.client_assertion)
        payload = json.loads(jws.extract_compact(req.client_assertion.encode()).payload)
    except (JoseError, ValueError, UnicodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def check_jose_nesting(compact: str) -> None:
    """MalformedJson (a ValueError) when a compact JWS's header or payload nests deeper than MAX_JSON_DEPTH.

    Both are parsed with the stdlib's recursive `json.loads` before any signature is checked (RFC 7515
    §5.2 step 3 for the header; we read an assertion's payload for its `iss`), so an unauthenticated
    caller chooses the depth. joserfc's size limits (512 bytes of header, 128,000 of payload) still let
    95,000 levels through; the check does not rely on them. Segments that are not base64url are left
    to joserfc, which refuses them unparsed.
    """
    for segment in compact.split(".", 2)[:2]:
        try:
            decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError):
            continue
        check_json_text_nesting(decoded)


def check_redirect_uri(uri: str) -> str:
    """A redirect URI an app may register (RFC 6749 §3.1.2, OAuth 2.0 Security BCP §4.1): absolute https
    (http only on loopback, for native apps and development), no fragment."""
    parts = urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or (
        parts.scheme == "http" and not loopback
    ):
        raise BadRequest(f"redirect URI {uri[:80]!r} must be absolute https (http only on loopback), without a "
                         "fragment")
    return uri


def register_client(
    session: Session,
    *,
    name: str,
    scopes: str,
    role: str,
    organization: str = "",
    jwks: dict[str, Any] | None = None,
    jwks_url: str | None = None,
    with_secret: bool = False,
    default_purpose: str = "TREAT",
    consult_for_others: bool = False,
    now: datetime,
    client_id: str | None = None,
    redirect_uris: list[str] | None = None,
    public: bool = False,
) -> tuple[ApiClient, str | None]:
    """Register a client; returns it and, for secret clients, the secret (shown once, stored hashed).

    `consult_for_others`: the client may ask CDS Hooks consent consults on behalf of actors other than
    itself (a consent-decision broker); without it, `context.actor` may name only the client itself.
    `redirect_uris` makes it an app for SMART App Launch (patients authorise it in the web app); an app
    may be `public` (no credentials: a browser or phone app; PKCE protects its codes).
    """
    methods = [jwks is not None, bool(jwks_url), with_secret, public]
    if sum(methods) != 1:
        raise BadRequest("give exactly one of a JWKS, a JWKS URL, --secret or --public")
    if public and not redirect_uris:
        raise BadRequest("only an app (with --redirect-uri) may be a public client")
    if redirect_uris is not None:
        redirect_uris = [check_redirect_uri(uri) for uri in redirect_uris]
    parse_scopes(scopes)  # raises InvalidScope on a malformed scope
    if jwks is not None:
        try:
            keyset = KeySet.import_key_set(cast(KeySetSerialization, jwks))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise BadRequest("the JWKS could not be read as a JSON Web Key Set") from exc
        if any(k.is_private for k in keyset.keys):
            raise BadRequest("the JWKS holds private key material: register public keys only")
        if any(not k.kid for k in keyset.keys):
            raise BadRequest("every key in the JWKS needs a kid")
    secret = secrets.token_urlsafe(32) if with_secret else None
    client = ApiClient(
        client_id=client_id or secrets.token_hex(8),
        name=name,
        scopes=scopes,
        auth_method="none" if public else "client_secret" if with_secret else "private_key_jwt",
        jwks=json.dumps(jwks) if jwks is not None else None,
        jwks_url=jwks_url,
        secret_hash=hash_secret(secret) if secret else None,
        role=role,
        organization=organization,
        default_purpose=default_purpose,
        consult_for_others=consult_for_others,
        disabled=False,
        created_at=now,
        redirect_uris=json.dumps(redirect_uris) if redirect_uris else None,
    )
    session.add(client)
    session.flush()
    return client, secret


def list_clients(session: Session) -> list[ApiClient]:
    return list(session.scalars(select(ApiClient).order_by(ApiClient.created_at, ApiClient.client_id)))


def disable_client(session: Session, client_id: str) -> ApiClient:
    client = session.get(ApiClient, client_id)
    if client is None:
        raise OAuthError("invalid_client", "no such client", 404)
    client.disabled = True
    return client
