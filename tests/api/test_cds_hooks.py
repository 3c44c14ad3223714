"""The CDS Hooks `patient-consent-consult` service: LEAP-shaped requests and cards, JSON errors, no leaks."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthledger.api.cds_hooks import MAX_BODY_BYTES, cds_hooks_blueprint
from healthledger.consent.consult_hook import (
    CONSENT_SCOPE_SYSTEM,
    MAX_ITEMS,
    RESOURCE_TYPES_SYSTEM,
    CardSource,
    ConsultDecision,
    ConsultRequest,
    consult_response,
    parse_consult_request,
)
from healthledger.consent.engine import Decision, Obligation, Outcome, Reason
from healthledger.errors import BadRequest, ChainError, Forbidden, NotFound, Unauthorized

ENDPOINT = "/cds-services/patient-consent-consult"
JSON_HEADERS = {"Content-Type": "application/json"}
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SECRET = "Zebediah Quuxworth"  # stands for PHI that must never reach a response

# The request example of LEAP-CDS's README, section "CDS Hook Interface / Request"
# (github.com/sdhealthconnect/leap-cds, README.md at commit 839962e463bd359891698b020b2eb3accdce68b8).
# Note `class` spelled {system, value} there, while LEAP's schema says {system, code}.
LEAP_README_REQUEST: dict[str, Any] = {
    "hook": "patient-consent-consult",
    "hookInstance": "hook-instance-123",
    "context": {
        "patientId": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "111111111"}],
        "category": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "value": "MedicationStatement"}],
        "purposeOfUse": ["TREAT"],
        "actor": [{"system": "urn:ietf:rfc:3986", "value": "2.16.840.1.113883.20.5"}],
    },
}

# LEAP-CDS's own test request, test/fixtures/request-samples/patient-consent-consult-hook-request.json
# (commit 829a6ab6902ed4980d32c78e7262ee97c7d0a9c7): the older `scope` string instead of `category`.
LEAP_FIXTURE_REQUEST: dict[str, Any] = {
    "hook": "patient-consent-consult",
    "hookInstance": "1234",
    "context": {
        "patientId": [{"system": "http://hl7.org/fhir/sid/us-medicare", "value": "0000-000-0000"}],
        "scope": "patient-privacy",
        "actor": [{"system": "test-system", "value": "test-value"}],
    },
}

PERMIT_WITH_REDACTION = ConsultDecision(
    Decision.PERMIT,
    (Reason("consent", "c-41", "provision"),),
    (Obligation("redact-security-labels", frozenset({(CONFIDENTIALITY, "R")})),),
)


class FakeConsult:
    def __init__(self) -> None:
        self.calls: list[ConsultRequest] = []
        self.answer: ConsultDecision | BaseException = ConsultDecision(Decision.NOT_APPLICABLE)

    def __call__(self, consult_request: ConsultRequest) -> ConsultDecision:
        self.calls.append(consult_request)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class FakeAuth:
    def __init__(self) -> None:
        self.calls = 0
        self.refuse: BaseException | None = None

    def __call__(self) -> str:
        self.calls += 1
        if self.refuse is not None:
            raise self.refuse
        return "client-1"


@pytest.fixture()
def consult() -> FakeConsult:
    return FakeConsult()


@pytest.fixture()
def auth() -> FakeAuth:
    return FakeAuth()


@pytest.fixture()
def cds_app(consult: FakeConsult, auth: FakeAuth) -> Iterator[Flask]:
    app = Flask("cds-hooks-test")
    app.register_blueprint(cds_hooks_blueprint(consult, auth, source=CardSource("Test CDS", "https://cds.example")))
    yield app


@pytest.fixture()
def cds_client(cds_app: Flask) -> FlaskClient:
    return cds_app.test_client()


def post(client: FlaskClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(ENDPOINT, data=json.dumps(body), headers=JSON_HEADERS if headers is None else headers)


def assert_json_error(resp: Any, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/json"
    body = orjson.loads(resp.data)
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error and body["error_description"]
    return dict(body)


# --- discovery --------------------------------------------------------------------------------------------------


def test_discovery_lists_the_service_without_authentication(cds_client: FlaskClient, auth: FakeAuth) -> None:
    auth.refuse = Unauthorized("no")
    resp = cds_client.get("/cds-services")
    assert resp.status_code == 200 and resp.content_type == "application/json"
    services = orjson.loads(resp.data)["services"]
    assert len(services) == 1
    (service,) = services
    assert service["hook"] == "patient-consent-consult" and service["id"] == "patient-consent-consult"
    assert isinstance(service["title"], str) and isinstance(service["description"], str)
    assert "prefetch" not in service  # we want no patient data pushed to us
    assert auth.calls == 0


def test_wrong_methods_and_unknown_services_are_json_errors(cds_client: FlaskClient) -> None:
    resp = cds_client.get(ENDPOINT)
    assert_json_error(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"
    resp = cds_client.post("/cds-services", data="{}", headers=JSON_HEADERS)
    assert_json_error(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "GET"
    assert_json_error(cds_client.post("/cds-services/medication-prescribe", data="{}", headers=JSON_HEADERS),
                      404, "not_found")


# --- parsing ----------------------------------------------------------------------------------------------------


def test_leap_readme_example_is_parsed() -> None:
    parsed = parse_consult_request(copy.deepcopy(LEAP_README_REQUEST))
    assert parsed == ConsultRequest(
        hook_instance="hook-instance-123",
        patient_identifiers=(("http://hl7.org/fhir/sid/us-ssn", "111111111"),),
        actor_identifiers=(("urn:ietf:rfc:3986", "2.16.840.1.113883.20.5"),),
        purposes=("TREAT",),
        scope="",
        classes=("MedicationStatement",),
        categories=((CONSENT_SCOPE_SYSTEM, "patient-privacy"),),
    )


def test_leap_fixture_with_legacy_scope_is_parsed() -> None:
    parsed = parse_consult_request(copy.deepcopy(LEAP_FIXTURE_REQUEST))
    assert parsed.scope == "patient-privacy"
    assert parsed.patient_identifiers == (("http://hl7.org/fhir/sid/us-medicare", "0000-000-0000"),)
    assert parsed.actor_identifiers == (("test-system", "test-value"),)
    assert parsed.purposes == () and parsed.classes == () and parsed.categories == ()


def test_leap_variants_are_accepted_and_duplicates_dropped() -> None:
    body = copy.deepcopy(LEAP_README_REQUEST)
    ctx = body["context"]
    ctx["purposeOfUse"] = "HRESCH"  # LEAP: a single string is allowed
    ctx["class"] = [{"system": RESOURCE_TYPES_SYSTEM, "code": "Observation"},
                    {"system": RESOURCE_TYPES_SYSTEM, "value": "Observation"}]
    ctx["patientId"] = [{"value": "A1"}, {"system": "", "value": "A1"}, {"system": "urn:x", "value": "A1"}]
    ctx["fhirAuthorization"] = {"access_token": SECRET}  # CDS Hooks fields we do not use are ignored
    parsed = parse_consult_request(body)
    assert parsed.purposes == ("HRESCH",)
    assert parsed.classes == ("Observation",)
    assert parsed.patient_identifiers == (("", "A1"), ("urn:x", "A1"))
    assert SECRET not in repr(parsed)


def _with(path: str, value: Any) -> dict[str, Any]:
    """LEAP's README request with one field replaced (value ...) or removed (value is DROP)."""
    body = copy.deepcopy(LEAP_README_REQUEST)
    *parents, last = path.split(".")
    node: Any = body
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DROP:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


DROP = object()
SCOPE = CONSENT_SCOPE_SYSTEM
MALFORMED: list[tuple[str, Any, str]] = [
    ("array body", [], "request body"),
    ("string body", "patient-consent-consult", "request body"),
    ("null body", None, "request body"),
    ("no hook", _with("hook", DROP), "hook"),
    ("hook not a string", _with("hook", 5), "hook"),
    ("unknown hook", _with("hook", "patient-view"), "patient-consent-consult"),
    ("no hookInstance", _with("hookInstance", DROP), "hookInstance"),
    ("hookInstance not a string", _with("hookInstance", 12), "hookInstance"),
    ("empty hookInstance", _with("hookInstance", "  "), "hookInstance"),
    ("huge hookInstance", _with("hookInstance", "x" * 5000), "hookInstance"),
    ("no context", _with("context", DROP), "context"),
    ("context an array", _with("context", []), "context"),
    ("no patientId", _with("context.patientId", DROP), "context.patientId"),
    ("patientId an object (old LEAP)", _with("context.patientId", {"system": "s", "value": "v"}),
     "context.patientId"),
    ("patientId empty", _with("context.patientId", []), "context.patientId"),
    ("patientId too long", _with("context.patientId", [{"value": str(i)} for i in range(MAX_ITEMS + 1)]),
     "context.patientId"),
    ("patientId entry not an object", _with("context.patientId", ["111111111"]), "context.patientId[0]"),
    # LEAP's own "bad patientId" test case: `code` where `value` belongs.
    ("patientId code not value", _with("context.patientId", [{"system": "1", "code": "2"}]),
     "context.patientId[0].value"),
    ("patientId empty value", _with("context.patientId.0.value", ""), "context.patientId[0].value"),
    ("patientId system not a string", _with("context.patientId.0.system", 7), "context.patientId[0].system"),
    ("actor an object", _with("context.actor", {"system": "s", "value": "v"}), "context.actor"),
    ("actor without value", _with("context.actor", [{"system": "s"}]), "context.actor[0].value"),
    ("purposeOfUse a number", _with("context.purposeOfUse", 5), "context.purposeOfUse"),
    ("purposeOfUse entry a number", _with("context.purposeOfUse", [5]), "context.purposeOfUse[0]"),
    ("purposeOfUse with a system", _with("context.purposeOfUse", ["http://x|TREAT"]), "context.purposeOfUse[0]"),
    ("scope unknown", _with("context.scope", "everything"), "context.scope"),
    ("scope not a string", _with("context.scope", ["research"]), "context.scope"),
    ("category an object", _with("context.category", {"system": SCOPE, "code": "research"}), "context.category"),
    ("category without system", _with("context.category", [{"code": "research"}]), "context.category[0].system"),
    ("category without code", _with("context.category", [{"system": "urn:x"}]), "context.category[0].code"),
    ("category not a consent scope", _with("context.category", [{"system": SCOPE, "code": "nope"}]),
     "context.category[0].code"),
    ("class of another system", _with("context.class", [{"system": "http://loinc.org", "code": "11506-3"}]),
     "context.class[0].system"),
    ("class not a resource type", _with("context.class", [{"system": RESOURCE_TYPES_SYSTEM, "code": "drop table"}]),
     "context.class[0]"),
    ("class a string", _with("context.class", "MedicationStatement"), "context.class"),
    ("content to redact", _with("context.content", {"resourceType": "Bundle", "entry": [{}]}), "context.content"),
]


@pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_requests_name_the_bad_field(body: Any, field: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_consult_request(body)
    assert field in raised.value.message
    assert raised.value.status == 400


@pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_requests_are_400_json(cds_client: FlaskClient, consult: FakeConsult, body: Any,
                                         field: str) -> None:
    error = assert_json_error(post(cds_client, body), 400, "bad_request")
    assert field in error["error_description"]
    assert consult.calls == []


def test_body_that_is_not_json_is_400_or_415(cds_client: FlaskClient, consult: FakeConsult) -> None:
    assert_json_error(cds_client.post(ENDPOINT, data="{not json", headers=JSON_HEADERS), 400, "bad_request")
    assert_json_error(cds_client.post(ENDPOINT, data="", headers=JSON_HEADERS), 400, "bad_request")
    assert_json_error(cds_client.post(ENDPOINT, data=b"\xff\xfe", headers=JSON_HEADERS), 400, "bad_request")
    body = json.dumps(LEAP_README_REQUEST)
    assert_json_error(cds_client.post(ENDPOINT, data=body, headers={"Content-Type": "text/plain"}),
                      415, "unsupported_media_type")
    assert_json_error(cds_client.post(ENDPOINT, data=body, headers={}), 415, "unsupported_media_type")
    big = body[:-1] + ', "pad": "' + "x" * MAX_BODY_BYTES + '"}'
    assert_json_error(cds_client.post(ENDPOINT, data=big, headers=JSON_HEADERS), 413, "payload_too_large")
    assert consult.calls == []
    # A charset parameter is fine.
    ok = cds_client.post(ENDPOINT, data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


# --- authentication ---------------------------------------------------------------------------------------------


def test_authentication_failure_is_401_json_before_the_body_is_read(
    cds_client: FlaskClient, consult: FakeConsult, auth: FakeAuth
) -> None:
    auth.refuse = Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    resp = cds_client.post(ENDPOINT, data="{not json", headers=JSON_HEADERS)
    error = assert_json_error(resp, 401, "unauthorized")
    assert "Bearer" in error["error_description"]
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="healthledger"'  # no token sent: no error code
    auth.refuse = Unauthorized("invalid or expired access token")
    expired = cds_client.post(ENDPOINT, data="{}", headers={**JSON_HEADERS, "Authorization": "Bearer expired"})
    assert expired.status_code == 401  # RFC 6750 §3: a token presented and refused says so
    assert expired.headers["WWW-Authenticate"] == (
        'Bearer realm="healthledger", error="invalid_token", error_description="invalid or expired access token"')
    assert consult.calls == []

    auth.refuse = Forbidden("this client may not consult consents")
    assert_json_error(post(cds_client, LEAP_README_REQUEST), 403, "forbidden")
    assert consult.calls == []


# --- decisions --------------------------------------------------------------------------------------------------


def test_leap_example_gets_a_permit_card_with_a_redact_obligation(
    cds_client: FlaskClient, consult: FakeConsult, auth: FakeAuth
) -> None:
    consult.answer = PERMIT_WITH_REDACTION
    resp = post(cds_client, LEAP_README_REQUEST)
    assert resp.status_code == 200 and resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert auth.calls == 1 and consult.calls == [parse_consult_request(LEAP_README_REQUEST)]
    (card,) = orjson.loads(resp.data)["cards"]
    assert card["summary"] == "CONSENT_PERMIT" and card["indicator"] == "info"
    assert card["source"] == {"label": "Test CDS", "url": "https://cds.example"}
    assert isinstance(card["detail"], str) and card["detail"]
    # The obligation exactly as in LEAP's README response example.
    assert card["extension"] == {
        "decision": "CONSENT_PERMIT",
        "obligations": [{"id": {"system": ACT_CODE, "code": "REDACT"},
                         "parameters": {"codes": [{"system": CONFIDENTIALITY, "code": "R"}]}}],
        "reasons": [{"rule": "consent", "provision": "provision"}],
    }


def test_deny_card(cds_client: FlaskClient, consult: FakeConsult) -> None:
    consult.answer = ConsultDecision(Decision.DENY, (Reason("consent", "c-7", "provision.provision[0]"),))
    (card,) = orjson.loads(post(cds_client, LEAP_README_REQUEST).data)["cards"]
    assert card["summary"] == "CONSENT_DENY" and card["indicator"] == "critical"
    assert card["extension"] == {
        "decision": "CONSENT_DENY",
        "obligations": [],
        "reasons": [{"rule": "consent", "provision": "provision.provision[0]"}],
    }
    assert "denies" in card["detail"]


def test_policy_deny_and_break_glass_permit_say_so() -> None:
    stale = consult_response(ConsultDecision(Decision.DENY, (Reason("index-stale", detail="consent state is not fresh"),)))
    (card,) = stale["cards"]
    assert card["extension"]["reasons"] == [{"rule": "index-stale", "detail": "consent state is not fresh"}]
    assert "policy" in card["detail"]
    (card,) = consult_response(ConsultDecision(Decision.PERMIT, (Reason("break-glass"),)))["cards"]
    assert "break-the-glass" in card["detail"]
    (card,) = consult_response(ConsultDecision(Decision.PERMIT, (Reason("policy:treating-organisation"),)))["cards"]
    assert "policy" in card["detail"]


def test_no_consent_card_carries_only_the_decision(cds_client: FlaskClient, consult: FakeConsult) -> None:
    consult.answer = ConsultDecision(
        Decision.NOT_APPLICABLE, (Reason("consent-grant-not-live", "c-9", "provision", "revoked"),)
    )
    (card,) = orjson.loads(post(cds_client, LEAP_README_REQUEST).data)["cards"]
    assert card["summary"] == "NO_CONSENT" and card["indicator"] == "warning"
    assert card["extension"] == {"decision": "NO_CONSENT", "obligations": []}


def test_unknown_patient_is_indistinguishable_from_no_consent(cds_client: FlaskClient, consult: FakeConsult) -> None:
    consult.answer = ConsultDecision(
        Decision.NOT_APPLICABLE, (Reason("consent-grant-not-live", "c-9", "provision", "revoked"),)
    )
    known = post(cds_client, LEAP_README_REQUEST)
    consult.answer = NotFound("no patient with these identifiers")
    unknown = post(cds_client, LEAP_README_REQUEST)
    assert unknown.status_code == known.status_code == 200
    assert unknown.data == known.data
    assert dict(unknown.headers) == dict(known.headers)


def test_decision_never_leaks_identifiers_the_caller_did_not_send() -> None:
    decision = ConsultDecision(Decision.PERMIT, (Reason("consent", SECRET, "provision"),))
    assert SECRET not in json.dumps(consult_response(decision))


def test_consent_references_only_when_the_wiring_asks() -> None:
    decision = ConsultDecision(Decision.DENY, (Reason("consent", "c-7", "p"), Reason("consent", "c-8", "p")))
    body = consult_response(decision, consent_url=lambda cid: f"https://cds.example/fhir/Consent/{cid}")
    extension = body["cards"][0]["extension"]
    assert extension["basedOn"] == "https://cds.example/fhir/Consent/c-7"  # LEAP: the deciding consent
    assert [r["consent"] for r in extension["reasons"]] == [
        "https://cds.example/fhir/Consent/c-7", "https://cds.example/fhir/Consent/c-8"]
    no_consent = consult_response(ConsultDecision(Decision.NOT_APPLICABLE, (Reason("x", "c-9"),)),
                                  consent_url=lambda cid: cid)
    assert "c-9" not in json.dumps(no_consent)


def test_obligation_rendering() -> None:
    decision = ConsultDecision(
        Decision.PERMIT,
        (Reason("consent", "c-1", "provision"),),
        (
            Obligation("redact-security-labels", frozenset({(CONFIDENTIALITY, "V"), ("", "ETH"), (CONFIDENTIALITY, "R")})),
            Obligation("de-identify"),
        ),
    )
    obligations = consult_response(decision)["cards"][0]["extension"]["obligations"]
    assert obligations == [
        {"id": {"system": ACT_CODE, "code": "REDACT"},
         "parameters": {"codes": [{"code": "ETH"}, {"system": CONFIDENTIALITY, "code": "R"},
                                  {"system": CONFIDENTIALITY, "code": "V"}]}},
        {"id": {"system": ACT_CODE, "code": "DEID"}},
    ]


def test_consult_decision_is_checked() -> None:
    with pytest.raises(ValueError, match="only accompany a permit"):
        ConsultDecision(Decision.DENY, (), (Obligation("de-identify"),))
    with pytest.raises(ValueError, match="obligation kind"):
        ConsultDecision(Decision.PERMIT, (), (Obligation("shred"),))
    with pytest.raises(ValueError):
        ConsultDecision("maybe")  # type: ignore[arg-type]
    assert ConsultDecision("permit").decision is Decision.PERMIT  # type: ignore[arg-type]
    outcome = Outcome(Decision.PERMIT, (Reason("break-glass"),), (Obligation("de-identify"),), break_glass=True)
    assert ConsultDecision.from_outcome(outcome) == ConsultDecision(
        Decision.PERMIT, (Reason("break-glass"),), (Obligation("de-identify"),))


def test_consult_failures_are_json_errors_without_internals(cds_client: FlaskClient, consult: FakeConsult) -> None:
    consult.answer = ChainError("the consent index cannot be refreshed; retry later")
    error = assert_json_error(post(cds_client, LEAP_README_REQUEST), 503, "service_unavailable")
    assert "retry" in error["error_description"]
    consult.answer = RuntimeError(f"boom near {SECRET}")
    resp = post(cds_client, LEAP_README_REQUEST)
    error = assert_json_error(resp, 500, "server_error")
    assert error["error_description"] == "internal server error"
    assert SECRET not in resp.get_data(as_text=True)


# --- properties -------------------------------------------------------------------------------------------------

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=16,
)
TEXT = st.sampled_from(["", " ", "TREAT", "x", "MedicationStatement", CONSENT_SCOPE_SYSTEM, RESOURCE_TYPES_SYSTEM,
                        "research", "patient-privacy"]) | st.text(max_size=8)
SYSTEM_VALUE = st.dictionaries(st.sampled_from(["system", "value", "code"]), TEXT | JSON, max_size=3)
CONTEXT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "patientId": st.lists(SYSTEM_VALUE | JSON, max_size=3) | JSON,
    "actor": st.lists(SYSTEM_VALUE | JSON, max_size=3) | JSON,
    "purposeOfUse": TEXT | st.lists(TEXT | JSON, max_size=3) | JSON,
    "scope": TEXT | JSON,
    "category": st.lists(SYSTEM_VALUE, max_size=3) | JSON,
    "class": st.lists(SYSTEM_VALUE, max_size=3) | JSON,
}
NEAR_VALID = st.fixed_dictionaries(
    {},
    optional={
        "hook": st.just("patient-consent-consult") | TEXT | JSON,
        "hookInstance": TEXT | JSON,
        "context": st.fixed_dictionaries({}, optional=CONTEXT_FIELDS) | JSON,
    },
)


@PROPS
@given(body=JSON | NEAR_VALID)
def test_parse_only_ever_raises_bad_request(body: Any) -> None:
    try:
        parsed = parse_consult_request(body)
    except BadRequest as error:
        assert error.message and error.status == 400 and error.expression
    else:
        assert parsed.patient_identifiers and all(value.strip() for _, value in parsed.patient_identifiers)


IDENTIFIERS = st.lists(
    st.tuples(st.sampled_from(["", "urn:a", "http://hl7.org/fhir/sid/us-ssn"]),
              st.text(min_size=1, max_size=10).filter(str.strip)),
    min_size=1, max_size=5,
)


@PROPS
@given(patients=IDENTIFIERS, actors=IDENTIFIERS, purposes=st.lists(st.sampled_from(["TREAT", "HRESCH", "ETREAT"])))
def test_well_formed_requests_keep_what_was_sent(
    patients: list[tuple[str, str]], actors: list[tuple[str, str]], purposes: list[str]
) -> None:
    def as_json(ids: list[tuple[str, str]]) -> list[dict[str, str]]:
        return [{"system": s, "value": v} if s else {"value": v} for s, v in ids]

    body = {"hook": "patient-consent-consult", "hookInstance": "h",
            "context": {"patientId": as_json(patients), "actor": as_json(actors), "purposeOfUse": purposes}}
    parsed = parse_consult_request(body)
    assert parsed.patient_identifiers == tuple(dict.fromkeys(patients))
    assert parsed.actor_identifiers == tuple(dict.fromkeys(actors))
    assert parsed.purposes == tuple(dict.fromkeys(purposes))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | NEAR_VALID.map(lambda b: json.dumps(b).encode()))
def test_hostile_bodies_never_get_a_500(cds_client: FlaskClient, raw: bytes) -> None:
    resp = cds_client.post(ENDPOINT, data=raw, headers=JSON_HEADERS)
    assert resp.status_code in (200, 400), resp.get_data(as_text=True)
    assert resp.content_type == "application/json"
