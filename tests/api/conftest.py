"""The FHIR API under test: a real app over a real store, on SQLite and on PostgreSQL (same suite)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from healthledger.app import bootstrap, create_app
from healthledger.config import Settings

TOKEN = "api-test-token"  # a constant: this module may be imported twice (as conftest and by name)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_HEADERS = {**AUTH, "Content-Type": "application/fhir+json"}
MAX_BODY = 256 * 1024


def api_settings(data_dir: Path, database_url: str = "", **overrides: Any) -> Settings:
    # A tenant of its own per app: tests on a shared PostgreSQL schema never see each other's rows.
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


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def app(backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Flask]:
    data_dir = tmp_path_factory.mktemp(f"api-{backend}")
    url = ""
    if backend == "postgres":
        url, _schema = request.getfixturevalue("postgres_schema_url")
    application = build_app(api_settings(data_dir, url))
    yield application
    dispose(application)


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def sqlite_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    application = build_app(api_settings(tmp_path_factory.mktemp("api-sqlite-only")))
    yield application
    dispose(application)


@pytest.fixture(scope="module")
def sqlite_client(sqlite_app: Flask) -> FlaskClient:
    return sqlite_app.test_client()
