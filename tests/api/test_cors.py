"""Browser apps on other origins may call the FHIR API and the SMART endpoints (CORS), never with credentials."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhir_api_support import TOKEN, api_settings, build_app, dispose
from flask import Flask
from flask.testing import FlaskClient

APP_ORIGIN = "https://growth-chart.example"
PREFLIGHT = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization, content-type, if-match"}


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """A hospital that lists its apps' origins."""
    app: Flask = build_app(api_settings(tmp_path_factory.mktemp("cors-listed"),
                                        cors_allowed_origins=f"{APP_ORIGIN}/, https://other.example"))
    yield app.test_client()
    dispose(app)


@pytest.fixture(scope="module")
def off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    app: Flask = build_app(api_settings(tmp_path_factory.mktemp("cors-off"), cors_allowed_origins=""))
    yield app.test_client()
    dispose(app)


@pytest.mark.parametrize("path", ["/fhir/Patient/x", "/fhir", "/auth/token", "/fhir/.well-known/smart-configuration"])
def test_a_preflight_from_any_origin_is_answered_without_credentials(sqlite_client: FlaskClient, path: str) -> None:
    response = sqlite_client.options(path, headers={"Origin": APP_ORIGIN, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "PUT" in response.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "if-match"} <= allowed
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.data == b"" and "Content-Type" not in response.headers  # no body, so nothing to describe


def test_answers_name_the_headers_a_fhir_client_reads(sqlite_client: FlaskClient) -> None:
    created = sqlite_client.post("/fhir/Patient", json={"resourceType": "Patient"},
                                 headers={"Authorization": f"Bearer {TOKEN}", "Origin": APP_ORIGIN,
                                          "Content-Type": "application/fhir+json"})
    assert created.status_code == 201
    assert created.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "ETag", "Last-Modified"} <= exposed
    assert "Access-Control-Allow-Credentials" not in created.headers
    # A refusal is readable by the app too (its OperationOutcome says why).
    refused = sqlite_client.get("/fhir/Patient", headers={"Origin": APP_ORIGIN})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"


def test_the_web_app_is_not_cross_origin(sqlite_client: FlaskClient) -> None:
    response = sqlite_client.get("/app/", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = sqlite_client.options("/app/consents", headers={"Origin": APP_ORIGIN, **PREFLIGHT})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_listed_origins_only(listed: FlaskClient) -> None:
    allowed = listed.get("/fhir/metadata", headers={"Origin": APP_ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Origin" in allowed.headers.get("Vary", "")
    other = listed.get("/fhir/metadata", headers={"Origin": "https://attacker.example"})
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers


def test_no_cors_when_the_setting_is_empty(off: FlaskClient) -> None:
    response = off.get("/fhir/metadata", headers={"Origin": APP_ORIGIN})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("path", ["/fhir/metadata", "/fhir/Patient", "/auth/token"])
def test_a_plain_options_answer_has_no_body_and_no_content_type(off: FlaskClient, path: str) -> None:
    response = off.options(path)
    assert response.status_code == 200 and "OPTIONS" in response.headers["Allow"]
    assert response.data == b"" and "Content-Type" not in response.headers
