"""Hospital B's side of a cross-hospital read: the client assertion and the token request to a member's server.

The assertion (RFC 7523 §3 + SMART Backend Services + UDAP B2B) is a JWS signed ES384 with this member's
directory key, the public key in its `jwk` header (the other member trusts it only because the directory holds
its RFC 7638 thumbprint):

    header  {"alg": "ES384", "typ": "JWT", "kid": <thumbprint>, "jwk": <public key>}
    claims  {"iss": "urn:healthledger:member:<our id>", "sub": <same>, "aud": <their token endpoint>,
             "iat", "exp" (iat + 60 s), "jti",
             "extensions": {"hl7-b2b": {"version": "1", "organization_id": <iss>,
                                        "purpose_of_use": ["urn:oid:2.16.840.1.113883.5.8#TREAT"],
                                        "subject_id": <our user>, "subject_name": <optional>,
                                        "consent_reference": [<their FHIR base>/Consent/<id>]}}}
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from joserfc import jwt
from joserfc.jwk import ECKey

from healthledger.errors import HealthLedgerError
from healthledger.federation.exchange import B2B_EXTENSION, B2B_VERSION, PURPOSE_SYSTEM, member_client_id
from healthledger.federation.keys import ASSERTION_ALGORITHM, public_jwk

ASSERTION_LIFETIME = 60  # seconds; UDAP and SMART allow up to five minutes
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
HTTP_TIMEOUT = 15.0


class FederationRefused(HealthLedgerError):
    """The other member refused (its OAuth error code and description, safe to show to our operator)."""

    def __init__(self, description: str, error: str = "", status: int = 502) -> None:
        super().__init__(description, status=status)
        self.error = error


def client_assertion(
    key: ECKey,
    org_id: str,
    token_endpoint: str,
    *,
    purpose: str,
    user: str,
    consent_reference: str,
    now: int,
    user_name: str = "",
    jti: str | None = None,
) -> str:
    iss = member_client_id(org_id)
    b2b: dict[str, Any] = {
        "version": B2B_VERSION,
        "organization_id": iss,
        "purpose_of_use": [f"{PURPOSE_SYSTEM}#{purpose}"],
        "subject_id": user,
        "consent_reference": [consent_reference],
    }
    if user_name:
        b2b["subject_name"] = user_name
    claims = {
        "iss": iss, "sub": iss, "aud": token_endpoint, "iat": now, "exp": now + ASSERTION_LIFETIME,
        "jti": jti or secrets.token_urlsafe(16), "extensions": {B2B_EXTENSION: b2b},
    }  # fmt: skip
    header = {"alg": ASSERTION_ALGORITHM, "typ": "JWT", "kid": key.thumbprint(), "jwk": public_jwk(key)}
    return jwt.encode(header, claims, key, algorithms=[ASSERTION_ALGORITHM])


@dataclass(frozen=True)
class MemberToken:
    access_token: str
    scope: str
    expires_in: int
    server_time: float | None = None  # the member's clock when it answered (its `Date`, RFC 9110 §6.6.1)


HttpPost = Callable[..., Any]
HttpGet = Callable[..., Any]


class MemberClient:
    """Talks to another member's server: discovery, the token request, FHIR reads."""

    def __init__(self, http: requests.Session | None = None) -> None:
        self.http = http or requests.Session()

    def token_endpoint(self, fhir_base_url: str) -> str:
        """SMART discovery: `{fhir base}/.well-known/smart-configuration`, else the origin's."""
        parts = urlsplit(fhir_base_url)
        for url in (fhir_base_url.rstrip("/") + "/.well-known/smart-configuration",
                    f"{parts.scheme}://{parts.netloc}/.well-known/smart-configuration"):
            try:
                resp = self.http.get(url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"})
            except requests.RequestException:
                raise FederationRefused(f"the member's server at {parts.netloc} cannot be reached") from None
            if resp.status_code == 200:
                endpoint = (resp.json() or {}).get("token_endpoint")
                if isinstance(endpoint, str) and endpoint:
                    return endpoint
        raise FederationRefused(f"the member's server at {parts.netloc} publishes no SMART token endpoint")

    def token(self, token_endpoint: str, assertion: str, scope: str) -> MemberToken:
        try:
            resp = self.http.post(token_endpoint, timeout=HTTP_TIMEOUT, data={
                "grant_type": "client_credentials", "scope": scope, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            })  # fmt: skip
        except requests.RequestException:
            raise FederationRefused("the member's token endpoint cannot be reached") from None
        body = _json(resp)
        if resp.status_code != 200:
            error = str(body.get("error", "")) if isinstance(body, dict) else ""
            text = str(body.get("error_description", "")) if isinstance(body, dict) else ""
            raise FederationRefused(f"the member refused a token: {error}: {text[:300]}", error, resp.status_code)
        return MemberToken(str(body["access_token"]), str(body.get("scope", "")), int(body.get("expires_in", 0)),
                           _date(resp.headers.get("Date")))

    def post(self, url: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
        """A FHIR operation (a Parameters body) at the member, with its token."""
        try:
            resp = self.http.post(url, json=body, timeout=HTTP_TIMEOUT, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/fhir+json",
                "Content-Type": "application/fhir+json"})
        except requests.RequestException:
            raise FederationRefused("the member's FHIR API cannot be reached") from None
        return resp.status_code, _json(resp)

    def get(self, url: str, token: str, params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        try:
            resp = self.http.get(url, params=params, timeout=HTTP_TIMEOUT, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
        except requests.RequestException:
            raise FederationRefused("the member's FHIR API cannot be reached") from None
        return resp.status_code, _json(resp)


def _date(value: Any) -> float | None:
    """An HTTP-date (IMF-fixdate) as seconds since the epoch; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _json(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError:
        return {}
