"""`healthledger init` makes the hospital's own Organization the home organisation; clients and staff default to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from healthledger.app import bootstrap
from healthledger.cli import cli
from healthledger.config import Settings
from healthledger.db import make_engine
from healthledger.errors import Conflict
from healthledger.keys import key_provider_for
from healthledger.store.home_organization import (
    HOME_ORGANIZATION_REF,
    effective_home_organization,
    ensure_home_organization,
)
from healthledger.store.repository import store_for_settings


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return {"HEALTHLEDGER_DATA_DIR": str(tmp_path / "var"), "HEALTHLEDGER_LOAD_DEMO_DATA": "false",
            "HEALTHLEDGER_HOME_ORGANIZATION": ""}


def test_init_makes_names_and_keeps_the_home_organisation(env: dict[str, str]) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["init"], env=env)
    assert first.exit_code == 0, first.output
    assert 'home organisation: Organization/home "HealthLedger Hospital" (made' in first.output
    again = runner.invoke(cli, ["init"], env=env)
    assert '"HealthLedger Hospital" (kept' in again.output
    renamed = runner.invoke(cli, ["init", "--organization", "St. Example Hospital"], env=env)
    assert '"St. Example Hospital" (made' in renamed.output

    client = json.loads(runner.invoke(cli, ["clients", "add", "EHR", "--scopes", "system/*.rs", "--secret", "--json"],
                                      env=env).output)
    assert client["organization"] == HOME_ORGANIZATION_REF
    other = json.loads(runner.invoke(cli, ["clients", "add", "Lab", "--scopes", "system/*.rs", "--secret", "--json",
                                           "--organization", "Organization/lab"], env=env).output)
    assert other["organization"] == "Organization/lab"
    app = json.loads(runner.invoke(cli, ["clients", "add", "App", "--scopes", "patient/*.rs", "--public", "--json",
                                         "--redirect-uri", "https://app.example/cb"], env=env).output)
    assert app["organization"] == ""  # a patient app acts for the patient, not for the hospital
    staff = runner.invoke(cli, ["users", "add", "dr.b", "--role", "clinician", "--json"], env=env)
    assert json.loads(staff.output)["organization"] == HOME_ORGANIZATION_REF


def test_a_configured_home_organisation_wins_and_nothing_is_made(env: dict[str, str]) -> None:
    env = env | {"HEALTHLEDGER_HOME_ORGANIZATION": "Organization/st-elsewhere"}
    runner = CliRunner()
    out = runner.invoke(cli, ["init"], env=env).output
    assert "home organisation: Organization/st-elsewhere (HEALTHLEDGER_HOME_ORGANIZATION)" in out
    client = json.loads(runner.invoke(cli, ["clients", "add", "EHR", "--scopes", "system/*.rs", "--secret", "--json"],
                                      env=env).output)
    assert client["organization"] == "Organization/st-elsewhere"


def test_an_imported_organization_with_the_same_id_is_not_taken_over(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    done = bootstrap(settings)
    assert done.home_organization == "" and not done.home_made  # no demo data, no init: nothing made
    engine = make_engine(settings.database_url)
    store = store_for_settings(engine, key_provider_for("file", settings.keys_dir), settings)
    with store.unit_of_work() as uow:
        uow.update("Organization", "home", {"resourceType": "Organization", "id": "home", "name": "Imported"})
    assert effective_home_organization("", store) == ""
    with pytest.raises(Conflict, match="not made by"):
        ensure_home_organization(store)
    engine.dispose()


def test_the_first_start_with_demo_data_makes_it(tmp_path: Path) -> None:
    done = bootstrap(Settings(data_dir=tmp_path / "var", load_demo_data=True))
    assert (done.home_organization, done.home_made, done.demo_patients) == (HOME_ORGANIZATION_REF, True, 5)
    again = bootstrap(Settings(data_dir=tmp_path / "var", load_demo_data=True))
    assert (again.home_organization, again.home_made, again.demo_loaded) == (HOME_ORGANIZATION_REF, False, 0)
