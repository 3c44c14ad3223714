"""`$feasibility`: a differentially private count of the patients meeting a study's criteria, under a per-study
(and per-researcher) ε budget kept in the database: thresholded on the noisy count, repeats answered from the
stored release, the budget enforced across a restart and between concurrent workers; owner only; logged.
On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir_api_support import AUTH, api_settings, build_app, dispose
from flask import Flask
from research_support import (
    DIABETES_STUDY,
    add_patient,
    parameter,
    put_study,
    register_researcher,
    study_resource,
)
from sqlalchemy import select

from healthledger.audit.entries import decode_entry
from healthledger.audit.models import AccessLogEntry
from healthledger.config import Settings
from healthledger.db import session_factory
from healthledger.research.data_models import FeasibilityRelease
from healthledger.research.feasibility import canonical_question, half_width, noisy_count

FHIR = "application/fhir+json"
MATCHING = 25
# ε 2 per question (noise scale 0.5: the 95 % half-width is 2), two questions per study.
BUDGET = {"feasibility_epsilon_per_query": 2.0, "feasibility_epsilon_per_study": 4.0,
          "feasibility_epsilon_per_researcher": 100.0}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp(f"feasibility-{request.param}")
    url = request.getfixturevalue("postgres_module_schema_url")[0] if request.param == "postgres" else ""
    settings = api_settings(data_dir, url, **BUDGET)
    app = build_app(settings)
    for _ in range(MATCHING):
        add_patient(app)
    add_patient(app, gender="male")
    add_patient(app, diabetic=False)
    add_patient(app, birth="2015-01-01")
    add_patient(app, birth="1950")  # a partial birth date: no credential possible, never counted
    token = register_researcher(app)
    other = register_researcher(app, "other-lab")
    yield {"app": app, "settings": settings, "token": token, "other": other}
    dispose(app)


def ask(app: Flask, study_id: str, token: str, criteria: dict[str, Any] | None = None) -> Any:
    body = b""
    headers = {"Authorization": f"Bearer {token}", "Accept": FHIR}
    if criteria is not None:
        body = orjson.dumps({"resourceType": "Parameters",
                             "parameter": [{"name": "criteria", "valueString": json.dumps(criteria)}]})
        headers["Content-Type"] = FHIR
    return app.test_client().post(f"/fhir/ResearchStudy/{study_id}/$feasibility", data=body, headers=headers)


def feasibility_entries(app: Flask) -> list[Any]:
    sessions = session_factory(app.extensions["healthledger.engine"])
    with sessions() as s:
        bodies = s.scalars(select(AccessLogEntry.body).order_by(AccessLogEntry.id)).all()
    return [e for e in map(decode_entry, bodies) if e.reason.startswith("feasibility")]


def test_noisy_count_thresholded_repeated_and_budgeted(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    put_study(app, study_resource("feas-1"))
    logged = len(feasibility_entries(app))

    first = ask(app, "feas-1", token)
    assert first.status_code == 200, first.get_data(as_text=True)
    params = first.get_json()
    count = parameter(params, "count")
    low, high = parameter(params, "interval")["low"]["value"], parameter(params, "interval")["high"]["value"]
    # The noise at ε 2 (scale 0.5) exceeds 10 with probability ~e^-20; the interval is the count ± its half-width.
    assert count is not None and abs(count - MATCHING) <= 10
    assert (low, high) == (count - half_width(2.0), count + half_width(2.0))
    assert parameter(params, "epsilonSpentNow") == 2.0 and parameter(params, "epsilonSpent") == 2.0
    assert parameter(params, "epsilonRemaining") == 2.0 and parameter(params, "confidence") == 0.95
    assert parameter(params, "repeat") is False and parameter(params, "countBelow") is None

    # The same question, written in another order, is answered from the stored release.
    reordered = {"conditions": DIABETES_STUDY["conditions"], "sex": {"$eq": "female"}, "age": {"$between": [40, 80]}}
    assert canonical_question(reordered) == canonical_question(DIABETES_STUDY)
    assert canonical_question({"hba1c": {"$gte": 6.50}}) == canonical_question({"hba1c": {"$gte": 6.5}})
    again = ask(app, "feas-1", token, reordered).get_json()
    assert parameter(again, "count") == count and parameter(again, "repeat") is True
    assert parameter(again, "epsilonSpentNow") == 0.0 and parameter(again, "epsilonRemaining") == 2.0

    # Nobody is below 1 year old: the noisy count is under the threshold, shown as "fewer than 11".
    small = ask(app, "feas-1", token, {"age": {"$lte": 0}}).get_json()
    assert parameter(small, "count") is None and parameter(small, "countBelow") == 11
    assert parameter(small, "result") == "fewer than 11"
    assert parameter(small, "interval")["low"]["value"] == 0
    assert parameter(small, "epsilonRemaining") == 0.0

    spent = ask(app, "feas-1", token, {"age": {"$gte": 18}})
    assert spent.status_code == 403
    outcome = spent.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and "budget is spent" in outcome["issue"][0]["diagnostics"]
    assert parameter(ask(app, "feas-1", token).get_json(), "repeat") is True  # repeats still answered

    entries = feasibility_entries(app)[logged:]
    assert [e.reason.split("(")[0] for e in entries] == [
        "feasibility:release", "feasibility:repeat", "feasibility:release", "feasibility:budget-spent",
        "feasibility:repeat"]
    assert all(e.resource_id == "feas-1" and e.actor == "client:research" and not e.patient_pseudonym for e in entries)


def test_budget_survives_a_restart(world: dict[str, Any], tmp_path: Path) -> None:
    app, token = world["app"], world["token"]
    put_study(app, study_resource("feas-restart"))
    assert ask(app, "feas-restart", token).status_code == 200
    assert ask(app, "feas-restart", token, {"age": {"$gte": 20}}).status_code == 200
    settings: Settings = world["settings"]
    restarted = build_app(settings)  # a new process on the same database
    try:
        assert ask(restarted, "feas-restart", token, {"age": {"$gte": 30}}).status_code == 403
        repeat = ask(restarted, "feas-restart", token, {"age": {"$gte": 20}})
        assert repeat.status_code == 200 and parameter(repeat.get_json(), "repeat") is True
        # More budget configured later does not refill a study's budget: it was fixed when first used.
        more = build_app(settings.model_copy(update={"feasibility_epsilon_per_study": 100.0}))
        try:
            assert ask(more, "feas-restart", token, {"age": {"$gte": 30}}).status_code == 403
        finally:
            dispose(more)
    finally:
        dispose(restarted)


def test_concurrent_workers_cannot_overspend(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    put_study(app, study_resource("feas-race"))
    workers = [app, build_app(world["settings"]), build_app(world["settings"])]
    statuses: list[int] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        status = ask(workers[i % 3], "feas-race", token, {"age": {"$gte": 20 + i}}).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers[1:]:
        dispose(w)
    assert sorted(statuses) == [200, 200, 403, 403, 403, 403]
    sessions = session_factory(app.extensions["healthledger.engine"])
    with sessions() as s:
        released = s.scalars(select(FeasibilityRelease.epsilon_micro).where(FeasibilityRelease.study_id == "feas-race")).all()
    assert sum(released) == 4_000_000


def test_only_the_owner_may_ask_and_others_learn_nothing(world: dict[str, Any]) -> None:
    app = world["app"]
    put_study(app, study_resource("feas-owned"))
    not_owner = ask(app, "feas-owned", world["other"])
    missing = ask(app, "no-such-study", world["other"])
    assert not_owner.status_code == missing.status_code == 404
    assert not_owner.get_json()["issue"][0]["diagnostics"].replace("feas-owned", "X") == \
        missing.get_json()["issue"][0]["diagnostics"].replace("no-such-study", "X")
    dev = app.test_client().post("/fhir/ResearchStudy/feas-owned/$feasibility", headers={**AUTH, "Accept": FHIR})
    assert dev.status_code == 404  # the unrestricted development client is not the study's researcher
    assert app.test_client().post("/fhir/ResearchStudy/feas-owned/$feasibility").status_code == 401
    denied = [e for e in feasibility_entries(app) if e.resource_id in ("feas-owned", "no-such-study")]
    assert len(denied) == 3 and all(e.decision == "deny" for e in denied)


@pytest.mark.parametrize(("criteria", "message"), [
    ({"age": {"$ne": 40}}, "operator '$ne' is not supported"),
    ({"shoe_size": {"$eq": 40}}, "unknown attribute"),
    ({"conditions": {"$in": [f"c{i}" for i in range(9)]}}, "at most 8 codes"),
])
def test_criteria_the_circuit_cannot_express_are_named_and_cost_nothing(
    world: dict[str, Any], criteria: dict[str, Any], message: str
) -> None:
    app, token = world["app"], world["token"]
    put_study(app, study_resource("feas-bad"))
    resp = ask(app, "feas-bad", token, criteria)
    assert resp.status_code == 400 and message in resp.get_json()["issue"][0]["diagnostics"]
    ok = ask(app, "feas-bad", token).get_json()
    assert parameter(ok, "epsilonSpent") == 2.0


def test_malformed_bodies_are_clear_400s(world: dict[str, Any]) -> None:
    app, token = world["app"], world["token"]
    put_study(app, study_resource("feas-body"))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR, "Accept": FHIR}
    client = app.test_client()
    for body, fragment in [
        (b"{", "JSON"),
        (orjson.dumps({"resourceType": "Patient"}), "Parameters"),
        (orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "epsilon", "valueDecimal": 9}]}), "unknown"),
        (orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "criteria", "valueString": "[1]"}]}), "object"),
        (orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "criteria", "valueString": "[" * 5000}]}),
         "JSON"),
    ]:
        resp = client.post("/fhir/ResearchStudy/feas-body/$feasibility", data=body, headers=headers)
        assert resp.status_code == 400, (body[:40], resp.get_data(as_text=True))
        assert fragment in resp.get_json()["issue"][0]["diagnostics"]


def test_the_mechanism_is_unbiased_discrete_noise() -> None:
    """OpenDP's discrete Laplace at ε 1: integers, centred on the true count, spread as the scale says."""
    draws = [noisy_count(100, 1.0) for _ in range(400)]
    assert all(isinstance(d, int) for d in draws)
    mean = sum(draws) / len(draws)
    assert 99.0 < mean < 101.0  # sd of the mean ~0.07 (variance 2e/(e-1)^2 ≈ 1.84 per draw)
    inside = sum(abs(d - 100) <= half_width(1.0) for d in draws) / len(draws)
    assert inside >= 0.9


def test_the_hospital_sees_budgets_and_releases_on_the_command_line(world: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from healthledger.cli import cli
    from healthledger.runtime import Runtime

    app, token = world["app"], world["token"]
    put_study(app, study_resource("feas-cli"))
    shown = parameter(ask(app, "feas-cli", token).get_json(), "count")
    settings: Settings = world["settings"]
    runtime = Runtime(load_settings=lambda **o: settings.model_copy(update=o))
    try:
        result = CliRunner().invoke(cli, ["research-data", "budgets", "--json"], obj=runtime)
        text = CliRunner().invoke(cli, ["research-data", "budgets"], obj=runtime).stdout
    finally:
        runtime.close()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    budgets = {b["holder"]: b for b in report["budgets"]}
    assert budgets["ResearchStudy/feas-cli"] == {"holder": "ResearchStudy/feas-cli", "epsilon_spent": 2.0,
                                                  "epsilon_total": 4.0}
    assert budgets["researcher:client:research"]["epsilon_total"] == 100.0
    mine = [r for r in report["releases"] if r["study"] == "feas-cli"]
    assert [(r["epsilon"], r["shown"], r["by"]) for r in mine] == [(2.0, shown, "client:research")]
    assert "ResearchStudy/feas-cli" in text and "ε 2 of 4 spent" in text
