"""Helpers for FHIR API tests (tests/api, tests/integration): importable by name (`from fhir_api_support import ...`).

A real app over a real store; each app gets a tenant of its own so tests sharing a PostgreSQL schema
never see each other's rows.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from flask import Flask

from healthledger.app import bootstrap, create_app
from healthledger.config import Settings

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_HEADERS = {**AUTH, "Content-Type": "application/fhir+json"}
MAX_BODY = 256 * 1024


def api_settings(data_dir: Path, database_url: str = "", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "tenant": "api-" + secrets.token_hex(4),
        "dev_token": TOKEN,
        "load_demo_data": False,
        "max_request_bytes": MAX_BODY,
        "default_page_size": 20,
        "max_page_size": 50,
    }
    values.update(overrides)
    return Settings(**values)


def build_app(settings: Settings) -> Flask:
    bootstrap(settings)
    app = create_app(settings)
    app.testing = True
    return app


def dispose(app: Flask) -> None:
    app.extensions["healthledger.engine"].dispose()
