"""The FHIR API under test: a real app over a real store, on SQLite and on PostgreSQL (same suite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhir_api_support import api_settings, build_app, dispose
from flask import Flask
from flask.testing import FlaskClient


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
