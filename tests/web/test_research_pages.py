"""The researcher portal and the patient's research pages over the real app (Flask's test client as the browser).

A researcher signs in, creates a study with the form (no JSON typed), sees the API's refusals next to the fields
with what they typed kept, publishes it, asks a private feasibility count and sees its privacy budget, and
requests the de-identified export. A patient reads the open study in words and what the researcher learns.
Everything goes through the research API as the signed-in person; what the pages show is checked against it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from consent_world import PASSWORD, UNIVERSITY, World
from flask.testing import FlaskClient

from fhir_adapters.readable.studies import criteria_sentences
from healthledger.auth.users import AccountNames, create_user

FHIR = "application/fhir+json"
NEXT_YEAR = (date.today() + timedelta(days=365)).isoformat()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = World.build(tmp_path_factory.mktemp("research-pages"))
    built.dev_put({"resourceType": "Practitioner", "id": "pi", "name": [{"family": "Curie", "given": ["Marie"]}]})
    store = built.app.extensions["healthledger.store"]
    with built.sessions.begin() as s:
        create_user(s, AccountNames(store), username="rita", password=PASSWORD, role="researcher",
                    organization=UNIVERSITY, now=datetime.now(UTC), display_name="Rita Researcher")
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
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def signed_in(world: World, username: str) -> FlaskClient:
    client = world.app.test_client()
    page = client.get("/app/login").get_data(as_text=True)
    assert client.post("/app/login", data={"csrf_token": csrf(page), "username": username,
                                           "password": PASSWORD}).status_code == 303
    return client


@pytest.fixture(scope="module")
def rita(world: World) -> FlaskClient:
    return signed_in(world, "rita")


GOOD_STUDY = {
    "title": "Diabetes and kidneys", "description": "Whether kidney function changes with long-term blood sugar.",
    "sponsor": UNIVERSITY, "investigator": "Practitioner/pi", "ethics_board": "University IRB",
    "ethics_number": "IRB-2026-7", "enrol_start": "", "enrol_end": NEXT_YEAR, "max_participants": "50",
    "min_age": "40", "max_age": "80", "sexes": ["female", "male", "other", "unknown"],
    "conditions_in": "http://snomed.info/sct|44054006", "conditions_not_in": "", "hba1c_min": "6.5",
    "categories": ["Observation", "Condition"], "data_start": "2015-01-01",
}


def test_a_researcher_signs_in_to_the_portal_and_creates_a_study_with_the_form(world: World, rita: FlaskClient) -> None:
    home = rita.get("/app/").get_data(as_text=True)
    assert 'href="/app/research"' in home and "Go to your studies" in home
    page = rita.get("/app/research/new").get_data(as_text=True)
    assert 'aria-label="Main"' in page and "Create a study" in page
    assert re.search(r'<label for="min_age">Youngest age \(years\)</label>', page)
    assert "Marie Curie" in page  # the investigators offered come from the API's Practitioner list

    # The API's refusal (no ethics approval) is next to its field, and everything typed is kept.
    token = csrf(page)
    missing_ethics = {**GOOD_STUDY, "ethics_number": "", "csrf_token": token}
    answer = rita.post("/app/research/new", data=missing_ethics)
    body = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert "ethics approval" in field_errors(body)["ethics_number"]
    assert 'value="Diabetes and kidneys"' in body and "http://snomed.info/sct|44054006" in body
    # A criterion the circuit cannot express (a bound out of range) is named by the compiler, next to age.
    too_old = rita.post("/app/research/new", data={**GOOD_STUDY, "max_age": "151", "csrf_token": token})
    assert too_old.status_code == 400 and field_errors(too_old.get_data(as_text=True))["max_age"] == "0 to 150"
    bad_code = rita.post("/app/research/new", data={**GOOD_STUDY, "conditions_in": "diabetes", "csrf_token": token})
    assert "system|code" in field_errors(bad_code.get_data(as_text=True))["conditions_in"]
    past = rita.post("/app/research/new", data={**GOOD_STUDY, "enrol_end": "2020-01-01", "csrf_token": token})
    assert "in the past" in field_errors(past.get_data(as_text=True))["enrol_end"]

    created = rita.post("/app/research/new", data={**GOOD_STUDY, "csrf_token": token})
    assert created.status_code == 303, created.get_data(as_text=True)[:2000]
    study_id = created.headers["Location"].rstrip("/").rpartition("/")[2]
    stored = world.client.get(f"/fhir/ResearchStudy/{study_id}", headers=world.headers("research")).get_json()
    assert stored["status"] == "draft" and stored["title"] == "Diabetes and kidneys"
    page = text(rita.get(f"/app/research/{study_id}").get_data(as_text=True))
    assert "Draft: not published yet" in page and "Aged between 40 and 80 years." in page
    assert "SNOMED CT 44054006" in page and "Publish the study" in page
    world.study_id = study_id  # type: ignore[attr-defined]


def test_the_researcher_publishes_asks_feasibility_and_requests_the_export(world: World, rita: FlaskClient) -> None:
    study_id = world.study_id  # type: ignore[attr-defined]
    page = rita.get(f"/app/research/{study_id}").get_data(as_text=True)
    published = rita.post(f"/app/research/{study_id}/publish", data={"csrf_token": csrf(page)})
    assert published.status_code == 303
    world.sync()
    page = rita.get(f"/app/research/{study_id}").get_data(as_text=True)
    assert "Open: published on the ledger" in text(page) and "No one has joined yet." in page

    asked = rita.post(f"/app/research/{study_id}/feasibility", data={"csrf_token": csrf(page)})
    words = text(asked.get_data(as_text=True))
    assert asked.status_code == 200
    # No patient here is diabetic: "fewer than 11", unless the noise is large (a few % of runs).
    assert re.search(r"Fewer than 11|About \d+ patients \(noisy count\)", words), words
    assert re.search(r"Study budget ε 0\.25 spent of 1(\.0)?, 0\.75 left", words), words
    again = text(rita.post(f"/app/research/{study_id}/feasibility", data={"csrf_token": csrf(page)}).get_data(as_text=True))
    assert "no budget spent" in again and "ε 0.25 spent of" in again

    kicked = rita.post(f"/app/research/{study_id}/export", data={"csrf_token": csrf(page)})
    assert kicked.status_code == 303
    status_url = kicked.headers["Location"]
    for _ in range(50):
        status = rita.get(status_url)
        if "Ready:" in status.get_data(as_text=True):
            break
        world.app.extensions["healthledger.research_exports"].wake()
        import time

        time.sleep(0.2)
    assert "Ready:" in status.get_data(as_text=True)
    assert f"/app/research/{study_id}" in rita.get(f"/app/research/{study_id}").get_data(as_text=True)


def test_the_study_page_lists_past_counts_and_exports_and_my_activity_lists_my_own_requests(
        world: World, rita: FlaskClient) -> None:
    study_id = world.study_id  # type: ignore[attr-defined]
    # Another researcher (an API client of the same organisation) tries rita's study: refused, and not hers to see.
    other = world.client.post(f"/fhir/ResearchStudy/{study_id}/$feasibility", headers=world.headers("research"))
    assert other.status_code == 404
    page = rita.get(f"/app/research/{study_id}").get_data(as_text=True)
    words = text(page)
    released = re.search(r"Counts released so far .*? Asked by (.*?) Enrolment", words)
    assert released and re.search(r"(Fewer than 11|About \d+ patients \(noisy count\)) 0 to \d+ 0\.25 .* You",
                                  released.group(1)), words
    assert "Your exports" in words and re.search(r"Export [0-9a-f]{8} , .* Ready", words), words
    job = re.search(r'/export/([0-9a-f]{32})"', page)
    assert job, page
    status = rita.get(f"/app/research/{study_id}/export/{job.group(1)}").get_data(as_text=True)
    if "Ready:" in status and (name := re.search(r'/export/[0-9a-f]{32}/([A-Za-z]+\.\d+\.ndjson)"', status)):
        assert rita.get(f"/app/research/{study_id}/export/{job.group(1)}/{name.group(1)}").status_code == 200

    activity = rita.get("/app/research/activity")
    assert activity.status_code == 200
    body = activity.get_data(as_text=True)
    words = text(body)
    assert 'aria-current="page"' in body and "My activity" in words
    assert "You requested a de-identified export." in words
    assert "A private count was released and charged to the privacy budget." in words
    assert "An earlier count was repeated: no budget spent." in words
    assert "The export was completed; its manifest's hash was recorded." in words
    assert f"ResearchStudy/{study_id}" in words
    assert "Refused" not in words  # the other researcher's refused request is theirs, not rita's
    assert "Patient/" not in body


def test_other_organisations_and_patients_cannot_use_the_portal(world: World) -> None:
    ann = signed_in(world, "ann")
    assert ann.get("/app/research").status_code == 403
    assert ann.get("/app/research/new").status_code == 403


def test_criteria_in_plain_words() -> None:
    assert criteria_sentences({"age": {"$gte": 18}, "sex": {"$in": ["female"]}, "bmi": {"$between": [30, 45]},
                               "conditions": {"$nin": ["http://snomed.info/sct|1"]}}) == [
        "Aged at least 18 years.", "Open to women.",
        "Your latest body mass index is between 30 and 45 kg/m² (without this measurement in your record you cannot join).",
        "You have none of these conditions in your record: SNOMED CT 1.",
    ]


def test_a_patient_reads_the_open_study_in_words_and_what_the_researcher_learns(world: World) -> None:
    study_id = world.study_id  # type: ignore[attr-defined]
    ann = signed_in(world, "ann")
    listing = text(ann.get("/app/studies").get_data(as_text=True))
    assert "Diabetes and kidneys" in listing and "Run by university." in listing
    page = ann.get(f"/app/studies/{study_id}").get_data(as_text=True)
    words = text(page)
    assert "Aged between 40 and 80 years." in words
    assert "Your latest HbA1c (long-term blood sugar) is at least 6.5 %" in words
    assert "They will not learn Your name, date of birth, address, record number" in words
    assert 'id="join"' in page and "js/study-join.js" in page and '<label for="password">' in page
    # Not a participant: leaving is refused by the API, and said next to the password field.
    left = ann.post(f"/app/studies/{study_id}/leave", data={"csrf_token": csrf(page), "password": PASSWORD})
    assert left.status_code == 400 and "password" in field_errors(left.get_data(as_text=True))
    # A notice: ann has not opened her credential, so every open study she has not joined may be for her.
    notices = text(ann.get("/app/notices").get_data(as_text=True))
    assert "You may be able to join the study “Diabetes and kidneys”" in notices


def test_the_page_serves_the_poseidon_constants_the_nullifier_needs(world: World) -> None:
    constants = world.client.get("/app/zk/poseidon.json").get_json()
    assert constants["t"] == 3 and len(constants["C"]) == 3 * (8 + 57) and len(constants["M"]) == 3


def test_enrolment_counts_per_day_show_no_pseudonym() -> None:
    from healthledger.web.research_portal import enrolment_chart, enrolment_days

    subjects = [{"period": {"start": "2026-11-02"}, "individual": {"identifier": {"value": "0xaa"}}},
                {"period": {"start": "2026-11-02", "end": "2026-11-05"}, "individual": {"identifier": {"value": "0xbb"}}},
                {"period": {"start": "2026-11-03"}, "individual": {"identifier": {"value": "0xcc"}}}]
    days = enrolment_days(subjects)
    assert [(d.day, d.joined, d.left, d.taking_part) for d in days] == [
        ("2 November 2026", 2, 0, 2), ("3 November 2026", 1, 0, 3), ("5 November 2026", 0, 1, 2)]
    assert "0x" not in repr(days)
    bars = enrolment_chart(days)
    assert [round(b.height) for b in bars] == [80, 120, 80]


def test_activity_entries_in_words() -> None:
    from healthledger.web.research_portal import activity_entry, past_exports

    event = {"resourceType": "AuditEvent", "id": "7", "recorded": "2026-12-01T10:00:00Z", "outcome": "4",
             "subtype": [{"code": "operation"}], "outcomeDesc": "export:download:not-found:abc",
             "agent": [{"requestor": True, "who": {"identifier": {"value": "client:research"}}}],
             "entity": [{"role": {"code": "4"}, "type": {"code": "Group"}, "what": {"reference": "Group/g"}}]}
    entry = activity_entry(event)
    assert (entry.what, entry.target, entry.outcome) == ("Export", "Group/g", "denied")
    assert entry.explanation == "Refused: no such export file (cancelled, expired or not yours)."
    read = activity_entry({**event, "outcome": "0", "outcomeDesc": "no-patient-compartment", "subtype": [{"code": "read"}]})
    assert (read.what, read.explanation) == ("Opened", "Allowed: no patient's data.")
    jobs = past_exports({"resourceType": "Parameters", "parameter": [{"name": "export", "part": [
        {"name": "job", "valueString": "j1"}, {"name": "status", "valueCode": "expired"},
        {"name": "requestedAt", "valueInstant": "2026-11-30T09:00:00Z"},
        {"name": "output", "part": [{"name": "type", "valueCode": "Condition"}, {"name": "count", "valueInteger": 3}]},
        {"name": "output", "part": [{"name": "type", "valueCode": "Observation"}, {"name": "count", "valueInteger": 9}]},
    ]}]})
    assert [(j.job, j.status, j.requested, j.counts) for j in jobs] == [
        ("j1", "Expired (files removed)", "30 November 2026", [("Condition", 3), ("Observation", 9)])]


def test_a_colleague_of_the_owner_sees_no_participant_of_the_study(world: World, rita: FlaskClient) -> None:
    """The study's participants are its owner's to see (as its counts and exports are): another researcher of the
    same organisation gets what a study that does not exist gives, by search and by id."""
    import json

    from healthledger.research.models import Enrolment, PublishedStudy

    study_id = world.study_id  # type: ignore[attr-defined]
    with world.sessions.begin() as s:
        item = s.get(PublishedStudy, (world.app.extensions["healthledger.store"].tenant, study_id)).register_item
        s.add(Enrolment(id="colleague-test-subject", tenant=world.app.extensions["healthledger.store"].tenant,
                        study_id=study_id, nullifier="1", enrollee="0x" + "ab" * 20, root="1", enrol_item=item,
                        consent_id="none", enrolled_at=1.0))
    try:
        owner = rita.get(f"/fhir/ResearchSubject?study=ResearchStudy/{study_id}", headers={"Accept": FHIR})
        assert owner.status_code == 200 and owner.get_json()["total"] == 1
        colleague = world.client.get(f"/fhir/ResearchSubject?study=ResearchStudy/{study_id}",
                                     headers=world.headers("research"))
        unknown = world.client.get("/fhir/ResearchSubject?study=ResearchStudy/no-such-study",
                                   headers=world.headers("research"))
        assert colleague.status_code == unknown.status_code == 200
        assert colleague.get_json()["total"] == unknown.get_json()["total"] == 0
        assert "ab" * 20 not in colleague.get_data(as_text=True)
        by_id = world.client.get("/fhir/ResearchSubject/colleague-test-subject", headers=world.headers("research"))
        missing = world.client.get("/fhir/ResearchSubject/no-such-subject0", headers=world.headers("research"))
        assert by_id.status_code == missing.status_code == 404
        assert (json.dumps(by_id.get_json()).replace("colleague-test-subject", "ID")
                == json.dumps(missing.get_json()).replace("no-such-subject0", "ID"))
    finally:
        with world.sessions.begin() as s:
            s.query(Enrolment).filter(Enrolment.id == "colleague-test-subject").delete()


def test_a_colleague_reads_the_study_and_is_told_what_only_its_owner_can_do(world: World) -> None:
    """Another researcher of the owner's organisation sees the study, not buttons that would fail: counts,
    participants and exports are the owner's, and the page names them."""
    study_id = world.study_id  # type: ignore[attr-defined]
    store = world.app.extensions["healthledger.store"]
    with world.sessions.begin() as s:
        create_user(s, AccountNames(store), username="rob", password=PASSWORD, role="researcher",
                    organization=UNIVERSITY, now=datetime.now(UTC), display_name="Rob Colleague")
    rob = signed_in(world, "rob")
    page = rob.get(f"/app/research/{study_id}").get_data(as_text=True)
    words = text(page)
    assert "Only the owner can ask how many patients meet its criteria" in words and "Rita Researcher" in words
    assert "Ask how many patients meet the criteria" not in words and "Request an export" not in words
    assert "Counts released so far" not in words and "taking part now" not in words
    for action, says in (("feasibility", "ask how many patients meet the criteria"), ("export", "request an export")):
        answer = rob.post(f"/app/research/{study_id}/{action}", data={"csrf_token": csrf(page)})
        assert answer.status_code == 303
        after = text(rob.get(answer.headers["Location"]).get_data(as_text=True))
        assert f"Only the study's owner, Rita Researcher, can {says}." in after
    # Pages of the patients' side are not for researchers: the app's own page, with the researcher's home.
    records = rob.get("/app/records")
    body = records.get_data(as_text=True)
    assert records.status_code == 403 and "Not a page for your account" in body and 'href="/app/">' in body


def test_a_researcher_on_a_fresh_install_leads_the_study_themself(world: World, rita: FlaskClient) -> None:
    """No Practitioner is needed: the investigator left as "Me" is the researcher, a Practitioner kept for their
    account (made once, named as they are)."""
    page = rita.get("/app/research/new").get_data(as_text=True)
    assert "Me (I lead this study)" in page
    ids = []
    for title in ("Led by me", "Led by me again"):
        created = rita.post("/app/research/new", data={**GOOD_STUDY, "title": title, "investigator": "",
                                                       "csrf_token": csrf(page)})
        assert created.status_code == 303, field_errors(created.get_data(as_text=True))
        study_id = created.headers["Location"].rstrip("/").rpartition("/")[2]
        ids.append(world.dev_read(f"ResearchStudy/{study_id}")["principalInvestigator"]["reference"])
    assert ids[0] == ids[1] and ids[0].startswith("Practitioner/")
    assert world.dev_read(ids[0])["name"][0]["text"] == "Rita Researcher"
    shown = text(rita.get(created.headers["Location"]).get_data(as_text=True))
    assert "Rita Researcher" in shown


def test_every_problem_of_a_new_study_is_reported_at_once_next_to_its_field(world: World, rita: FlaskClient) -> None:
    page = rita.get("/app/research/new").get_data(as_text=True)
    wrong = {**GOOD_STUDY, "max_age": "151", "conditions_in": "diabetes", "enrol_end": "2020-01-01",
             "ethics_number": "", "sponsor": "", "categories": [], "max_participants": "", "csrf_token": csrf(page)}
    answer = rita.post("/app/research/new", data=wrong)
    assert answer.status_code == 400
    errors = field_errors(answer.get_data(as_text=True))
    assert set(errors) == {"max_age", "conditions_in", "enrol_end", "ethics_number", "sponsor", "categories",
                           "max_participants"}, errors
    assert "in the past" in errors["enrol_end"] and "ethics approval" in errors["ethics_number"]
