"""SMART App Launch, standalone patient launch, driven by a third-party OAuth client (authlib's OAuth2Session)
against the app served on loopback; the patient's side (sign-in, the consent screen, narrowing, the apps
page) by a plain HTTP session, as a browser without JavaScript would.

What is held: discovery says what is supported; PKCE S256 is required and checked; the consent screen
narrows scopes; the token response carries the patient, an ID token whose `fhirUser` is the patient and a
refresh token for `offline_access`; the token reads only that patient's data within its scopes, decided and
logged like any access (under the app's name); codes are single-use, refresh tokens rotate and a replayed one
revokes; disconnecting the app in the web app stops its tokens at once.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from browser_support import LiveServer, free_port
from consent_world import PASSWORD, World
from joserfc import jwt
from joserfc.jwk import KeySet

from healthledger.auth.tokens import register_client

REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect itself
ASKED = "launch/patient openid fhirUser offline_access patient/Observation.read patient/Patient.rs user/*.rs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port = free_port()
    world = World.build(tmp_path_factory.mktemp("app-launch"), base_url=f"http://127.0.0.1:{port}")
    with world.sessions.begin() as s:
        for client_id, public in (("pocket", True), ("clinic-app", False)):
            _, secret = register_client(
                s, client_id=client_id, name="Pocket Health" if public else "Clinic Companion",
                scopes="launch/patient openid fhirUser offline_access patient/*.rs", role="system",
                redirect_uris=[REDIRECT], public=public, with_secret=not public, now=datetime.now(UTC))
            if secret:
                world.secrets[client_id] = secret
    with LiveServer(world, port=port) as live:
        yield live
    world.close()


def discovery(server: LiveServer) -> dict[str, Any]:
    response = requests.get(f"{server.url}/.well-known/smart-configuration", timeout=30)
    assert response.status_code == 200
    return dict(response.json())


class Patient:
    """The patient's browser, without JavaScript: follows redirects, signs in, answers the consent screen."""

    def __init__(self, server: LiveServer, username: str) -> None:
        self.server = server
        self.http = requests.Session()
        self.username = username

    def open(self, url: str) -> requests.Response:
        response = self.http.get(url, timeout=30)
        if urlsplit(response.url).path == "/app/login":
            token = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
            target = re.search(r'name="next" value="([^"]+)"', response.text)
            assert token and target
            response = self.http.post(f"{self.server.url}/app/login", timeout=30, data={
                "csrf_token": token.group(1), "next": unescape(target.group(1)), "username": self.username,
                "password": PASSWORD})
        return response

    def answer(self, screen: requests.Response, *, allow: bool = True, unchecked: tuple[str, ...] = ()) -> str:
        """Submit the consent screen; returns where the app is sent (the redirect, not followed)."""
        page = screen.text
        fields = {unescape(n): unescape(v) for n, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)}
        offered = [unescape(v) for v in re.findall(r'<input type="checkbox" id="[^"]+" name="allow_scope" value="([^"]+)"', page)]
        data: dict[str, Any] = {**fields, "allow_scope": [s for s in offered if s not in unchecked],
                                "decision": "allow" if allow else "deny"}
        response = self.http.post(f"{self.server.url}/app/authorize", data=data, allow_redirects=False, timeout=30)
        assert response.status_code == 303, response.text
        return str(response.headers["Location"])


def launch(server: LiveServer, patient: Patient, client_id: str = "pocket", *, unchecked: tuple[str, ...] = (),
           **client_kwargs: Any) -> tuple[OAuth2Session, dict[str, Any], str]:
    config = discovery(server)
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=ASKED, code_challenge_method="S256",
                          **client_kwargs)
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(8)
    url, _state = oauth.create_authorization_url(config["authorization_endpoint"], code_verifier=verifier,
                                                 aud=f"{server.url}/fhir", nonce=nonce)
    screen = patient.open(url)
    assert screen.status_code == 200 and "Connect " in screen.text, screen.text
    back = patient.answer(screen, unchecked=unchecked)
    token = oauth.fetch_token(config["token_endpoint"], authorization_response=back, code_verifier=verifier)
    return oauth, dict(token), nonce


def test_discovery_says_what_is_supported(server: LiveServer) -> None:
    config = discovery(server)
    assert config["authorization_endpoint"] == f"{server.url}/auth/authorize"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token", "client_credentials"} == set(config["grant_types_supported"])
    assert {"launch-standalone", "client-public", "context-standalone-patient", "sso-openid-connect",
            "permission-offline", "permission-patient", "permission-v1", "permission-v2"} <= set(config["capabilities"])
    assert "launch-ehr" not in config["capabilities"] and "permission-online" not in config["capabilities"]
    assert {"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs"} <= set(config["scopes_supported"])
    oidc = requests.get(f"{server.url}/.well-known/openid-configuration", timeout=30).json()
    assert oidc["issuer"] == config["issuer"] and oidc["id_token_signing_alg_values_supported"] == ["ES256"]


def test_a_public_app_gets_the_patient_narrowed_scopes_an_id_token_and_a_refresh_token(server: LiveServer) -> None:
    world = server.world
    ann = world.patients["ann"]
    oauth, token, nonce = launch(server, Patient(server, "ann"), unchecked=("patient/Patient.rs",))
    assert token["patient"] == ann and token["token_type"].lower() == "bearer"
    granted = set(token["scope"].split())
    assert granted == {"launch/patient", "openid", "fhirUser", "offline_access", "patient/Observation.read"}
    keys = KeySet.import_key_set(requests.get(f"{server.url}/auth/jwks", timeout=30).json())
    id_token = jwt.decode(token["id_token"], keys, algorithms=["ES256"]).claims
    assert id_token["fhirUser"] == f"{server.url}/fhir/Patient/{ann}"
    assert id_token["aud"] == "pocket" and id_token["nonce"] == nonce and id_token["iss"] == server.url
    fhir = f"{server.url}/fhir"
    observations = oauth.get(f"{fhir}/Observation?subject=Patient/{ann}", headers={"Accept": "application/fhir+json"})
    assert observations.status_code == 200
    assert [e["resource"]["id"] for e in observations.json()["entry"]] == [world.observations["ann"]]
    assert oauth.get(f"{fhir}/Patient/{ann}").status_code == 403  # narrowed away on the consent screen
    assert oauth.get(f"{fhir}/Observation/{world.observations['bob']}").status_code == 404  # not hers
    events = world.patient_session("ann").get(f"AuditEvent?patient=Patient/{ann}&_count=50").get_json()["entry"]
    by_app = [e["resource"] for e in events
              if e["resource"]["agent"][0]["who"]["identifier"]["value"] == "client:pocket"]
    assert by_app and by_app[-1]["agent"][0]["who"]["display"] == "Pocket Health"

    refreshed = oauth.refresh_token(discovery(server)["token_endpoint"], refresh_token=token["refresh_token"])
    assert refreshed["access_token"] != token["access_token"] and refreshed["refresh_token"] != token["refresh_token"]
    assert oauth.get(f"{fhir}/Observation?subject=Patient/{ann}").status_code == 200


def test_codes_are_single_use_and_pkce_is_checked(server: LiveServer) -> None:
    config = discovery(server)
    patient = Patient(server, "bob")
    verifier = secrets.token_urlsafe(48)
    oauth = OAuth2Session("pocket", redirect_uri=REDIRECT, scope=ASKED, code_challenge_method="S256")
    url, _ = oauth.create_authorization_url(config["authorization_endpoint"], code_verifier=verifier,
                                            aud=f"{server.url}/fhir")
    back = patient.answer(patient.open(url))
    code = parse_qs(urlsplit(back).query)["code"][0]

    def exchange(code_verifier: str) -> requests.Response:
        return requests.post(config["token_endpoint"], timeout=30, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": "pocket",
            "code_verifier": code_verifier})

    wrong = exchange(secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    first = exchange(verifier)
    assert first.status_code == 200
    again = exchange(verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # The replayed code revoked what it gave: the token from the first exchange stops working.
    used = requests.get(f"{server.url}/fhir/Observation?subject=Patient/{server.world.patients['bob']}", timeout=30,
                        headers={"Authorization": f"Bearer {first.json()['access_token']}"})
    assert used.status_code == 401


@pytest.mark.parametrize(("change", "error"), [
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": ""}, "invalid_request"),
    ({"aud": "https://elsewhere.example/fhir"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "user/*.rs system/*.rs"}, "invalid_scope"),
])
def test_a_bad_request_goes_back_to_the_app_as_an_error(server: LiveServer, change: dict[str, str], error: str) -> None:
    params = {"response_type": "code", "client_id": "pocket", "redirect_uri": REDIRECT, "scope": ASKED,
              "state": "s1", "aud": f"{server.url}/fhir", "code_challenge": create_s256_code_challenge("v" * 50),
              "code_challenge_method": "S256", **change}
    response = requests.get(f"{server.url}/app/authorize", params=params, allow_redirects=False, timeout=30)
    assert response.status_code == 303
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert response.headers["Location"].startswith(REDIRECT) and query["error"] == [error] and query["state"] == ["s1"]


@pytest.mark.parametrize("change", [{"client_id": "nobody"}, {"redirect_uri": "https://attacker.example/cb"}])
def test_an_unknown_app_or_address_is_never_redirected_to(server: LiveServer, change: dict[str, str]) -> None:
    params = {"response_type": "code", "client_id": "pocket", "redirect_uri": REDIRECT, "scope": ASKED,
              "aud": f"{server.url}/fhir", "code_challenge": create_s256_code_challenge("v" * 50),
              "code_challenge_method": "S256", **change}
    response = requests.get(f"{server.url}/app/authorize", params=params, allow_redirects=False, timeout=30)
    assert response.status_code == 400 and "This app cannot connect" in response.text


def test_refusing_sends_access_denied(server: LiveServer) -> None:
    config = discovery(server)
    patient = Patient(server, "ann")
    oauth = OAuth2Session("pocket", redirect_uri=REDIRECT, scope=ASKED, code_challenge_method="S256")
    url, state = oauth.create_authorization_url(config["authorization_endpoint"], code_verifier="x" * 50,
                                                aud=f"{server.url}/fhir")
    back = patient.answer(patient.open(url), allow=False)
    assert parse_qs(urlsplit(back).query) == {"error": ["access_denied"], "state": [state],
                                               "error_description": ["the patient did not allow it"]}


def test_a_confidential_app_authenticates_and_a_replayed_refresh_token_revokes(server: LiveServer) -> None:
    oauth, token, _ = launch(server, Patient(server, "bob"), "clinic-app",
                             client_secret=server.world.secrets["clinic-app"],
                             token_endpoint_auth_method="client_secret_basic")
    endpoint = discovery(server)["token_endpoint"]
    fresh = oauth.refresh_token(endpoint, refresh_token=token["refresh_token"])
    replay = requests.post(endpoint, auth=("clinic-app", server.world.secrets["clinic-app"]), timeout=30,
                           data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    stopped = requests.get(f"{server.url}/fhir/Observation?subject=Patient/{server.world.patients['bob']}",
                           headers={"Authorization": f"Bearer {fresh['access_token']}"}, timeout=30)
    assert stopped.status_code == 401
    no_secret = requests.post(endpoint, timeout=30, data={"grant_type": "refresh_token", "client_id": "clinic-app",
                                                          "refresh_token": fresh["refresh_token"]})
    assert no_secret.status_code == 401


def test_the_patient_sees_and_disconnects_the_app(server: LiveServer) -> None:
    patient = Patient(server, "ann")
    oauth, token, _ = launch(server, patient)
    page = patient.open(f"{server.url}/app/apps")
    assert "Pocket Health" in page.text and "Read your test results and measurements" in page.text
    form = re.search(r'action="(/app/apps/[^"]+/revoke)"', page.text)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert form and csrf
    fhir = f"{server.url}/fhir/Observation?subject=Patient/{server.world.patients['ann']}"
    assert oauth.get(fhir).status_code == 200
    patient.http.post(f"{server.url}{form.group(1)}", data={"csrf_token": csrf.group(1)}, timeout=30)
    assert oauth.get(fhir).status_code == 401  # at once
    refresh = requests.post(discovery(server)["token_endpoint"], timeout=30, data={
        "grant_type": "refresh_token", "client_id": "pocket", "refresh_token": token["refresh_token"]})
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


def test_backend_services_are_unchanged_and_apps_cannot_use_client_credentials(server: LiveServer) -> None:
    assert server.world.token("ehr")  # client credentials still work for backend clients
    refused = requests.post(discovery(server)["token_endpoint"], timeout=30, data={
        "grant_type": "client_credentials", "scope": "patient/*.rs", "client_id": "clinic-app",
        "client_secret": server.world.secrets["clinic-app"]})
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
