"""HTTP face of SMART on FHIR authorization: the token endpoint (Backend Services' client credentials; App
Launch's authorization code and refresh token), the authorization endpoint's entry, discovery documents, and
the server's JWKS. The consent screen itself is a web app page (`healthledger.web.apps`)."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote

from flask import Blueprint, Response, jsonify, redirect, request

from healthledger.auth.app_launch import NON_RESOURCE_SCOPES, AppLaunch
from healthledger.auth.scopes import CONTEXTS
from healthledger.auth.tokens import (
    ACCESS_TOKEN_ALGORITHM,
    ASSERTION_ALGORITHMS,
    OAuthError,
    TokenRequest,
    TokenService,
)

FHIR_PATH = "/fhir"  # the FHIR base, below the issuer (healthledger.api.fhir)
TOKEN_PATH = "/auth/token"
AUTHORIZE_PATH = "/auth/authorize"
MANAGE_PATH = "/app/apps"  # where the patient sees and disconnects the apps they authorised
CONSENT_SCREEN_PATH = "/app/authorize"  # where the patient signs in and decides (healthledger.web.apps)


def smart_configuration(tokens: TokenService, app_launch: bool = True) -> dict[str, Any]:
    """`/.well-known/smart-configuration` (SMART App Launch 2.x §Conformance), saying exactly what we do:
    Backend Services (client credentials, asymmetric or symmetric), and the standalone patient launch
    (authorization code with PKCE S256 only, public and confidential apps, `patient/` scopes in v1 and v2
    syntax, `openid fhirUser` with ES256 ID tokens, `offline_access` refresh tokens). No EHR launch, no
    `launch/encounter`, no granular scopes with search parameters, no `online_access`."""
    document: dict[str, Any] = {
        "issuer": tokens.issuer,
        "jwks_uri": f"{tokens.issuer}/auth/jwks",
        "token_endpoint": tokens.token_endpoint,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": [f"{c}/*.cruds" for c in CONTEXTS] + [f"{c}/*.rs" for c in CONTEXTS],
        "response_types_supported": ["token"],
        "capabilities": ["client-confidential-asymmetric", "client-confidential-symmetric", "permission-v1",
                         "permission-v2"],
    }
    if app_launch:
        document.update({
            "authorization_endpoint": f"{tokens.issuer}{AUTHORIZE_PATH}",
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "token_endpoint_auth_methods_supported": [
                "private_key_jwt", "client_secret_basic", "client_secret_post", "none"],
            "scopes_supported": list(dict.fromkeys([  # (each once: CONTEXTS has patient/ too)
                *NON_RESOURCE_SCOPES, "patient/*.rs", "patient/*.cruds", "patient/*.read", "patient/*.write",
                *document["scopes_supported"]])),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": [ACCESS_TOKEN_ALGORITHM],
            "management_endpoint": f"{tokens.issuer}{MANAGE_PATH}",
            "capabilities": [
                "launch-standalone", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "context-standalone-patient", "sso-openid-connect",
                "permission-patient", "permission-offline", "permission-v1", "permission-v2",
            ],
        })
    return document


def openid_configuration(tokens: TokenService) -> dict[str, Any]:
    """`/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §3), for `sso-openid-connect`."""
    return {
        "issuer": tokens.issuer,
        "authorization_endpoint": f"{tokens.issuer}{AUTHORIZE_PATH}",
        "token_endpoint": tokens.token_endpoint,
        "jwks_uri": f"{tokens.issuer}/auth/jwks",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ACCESS_TOKEN_ALGORITHM],
        "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post",
                                                  "none"],
    }


def _basic_credentials() -> tuple[str, str]:
    """RFC 6749 §2.3.1: client id and secret, form-urlencoded, in HTTP Basic."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return "", ""
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
    return unquote(user), unquote(password)


def _oauth_error(exc: OAuthError) -> Response:
    resp = jsonify(exc.as_json())
    resp.status_code = exc.status
    resp.headers["Cache-Control"] = "no-store"
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = 'Basic realm="healthledger"'
    return resp


def smart_blueprint(tokens: TokenService, app_launch: AppLaunch | None = None) -> Blueprint:
    bp = Blueprint("smart", __name__)

    # SMART App Launch 2.x §2.2: clients ask at `{FHIR base}/.well-known/smart-configuration`; the origin's is
    # kept for clients of the 1.x era and OAuth tooling that look there.
    @bp.get("/.well-known/smart-configuration")
    @bp.get(f"{FHIR_PATH}/.well-known/smart-configuration")
    def well_known() -> Response:
        return jsonify(smart_configuration(tokens, app_launch is not None))

    @bp.get("/.well-known/openid-configuration")
    def openid_well_known() -> Response:
        if app_launch is None:
            return _oauth_error(OAuthError("invalid_request", "OpenID Connect is offered with SMART App Launch", 404))
        return jsonify(openid_configuration(tokens))

    @bp.get("/auth/jwks")
    def jwks() -> Response:
        return jsonify(tokens._signer.public_jwks())

    @bp.get(AUTHORIZE_PATH)
    def authorize() -> Any:
        # The patient signs in and decides in the web app; the request goes there as it came.
        query = request.query_string.decode("ascii", "replace")
        return redirect(f"{CONSENT_SCREEN_PATH}?{query}" if query else CONSENT_SCREEN_PATH, 303)

    @bp.post(TOKEN_PATH)
    def token() -> Response:
        try:
            if request.mimetype != "application/x-www-form-urlencoded":
                raise OAuthError("invalid_request", "the token request must be application/x-www-form-urlencoded")
            form = request.form
            basic_id, basic_secret = _basic_credentials()
            req = TokenRequest(
                grant_type=form.get("grant_type", ""),
                scope=form.get("scope", ""),
                client_assertion_type=form.get("client_assertion_type", ""),
                client_assertion=form.get("client_assertion", ""),
                client_id=basic_id or form.get("client_id", ""),
                client_secret=basic_secret or form.get("client_secret", ""),
                code=form.get("code", ""),
                redirect_uri=form.get("redirect_uri", ""),
                code_verifier=form.get("code_verifier", ""),
                refresh_token=form.get("refresh_token", ""),
            )
            if app_launch is not None and req.grant_type in ("authorization_code", "refresh_token"):
                body = app_launch.token(req)
            else:
                body = tokens.issue(req)
        except OAuthError as exc:
            return _oauth_error(exc)
        resp = jsonify(body)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Pragma"] = "no-cache"
        return resp

    return bp
