"""The research pages in a real browser (Debian chromium, headless, Playwright; elements by role and label), against
the app on loopback with a ledger worker beside it: a researcher creates a study with the form (an API refusal
shown next to its field first), publishes it and asks a private feasibility count; a patient who does not meet
the criteria checks on their device and learns so with nothing sent; a patient who does joins by a proof made in
the page's Web Worker (a first attempt cancelled), then the researcher sees one participant, requests the export
and downloads a de-identified file; the patient leaves. axe-core at every state, 375 and 1280 px, screenshots in
test-artifacts/screenshots/. One server and one browser for the module: proving costs seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
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
from consent_world import HOSPITAL, PASSWORD, UNIVERSITY, World
from support import node_tool

from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.auth.users import AccountNames, create_user

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.node]
DIABETES = "http://snomed.info/sct|44054006"
NEXT_YEAR = (date.today() + timedelta(days=365)).isoformat()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_chromium()
    require_axe()
    node_tool("snarkjs")
    built = World.build(tmp_path_factory.mktemp("research-browser"))
    built.dev_put({"resourceType": "Practitioner", "id": "pi", "name": [{"family": "Curie", "given": ["Marie"]}]})
    dora = built.add_patient("dora", HOSPITAL)  # born 1970: in the age range; diabetic below
    built.dev_create({
        "resourceType": "Condition", "subject": {"reference": f"Patient/{dora}"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}], "text": "Diabetes of Dora"},
        "onsetDateTime": "2015-03-02",
    })
    store = built.app.extensions["healthledger.store"]
    with built.sessions.begin() as s:
        create_user(s, AccountNames(store), username="rita", password=PASSWORD, role="researcher",
                    organization=UNIVERSITY, now=datetime.now(UTC))
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
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=server.url, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: errors.append(str(e)))
    yield opened
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
    assert not [e for e in errors if "Uncaught" in e], errors


def every_width(page: Any, name: str) -> None:
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        check_accessibility(page, f"{name} at {width}px")
        no_horizontal_scroll(page, f"{name} at {width}px")
        screenshot(page, f"research-{name}-{label}")
    page.set_viewport_size({"width": 1280, "height": 900})


def sign_in(page: Any, username: str) -> None:
    page.goto("/app/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


STATE: dict[str, str] = {}


def test_1_a_researcher_creates_and_publishes_a_study_and_asks_feasibility(page: Any, world: World) -> None:
    sign_in(page, "rita")
    page.get_by_role("link", name="Go to your studies").click()
    page.get_by_role("heading", name="My studies").wait_for()
    every_width(page, "my-studies-empty")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Create a study").click()
    page.get_by_label("Title").fill("Diabetes in later life")
    page.get_by_label("What the study is for").fill("How diabetes care changes after 40.")
    page.get_by_label("Sponsor").select_option(label="university")
    page.get_by_label("Principal investigator").select_option(label="Marie Curie")
    page.get_by_label("Ethics board").fill("University IRB")
    page.get_by_label("Enrolment closes").fill(NEXT_YEAR)
    page.get_by_label("Most participants").fill("20")
    page.get_by_label("Youngest age (years)").fill("40")
    page.get_by_label("Oldest age (years)").fill("80")
    page.get_by_label("Has at least one of these condition codes").fill(DIABETES)
    page.get_by_role("checkbox", name=re.compile("^Condition:")).check()
    page.get_by_role("checkbox", name=re.compile("^Observation:")).check()
    page.get_by_label("Data from").fill("2010-01-01")
    every_width(page, "new-study")
    page.get_by_role("button", name="Save as a draft").click()  # no approval number: the API refuses
    error = page.locator("#ethics_number-error")
    error.wait_for()
    assert "ethics approval" in error.inner_text()
    assert page.get_by_label("Title").input_value() == "Diabetes in later life"  # kept
    assert page.get_by_label("Has at least one of these condition codes").input_value() == DIABETES
    every_width(page, "new-study-error")
    page.get_by_label("Ethics approval number").fill("IRB-2026-12")
    page.get_by_role("button", name="Save as a draft").click()
    page.get_by_role("heading", name="Diabetes in later life").wait_for()
    assert page.get_by_text("Draft: not published yet").is_visible()
    assert page.get_by_text("Aged between 40 and 80 years.").is_visible()
    STATE["study"] = page.url.rstrip("/").rpartition("/")[2]
    every_width(page, "study-draft")

    page.get_by_role("button", name="Publish the study").click()
    page.get_by_text("Sent to the ledger").wait_for()
    for _ in range(60):  # the ledger worker confirms the registration within a few polls
        if page.locator("#study-status").inner_text().startswith("Open"):
            break
        page.wait_for_timeout(500)
        page.reload()
    assert page.locator("#study-status").inner_text() == "Open: published on the ledger"
    page.get_by_role("button", name="Ask how many patients meet the criteria").click()
    page.get_by_role("heading", name="How many patients qualify?").wait_for()
    # A noisy count: "fewer than 11" for the one diabetic patient, unless the noise is large (a few % of runs).
    answer = page.get_by_role("status").filter(has_text=re.compile(r"Fewer than 11|About \d+ patients \(noisy count\)"))
    assert answer.count() == 1, page.locator("main").inner_text()
    assert re.search(r"ε 0\.25 spent of 1(\.0)?, 0\.75 left", answer.inner_text())
    every_width(page, "study-feasibility")


def test_2_a_patient_who_does_not_qualify_checks_on_their_device_and_nothing_is_sent(
    page: Any, world: World, server: LiveServer,
) -> None:
    sign_in(page, "ann")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Notices").click()
    page.get_by_role("heading", name="You may be able to join the study “Diabetes in later life”").wait_for()
    every_width(page, "patient-notice")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Research studies").click()
    page.get_by_role("heading", name="Diabetes in later life").wait_for()
    every_width(page, "patient-studies")
    page.get_by_role("link", name=re.compile("^Read about Diabetes in later life")).click()
    page.get_by_role("heading", name="What the researcher will and will not learn").wait_for()
    page.get_by_role("button", name="Check if I can join").click()
    assert page.get_by_text("Enter your password").first.is_visible()  # next to the field
    every_width(page, "patient-study-error")
    page.get_by_label("Your password").fill("not my password at all")
    page.get_by_role("button", name="Check if I can join").click()
    page.locator("#password-error").filter(has_text="That password is not right").wait_for(timeout=60_000)
    assert page.get_by_label("Your password").get_attribute("aria-invalid") == "true"
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Check if I can join").click()
    page.get_by_text("You do not meet this study's criteria").wait_for(timeout=60_000)
    every_width(page, "patient-not-eligible")
    subjects = world.dev_read(f"ResearchSubject?study=ResearchStudy/{STATE['study']}")  # as the service
    assert subjects.get("total") == 0


def test_3_a_patient_joins_by_a_proof_made_in_the_page(page: Any, world: World, server: LiveServer) -> None:
    sign_in(page, "dora")
    page.goto(f"/app/studies/{STATE['study']}")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Check if I can join").click()
    page.get_by_text("You meet this study's criteria: you can join").wait_for(timeout=60_000)
    every_width(page, "patient-eligible")
    # A first attempt, cancelled while it proves: nothing is sent.
    page.get_by_role("button", name="Join the study").click()
    page.get_by_role("button", name="Cancel").click(timeout=60_000)
    page.get_by_text("Cancelled. Nothing was sent to the study.").wait_for()
    page.get_by_role("button", name="Join the study").click()
    page.locator("#join-steps li.current").filter(has_text=re.compile("proof|prover")).first.wait_for(timeout=60_000)
    every_width(page, "patient-proving")
    page.get_by_role("heading", name="You take part").wait_for(timeout=120_000)  # joined, then reloaded
    assert re.search(r"as 0x[0-9a-fA-F]{40}", page.get_by_text(re.compile("^Since")).inner_text())
    every_width(page, "patient-taking-part")
    page.get_by_role("link", name="Back to research studies").click()
    assert page.get_by_text("You take part").is_visible()
    every_width(page, "patient-studies-joined")
    subjects = world.dev_read(f"ResearchSubject?study=ResearchStudy/{STATE['study']}")  # as the service
    assert subjects.get("total") == 1 and "Patient" not in json.dumps(subjects)
    # The participants are the study owner's (rita's) to see, not another researcher's of her organisation.
    colleague = requests.get(f"{server.url}/fhir/ResearchSubject", params={"study": f"ResearchStudy/{STATE['study']}"},
                             headers=world.headers("research"), timeout=30).json()
    assert colleague.get("total") == 0


def test_4_the_researcher_sees_one_participant_and_downloads_the_export(page: Any, world: World) -> None:
    sign_in(page, "rita")
    page.get_by_role("link", name="Go to your studies").click()
    every_width(page, "my-studies")
    page.get_by_role("link", name="Diabetes in later life").click()
    assert page.get_by_text("1 taking part now.").is_visible()
    every_width(page, "study-enrolment")
    exports = world.app.extensions["healthledger.research_exports"]
    exports.enabled = False  # the job waits (queued) while the page in progress is checked
    try:
        page.get_by_role("button", name="Request an export").click()
        page.get_by_role("heading", name="Export of Diabetes in later life").wait_for()
        assert "Preparing the files" in page.get_by_role("status").inner_text()
        every_width(page, "export-progress")
    finally:
        exports.enabled = True  # the page's next poll wakes the worker
    link = page.get_by_role("link", name=re.compile(r"^Download .*\.ndjson"))
    page.locator("#export-progress[data-state=complete], #export-progress[data-state=error]").wait_for(timeout=90_000)
    assert link.count() > 0, page.locator("main").inner_text()  # the page followed the job and shows its files
    every_width(page, "export-ready")
    with page.expect_download() as download:
        link.first.click()
    body = Path(download.value.path()).read_text(encoding="utf-8")
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert lines and all(r["resourceType"] in ("Condition", "Observation") for r in lines)
    assert "Dora" not in body and "MRN-dora" not in body and world.patients["dora"] not in body

    # The study page lists the export (resources per type, nothing per participant) and the counts released;
    # My activity lists rita's own requests, never an entry naming Dora (her pseudonym is not on the page).
    page.goto(f"/app/research/{STATE['study']}")
    exports_table = page.get_by_role("region", name="Your exports")
    assert "Ready" in exports_table.inner_text() and re.search(r"(Condition|Observation): \d+", exports_table.inner_text())
    every_width(page, "study-history")
    page.get_by_role("link", name="My activity").click()
    page.get_by_role("heading", name="My activity").wait_for()
    activity = page.locator("main").inner_text()
    assert "You downloaded a file of an export." in activity and "You requested a de-identified export." in activity
    store = world.app.extensions["healthledger.store"]
    assert patient_pseudonym(store.indexer, world.patients["dora"]) not in page.content()
    assert "Patient/" not in page.content()
    every_width(page, "my-activity")


def test_5_the_patient_leaves_the_study(page: Any, world: World, server: LiveServer) -> None:
    sign_in(page, "dora")
    page.goto(f"/app/studies/{STATE['study']}")
    page.get_by_label("Your password").fill("not my password at all")
    page.get_by_role("button", name="Leave the study").click()
    page.get_by_text("That password is not right").first.wait_for()
    every_width(page, "patient-leave-error")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Leave the study").click()
    page.get_by_text("You left the study.").first.wait_for()
    every_width(page, "patient-left")
    subjects = world.dev_read(f"ResearchSubject?study=ResearchStudy/{STATE['study']}")  # as the service
    assert subjects["entry"][0]["resource"]["status"] == "withdrawn"
