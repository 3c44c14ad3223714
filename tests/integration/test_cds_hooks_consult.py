"""CDS Hooks consent consults through the real app: who may ask for whom, and what strangers learn.

Expected answers are written down from docs/consent-semantics.md ("CDS Hooks: who may ask, and what
strangers learn"). Patients: Ann (the hospital's), Bob (the other hospital's, no consent), Fay (the
hospital's, a blanket deny recorded), Gus (the other hospital's, a deny naming the university), Hal (the
other hospital's, a signed permit to anyone). Clients: the hospital's EHR, the clinic, the university's
research tool (each asks only as itself) and a broker registered to ask for others.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from consent_world import (
    MRN_SYSTEM,
    ORG_SYSTEM,
    OTHER_HOSPITAL,
    UNIVERSITY,
    World,
    deny_consent,
    password_parameters,
    permit_consent,
)

from healthledger.audit.entries import AccessEntry
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.auth.tokens import register_client
from healthledger.consent.consult import NOT_ITSELF

ENDPOINT = "/cds-services/patient-consent-consult"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = request.getfixturevalue("postgres_module_schema_url")[0] if request.param == "postgres" else ""
    built = World.build(tmp_path_factory.mktemp(f"cds-consult-{request.param}"), url)
    with built.sessions.begin() as s:
        _, secret = register_client(s, client_id="broker", name="broker", scopes="system/Consent.rs", role="system",
                                    with_secret=True, consult_for_others=True, now=datetime.now(UTC))
    resp = built.client.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/Consent.rs",
                                                  "client_id": "broker", "client_secret": secret})
    built.tokens["broker"] = resp.get_json()["access_token"]
    hospital = "Organization/general-hospital"
    fay = built.add_patient("fay", hospital)
    built.dev_create(deny_consent(fay))  # everyone; a deny takes effect when recorded
    gus = built.add_patient("gus", OTHER_HOSPITAL)
    built.dev_create(deny_consent(gus, UNIVERSITY))
    hal = built.add_patient("hal", OTHER_HOSPITAL)
    session = built.patient_session("hal")
    cid = orjson.loads(session.post("Consent", permit_consent(hal)).data)["id"]  # to anyone
    assert session.post(f"Consent/{cid}/$sign", password_parameters()).status_code == 200
    built.sync()
    yield built
    built.close()


def ask(world: World, client_id: str, *patients: str, actor: list[dict[str, str]] | None = None,
        classes: tuple[str, ...] = ("Observation",), purpose: str = "TREAT") -> Any:
    context: dict[str, Any] = {
        "patientId": [{"system": MRN_SYSTEM, "value": f"MRN-{p}"} for p in patients],
        "purposeOfUse": [purpose],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": c} for c in classes],
    }
    if actor is not None:
        context["actor"] = actor
    body = {"hook": "patient-consent-consult", "hookInstance": "4f0c8a52-0c1e-4a55-9a3e-7d1e2b9c6f10",
            "context": context}
    return world.client.post(ENDPOINT, data=orjson.dumps(body), headers={
        "Authorization": f"Bearer {world.token(client_id)}", "Content-Type": "application/json"})


def org(org_id: str) -> list[dict[str, str]]:
    return [{"system": ORG_SYSTEM, "value": org_id}]


def summary(resp: Any) -> str:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return str(orjson.loads(resp.data)["cards"][0]["summary"])


def asked(world: World, resp_of: Any) -> tuple[Any, AccessEntry]:
    """The response of one consult and the one access-log entry it left."""
    before = world.log_size()
    resp = resp_of()
    [entry] = world.log_since(before)
    assert entry.action == "decide"
    return resp, entry


def pseudonym(world: World, name: str) -> str:
    return patient_pseudonym(world.app.extensions["healthledger.store"].indexer, world.patients[name])


# -- who may ask for whom -----------------------------------------------------------------------------------


@pytest.mark.parametrize("actor", [
    org("city-clinic"),  # another organisation
    org("no-such-organisation"),  # resolves to nothing
    [{"value": "university"}, {"system": ORG_SYSTEM, "value": "city-clinic"}],  # itself and another
])
def test_a_client_not_registered_for_others_may_ask_only_about_itself(world: World, actor: list[dict[str, str]]) -> None:
    resp, entry = asked(world, lambda: ask(world, "research", "hal", actor=actor))
    assert resp.status_code == 403 and resp.content_type == "application/json"
    assert orjson.loads(resp.data) == {"error": "forbidden", "error_description": NOT_ITSELF}
    assert "may ask only about itself" in NOT_ITSELF
    # Recorded, before any patient was looked at: against no patient.
    assert (entry.actor, entry.decision, entry.patient_pseudonym, entry.reason) == (
        "client:research", "deny", "", "consult:actor-not-itself")


def test_naming_itself_or_no_one_asks_as_itself(world: World) -> None:
    # Gus's deny names the university: whoever asks as the university is told so.
    for actor in (org("university"), [{"value": "university"}], None):
        resp, entry = asked(world, lambda actor=actor: ask(world, "research", "gus", actor=actor))
        assert summary(resp) == "CONSENT_DENY"
        assert entry.actor == "client:research" and entry.patient_pseudonym == pseudonym(world, "gus")
    # The hospital's EHR, as itself, treats its own patient by policy.
    assert summary(ask(world, "ehr", "ann")) == "CONSENT_PERMIT"


def test_the_asserted_actor_no_longer_lends_its_identity(world: World) -> None:
    # Before: the clinic could ask as the university and learn Gus's deny; the university's tool could ask as
    # the hospital and be told Ann may be treated.
    assert ask(world, "clinic", "gus", actor=org("university")).status_code == 403
    assert ask(world, "research", "ann", actor=org("general-hospital")).status_code == 403


def test_a_client_registered_for_others_asks_for_the_actor_it_names(world: World) -> None:
    assert summary(ask(world, "broker", "gus", actor=org("university"))) == "CONSENT_DENY"
    assert summary(ask(world, "broker", "ann", actor=org("general-hospital"))) == "CONSENT_PERMIT"
    assert summary(ask(world, "broker", "ann", actor=org("city-clinic"))) == "NO_CONSENT"
    # With no actor it asks as itself: an organisation-less system, a stranger to Gus.
    assert summary(ask(world, "broker", "gus")) == "NO_CONSENT"


# -- what strangers learn -----------------------------------------------------------------------------------


def _but_request_id(headers: object) -> dict[str, str]:
    return {k: v for k, v in dict(headers).items() if k != "X-Request-Id"}  # type: ignore[call-overload]


def test_a_stranger_cannot_tell_a_known_patient_from_an_unknown_one(world: World) -> None:
    """The university has no relationship with Fay (blanket deny) nor Bob (no consent)."""
    unknown, unknown_entry = asked(world, lambda: ask(world, "research", "nobody-here"))
    fay, fay_entry = asked(world, lambda: ask(world, "research", "fay"))
    bob = ask(world, "research", "bob")
    ambiguous, ambiguous_entry = asked(world, lambda: ask(world, "research", "fay", "bob"))  # two patients
    for resp in (unknown, fay, bob, ambiguous):
        assert resp.status_code == 200
        assert resp.data == unknown.data  # byte for byte (no hookInstance is echoed)
        # Every header alike but the request id, which is random per response (healthledger.observability).
        assert _but_request_id(resp.headers) == _but_request_id(unknown.headers)
    assert orjson.loads(unknown.data)["cards"][0]["extension"] == {"decision": "NO_CONSENT", "obligations": []}
    # Every question is recorded; against the patient when one was resolved, with what the engine said.
    assert (unknown_entry.patient_pseudonym, unknown_entry.reason) == ("", "unknown-patient")
    assert (ambiguous_entry.patient_pseudonym, ambiguous_entry.reason) == ("", "unknown-patient")
    assert fay_entry.patient_pseudonym == pseudonym(world, "fay") and fay_entry.decision == "deny"
    assert fay_entry.reason.startswith("consult:no-relationship;consent:Consent/")


def test_several_classes_and_purposes_tell_a_stranger_nothing_either(world: World) -> None:
    unknown = ask(world, "clinic", "nobody-here", classes=("Observation", "Condition"), purpose="HRESCH")
    for name in ("fay", "gus", "bob"):
        resp = ask(world, "clinic", name, classes=("Observation", "Condition"), purpose="HRESCH")
        assert resp.status_code == 200 and resp.data == unknown.data, name
    breaking = ask(world, "clinic", "nobody-here", purpose="ETREAT")  # no reason can be given here: denied
    assert ask(world, "clinic", "fay", purpose="ETREAT").data == breaking.data
    assert summary(breaking) == "NO_CONSENT"


def test_related_actors_get_the_engines_answer(world: World) -> None:
    # A care organisation of Fay's (the hospital) is told of her deny.
    assert summary(ask(world, "ehr", "fay")) == "CONSENT_DENY"
    # Gus's deny names the university: it is told so; the clinic, a stranger to him, is not.
    assert summary(ask(world, "research", "gus")) == "CONSENT_DENY"
    assert summary(ask(world, "clinic", "gus")) == "NO_CONSENT"


def test_a_permit_stands_even_for_a_stranger(world: World) -> None:
    # Hal chose to share with anyone: the university, a stranger to him, is told so.
    resp, entry = asked(world, lambda: ask(world, "research", "hal"))
    assert summary(resp) == "CONSENT_PERMIT"
    assert entry.decision == "permit" and entry.patient_pseudonym == pseudonym(world, "hal")
