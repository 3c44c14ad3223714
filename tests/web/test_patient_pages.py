"""The patient's pages over the real app (Flask's test client as the browser): sign-up with an enrolment code,
records, sharing and revoking with the on-chain state, requests, the access history, notices, a new password.

Every page reads and writes through the /fhir API as the patient, so what the pages show is checked against
what the API and the consent engine do for other callers (a clinic's token, the hospital's).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
from consent_world import CLINIC, PASSWORD, World, permit_consent
from flask.testing import FlaskClient
from sqlalchemy import func, select

from healthledger.audit.models import AccessLogEntry
from healthledger.audit.spool import ingest
from healthledger.auth.enrolment import EnrolmentCodes
from healthledger.auth.users import AccountNames

FHIR = "application/fhir+json"
NEW_PASSWORD = "a quite different passphrase"


def rich_record(pid: str) -> list[dict[str, Any]]:
    subject = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Condition", "subject": subject, "onsetDateTime": "2019-04-02",
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006",
                              "display": "Diabetes mellitus type 2 (disorder)"}]}},
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject,
         "authoredOn": "2024-02-10",
         "medicationCodeableConcept": {"text": "metformin 500 MG Oral Tablet"},
         "dosageInstruction": [{"text": "one tablet twice a day with food"}]},
        {"resourceType": "AllergyIntolerance", "patient": subject, "criticality": "high", "recordedDate": "2010-06-01",
         "code": {"text": "Penicillin"},
         "reaction": [{"manifestation": [{"text": "Hives"}]}]},
        {"resourceType": "Immunization", "status": "completed", "patient": subject,
         "vaccineCode": {"text": "Influenza, seasonal"}, "occurrenceDateTime": "2025-10-12"},
        {"resourceType": "Encounter", "status": "finished", "subject": subject,
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "type": [{"text": "Diabetes review"}], "period": {"start": "2025-03-03T10:00:00Z"}},
        {"resourceType": "Observation", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"}]},
         "effectiveDateTime": "2025-03-03T10:30:00Z",
         "valueQuantity": {"value": 7.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
         "referenceRange": [{"low": {"value": 4.0, "unit": "%"}, "high": {"value": 5.6, "unit": "%"}}]},
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = World.build(tmp_path_factory.mktemp("patient-pages"))
    yield built
    built.close()


def csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def field_errors(page: str) -> dict[str, str]:
    return {m.group(1): html.unescape(m.group(2))
            for m in re.finditer(r'<span class="field-error" id="([^"]+)-error">([^<]+)</span>', page)}


def text(page: str) -> str:
    """The page's visible words, roughly: tags out, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def sign_up(world: World, name: str) -> tuple[FlaskClient, str, str]:
    """A new patient `name` (with a rich record) signing up with a code from the hospital."""
    pid = world.dev_create({"resourceType": "Patient", "name": [{"given": [name.title()], "family": "Pagetest"}],
                            "birthDate": "1961-07-21", "gender": "female"})
    world.patients[name] = pid
    for resource in rich_record(pid):
        world.dev_create(resource)
    store = world.app.extensions["healthledger.store"]
    with world.sessions.begin() as s:
        code = EnrolmentCodes(store, AccountNames(store)).issue(s, pid, now=datetime.now(UTC))
    browser = world.app.test_client()
    page = browser.get(f"/app/signup?code={code}").get_data(as_text=True)
    assert f'value="{code}"' in page  # the link fills the code in
    done = browser.post("/app/signup", data={"csrf_token": csrf(page), "code": code, "username": name,
                                             "password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 200, done.get_data(as_text=True)
    recovery = re.search(r'id="recovery-code"[^>]*>([A-Z2-7-]+)<', done.get_data(as_text=True))
    assert recovery is not None
    return browser, pid, recovery.group(1)


def test_pages_need_a_signed_in_patient(world: World) -> None:
    anonymous = world.app.test_client()
    for path in ("/app/records", "/app/consents", "/app/share", "/app/history", "/app/notices", "/app/requests"):
        response = anonymous.get(path)
        assert response.status_code == 303
        assert response.headers["Location"] == f"/app/login?next={path}"
    page = anonymous.get("/app/login?next=/app/history").get_data(as_text=True)
    assert 'name="next" value="/app/history"' in page
    assert 'name="next"' not in anonymous.get("/app/login?next=https://evil.example/").get_data(as_text=True)


def test_sign_up_keeps_what_was_typed_and_says_what_is_wrong(world: World) -> None:
    browser = world.app.test_client()
    page = browser.get("/app/signup").get_data(as_text=True)
    bad = browser.post("/app/signup", data={"csrf_token": csrf(page), "code": "WRON-GCOD-E000-0000",
                                            "username": "someone new", "password": "short", "confirm": "other"})
    assert bad.status_code == 400
    body = bad.get_data(as_text=True)
    # Every problem at once, the code's too (it was said only once the rest was right).
    assert field_errors(body) == {"username": "A username has no spaces", "password": "Use at least 12 characters",
                                  "confirm": "The two passwords are not the same",
                                  "code": "This enrolment code is not valid: check it, or ask the hospital for a new one"}
    assert 'value="WRON-GCOD-E000-0000"' in body and 'value="someone new"' in body
    assert 'aria-invalid="true"' in body and 'aria-describedby="username-hint username-error"' in body
    wrong_code = browser.post("/app/signup", data={"csrf_token": csrf(page), "code": "WRON-GCOD-E000-0000",
                                                   "username": "someone", "password": PASSWORD, "confirm": PASSWORD})
    assert wrong_code.status_code == 400
    assert field_errors(wrong_code.get_data(as_text=True))["code"].startswith("This enrolment code is not valid")


def test_a_patient_signs_up_and_reads_their_records(world: World) -> None:
    browser, pid, _ = sign_up(world, "cat")
    home = text(browser.get("/app/").get_data(as_text=True))
    assert "Hello, Cat Pagetest" in home
    page = browser.get("/app/records")
    assert page.status_code == 200
    words = text(page.get_data(as_text=True))
    for expected in ("Diabetes mellitus type 2", "since 2 April 2019", "metformin 500 MG Oral Tablet",
                     "one tablet twice a day with food", "Penicillin", "high risk", "reaction: hives",
                     "Influenza, seasonal", "given 12 October 2025", "Diabetes review", "outpatient visit",
                     "Hemoglobin A1c", "7.4%", "normal: 4.0–5.6%", "3 March 2025", "Born 21 July 1961"):
        assert expected in words, expected
    assert "(disorder)" not in words and '"resourceType"' not in words
    download = browser.get("/app/records/download")
    assert download.status_code == 200 and download.mimetype == "application/fhir+json"
    assert download.headers["Content-Disposition"].startswith("attachment;")
    bundle = orjson.loads(download.data)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    types = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert types == sorted(["Patient", *(r["resourceType"] for r in rich_record(pid))])
    assert all(e["fullUrl"].startswith("http://localhost/fhir/") for e in bundle["entry"])


def test_the_code_works_once(world: World) -> None:
    store = world.app.extensions["healthledger.store"]
    with world.sessions.begin() as s:
        code = EnrolmentCodes(store, AccountNames(store)).issue(s, world.dev_create({"resourceType": "Patient"}),
                                                                now=datetime.now(UTC))
    first, second = world.app.test_client(), world.app.test_client()
    for browser, username, status in ((first, "dora", 200), (second, "dora2", 400)):
        page = browser.get("/app/signup").get_data(as_text=True)
        response = browser.post("/app/signup", data={"csrf_token": csrf(page), "code": code, "username": username,
                                                     "password": PASSWORD, "confirm": PASSWORD})
        assert response.status_code == status


def share_form(browser: FlaskClient, **values: Any) -> tuple[int, str, str]:
    page = browser.get("/app/share").get_data(as_text=True)
    data = {"csrf_token": csrf(page), "recipient": CLINIC, "purpose": "TREAT", "categories": ["observations"],
            "start": date.today().isoformat(), "end": "", "password": PASSWORD, **values}
    response = browser.post("/app/share", data=data)
    return response.status_code, response.headers.get("Location", ""), response.get_data(as_text=True)


def test_sharing_rejects_bad_input_next_to_each_field_and_keeps_the_choices(world: World) -> None:
    browser = world.patient_session("ann").browser
    before = len(world.dev_read(f"Consent?patient=Patient/{world.patients['ann']}").get("entry", []))
    status, _, page = share_form(browser, recipient="Organization/nowhere", purpose="", categories=[],
                                 start="2001-01-01", end="2000-01-01", password="")
    assert status == 400
    assert field_errors(page) == {
        "recipient": "Choose who may see your data", "purpose": "Choose what they may use it for",
        "categories": "Choose at least one kind of data", "start": "The first day cannot be in the past",
        "end": "The last day must be after the first day", "password": "Enter your password"}
    assert 'value="2001-01-01"' in page and 'value="2000-01-01"' in page
    status, _, page = share_form(browser, password="not the right one", categories=["observations", "allergies"])
    assert status == 400 and field_errors(page) == {"password": "That password is not right: use the one you sign in with"}
    def chosen(value: str) -> bool:
        tag = re.search(rf'<input[^>]*value="{re.escape(value)}"[^>]*>', page)
        return tag is not None and " checked" in tag.group(0)

    assert chosen("Organization/city-clinic") and chosen("allergies") and chosen("observations")  # still chosen
    assert not chosen("medications")
    after = len(world.dev_read(f"Consent?patient=Patient/{world.patients['ann']}").get("entry", []))
    assert after == before  # the unsigned draft was taken back


def test_share_shows_progress_until_the_chain_confirms_then_revoke(world: World) -> None:
    browser = world.patient_session("ann").browser
    observation = f"/fhir/Observation/{world.observations['ann']}"
    assert world.client.get(observation, headers=world.headers("clinic")).status_code == 404
    status, location, _ = share_form(browser)
    assert status == 303 and location.startswith("/app/consents/")
    consent_id = location.rsplit("/", 1)[1]
    pending = browser.get(location).get_data(as_text=True)
    assert "Waiting for the ledger to confirm" in pending and 'data-state="pending"' in pending
    assert "js/consent-progress.js" in pending
    world.sync()
    active = text(browser.get(location).get_data(as_text=True))
    assert "Active on the ledger since block" in active
    assert ("city-clinic may see your test results and measurements for your care and treatment, from "
            f"{date.today().day} ") in active
    assert world.client.get(observation, headers=world.headers("clinic")).status_code == 200
    listed = text(browser.get("/app/consents").get_data(as_text=True))
    assert "You share with city-clinic" in listed

    page = browser.get(location).get_data(as_text=True)
    wrong = browser.post(f"/app/consents/{consent_id}/revoke", data={"csrf_token": csrf(page), "password": "nope"})
    assert wrong.status_code == 400 and "That password is not right" in wrong.get_data(as_text=True)
    revoked = browser.post(f"/app/consents/{consent_id}/revoke", data={"csrf_token": csrf(page), "password": PASSWORD})
    assert revoked.status_code == 303
    assert world.client.get(observation, headers=world.headers("clinic")).status_code == 404  # at once
    world.sync()
    ended = text(browser.get(location).get_data(as_text=True))
    assert "Revoked on the ledger in block" in ended
    # What it allowed, in the past: not "city-clinic may see ..." as if it still did.
    assert ("Revoked: city-clinic may no longer see your data under this consent. It let them see your test results "
            "and measurements for your care and treatment, from ") in ended
    assert "city-clinic may see" not in ended
    other = world.patient_session("bob").browser.get(location)
    assert other.status_code == 404  # Bob cannot see Ann's consent page


def test_a_request_recorded_by_the_hospital_is_approved_or_declined(world: World) -> None:
    browser = world.patient_session("ann").browser
    ehr = {**world.headers("ehr"), "Content-Type": FHIR}
    asked = []
    for _ in range(2):
        created = world.client.post("/fhir/Consent", headers=ehr,
                                    data=orjson.dumps(permit_consent(world.patients["ann"], CLINIC, status="proposed")))
        assert created.status_code == 201
        asked.append(created.get_json()["id"])
    page = browser.get("/app/requests").get_data(as_text=True)
    assert text(page).count("city-clinic asks to see your data") == 2
    declined = browser.post(f"/app/requests/{asked[0]}/decline", data={"csrf_token": csrf(page)})
    assert declined.status_code == 303
    assert world.client.get(f"/fhir/Consent/{asked[0]}", headers=world.headers("ehr")).get_json()["status"] == "rejected"
    page = browser.get("/app/requests").get_data(as_text=True)
    wrong = browser.post(f"/app/requests/{asked[1]}/approve", data={"csrf_token": csrf(page), f"r{asked[1]}-password": "x"})
    assert wrong.status_code == 400 and f'id="r{asked[1]}-password-error"' in wrong.get_data(as_text=True)
    approved = browser.post(f"/app/requests/{asked[1]}/approve",
                            data={"csrf_token": csrf(page), f"r{asked[1]}-password": PASSWORD})
    assert approved.status_code == 303
    world.sync()
    seen = world.client.get(f"/fhir/Consent/{asked[1]}", headers=world.headers("ehr")).get_json()
    assert seen["status"] == "active"  # the requester reads the outcome through the API
    assert "No requests are waiting for you." in browser.get("/app/requests").get_data(as_text=True)


def test_the_history_names_who_shows_denials_and_break_glass_and_offers_verify(world: World) -> None:
    browser = world.patient_session("ann").browser
    observation = f"/fhir/Observation/{world.observations['ann']}"
    world.client.get(observation, headers=world.headers("research"))  # denied: no consent
    world.client.get(observation, headers=world.headers(
        "clinic", **{"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": "collapsed in the street"}))
    page = browser.get("/app/history").get_data(as_text=True)
    words = text(page)
    assert "research, university opened your test results and measurements Denied" in words
    assert "No consent of yours allows it." in words
    assert "Emergency access (“breaking the glass”). The reason they gave: “collapsed in the street”." in words
    assert "You looked at your own data" not in words  # others only, by default
    assert re.search(r'<button type="button" class="secondary verify" data-entry="\d+"', page)
    assert "js/verify.js" in page and '<svg class="chart"' in page
    mine = text(browser.get("/app/history?who=all&outcome=all").get_data(as_text=True))
    assert "You opened your" in mine
    denied = text(browser.get("/app/history?who=others&outcome=denied").get_data(as_text=True))
    assert "Permitted" not in denied.split("Entries", 1)[1]
    bad = browser.get("/app/history?start=2026-13-40&who=nobody")
    assert bad.status_code == 400 and set(field_errors(bad.get_data(as_text=True))) == {"start", "who"}
    notices = text(browser.get("/app/notices").get_data(as_text=True))
    assert "Emergency access by clinic" in notices and "collapsed in the street" in notices


def test_revoke_from_the_history_entry(world: World) -> None:
    browser = world.patient_session("ann").browser
    status, location, _ = share_form(browser, recipient="Organization/university", purpose="HRESCH")
    world.sync()
    world.client.get(f"/fhir/Observation/{world.observations['ann']}", headers=world.headers("research"))
    page = browser.get("/app/history").get_data(as_text=True)
    link = f'<a href="{location}#revoke">Revoke the consent that allowed this</a>'
    assert status == 303 and link in page


def test_a_new_password_keeps_this_session_ends_others_and_signs_with_the_key(world: World) -> None:
    browser, _, _ = sign_up(world, "eve")
    other = world.app.test_client()
    page = other.get("/app/login").get_data(as_text=True)
    assert other.post("/app/login", data={"csrf_token": csrf(page), "username": "eve", "password": PASSWORD}).status_code == 303
    page = browser.get("/app/account").get_data(as_text=True)
    wrong = browser.post("/app/account/password", data={"csrf_token": csrf(page), "current_password": "nope",
                                                        "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert wrong.status_code == 403 and field_errors(wrong.get_data(as_text=True)) == {
        "current_password": "The current password is not right"}
    changed = browser.post("/app/account/password", data={"csrf_token": csrf(page), "current_password": PASSWORD,
                                                          "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert changed.status_code == 303
    assert browser.get("/app/records").status_code == 200  # this browser stays signed in
    assert other.get("/app/records").status_code == 303  # the other one is signed out
    status, _, _ = share_form(browser, password=NEW_PASSWORD)
    assert status == 303  # the key now opens with the new password


def test_recovery_with_the_printed_code(world: World) -> None:
    _, _, recovery = sign_up(world, "fay")
    browser = world.app.test_client()
    page = browser.get("/app/recover").get_data(as_text=True)
    wrong = browser.post("/app/recover", data={"csrf_token": csrf(page), "username": "fay", "recovery_code": "AAAA",
                                               "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert wrong.status_code == 403 and "recovery_code" in field_errors(wrong.get_data(as_text=True))
    done = browser.post("/app/recover", data={"csrf_token": csrf(page), "username": "fay", "recovery_code": recovery,
                                              "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert done.status_code == 200
    fresh = re.search(r'id="recovery-code"[^>]*>([A-Z2-7-]+)<', done.get_data(as_text=True))
    assert fresh is not None and fresh.group(1) != recovery
    assert browser.get("/app/records").status_code == 200


def test_pages_are_api_clients_every_read_is_logged(world: World) -> None:
    """The records page reads through /fhir as the patient: each resource it shows leaves an entry."""
    def count() -> int:
        ingest(world.sessions.kw["bind"])
        with world.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(AccessLogEntry)) or 0)

    browser = world.patient_session("ann").browser
    before = count()
    assert browser.get("/app/records").status_code == 200
    new = world.log_since(before)
    assert new and all(e.actor.startswith("user:") and e.decision == "permit" for e in new)
    assert {e.resource_type for e in new} >= {"Patient", "Observation"}


def test_headers_keep_pages_private_and_scripts_our_own(world: World) -> None:
    browser = world.patient_session("ann").browser
    response = browser.get("/app/history")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy and "style-src 'self'" in policy
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page
    for src in re.findall(r'(?:src|href)="(/app/static/[^"]+)"', page):
        asset = browser.get(src)
        assert asset.status_code == 200 and "immutable" in asset.headers["Cache-Control"], src
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)  # nothing from another origin


def test_every_page_is_whole_and_labelled(world: World) -> None:
    browser = world.patient_session("ann").browser
    for path in ("/app/", "/app/records", "/app/consents", "/app/share", "/app/requests", "/app/history",
                 "/app/notices", "/app/account", "/app/apps"):
        page = browser.get(path).get_data(as_text=True)
        assert page.count("<h1>") == 1 and '<main id="main"' in page and 'lang="en"' in page, path
        for input_id in re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', page):
            tag = re.search(rf'<(?:input|select|textarea)[^>]*\bid="{re.escape(input_id)}"[^>]*>', page)
            assert tag is not None
            if 'type="hidden"' in tag.group(0):
                continue
            assert f'for="{input_id}"' in page, (path, input_id)


def test_anchored_tree_heads_make_verification_possible(world: World) -> None:
    """What the page's verifier fetches is there for the patient's own entries, not for others'."""
    from healthledger.audit.anchoring import anchor_batch

    with world.sessions.begin() as s:
        anchor_batch(s, datetime.now(UTC), tenant=world.app.config["SETTINGS"].tenant)
    world.sync()
    page = world.patient_session("ann").browser.get("/app/history").get_data(as_text=True)
    entry = re.search(r'data-entry="(\d+)"', page)
    assert entry is not None
    proof = world.patient_session("ann").get(f"AuditEvent/{entry.group(1)}/$inclusion-proof")
    assert proof.status_code == 200 and any(p["name"] == "anchor" for p in proof.get_json()["parameter"])
    assert world.patient_session("bob").get(f"AuditEvent/{entry.group(1)}/$inclusion-proof").status_code == 404


def test_a_consent_about_to_end_is_a_notice(world: World) -> None:
    browser = world.patient_session("bob").browser
    end = (date.today() + timedelta(days=5)).isoformat()
    status, _, _ = share_form(browser, end=end)
    assert status == 303
    world.sync()
    words = text(browser.get("/app/notices").get_data(as_text=True))
    assert "Your consent for city-clinic ends in 5 days" in words


def test_the_history_filters_by_kind_of_data(world: World) -> None:
    browser = world.patient_session("ann").browser
    world.client.get(f"/fhir/Observation/{world.observations['ann']}", headers=world.headers("research"))
    observations = text(browser.get("/app/history?who=all&outcome=all&kind=observations").get_data(as_text=True))
    consents = text(browser.get("/app/history?who=all&outcome=all&kind=consents").get_data(as_text=True))
    assert "research, university opened your test results and measurements" in observations
    assert "your consents" not in observations.split("Entries", 1)[1].replace("whatever your consents say", "")
    assert "test results and measurements" not in consents.split("Entries", 1)[1]
    assert browser.get("/app/history?kind=nonsense").status_code == 400


def test_error_pages_are_the_apps_own_and_reveal_nothing(world: World) -> None:
    """Inside /app an error is a page of the app (its layout and navigation, plain words, a link home), and a
    consent of another patient's answers exactly as one that does not exist."""
    ann, bob = world.patient_session("ann").browser, world.patient_session("bob").browser
    consent_id = world.dev_create(permit_consent(world.patients["ann"], CLINIC))
    missing = bob.get("/app/consents/no-such-consent")
    others = bob.get(f"/app/consents/{consent_id}")
    assert missing.status_code == others.status_code == 404
    assert missing.get_data(as_text=True) == others.get_data(as_text=True).replace(consent_id, "no-such-consent")
    for path in ("/app/nope", "/app/consents/no-such-consent", "/app/studies/nope", f"/app/consents/{consent_id}"):
        page = bob.get(path)
        body = page.get_data(as_text=True)
        assert page.status_code == 404, path
        assert "Page not found" in body and 'aria-label="Main"' in body and "<main" in body, path
        assert 'href="/app/">Go to your home page' in body and "sign-in" not in body, path
        assert "is not known" not in body and "ResearchStudy/" not in body, path
    wrong_role = ann.get("/app/research")
    assert wrong_role.status_code == 403 and "Not a page for your account" in wrong_role.get_data(as_text=True)
    anonymous = world.app.test_client().get("/app/nope").get_data(as_text=True)
    assert "Page not found" in anonymous and 'href="/app/login">Go to sign-in' in anonymous
    # The FHIR API's own errors stay OperationOutcomes.
    assert world.client.get("/fhir/nope", headers=world.headers("ehr")).get_json()["resourceType"] == "OperationOutcome"


def test_the_record_locator_is_offered_only_by_a_member_for_a_member(world: World) -> None:
    """This server is no consortium member: no consent page offers a one-time code, and asking for one anyway is
    the page's 404 (never an error in developer words)."""
    ann = world.patient_session("ann").browser
    consent_id = world.dev_create(permit_consent(world.patients["ann"], CLINIC))
    world.sync()
    page = ann.get(f"/app/consents/{consent_id}").get_data(as_text=True)
    assert "Bring your record" not in page and "one-time code" not in page
    asked = ann.post(f"/app/consents/{consent_id}/record-locator", data={"csrf_token": csrf(page)})
    assert asked.status_code == 404 and "Page not found" in asked.get_data(as_text=True)


def test_the_apps_page_shows_each_app_once_and_only_if_it_connected() -> None:
    """Several consent screens answered for one app are one card; one whose code was never exchanged for tokens
    did not connect it."""
    from healthledger.auth.app_launch import AppAccess
    from healthledger.web.apps import connected_apps

    day = datetime(2026, 12, 1, tzinfo=UTC)
    accesses = [
        AppAccess("a3", "pocket", "Pocket Health", ("launch/patient", "patient/Patient.rs"), day + timedelta(days=2), None),
        AppAccess("a2", "pocket", "Pocket Health", ("launch/patient", "patient/Observation.rs"), day + timedelta(days=1),
                  day + timedelta(days=3)),
        AppAccess("a1", "pocket", "Pocket Health", ("launch/patient",), day, None),
        AppAccess("b1", "never", "Never Finished", ("launch/patient",), day, None),
    ]
    apps = connected_apps(accesses, completed={"a1", "a2"})
    assert [(a.client_id, a.scopes, a.connected_at, a.last_used_at) for a in apps] == [
        ("pocket", ("launch/patient", "patient/Observation.rs"), day, day + timedelta(days=3))]
    assert connected_apps(accesses, completed=set()) == []


def test_a_research_export_in_the_history_says_what_was_delivered() -> None:
    """An export to a study delivers a de-identified copy under the study pseudonym (of the Patient resource: the
    year of birth and sex), never "your name and date of birth"."""
    from fhir_adapters.readable.access import describe_access
    from healthledger.web.history import access_headline

    def exported(resource_type: str, purpose: str = "HRESCH") -> str:
        return access_headline(describe_access({
            "resourceType": "AuditEvent", "id": "1", "recorded": "2026-12-01T10:00:00Z", "outcome": "0",
            "subtype": [{"code": "operation"}],
            "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                            "code": purpose}]}],
            "agent": [{"requestor": True, "who": {"display": "Research study: Heart health over 40"}}],
            "entity": [{"role": {"code": "4"}, "type": {"code": resource_type}}]}))

    assert exported("Patient") == ("received your year of birth and sex, de-identified: under your study pseudonym, "
                                   "without your name, address or record number")
    assert exported("Observation").startswith("received a de-identified copy of your test results")
    assert "name and date of birth" not in exported("Patient")
    assert exported("Patient", purpose="TREAT") == "exported your name and date of birth"
