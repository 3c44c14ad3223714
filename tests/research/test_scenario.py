"""The research workflow end to end, on the Synthea fixtures plus an invented patient: credentials issued, a
study published, matching patients join by proof with `healthledger study join` over real HTTP, a patient who
does not match cannot produce a proof, a second join is refused, one participant leaves; and what each party
sees (docs/trust-model.md, "Research": one assertion per row). SQLite + the embedded chain, and PostgreSQL +
anvil. Proving costs seconds: each patient proves once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from consent_world import FHIR, PASSWORD, UNIVERSITY, World
from fhir_api_support import JSON_HEADERS
from research_support import sources_phi
from sqlalchemy import select, text
from support import FIXTURES, node_tool
from werkzeug.serving import make_server

from fhir_adapters.research_study import (
    CRITERIA_URL,
    DATA_CATEGORY_URL,
    DATA_PERIOD_URL,
    MAX_PARTICIPANTS_URL,
    STUDY_PSEUDONYM_SYSTEM,
    STUDY_PSEUDONYM_URL,
)
from healthledger.auth.users import AccountNames, create_user
from healthledger.cli import cli
from healthledger.ledger.patient_keys import create_patient_key
from healthledger.principal import SYSTEM
from healthledger.research.models import Enrolment, IdentityCommitment
from healthledger.research.patient_client import NotEligible, PatientClient
from healthledger.research.studies import ETHICS_APPROVAL_URL, PublishedCircuit, compiled_from_inputs
from healthledger.runtime import Runtime
from tests.ledger.conftest import anvil_url  # noqa: F401  (the anvil node fixture)
from zk.credential import eligibility_inputs
from zk.errors import ProverError
from zk.prover import CircuitFiles, NodeProver

pytestmark = [pytest.mark.slow, pytest.mark.node]  # a few minutes: each participant proves with snarkjs

SYNTHEA = FIXTURES / "synthea"
# Body mass index 30 or more, aged 18 to 80: Clemente Kreiger (30.5) and Ned Hintz (30.3) of the Synthea
# fixtures match, Buster Hoeger (24.6) does not; the invented Ivy Inventa (33.1) matches.
CRITERIA = {"age": {"$between": [18, 80]}, "bmi": {"$gte": 30}}
PEOPLE = {"clemente": "Clemente_Kreiger", "ned": "Ned_Hintz", "buster": "Buster_Hoeger"}
# What the study asks for: the Patient and body mass index Observations from 2013 on (Clemente's of 2012 is
# outside the period, his other 45 Observations of other codes outside the code set).
BMI = {"system": "http://loinc.org", "code": "39156-5"}
DATA_START = "2013-01-01"


@dataclass
class Scenario:
    world: World
    base_url: str
    study_id: str = ""
    joined: dict[str, str] = field(default_factory=dict)  # name -> pseudonym


class FlaskTransport:
    """The PatientClient's transport over the app's test client (the CLI test uses real HTTP)."""

    def __init__(self, world: World) -> None:
        self.client = world.app.test_client()

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        resp = self.client.open(path, method=method, data=body, headers=headers)
        return resp.status_code, dict(resp.headers), resp.data


def import_synthea(world: World, name: str, person: str) -> str:
    path = next(SYNTHEA.glob(f"{person}_*.json"))
    resp = world.client.post("/fhir", data=path.read_bytes(), headers=JSON_HEADERS)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    locations = [e["response"]["location"] for e in orjson.loads(resp.data)["entry"]]
    pid = next(loc.split("Patient/")[1].split("/")[0] for loc in locations if "/Patient/" in f"/{loc}")  # (absolute)
    add_account(world, name, pid)
    return pid


def add_account(world: World, name: str, pid: str) -> None:
    store = world.app.extensions["healthledger.store"]
    settings = world.app.config["SETTINGS"]
    from healthledger.keys import key_provider_for

    provider = key_provider_for(settings.key_provider, settings.keys_dir)
    with world.sessions.begin() as s:
        create_user(s, AccountNames(store), username=name, password=PASSWORD, role="patient",
                    now=datetime.now(UTC), patient_id=pid)
        create_patient_key(s, f"Patient/{pid}", PASSWORD, provider, now=time.time())
    world.patients[name] = pid


def invent_ivy(world: World) -> str:
    pid = world.dev_create({"resourceType": "Patient", "name": [{"family": "Inventa", "given": ["Ivy"]}],
                            "gender": "female", "birthDate": "1979-05-17",
                            "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-IVY-77"}]})
    world.dev_create({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]},
                      "effectiveDateTime": "2025-02-03", "valueQuantity": {"value": 33.1, "unit": "kg/m2",
                                                                           "code": "kg/m2"}})
    add_account(world, "ivy", pid)
    return pid


def study_body() -> dict[str, Any]:
    return {
        "resourceType": "ResearchStudy", "title": "Obesity and outcomes",
        "sponsor": {"reference": "Organization/university"}, "principalInvestigator": {"reference": "Practitioner/pi"},
        "period": {"start": "2020-01-01", "end": "2099-12-31"},
        "extension": [
            {"url": CRITERIA_URL, "valueString": json.dumps(CRITERIA)},
            {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": "Patient"}]},
            {"url": DATA_CATEGORY_URL, "extension": [{"url": "type", "valueCode": "Observation"},
                                                     {"url": "code", "valueCoding": BMI}]},
            {"url": DATA_PERIOD_URL, "valuePeriod": {"start": DATA_START}},
            {"url": MAX_PARTICIPANTS_URL, "valuePositiveInt": 3},
            {"url": ETHICS_APPROVAL_URL, "valueIdentifier": {"system": "urn:irb:university", "value": "IRB-7"}},
        ],
    }


def keep_syncing(world: World, stop: threading.Event) -> None:
    """The ledger worker's job, in a thread: mine the outbox, index, settle studies (every 0.3 s)."""
    while not stop.wait(0.3):
        world.sync()


@pytest.fixture(scope="module", params=["sqlite-embedded", pytest.param("postgres-anvil", marks=[
    pytest.mark.postgres, pytest.mark.anvil])])
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    node_tool("snarkjs")
    url, anvil = "", ""
    if request.param == "postgres-anvil":
        url, _schema = request.getfixturevalue("postgres_module_schema_url")
        anvil = request.getfixturevalue("anvil_url")
    world = World.build(tmp_path_factory.mktemp(f"research-{request.param}"), url, anvil_url=anvil,
                        max_request_bytes=16_000_000)
    for name, person in PEOPLE.items():
        import_synthea(world, name, person)
    invent_ivy(world)
    server = make_server("127.0.0.1", 0, world.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Scenario(world, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(timeout=10)
        world.close()


def researcher_post(world: World, path: str, body: dict[str, Any]) -> Any:
    return world.client.post(f"/fhir/{path}", data=orjson.dumps(body),
                             headers={**world.headers("research"), "Content-Type": FHIR})


def join_with_cli(scenario: Scenario, name: str) -> Any:
    stop = threading.Event()
    syncer = threading.Thread(target=keep_syncing, args=(scenario.world, stop), daemon=True)
    syncer.start()
    try:
        return CliRunner().invoke(cli, ["study", "join", scenario.study_id, "--url", scenario.base_url,
                                        "--user", name, "--password-stdin"], input=PASSWORD + "\n")
    finally:
        stop.set()
        syncer.join(timeout=30)


def test_1_credentials_are_issued_and_the_study_is_published(scenario: Scenario) -> None:
    world = scenario.world
    # Patients activate with their password (the join does it too); the hospital then issues for all.
    for name in ("clemente", "buster"):
        session = world.patient_session(name)
        resp = session.post(f"Patient/{world.patients[name]}/$eligibility-credential",
                            {"resourceType": "Parameters", "parameter": [{"name": "password", "valueString": PASSWORD}]})
        assert resp.status_code == 200, resp.get_data(as_text=True)
    runtime = Runtime(lambda **_: world.app.config["SETTINGS"])
    try:
        issued = CliRunner().invoke(cli, ["credentials", "issue"], obj=runtime)
    finally:
        runtime.close()
    assert issued.exit_code == 0, issued.output
    assert "examined 2: 0 issued, 0 re-issued, 2 unchanged" in issued.output
    resp = researcher_post(world, "ResearchStudy", study_body())
    assert resp.status_code == 201, resp.get_data(as_text=True)
    scenario.study_id = resp.get_json()["id"]
    assert researcher_post(world, f"ResearchStudy/{scenario.study_id}/$publish", {}).status_code == 202
    world.sync()
    study = world.patient_session("ivy").get(f"ResearchStudy/{scenario.study_id}").get_json()
    assert study["status"] == "active"


def test_2_matching_patients_join_by_proof_over_http(scenario: Scenario) -> None:
    assert scenario.study_id, "needs test_1"
    for name in ("clemente", "ivy"):  # clemente was activated before, ivy activates while joining
        result = join_with_cli(scenario, name)
        assert result.exit_code == 0, result.output
        assert f"enrolled in ResearchStudy/{scenario.study_id} as 0x" in result.output
        scenario.joined[name] = result.output.split(" as ")[1].split(" ")[0]
    scenario.world.sync()
    with scenario.world.sessions() as s:
        rows = s.scalars(select(Enrolment).where(Enrolment.study_id == scenario.study_id)).all()
    assert sorted(r.enrollee for r in rows) == sorted(scenario.joined.values())
    registry = scenario.world.chain.contract("StudyRegistry")
    for row in rows:
        assert scenario.world.chain.call(registry.functions.enrolledBy(int(row.nullifier))) == row.enrollee


def test_3_a_patient_who_does_not_match_cannot_produce_a_proof(scenario: Scenario) -> None:
    world = scenario.world
    client = PatientClient(FlaskTransport(world))
    client.sign_in("buster", PASSWORD)
    with NodeProver(CircuitFiles.committed()) as prover:
        with pytest.raises(NotEligible):
            client.join(scenario.study_id, PASSWORD, prover)
        # Past the local check, the circuit itself refuses: no witness exists for these attributes.
        study = client._fhir("GET", f"ResearchStudy/{scenario.study_id}", what="study")
        circuit = PublishedCircuit.from_study(study)
        cred = client.credential(world.patients["buster"], PASSWORD, scenario.study_id)
        from healthledger.research.credentials import attributes_from_json

        inputs = eligibility_inputs(
            secret=int(cred["inputs"]["secret"]), attrs=attributes_from_json(cred["inputs"]),
            siblings=[int(x) for x in cred["inputs"]["siblings"]], path_bits=[int(x) for x in cred["inputs"]["pathBits"]],
            root=cred["root"], study_id=circuit.chain_study_id, criteria=compiled_from_inputs(circuit.inputs),
            enrollee=cred["enrollee"])
        with pytest.raises(ProverError, match="do not satisfy the circuit"):
            prover.check_witness(inputs)
    result = join_with_cli(scenario, "buster")
    assert result.exit_code == 3 and "does not meet" in result.output


def test_4_a_second_join_is_refused(scenario: Scenario) -> None:
    result = join_with_cli(scenario, "clemente")
    assert result.exit_code == 1
    assert "already enrolled" in result.output or "nullifier" in result.output


def test_5_the_researcher_sees_a_count_and_pseudonyms_only(scenario: Scenario) -> None:
    world = scenario.world
    resp = world.client.get(f"/fhir/ResearchSubject?study=ResearchStudy/{scenario.study_id}",
                            headers=world.headers("research"))
    assert resp.status_code == 200
    bundle = resp.get_json()
    assert bundle["total"] == 2
    shown = {e["resource"]["individual"]["identifier"]["value"] for e in bundle["entry"]}
    assert shown == set(scenario.joined.values())
    assert all(e["resource"]["individual"]["identifier"]["system"] == STUDY_PSEUDONYM_SYSTEM for e in bundle["entry"])
    text_seen = resp.get_data(as_text=True)
    for name, pid in world.patients.items():
        assert pid not in text_seen, name
    assert "Consent/" not in text_seen  # nothing that leads back into the patient's record
    # Each enrolment reads by id (where $enrol's Location points): the owner's view, the patient's own view, and
    # for anyone else the same 404 as an id that is no enrolment.
    subject = bundle["entry"][0]["resource"]
    by_id = world.client.get(f"/fhir/ResearchSubject/{subject['id']}", headers=world.headers("research"))
    assert by_id.status_code == 200 and by_id.get_json() == subject
    with world.sessions() as s:
        row = s.scalars(select(Enrolment).where(Enrolment.id == subject["id"])).one()
    owner_name = next(n for n, pseudonym in scenario.joined.items() if pseudonym == row.enrollee)
    own = world.patient_session(owner_name).get(f"ResearchSubject/{subject['id']}")
    assert own.status_code == 200 and own.get_json()["consent"]["reference"] == f"Consent/{row.consent_id}"
    other_name = next(n for n in world.patients if n != owner_name)
    missing = world.client.get("/fhir/ResearchSubject/no-such-enrolment", headers=world.headers("ehr"))
    for refused in (world.patient_session(other_name).get(f"ResearchSubject/{subject['id']}"),
                    world.client.get(f"/fhir/ResearchSubject/{subject['id']}", headers=world.headers("ehr"))):
        assert refused.status_code == missing.status_code == 404
        assert (json.dumps(refused.get_json()).replace(subject["id"], "ID")
                == json.dumps(missing.get_json()).replace("no-such-enrolment", "ID"))
    # The study consent is the patient's: the researcher cannot read it, nor their credential.
    with world.sessions() as s:
        consent_id = s.scalars(select(Enrolment.consent_id)).first()
    assert world.client.get(f"/fhir/Consent/{consent_id}", headers=world.headers("research")).status_code == 404
    pid = world.patients["ivy"]
    assert world.client.get(f"/fhir/Patient/{pid}/$eligibility-credential",
                            headers=world.headers("research")).status_code == 404
    # The study consent names the study and carries the pseudonym that enrolled (seam convention).
    consent = world.dev_read(f"Consent/{consent_id}")
    assert consent["provision"]["actor"][0]["reference"]["reference"] == f"ResearchStudy/{scenario.study_id}"
    assert consent["extension"][0]["url"] == STUDY_PSEUDONYM_URL
    assert consent["extension"][0]["valueString"] in scenario.joined.values()


def test_6_one_participant_leaves_and_the_grant_is_revoked(scenario: Scenario) -> None:
    world = scenario.world
    result = CliRunner().invoke(cli, ["study", "leave", scenario.study_id, "--url", scenario.base_url,
                                      "--user", "ivy", "--password-stdin"], input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "withdrawn" in result.output
    world.sync()
    ivy = world.patient_session("ivy")
    mine = ivy.get(f"ResearchSubject?study=ResearchStudy/{scenario.study_id}").get_json()
    assert mine["entry"][0]["resource"]["status"] == "withdrawn"
    consent_id = mine["entry"][0]["resource"]["consent"]["reference"].split("/")[1]
    consent = ivy.get(f"Consent/{consent_id}").get_json()
    assert consent["status"] == "inactive"
    states = [e for e in consent.get("extension", []) if e["url"].endswith("consent-chain-state")]
    assert states and "revoked" in json.dumps(states)


def researcher_cli(scenario: Scenario, *args: str) -> Any:
    """`healthledger research ...` over real HTTP with the researcher's token, the ledger worker running."""
    stop = threading.Event()
    syncer = threading.Thread(target=keep_syncing, args=(scenario.world, stop), daemon=True)
    syncer.start()
    try:
        return CliRunner().invoke(cli, ["research", *args, "--url", scenario.base_url, "--token-stdin"],
                                  input=scenario.world.token("research") + "\n")
    finally:
        stop.set()
        syncer.join(timeout=30)


def test_6b_the_researcher_exports_exactly_the_remaining_participants_consented_data_deidentified(
        scenario: Scenario, tmp_path: Path) -> None:
    world = scenario.world
    listed = researcher_cli(scenario, "studies", "--status", "active")
    assert listed.exit_code == 0, listed.output
    assert f"{scenario.study_id}\tactive\tObesity and outcomes" in listed.output
    result = researcher_cli(scenario, "export", scenario.study_id, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "sha256 checked" in result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["requiresAccessToken"] is True and manifest["request"].endswith("/$export")
    files = {item["type"]: [json.loads(line) for line in (tmp_path / item["url"].rsplit("/", 1)[1]).read_text()
                            .splitlines() if line.strip()] for item in manifest["output"]}

    # Exactly Clemente's (Ivy left): his Patient, and his BMI Observations in the period; nothing of Ivy's BMI
    # (2025), of his other Observations or of his BMI of 2012.
    store = world.app.extensions["healthledger.store"]
    clemente = world.patients["clemente"]
    bmis = store.search_params("Observation", [("patient", f"Patient/{clemente}"), ("code", "39156-5")],
                               count=100, principal=SYSTEM).items
    in_period = [o.resource for o in bmis if o.resource and o.resource["effectiveDateTime"][:10] >= DATA_START]
    assert len(bmis) == 3 and len(in_period) == 2
    assert set(files) == {"Patient", "Observation"}
    assert len(files["Patient"]) == 1 and len(files["Observation"]) == len(in_period)
    subject = f"Patient/{files['Patient'][0]['id']}"
    for obs in files["Observation"]:
        assert [c["code"] for c in obs["code"]["coding"]] == ["39156-5"] and obs["subject"]["reference"] == subject
        assert obs["effectiveDateTime"][:4] >= DATA_START[:4]
    assert sorted(o["valueQuantity"]["value"] for o in files["Observation"]) == sorted(
        o["valueQuantity"]["value"] for o in in_period)

    # De-identified: no name, identifier, address, phone, exact birth date or id of any source patient in any
    # line (the Synthea sources and the invented Ivy, stored ids included).
    sources = [next(e["resource"] for e in json.loads(next(SYNTHEA.glob(f"{person}_*.json")).read_text())["entry"]
                    if e["resource"]["resourceType"] == "Patient") for person in PEOPLE.values()]
    sources += [store.read("Patient", pid, principal=SYSTEM).resource for pid in world.patients.values()]
    needles = sources_phi(sources)
    assert {"Kreiger", "Inventa", "MRN-IVY-77", "1979-05-17", clemente} <= needles
    lines = [line for item in manifest["output"]
             for line in (tmp_path / item["url"].rsplit("/", 1)[1]).read_text().splitlines() if line.strip()]
    assert len(lines) == 1 + len(in_period)
    assert [(n, line[:60]) for line in lines for n in needles if n in line] == []
    patient = files["Patient"][0]
    assert len(patient["birthDate"]) == 4 and not {"name", "identifier", "telecom"} & set(patient)


def test_7_the_hospital_keeps_commitments_never_the_secret_so_it_cannot_prove(scenario: Scenario) -> None:
    from sqlalchemy.orm import Session

    from healthledger.ledger.patient_keys import unlock
    from healthledger.research.credentials import identity_secret

    world = scenario.world
    with world.sessions() as s:
        commitments = s.scalars(select(IdentityCommitment.commitment)).all()
    assert len(commitments) == 3  # clemente, buster, ivy; ned never activated: no leaf, so he cannot join
    engine = world.app.extensions["healthledger.engine"]
    with Session(engine) as s:  # the test knows Ivy's password; the service does not keep it
        secret = identity_secret(unlock(s, f"Patient/{world.patients['ivy']}", PASSWORD))
    needles = [str(secret).encode(), secret.to_bytes(32, "big"), hex(secret).encode()]
    if engine.dialect.name == "sqlite":
        folder = Path(world.app.config["SETTINGS"].data_dir)
        blobs = [p.read_bytes() for p in (*folder.glob("*.db*"), *folder.glob("*.db-access-spool/*")) if p.is_file()]
    else:
        with engine.connect() as conn:
            blobs = [repr(row).encode() for table in ("research_identities", "research_credentials", "chain_outbox",
                                                      "research_enrolments", "research_tree_nodes")
                     for row in conn.execute(text(f"SELECT * FROM {table}"))]
    assert blobs and not any(n in b for n in needles for b in blobs)


def test_8_other_patients_see_only_their_own_enrolments(scenario: Scenario) -> None:
    world = scenario.world
    everything = world.patient_session("clemente").get("ResearchSubject").get_json()
    assert [e["resource"]["study"]["reference"] for e in everything["entry"]] == [f"ResearchStudy/{scenario.study_id}"]
    for name, expected in (("buster", 0), ("clemente", 1)):
        mine = world.patient_session(name).get(f"ResearchSubject?study=ResearchStudy/{scenario.study_id}").get_json()
        assert mine["total"] == expected
        if expected:
            assert mine["entry"][0]["resource"]["individual"]["identifier"]["value"] == scenario.joined[name]


def test_9_nothing_identifying_reaches_the_chain(scenario: Scenario) -> None:
    from tests.ledger.test_no_phi_on_chain import date_encodings, encodings, load_patients, scan

    world = scenario.world
    chain = world.chain
    blobs: list[tuple[str, bytes]] = []
    for number in range(1, chain.head() + 1):
        block = chain.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if not tx.get("to"):
                continue  # contract creation: bytecode, not data about anyone
            blobs.append((f"tx in block {number}", bytes(tx.get("input", tx.get("data", b"")))))
            for log in chain.w3.eth.get_transaction_receipt(tx["hash"])["logs"]:
                blobs.append((f"log in block {number}", b"".join(bytes(t) for t in log["topics"]) + bytes(log["data"])))
    assert len(blobs) > 10 and all(blob for _, blob in blobs)
    needles: dict[str, dict[str, bytes]] = {}
    for patient in load_patients(FIXTURES):
        needles |= {f"{patient.ref[:8]} {label}": values for label, values in patient.needles.items()}
    for name, pid in world.patients.items():
        needles[f"id of {name}"] = encodings(pid)
    needles |= {"Inventa": encodings("Inventa"), "MRN-IVY-77": encodings("MRN-IVY-77"),
                "Ivy's birth date": date_encodings("1979-05-17")}
    assert scan(blobs, needles) == []


def test_10_a_researcher_defines_publishes_and_asks_feasibility_on_the_command_line(
        scenario: Scenario, tmp_path: Path) -> None:
    body = study_body()
    body["title"] = "Defined on the command line"
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(body))
    created = researcher_cli(scenario, "create", str(study_file))
    assert created.exit_code == 0, created.output
    study_id = created.output.split("created ResearchStudy/")[1].split(" ")[0]
    assert "(status draft, cohort Group/" in created.output
    published = researcher_cli(scenario, "publish", study_id, "--wait", "60")
    assert published.exit_code == 0, published.output
    assert f"ResearchStudy/{study_id} is active" in published.output
    asked = researcher_cli(scenario, "feasibility", study_id)
    assert asked.exit_code == 0, asked.output
    # Four patients: the noisy count is what it is ("fewer than 11" or about N), never an exact one.
    answer = re.match(r"(fewer than 11|about \d+ patients \(noisy count\)); 95 % interval \d+ to \d+\n"
                      r"epsilon spent now 0\.25, spent 0\.25, left 0\.75 of 1\.0\n$", asked.output)
    assert answer, asked.output
    again = researcher_cli(scenario, "feasibility", study_id)
    assert again.output.startswith(answer.group(1)) and "epsilon spent now 0" in again.output
    assert "stored release" in again.output
    # As a researcher's web account (password on standard input) instead of a token; a wrong password is refused.
    with scenario.world.sessions.begin() as s:
        create_user(s, AccountNames(scenario.world.app.extensions["healthledger.store"]), username="rita",
                    password=PASSWORD, role="researcher", now=datetime.now(UTC), organization=UNIVERSITY)
    as_rita = CliRunner().invoke(cli, ["research", "studies", "--url", scenario.base_url, "--user", "rita",
                                       "--password-stdin"], input=PASSWORD + "\n")
    assert as_rita.exit_code == 0, as_rita.output
    assert f"{study_id}\tactive\tDefined on the command line" in as_rita.output
    wrong = CliRunner().invoke(cli, ["research", "studies", "--url", scenario.base_url, "--user", "rita",
                                     "--password-stdin"], input="not the password\n")
    assert wrong.exit_code == 1 and "sign-in refused" in wrong.output
    # Bad input: named, exit 1 or 2, nothing done.
    study_file.write_text("{not json")
    assert researcher_cli(scenario, "create", str(study_file)).exit_code == 2
    refused = researcher_cli(scenario, "export", "no-such-study", "--out", str(tmp_path / "none"))
    assert refused.exit_code == 1 and "404" in refused.output and not (tmp_path / "none").exists()


def test_11_revoking_the_study_consent_is_leaving_the_study(scenario: Scenario) -> None:
    """The study consent ends by leaving: revoked by `$revoke` on the Consent, its participant has left (the owner
    sees the enrolment withdrawn, as the export treats it); from the consents page, revoking it is `$leave`."""
    world = scenario.world
    clemente = world.patient_session("clemente")
    subject = clemente.get(f"ResearchSubject?study=ResearchStudy/{scenario.study_id}").get_json()["entry"][0]["resource"]
    assert subject["status"] == "on-study"
    consent_id = subject["consent"]["reference"].split("/")[1]
    page = clemente.browser.get(f"/app/consents/{consent_id}").get_data(as_text=True)
    assert "Leave the study" in page and "when you joined the study" in page
    assert "Bring your record" not in page and "by the hospital or by the organisation it names" not in page
    # Its summary says what the study receives, from when, and for how long (not "with no end date").
    words = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "receives your year of birth and sex" in words and "dated from" in words, words
    assert "for as long as you take part" in words and "with no end date" not in words

    revoked = clemente.post(f"Consent/{consent_id}/$revoke", {
        "resourceType": "Parameters", "parameter": [{"name": "password", "valueString": PASSWORD}]})
    assert revoked.status_code == 200, revoked.get_data(as_text=True)
    seen = world.client.get(f"/fhir/ResearchSubject?study=ResearchStudy/{scenario.study_id}",
                            headers=world.headers("research")).get_json()
    assert {e["resource"]["status"] for e in seen["entry"]} == {"withdrawn"}  # Ivy left before; now Clemente

    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    left = clemente.browser.post(f"/app/consents/{consent_id}/revoke",
                                 data={"csrf_token": token.group(1), "password": PASSWORD})
    assert left.status_code == 303
    study_page = clemente.browser.get(f"/app/studies/{scenario.study_id}").get_data(as_text=True)
    assert "You left this study on" in study_page
    listed = " ".join(re.sub(r"<[^>]+>", " ", clemente.browser.get("/app/consents").get_data(as_text=True)).split())
    assert "You left the study: Obesity and outcomes receives nothing more from your record." in listed
