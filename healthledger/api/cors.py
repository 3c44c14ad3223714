"""Cross-origin requests (CORS) for browser apps: the FHIR API, the SMART token endpoint and discovery.

A SMART app that runs in the browser (a public client, `clients register --public`) calls the FHIR API and the
token endpoint from its own origin, so the browser asks first (a preflight) and reads an answer only if the
server allows that origin. These paths authenticate with what the request carries itself (a bearer token, a
client assertion, a PKCE code verifier), never with our cookie, so they allow any origin by default
(`cors_allowed_origins = "*"`) and never credentials: a browser sends no cookie on such a request and shows no
answer to one that asked with credentials, so another site cannot act with a signed-in patient's session
(healthledger.web.sessions: the cookie's requests carry a CSRF token as well). The web app (/app) is not
cross-origin. A hospital that knows its apps' origins lists them (comma-separated); an empty setting turns
CORS off.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_cors import CORS

from healthledger.api.auth_seam import BREAK_GLASS_HEADER, PURPOSE_HEADER
from healthledger.observability import REQUEST_ID_HEADER

# The paths browser apps call: the FHIR API and its discovery, the token endpoint, the server's keys.
CROSS_ORIGIN_PATHS = (r"/fhir", r"/fhir/.*", r"/auth/token", r"/auth/jwks", r"/\.well-known/.*")
# Request headers a FHIR client sends beyond the CORS-safelisted ones.
ALLOWED_HEADERS = (
    "Authorization", "Content-Type", "Accept", "Prefer", "If-Match", "If-None-Match", "If-None-Exist",
    "If-Modified-Since", REQUEST_ID_HEADER, PURPOSE_HEADER, BREAK_GLASS_HEADER,
)
# Response headers a FHIR client reads: where a created resource is, its version, the request's id.
EXPOSED_HEADERS = ("Location", "Content-Location", "ETag", "Last-Modified", REQUEST_ID_HEADER, "WWW-Authenticate")
PREFLIGHT_MAX_AGE_SECONDS = 600


def allowed_origins(setting: str) -> list[str]:
    """The setting as flask-cors takes it: `*`, or the listed origins (empty: CORS off)."""
    return [origin.strip().rstrip("/") for origin in setting.split(",") if origin.strip()]


def install_cors(app: Flask, setting: str) -> None:
    origins = allowed_origins(setting)
    if not origins:
        return
    CORS(
        app,
        resources={path: {} for path in CROSS_ORIGIN_PATHS},
        origins=origins,
        send_wildcard=origins == ["*"],
        supports_credentials=False,
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        max_age=PREFLIGHT_MAX_AGE_SECONDS,
    )


def bodiless_options_answer(response: Response) -> Response:
    """An OPTIONS answer without a body (a CORS preflight, Flask's automatic OPTIONS) has no Content-Type either:
    the header describes a body (RFC 9110 §8.3) and there is none (as the API's other bodiless answers,
    healthledger/api/fhir.py `_no_content`). Installed for every path, with CORS on or off."""
    if request.method == "OPTIONS" and not response.is_streamed and response.get_data() == b"":
        response.headers.remove("Content-Type")
    return response
