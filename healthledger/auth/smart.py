"""HTTP face of SMART Backend Services: token endpoint, discovery document, the server's JWKS."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote

from flask import Blueprint, Response, jsonify, request

from healthledger.auth.scopes import CONTEXTS
from healthledger.auth.tokens import ASSERTION_ALGORITHMS, OAuthError, TokenRequest, TokenService

TOKEN_PATH = "/auth/token"


def smart_configuration(tokens: TokenService) -> dict[str, Any]:
    """`/.well-known/smart-configuration` (SMART App Launch 2.0 §Conformance), truthful to what we do."""
    return {
        "issuer": tokens.issuer,
        "jwks_uri": f"{tokens.issuer}/auth/jwks",
        "token_endpoint": tokens.token_endpoint,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": [f"{c}/*.cruds" for c in CONTEXTS] + [f"{c}/*.rs" for c in CONTEXTS],
        "response_types_supported": ["token"],
        "capabilities": ["client-confidential-asymmetric", "client-confidential-symmetric", "permission-v1", "permission-v2"],
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


def smart_blueprint(tokens: TokenService) -> Blueprint:
    bp = Blueprint("smart", __name__)

    @bp.get("/.well-known/smart-configuration")
    def well_known() -> Response:
        return jsonify(smart_configuration(tokens))

    @bp.get("/auth/jwks")
    def jwks() -> Response:
        return jsonify(tokens._signer.public_jwks())

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
            )
            body = tokens.issue(req)
        except OAuthError as exc:
            return _oauth_error(exc)
        resp = jsonify(body)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Pragma"] = "no-cache"
        return resp

    return bp
