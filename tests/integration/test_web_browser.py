"""The patient web app in a real browser: Debian's chromium, headless, driven by Playwright, against the app
served on loopback with a ledger worker beside it. Elements are found by role and label, as a person using a
screen reader would. At every state a test reaches, axe-core finds no serious or critical violation and the
page fits a 375 px phone without sideways scrolling; screenshots of each state at 375 px and 1280 px are kept
in `test-artifacts/screenshots/`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from browser_support import (
    WIDTHS,
    LiveServer,
    check_accessibility,
    launch_chromium,
    no_horizontal_scroll,
    require_axe,
    require_chromium,
    screenshot,
)
from consent_world import CLINIC, PASSWORD, World, permit_consent

from healthledger.auth.enrolment import EnrolmentCodes
from healthledger.auth.users import AccountNames

pytestmark = [pytest.mark.browser, pytest.mark.slow]
FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_chromium()
    require_axe()
    built = World.build(tmp_path_factory.mktemp("browser"))
    yield built
    built.close()


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[LiveServer]:
    with LiveServer(world) as live:
        yield live


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launch_chromium() as browser:
        yield browser


@pytest.fixture()
def page(chromium: Any, server: LiveServer) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=server.url)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: errors.append(str(e)))
    yield opened
    context.close()
    csp = [e for e in errors if "Content Security Policy" in e]
    assert not csp, csp  # nothing the page loads is refused by its own policy
    assert not [e for e in errors if "Uncaught" in e], errors


def every_width(page: Any, name: str) -> None:
    """The page as it is now, at the phone and the desktop width: axe, no sideways scroll, screenshots."""
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        check_accessibility(page, f"{name} at {width}px")
        no_horizontal_scroll(page, f"{name} at {width}px")
        screenshot(page, f"{name}-{label}")
    page.set_viewport_size({"width": 1280, "height": 900})


def new_patient(world: World, name: str) -> str:
    """A Patient with a small record and an enrolment code for them (what `users invite` does)."""
    pid = world.dev_create({"resourceType": "Patient", "name": [{"given": [name.title()], "family": "Browser"}],
                            "birthDate": "1958-02-11", "managingOrganization": {"reference": "Organization/general-hospital"}})
    world.patients[name] = pid
    world.observations[name] = world.dev_create({
        "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "effectiveDateTime": "2026-10-01T08:00:00Z",
        "valueQuantity": {"value": 64, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "referenceRange": [{"low": {"value": 55, "unit": "/min"}, "high": {"value": 100, "unit": "/min"}}],
    })
    world.dev_create({"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                      "code": {"text": "Hypertension"}, "onsetDateTime": "2020-05-05"})
    store = world.app.extensions["healthledger.store"]
    with world.sessions.begin() as s:
        return EnrolmentCodes(store, AccountNames(store)).issue(s, pid, now=datetime.now(UTC))


def clinic_reads(server: LiveServer, world: World, name: str) -> int:
    response = requests.get(f"{server.url}/fhir/Observation/{world.observations[name]}",
                            headers=world.headers("clinic"), timeout=30)
    return response.status_code


def test_a_patient_signs_up_shares_with_a_clinic_revokes_and_verifies_a_denied_access(
    page: Any, server: LiveServer, world: World,
) -> None:
    code = new_patient(world, "gil")
    page.goto(f"/app/signup?code={code}")
    assert page.get_by_label("Enrolment code").input_value() == code
    every_width(page, "signup")
    page.get_by_label("Username").fill("gil")
    page.get_by_label("New password", exact=True).fill(PASSWORD)
    page.get_by_label("New password again").fill("not the same at all")
    page.get_by_role("button", name="Create account").click()
    assert page.get_by_text("The two passwords are not the same").first.is_visible()
    assert page.get_by_label("Username").input_value() == "gil"  # kept
    every_width(page, "signup-error")
    page.get_by_label("New password", exact=True).fill(PASSWORD)
    page.get_by_label("New password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("heading", name="Your account is ready").wait_for()
    assert re.fullmatch(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){7}", page.get_by_label("Recovery code").inner_text())
    every_width(page, "recovery-code")
    page.get_by_role("link", name="I have written it down, continue").click()
    page.get_by_role("heading", name="Hello, Gil Browser").wait_for()
    every_width(page, "home")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="My records").click()
    page.get_by_role("heading", name="My records", exact=True).wait_for()
    assert page.get_by_text("64 per minute").is_visible() and page.get_by_text("normal: 55–100 per minute").is_visible()
    assert page.get_by_role("heading", name="Hypertension").is_visible()
    every_width(page, "records")

    assert clinic_reads(server, world, "gil") == 404  # no consent yet: the clinic does not see it
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Share my data").click()
    every_width(page, "share")
    page.get_by_role("radio", name="city-clinic (organisation)").check()
    page.get_by_role("radio", name="Your care and treatment").check()
    page.get_by_role("checkbox", name="Test results and measurements").check()
    page.get_by_label("Your password").fill("wrong password, surely")
    page.get_by_role("button", name="Sign and share").click()
    page.get_by_text("That password is not right").first.wait_for()
    assert page.get_by_role("radio", name="city-clinic (organisation)").is_checked()  # kept
    every_width(page, "share-error")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Sign and share").click()
    page.get_by_role("heading", name="Consent for city-clinic").wait_for()
    # The page follows the chain through /fhir until the grant is mined and indexed: block and transaction.
    status = page.get_by_role("status").filter(has_text="ledger")
    status.filter(has_text=re.compile(r"Active on the ledger in block \d+ \(transaction 0x[0-9a-f]{64}\)")).wait_for(
        timeout=30_000)
    # The rest of the page follows too: the status and the grant's block and transaction.
    assert re.fullmatch(r"Active on the ledger since block \d+", page.locator("#consent-status").inner_text())
    assert re.search(r"0x[0-9a-f]{64}", page.get_by_role("table").inner_text())
    every_width(page, "consent-active")
    assert clinic_reads(server, world, "gil") == 200

    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Revoke this consent").click()
    page.get_by_text("Revoked. city-clinic can no longer see your data").wait_for()
    assert clinic_reads(server, world, "gil") == 404  # at once, before the chain records it
    page.get_by_role("status").filter(has_text=re.compile(r"Revoked on the ledger in block \d+")).wait_for(timeout=30_000)
    every_width(page, "consent-revoked")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Access history").click()
    page.get_by_role("radio", name="Denied").check()
    page.get_by_role("button", name="Show accesses").click()
    denied = page.get_by_role("listitem").filter(
        has=page.get_by_role("heading", name="clinic, city-clinic opened your test results and measurements"))
    denied.first.wait_for()
    assert denied.first.get_by_text("Denied").is_visible()
    every_width(page, "history-denied")
    denied.first.get_by_role("button", name=re.compile("^Verify")).click()
    denied.first.get_by_text(re.compile(r"Verified in your browser: this is entry \d+ of \d+")).wait_for(timeout=30_000)
    assert denied.first.get_by_text(re.compile(r"anchored on the ledger in block \d+")).is_visible()
    every_width(page, "history-verified")


def test_a_request_appears_and_is_approved_with_the_key(page: Any, server: LiveServer, world: World) -> None:
    sign_in(page, "ann")
    # The clinic, which does not care for Ann, asks for access for itself (docs/consent-semantics.md).
    until = (date.today() + timedelta(days=180)).isoformat()
    created = requests.post(f"{server.url}/fhir/Consent", json=permit_consent(world.patients["ann"], CLINIC,
                                                                              status="proposed", period_end=until),
                            headers={**world.headers("clinic"), "Content-Type": FHIR}, timeout=30)
    assert created.status_code == 201
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Requests").click()
    request = page.get_by_role("listitem").filter(has=page.get_by_role("heading", name="city-clinic asks to see your data"))
    request.first.wait_for()
    every_width(page, "requests")
    request.first.get_by_label("Your password").fill(PASSWORD)
    request.first.get_by_role("button", name=re.compile("^Approve")).click()
    page.get_by_role("status").filter(has_text=re.compile(r"Active on the ledger in block \d+")).wait_for(timeout=30_000)
    consent = requests.get(f"{server.url}/fhir/Consent/{created.json()['id']}", headers=world.headers("clinic"),
                           timeout=30)
    assert consent.json()["status"] == "active"  # the requester sees the outcome through the API


def sign_in(page: Any, username: str) -> None:
    page.goto("/app/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name=re.compile("^Hello")).wait_for()


def test_every_page_at_both_widths_is_accessible_and_keyboard_usable(page: Any, server: LiveServer, world: World) -> None:
    page.goto("/app/login")
    every_width(page, "login")
    page.get_by_label("Username").fill("ann")
    page.get_by_label("Password").fill("not her password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").wait_for()
    every_width(page, "login-error")
    requests.get(f"{server.url}/fhir/Observation/{world.observations['ann']}", timeout=30, headers=world.headers(
        "clinic", **{"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": "found unconscious"}))
    sign_in(page, "ann")
    for path, name in (("/app/", "home-notices"), ("/app/consents", "consents"), ("/app/notices", "notices"),
                       ("/app/history?who=break-glass", "history-break-glass"), ("/app/account", "account"),
                       ("/app/requests", "requests-empty"), ("/app/recover", "recover-signed-in"),
                       ("/app/consents/no-such-consent", "not-found"), ("/app/research", "not-for-this-account")):
        page.goto(path)
        every_width(page, name)
    page.goto("/app/account")
    page.get_by_role("button", name="Change password").click()
    page.get_by_role("alert").wait_for()
    every_width(page, "account-error")

    # Keyboard: the first Tab reaches the skip link, which takes focus to the main content.
    page.goto("/app/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # Every control reached by Tab shows where the focus is.
    page.goto("/app/share")
    seen = set()
    for _ in range(25):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => {
            const el = document.activeElement, style = getComputedStyle(el);
            return {tag: el.tagName, id: el.id || el.textContent.trim().slice(0, 30),
                    outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
                    ring: style.boxShadow !== 'none'};
        }""")
        assert focused["outline"] or focused["ring"], focused
        seen.add(focused["tag"])
    assert {"A", "INPUT"} <= seen
    # Paste into password fields is allowed, and password managers are told what each field is.
    allowed = page.evaluate("""() => {
        const field = document.querySelector('input[type=password]');
        const event = new ClipboardEvent('paste', {cancelable: true, bubbles: true});
        field.dispatchEvent(event);
        return !event.defaultPrevented && field.getAttribute('autocomplete') === 'current-password';
    }""")
    assert allowed


def test_pages_fetch_nothing_from_elsewhere(page: Any, server: LiveServer, world: World) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    sign_in(page, "bob")
    for path in ("/app/records", "/app/history", "/app/share", "/app/consents"):
        page.goto(path)
    assert requested and all(url.startswith(server.url) for url in requested), [
        u for u in requested if not u.startswith(server.url)]


def test_the_consent_screen_of_an_app_narrows_and_the_apps_page_disconnects(
    page: Any, server: LiveServer, world: World,
) -> None:
    from urllib.parse import parse_qs, urlencode, urlsplit

    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    from healthledger.auth.tokens import register_client

    callback = "http://127.0.0.1:9/callback"
    with world.sessions.begin() as s:
        register_client(s, client_id="pocket", name="Pocket Health", redirect_uris=[callback], public=True,
                        scopes="launch/patient openid fhirUser offline_access patient/*.rs", role="system",
                        now=datetime.now(UTC))
    issuer = requests.get(f"{server.url}/.well-known/smart-configuration", timeout=30).json()["issuer"]
    page.route("http://127.0.0.1:9/**", lambda route: route.fulfill(status=200, body="the app"))
    sign_in(page, "bob")
    page.goto("/auth/authorize?" + urlencode({
        "response_type": "code", "client_id": "pocket", "redirect_uri": callback, "state": "xyz",
        "scope": "launch/patient openid fhirUser patient/Observation.rs patient/Condition.rs", "aud": f"{issuer}/fhir",
        "code_challenge": create_s256_code_challenge("v" * 64), "code_challenge_method": "S256"}))
    page.get_by_role("heading", name="Connect Pocket Health to your record?").wait_for()
    every_width(page, "authorize")
    page.get_by_role("checkbox", name="Read your conditions and diagnoses").uncheck()
    page.get_by_role("button", name="Allow", exact=True).click()
    page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:9/callback\?"))
    answer = parse_qs(urlsplit(page.url).query)
    assert answer["state"] == ["xyz"] and answer["code"]
    page.goto("/app/apps")
    page.get_by_text("No app is connected to your record.").wait_for()  # until the app exchanges its code
    exchanged = requests.post(f"{server.url}/auth/token", timeout=30, data={
        "grant_type": "authorization_code", "code": answer["code"][0], "redirect_uri": callback,
        "client_id": "pocket", "code_verifier": "v" * 64})
    assert exchanged.status_code == 200, exchanged.text
    page.goto("/app/apps")
    card = page.get_by_role("listitem").filter(has=page.get_by_role("heading", name="Pocket Health"))
    assert card.get_by_text("Read your test results and measurements").is_visible()
    assert card.get_by_text("Read your conditions and diagnoses").count() == 0  # narrowed away
    every_width(page, "apps")
    card.get_by_role("button", name="Disconnect Pocket Health").click()
    page.get_by_text("Disconnected.").wait_for()
    every_width(page, "apps-empty")


def test_the_browser_proves_with_checked_artifacts_and_can_cancel(page: Any, server: LiveServer) -> None:
    """The research pages' prover (a Web Worker running snarkjs): its proof verifies with our own Python
    Groth16 verifier; artifacts that do not match their published hash are refused; a proof can be cancelled."""
    import json

    from benchmarks.zk_prove import statement
    from zk import groth16
    from zk.prover import CircuitFiles
    from zk.snarkjs_io import load_proof, load_verification_key

    inputs = json.loads(json.dumps(statement("0x" + "22" * 20)[0], default=str))
    page.goto("/app/login")
    stages: list[str] = []
    page.expose_function("stage", lambda name, _ms: stages.append(name))
    result = page.evaluate("""async (input) => {
        const m = await import('/app/static/js/prover.js');
        return await m.prove(input, (s, ms) => window.stage(s, ms || 0)).result;
    }""", inputs)
    assert stages == ["artifacts", "witness", "proof", "done"]
    files = CircuitFiles.committed()
    key = load_verification_key(files.verification_key)
    assert groth16.verify(key, load_proof(result["proof"]), [int(s) for s in result["publicSignals"]])

    cancelled = page.evaluate("""async (input) => {
        const m = await import('/app/static/js/prover.js');
        const run = m.prove(input);
        setTimeout(() => run.cancel(), 200);
        try { await run.result; return 'finished'; } catch (e) { return e.message; }
    }""", inputs)
    assert cancelled == "cancelled"

    tampered = page.evaluate("""async (input) => {
        const cache = await caches.open('healthledger-zk-v1');
        await cache.put('/app/zk/eligibility.wasm', new Response(new Uint8Array([0, 97, 115, 109])));
        const m = await import('/app/static/js/prover.js');
        try { await m.prove(input).result; return 'proved'; } catch (e) { return e.message; }
    }""", inputs)
    assert "does not match its published SHA-256" in tampered
