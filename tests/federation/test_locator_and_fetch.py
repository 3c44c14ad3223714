"""Patient-mediated matching and fetching between two hospitals in one process: A holds the record, B asks.

Everything is real but the network: B's HTTP client is routed to A's Flask app (loopback servers are in
tests/integration/test_federation_three_hospitals.py)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from consent_world import HOSPITAL, PASSWORD, World, password_parameters, permit_consent
from fhir_api_support import AUTH
from flask.testing import FlaskClient

from healthledger.audit.merkle import leaf_hash, verify_inclusion
from healthledger.federation.client import FederationRefused
from healthledger.federation.keys import MemberKeys, thumbprint_bytes
from healthledger.federation.registry import admit, request_join
from healthledger.federation.service import local_id
from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger.members import REGISTRY, MemberIndexer
from healthledger.principal import Principal

A_BASE, B_BASE = "http://127.0.0.1:8080", "http://127.0.0.1:8081"
FHIR = "application/fhir+json"


class _Response:
    def __init__(self, resp: Any) -> None:
        self.status_code = resp.status_code
        self.headers = resp.headers
        self._data = resp.data

    def json(self) -> Any:
        return orjson.loads(self._data)


class RoutedHttp:
    """A requests.Session stand-in that sends each URL to the Flask app of its origin."""

    def __init__(self, apps: dict[str, FlaskClient]) -> None:
        self.apps = apps

    def _route(self, url: str) -> tuple[FlaskClient, str]:
        parts = urlsplit(url)
        return self.apps[f"{parts.scheme}://{parts.netloc}"], parts.path + (f"?{parts.query}" if parts.query else "")

    def get(self, url: str, params: Any = None, timeout: float = 0, headers: Any = None) -> _Response:
        client, path = self._route(url)
        return _Response(client.get(path, query_string=params, headers=headers))

    def post(self, url: str, data: Any = None, json: Any = None, timeout: float = 0, headers: Any = None) -> _Response:
        client, path = self._route(url)
        if json is not None:
            return _Response(client.post(path, data=orjson.dumps(json), headers=headers))
        return _Response(client.post(path, data=data, headers=headers))


class Pair:
    def __init__(self, root: Path) -> None:
        self.a = World.build(root / "a", federation_org_id="hospital-a", port=8080)
        self.b = World.build(root / "b", federation_org_id="hospital-b", port=8081)
        # One directory on A's chain; B indexes it into its own database (one shared chain, as in production).
        chain = self.a.chain
        _, receipt = chain.deploy(REGISTRY, chain.operator.address)
        block = int(receipt["blockNumber"])
        for world, org, name, base in ((self.a, "hospital-a", "Hospital A", A_BASE),
                                       (self.b, "hospital-b", "Hospital B", B_BASE)):
            settings = world.app.config["SETTINGS"]
            keys = MemberKeys.load_or_create(settings.keys_dir, LocalFileKeyProvider(settings.keys_dir))
            request_join(chain, org, name, base + "/fhir", thumbprint_bytes(keys.current))
            admit(chain, org)
        self.directories = [MemberIndexer(w.sessions, chain, from_block=block) for w in (self.a, self.b)]
        http = RoutedHttp({A_BASE: self.a.client, B_BASE: self.b.client})
        for world in (self.a, self.b):
            world.app.extensions["healthledger.federation"].client.http = http
        self.sync()

    def sync(self) -> None:
        self.a.sync()
        for d in self.directories:
            d.catch_up(time.time())

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    built = Pair(tmp_path_factory.mktemp("pair"))
    yield built
    built.close()


def parameters(**values: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in values.items()]}


def parts(response: Any) -> dict[str, Any]:
    """The first `source` part of a `$federation-fetch` answer, by name."""
    return {p["name"]: p for p in orjson.loads(response.data)["parameter"][0]["part"]}


def values(body: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p.get("valueString") or p.get("valueReference", {}).get("reference")
            for p in body.get("parameter", [])}


def test_patient_locator_link_fetch_refresh(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ann_at_a = a.patient_session("ann")
    consent = permit_consent(a.patients["ann"], "Organization/hospital-b")
    cid = orjson.loads(ann_at_a.post("Consent", consent).data)["id"]
    assert ann_at_a.post(f"Consent/{cid}/$sign", password_parameters()).status_code == 200
    pair.sync()

    # Only the patient (or staff who may change the Consent) gets a locator; another patient gets a 404.
    bob_at_a = a.patient_session("bob")
    assert bob_at_a.post(f"Consent/{cid}/$record-locator", parameters()).status_code == 404
    made = ann_at_a.post(f"Consent/{cid}/$record-locator", parameters())
    assert made.status_code == 200, made.get_data(as_text=True)
    shown = values(orjson.loads(made.data))
    locator = shown["locator"]
    assert shown["member"] == "hospital-b" and locator.startswith("HLRL1.")
    for secret in ("Testperson", "MRN-ann", "1970"):
        assert secret not in locator  # nothing identifying in it

    # B's intake links B's Ann to it; the locator works once.
    ehr = b.headers("ehr", **{"Content-Type": FHIR})
    link_path = f"/fhir/Patient/{b.patients['ann']}/$link-record"
    linked = b.client.post(link_path, data=orjson.dumps(parameters(locator=locator)), headers=ehr)
    assert linked.status_code == 200, linked.get_data(as_text=True)
    assert values(orjson.loads(linked.data)) == {
        "source": "hospital-a", "consent": f"Consent/{cid}", "patient-at-source": f"Patient/{a.patients['ann']}"}
    cal = b.add_patient("cal", HOSPITAL)
    again = b.client.post(f"/fhir/Patient/{cal}/$link-record",
                          data=orjson.dumps(parameters(locator=locator)), headers=ehr)
    # That Consent is linked here already: refused before the locator is spent at A.
    assert again.status_code == 409 and "already linked to a patient here" in again.get_data(as_text=True)
    damaged = b.client.post(link_path, data=orjson.dumps(parameters(locator="HLRL1.xx")), headers=ehr)
    assert damaged.status_code == 400

    # Redeeming the locator told B who the patient is at A: A's log says so, in Ann's compartment.
    redeemed = [e for e in a.log_since(0) if e.reason.startswith("federation-locator:hospital-b:")]
    assert [(e.actor, e.resource_type, e.resource_id, e.decision) for e in redeemed] == [
        ("member:hospital-b/client:ehr", "Patient", a.patients["ann"], "permit")]

    # Fetch: A's Observation lands in B's store under B's Ann, with a Provenance naming A and the Consent.
    size_a, size_b = a.log_size(), b.log_size()
    fetch_path = f"/fhir/Patient/{b.patients['ann']}/$federation-fetch"
    fetched = b.client.post(fetch_path, headers=ehr)
    assert fetched.status_code == 200, fetched.get_data(as_text=True)
    source = parts(fetched)
    assert "refused" not in source, source
    assert source["fetched"]["valueInteger"] == 1 and source["member"]["valueString"] == "hospital-a"
    # B's own log has the fetch itself, as the caller's, beside its store's entry for each write.
    own = [e for e in b.log_since(size_b) if e.reason.startswith("federation-fetch:")]
    assert [(e.actor, e.reason, e.decision) for e in own] == [
        ("client:ehr", f"federation-fetch:hospital-a:Consent/{cid}:1", "permit")]
    # Finding the copies to compare with A's listing is the server's bookkeeping, not a search by the caller.
    assert not [e for e in b.log_since(size_b) if e.action == "search"]
    provenance_ref = source["provenance"]["valueReference"]["reference"]
    provenance = b.dev_read(provenance_ref)
    assert provenance["policy"] == [f"{A_BASE}/fhir/Consent/{cid}"]
    assert provenance["agent"][0]["who"]["display"] == "Hospital A"
    copies = b.dev_read(f"Observation?patient=Patient/{b.patients['ann']}")
    copied = [e["resource"] for e in copies.get("entry", []) if e["resource"]["meta"].get("source", "").startswith(A_BASE)]
    assert len(copied) == 1 and copied[0]["subject"]["reference"] == f"Patient/{b.patients['ann']}"
    # A's log names B, B's user and the purpose for each read.
    reads = [e for e in a.log_since(size_a) if e.organization == "Organization/hospital-b"]
    assert reads and all(e.actor == "member:hospital-b/client:ehr" and e.purpose == "TREAT" for e in reads)
    assert any(e.decision == "permit" and e.resource_type == "Observation" for e in reads)

    # The patient's history at A sums B's reads up (the Patient the locator disclosed, and the Observation), each
    # with its inclusion proof; the web app makes locators too.
    page = ann_at_a.browser.get("/app/history").get_data(as_text=True)
    assert "Hospital B read 2 records for" in page, page[:3000]
    events = ann_at_a.get(f"AuditEvent?patient=Patient/{a.patients['ann']}&_count=100").get_json()
    by_b = [e["resource"]["id"] for e in events.get("entry", []) if e["resource"].get("entity")
            and any("Hospital B" in (agent.get("who") or {}).get("display", "") for agent in e["resource"]["agent"])
            and any(ent.get("what", {}).get("reference", "").startswith("Observation/") for ent in e["resource"]["entity"])]
    assert by_b, events
    answer = ann_at_a.get(f"AuditEvent/{by_b[0]}/$inclusion-proof").get_json()["parameter"]
    proof = {p["name"]: p for p in answer}
    body = base64.b64decode(proof["entry"]["valueBase64Binary"])
    path = [bytes.fromhex(p["valueString"]) for p in answer if p["name"] == "auditPath"]
    verify_inclusion(proof["leafIndex"]["valueInteger"], proof["treeSize"]["valueInteger"], leaf_hash(body), path,
                     bytes.fromhex(proof["rootHash"]["valueString"]))
    assert b'"actor":"member:hospital-b/client:ehr"' in body and b'"resource_type":"Observation"' in body
    assert "Make a one-time code" in ann_at_a.browser.get(f"/app/consents/{cid}").get_data(as_text=True)
    made_in_page = ann_at_a.browser.post(f"/app/consents/{cid}/record-locator", data={"csrf_token": ann_at_a.csrf})
    assert made_in_page.status_code == 200 and "HLRL1." in made_in_page.get_data(as_text=True)

    # Refresh: nothing changed, nothing fetched; a new record at A arrives alone.
    again = parts(b.client.post(fetch_path, headers=ehr))
    assert "refused" not in again and again["fetched"]["valueInteger"] == 0, again
    time.sleep(1.1)
    a.dev_create({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{a.patients['ann']}"},
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                  "effectiveDateTime": "2026-11-20", "valueQuantity": {"value": 5.4, "unit": "mmol/L"}})
    third = parts(b.client.post(fetch_path, headers=ehr))
    assert "refused" not in third and third["fetched"]["valueInteger"] == 1, third

    # The patient revokes: B's next fetch is refused, and says so.
    assert ann_at_a.post(f"Consent/{cid}/$revoke", password_parameters()).status_code == 200
    pair.sync()
    refused = orjson.loads(b.client.post(fetch_path, headers=ehr).data)["parameter"][0]["part"]
    assert any(p["name"] == "refused" and "revoked" in p["valueString"] for p in refused)


def test_fetch_without_a_link_and_redeem_without_a_member_token(pair: Pair) -> None:
    b, a = pair.b, pair.a
    ehr = b.headers("ehr", **{"Content-Type": FHIR})
    cal = b.patients.get("cal") or b.add_patient("cal", HOSPITAL)
    none = b.client.post(f"/fhir/Patient/{cal}/$federation-fetch", headers=ehr)
    assert none.status_code == 404 and "linked to no record" in none.get_data(as_text=True)
    # A patient the caller may not change: the same 404 as a missing one, before any link is looked at.
    other = b.client.post(f"/fhir/Patient/{b.patients['bob']}/$federation-fetch", headers=ehr)
    assert other.status_code == 404 and "linked to no record" not in other.get_data(as_text=True)
    redeem = a.client.post("/fhir/$redeem-record-locator", data=orjson.dumps(parameters(locator="HLRL1.e30")),
                           headers=a.headers("ehr", **{"Content-Type": FHIR}))
    assert redeem.status_code == 404


PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}


def grant_and_link(pair: Pair, name: str) -> tuple[str, str]:
    """Patient `name` (at both) grants B at A, makes a locator, and B links its own `name` to it: (Consent id,
    the fetch path at B)."""
    a, b = pair.a, pair.b
    at_a = a.patient_session(name)
    cid = orjson.loads(at_a.post("Consent", permit_consent(a.patients[name], "Organization/hospital-b")).data)["id"]
    assert at_a.post(f"Consent/{cid}/$sign", password_parameters()).status_code == 200
    pair.sync()
    locator = values(orjson.loads(at_a.post(f"Consent/{cid}/$record-locator", parameters()).data))["locator"]
    linked = b.client.post(f"/fhir/Patient/{b.patients[name]}/$link-record", data=orjson.dumps(parameters(locator=locator)),
                           headers=b.headers("ehr", **{"Content-Type": FHIR}))
    assert linked.status_code == 200, linked.get_data(as_text=True)
    return cid, f"/fhir/Patient/{b.patients[name]}/$federation-fetch"


def observation(patient: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": "2026-11-20",
            "valueQuantity": {"value": 1, "unit": "x"}, **extra}


def test_labels_travel_and_a_clock_ahead_at_b_loses_nothing(pair: Pair) -> None:
    a, b = pair.a, pair.b
    for world in (a, b):
        world.add_patient("dee", HOSPITAL)
    labelled = a.dev_create(observation(a.patients["dee"], "11111-1", meta={
        "security": [PSY], "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]}))
    _, fetch_path = grant_and_link(pair, "dee")
    ehr = b.headers("ehr", **{"Content-Type": FHIR})
    federation_b = b.app.extensions["healthledger.federation"]
    federation_b.clock = lambda: time.time() + 20  # B's clock 20 s ahead of A's (within the assertion leeway)
    try:
        first = parts(b.client.post(fetch_path, headers=ehr))
        assert "refused" not in first and first["fetched"]["valueInteger"] == 2, first
        late = a.dev_create(observation(a.patients["dee"], "22222-2"))
        # The watermark is on A's clock: A's record written after the first fetch arrives, whatever B's clock says.
        second = parts(b.client.post(fetch_path, headers=ehr))
        assert "refused" not in second and second["fetched"]["valueInteger"] == 1, second
        assert parts(b.client.post(fetch_path, headers=ehr))["fetched"]["valueInteger"] == 0
    finally:
        federation_b.clock = time.time
    copies = {e["resource"]["meta"]["source"].split("/_history")[0].rsplit("/", 1)[1]: e["resource"]
              for e in b.dev_read(f"Observation?patient=Patient/{b.patients['dee']}")["entry"]
              if e["resource"]["meta"].get("source", "").startswith(A_BASE)}
    assert set(copies) == {labelled, late, a.observations["dee"]}
    assert copies[labelled]["meta"]["security"] == [PSY]
    assert copies[labelled]["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]
    assert "security" not in copies[late]["meta"]

    # B's consent engine decides the copy by A's label: Dee's deny of PSY-labelled data at B withholds it.
    deny = {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{b.patients['dee']}"}, "dateTime": "2026-11-01",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": {"type": "deny", "securityLabel": [PSY]}}
    b.dev_create(deny)
    b.sync()
    reader = b.headers("ehr")
    assert b.client.get(f"/fhir/Observation/{copies[labelled]['id']}", headers=reader).status_code == 404
    assert b.client.get(f"/fhir/Observation/{copies[late]['id']}", headers=reader).status_code == 200
    # A changes the labelled record: B's staff may not change that copy here any more, so the refresh leaves it as
    # it was and still brings the rest.
    changed = a.dev_read(f"Observation/{labelled}")
    changed["valueQuantity"] = {"value": 2, "unit": "x"}
    a.dev_put(changed)
    newer = a.dev_create(observation(a.patients["dee"], "44444-4"))
    after = parts(b.client.post(fetch_path, headers=ehr))
    assert "refused" not in after and after["fetched"]["valueInteger"] == 1, after
    assert b.client.get(f"/fhir/Observation/{local_id('hospital-a', 'Observation', newer)}", headers=reader).status_code == 200
    assert b.dev_read(f"Observation/{copies[labelled]['id']}")["valueQuantity"]["value"] == 1


def test_relink_unlink_regrant_and_refusals_in_both_logs(pair: Pair) -> None:
    a, b = pair.a, pair.b
    for world in (a, b):
        world.add_patient("eve", HOSPITAL)
    cid, fetch_path = grant_and_link(pair, "eve")
    eve_at_a = a.patient_session("eve")
    ehr = b.headers("ehr", **{"Content-Type": FHIR})
    link_path = f"/fhir/Patient/{b.patients['eve']}/$link-record"
    unlink_path = f"/fhir/Patient/{b.patients['eve']}/$unlink-record"

    def locator_for(consent_id: str) -> str:
        made = eve_at_a.post(f"Consent/{consent_id}/$record-locator", parameters())
        return str(values(orjson.loads(made.data))["locator"])

    def link(locator: str) -> Any:
        return b.client.post(link_path, data=orjson.dumps(parameters(locator=locator)), headers=ehr)

    # Linking the same Consent again: a clear 409, and the second locator is not spent at A.
    second = locator_for(cid)
    again = link(second)
    assert again.status_code == 409 and "already linked to this patient here" in again.get_data(as_text=True)
    missing = b.client.post(unlink_path, data=orjson.dumps(parameters(source="hospital-z")), headers=ehr)
    assert missing.status_code == 404
    unlinked = b.client.post(unlink_path, data=orjson.dumps(parameters(source="hospital-a", consent=f"Consent/{cid}")),
                             headers=ehr)
    assert unlinked.status_code == 200 and orjson.loads(unlinked.data)["parameter"][0]["valueInteger"] == 1
    # Still good (the refused attempt did not redeem it); linked here for another purpose, which B passes on, with
    # the display name of the user who asks.
    federation_b = b.app.extensions["healthledger.federation"]
    sent: list[str] = []
    original = federation_b.client.token

    def capture(endpoint: str, assertion: str, scope: str) -> Any:
        sent.append(assertion)
        return original(endpoint, assertion, scope)

    federation_b.client.token = capture
    size_a = a.log_size()
    try:
        federation_b.link_record(Principal("client:ehr", "internal", purpose="HOPERAT", via="cli"),
                                 b.patients["eve"], second, "HOPERAT")
    finally:
        federation_b.client.token = original
    b2b = orjson.loads(base64.urlsafe_b64decode(sent[0].split(".")[1] + "=="))["extensions"]["hl7-b2b"]
    assert b2b["purpose_of_use"] == ["urn:oid:2.16.840.1.113883.5.8#HOPERAT"] and b2b["subject_name"] == "ehr"
    assert [(e.purpose, e.reason) for e in a.log_since(size_a)] == [
        ("HOPERAT", f"federation-locator:hospital-b:Consent/{cid}")]

    # The patient grants again under a new Consent: its locator replaces the link (one link, the new Consent).
    new_cid = orjson.loads(eve_at_a.post("Consent", permit_consent(a.patients["eve"], "Organization/hospital-b")).data)["id"]
    assert eve_at_a.post(f"Consent/{new_cid}/$sign", password_parameters()).status_code == 200
    pair.sync()
    assert link(locator_for(new_cid)).status_code == 200
    from healthledger.federation.locators import links_of

    with b.sessions() as s:
        assert [lk.consent_ref for lk in links_of(s, b.app.config["SETTINGS"].tenant, b.patients["eve"])] == [
            f"Consent/{new_cid}"]
    assert "refused" not in parts(b.client.post(fetch_path, headers=ehr))

    # Revoked: the refusal is in Eve's log at A (the Consent is real and names B) and in B's log.
    assert eve_at_a.post(f"Consent/{new_cid}/$revoke", password_parameters()).status_code == 200
    pair.sync()
    size_a, size_b = a.log_size(), b.log_size()
    refused = parts(b.client.post(fetch_path, headers=ehr))
    assert "revoked" in refused["refused"]["valueString"]
    at_a = [(e.actor, e.resource_type, e.resource_id, e.decision, e.reason) for e in a.log_since(size_a)]
    assert at_a == [("member:hospital-b/client:ehr", "Consent", new_cid, "deny", "federation-token:grant-revoked")]
    at_b = [(e.actor, e.resource_id, e.decision, e.reason) for e in b.log_since(size_b)]
    assert ("client:ehr", b.patients["eve"], "error", f"federation-fetch-refused:hospital-a:Consent/{new_cid}:invalid_grant") in at_b
    assert "1 attempt was refused" in eve_at_a.browser.get("/app/history").get_data(as_text=True)

    # A Consent that does not name B (or does not exist): one answer, and no patient's log is touched at A.
    bob_cid = orjson.loads(a.patient_session("bob").post(
        "Consent", permit_consent(a.patients["bob"], "Organization/other-hospital")).data)["id"]
    size_a = a.log_size()
    federation_b = b.app.extensions["healthledger.federation"]
    for consent in (f"{A_BASE}/fhir/Consent/{bob_cid}", f"{A_BASE}/fhir/Consent/00000000-0000-4000-8000-000000000000"):
        with pytest.raises(FederationRefused, match="names no Consent here that grants 'hospital-b'"):
            federation_b._token("hospital-a", f"{A_BASE}/fhir", consent, Principal("client:ehr", "system"), "TREAT",
                                "system/*.rs")
    assert a.log_size() == size_a


def test_the_watermark_is_on_the_members_clock() -> None:
    from healthledger.federation.service import WATERMARK_MARGIN, next_watermark

    seen = [{"meta": {"lastUpdated": "2026-12-01T10:00:00.000Z"}}, {"meta": {"lastUpdated": "2026-12-01T10:00:05+00:00"}},
            {"meta": {"lastUpdated": "not a time"}}, {}]
    newest = 1_796_119_205.0  # 2026-12-01T10:00:05Z
    assert next_watermark(None, 1_796_200_000.0, seen) == 1_796_200_000.0 - WATERMARK_MARGIN  # A's Date first
    assert next_watermark(None, None, seen) == newest - WATERMARK_MARGIN  # else the newest record A showed
    assert next_watermark(123.0, None, []) == 123.0  # nothing from A's clock: the watermark stays
    assert next_watermark(newest, None, seen[:1]) == newest  # never backwards


def test_the_share_form_offers_member_hospitals_by_name(pair: Pair) -> None:
    """The patient grants B from A's web app: B is offered from the directory, and the consent page names it."""
    import re
    from datetime import date

    a = pair.a
    a.add_patient("fay", HOSPITAL)
    browser = a.patient_session("fay").browser
    page = browser.get("/app/share").get_data(as_text=True)
    assert "Hospital B (member hospital)" in page and 'value="Organization/hospital-b"' in page
    assert "Hospital A (member hospital)" not in page  # not itself
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    shared = browser.post("/app/share", data={
        "csrf_token": token.group(1), "recipient": "Organization/hospital-b", "purpose": "TREAT",
        "categories": ["observations"], "start": date.today().isoformat(), "end": "", "password": PASSWORD})
    assert shared.status_code == 303, shared.get_data(as_text=True)
    consent_page = browser.get(shared.headers["Location"]).get_data(as_text=True)
    assert "Hospital B" in consent_page, consent_page[:3000]
    pair.sync()
    consents = browser.get("/app/consents").get_data(as_text=True)
    assert "Hospital B" in consents
    # A Consent made through the API carries no display: the page names B from the directory all the same.
    made = a.patient_session("fay").post("Consent", permit_consent(a.patients["fay"], "Organization/hospital-b"))
    assert "Hospital B" in browser.get(f"/app/consents/{made.get_json()['id']}").get_data(as_text=True)


def test_deletions_and_a_narrowed_consent_reach_b(pair: Pair) -> None:
    a, b = pair.a, pair.b
    for world in (a, b):
        world.add_patient("gus", HOSPITAL)
    gus = a.patients["gus"]
    second = a.dev_create(observation(gus, "33333-3"))
    condition = a.dev_create({"resourceType": "Condition", "subject": {"reference": f"Patient/{gus}"},
                              "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}})
    cid, fetch_path = grant_and_link(pair, "gus")
    ehr = b.headers("ehr", **{"Content-Type": FHIR})

    def held() -> set[str]:
        found = set()
        for rtype in ("Observation", "Condition"):
            for e in b.dev_read(f"{rtype}?patient=Patient/{b.patients['gus']}").get("entry", []):
                source = e["resource"]["meta"].get("source", "")
                if source.startswith(A_BASE):
                    found.add(source.split("/_history")[0].rsplit("/", 1)[1])
        return found

    first = parts(b.client.post(fetch_path, headers=ehr))
    assert first["fetched"]["valueInteger"] == 3 and "removed" not in first, first
    assert held() == {a.observations["gus"], second, condition}

    # Deleted at A: gone from B at the next refresh (by A's listing of what it still shows B).
    assert a.client.delete(f"/fhir/Observation/{second}", headers=AUTH).status_code in (200, 204)
    refreshed = parts(b.client.post(fetch_path, headers=ehr))
    assert refreshed["fetched"]["valueInteger"] == 0 and refreshed["removed"]["valueInteger"] == 1, refreshed
    assert held() == {a.observations["gus"], condition}

    # The patient narrows what B may see to Observations (a new Consent, the old one revoked): the Condition goes.
    gus_at_a = a.patient_session("gus")
    narrow = permit_consent(gus, "Organization/hospital-b", classes=("Observation",))
    new_cid = orjson.loads(gus_at_a.post("Consent", narrow).data)["id"]
    assert gus_at_a.post(f"Consent/{new_cid}/$sign", password_parameters()).status_code == 200
    assert gus_at_a.post(f"Consent/{cid}/$revoke", password_parameters()).status_code == 200
    pair.sync()
    locator = values(orjson.loads(gus_at_a.post(f"Consent/{new_cid}/$record-locator", parameters()).data))["locator"]
    relinked = b.client.post(f"/fhir/Patient/{b.patients['gus']}/$link-record",
                             data=orjson.dumps(parameters(locator=locator)), headers=ehr)
    assert relinked.status_code == 200, relinked.get_data(as_text=True)
    narrowed = parts(b.client.post(fetch_path, headers=ehr))
    assert "refused" not in narrowed and narrowed["removed"]["valueInteger"] == 1, narrowed
    assert held() == {a.observations["gus"]}
