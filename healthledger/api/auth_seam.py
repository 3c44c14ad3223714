"""Who is calling: the one seam where API authentication plugs in (SMART Backend Services comes later).

Today a configurable development bearer token (RFC 6750 §2.1) maps to the development client. The
authenticated principal is handed to the store, whose AccessPolicy (and later the consent engine)
decides every read, search, write and bundle entry. Replacing `authenticate` with a JWT/OAuth verifier
is the only change the API needs for real clients.
"""

from __future__ import annotations

import hmac

from healthledger.config import Settings
from healthledger.errors import Unauthorized
from healthledger.store.access import DEV_CLIENT, Principal

_BEARER = "bearer "


def authenticate(authorization: str, settings: Settings) -> Principal:
    """The principal behind an Authorization header value, or Unauthorized (401 with WWW-Authenticate)."""
    if not authorization:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    if authorization[: len(_BEARER)].lower() != _BEARER:
        raise Unauthorized("unsupported authorization scheme: use 'Bearer <token>'")
    token = authorization[len(_BEARER) :].strip()
    # Constant-time comparison so the token cannot be guessed byte by byte from response timings.
    if not settings.dev_token or not hmac.compare_digest(token.encode(), settings.dev_token.encode()):
        raise Unauthorized("invalid bearer token")
    return development_principal()


def development_principal() -> Principal:
    return DEV_CLIENT
