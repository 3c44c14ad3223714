"""Deeply nested JSON never crashes a worker: every endpoint and command that reads JSON refuses it cleanly.

A body nested 10^5 or 10^6 levels once overflowed the C stack in the recursive JSON parser (py_ecc
raises the recursion limit to 100,000 on import) and the gunicorn worker died with SIGSEGV. Each case is
also sent with the same brackets inside a string, which is not nesting and must still be accepted.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app, dispose
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from support import ROOT
from werkzeug.test import TestResponse

from healthledger.auth.smart import TOKEN_PATH
from healthledger.auth.tokens import ASSERTION_TYPE, register_client
from healthledger.cli import cli
from healthledger.db import session_factory

LEVELS = [10**5, 10**6]
NESTED = ["arrays", "objects"]
MAX_BODY = 8 * 1024 * 1024  # so that even 10^6 levels of objects (6 MB) reach the parser, not the size limit
CDS_ENDPOINT = "/cds-services/patient-consent-consult"
CDS_HEADERS = {**AUTH, "Content-Type": "application/json"}
NESTING_REFUSED = "JSON nesting is deeper than 100 levels"


def deep_value(shape: str, levels: int) -> bytes:
    """A JSON value nested `levels` deep, or (`string`) a string holding the same brackets: depth 0."""
    if shape == "arrays":
        return b"[" * levels + b"]" * levels
    if shape == "objects":
        return b'{"a":' * levels + b"1" + b"}" * levels
    return b'"' + b"[{" * (levels // 2) + b'"'


def patient(value: bytes) -> bytes:
    return b'{"resourceType":"Patient","name":[{"family":' + value + b"}]}"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    application = build_app(api_settings(tmp_path_factory.mktemp("deep-json") / "var", max_request_bytes=MAX_BODY))
    yield application
    dispose(application)


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def client_key(app: Flask) -> ECKey:
    """A SMART backend client `deep-ehr` registered with this key."""
    key = ECKey.generate_key("P-384", auto_kid=True)
    with session_factory(app.extensions["healthledger.engine"]).begin() as session:
        register_client(session, client_id="deep-ehr", name="Deep", scopes="system/Patient.rs", role="system",
                        jwks=KeySet([key]).as_dict(private=False), now=datetime.now(UTC))
    return key


def assert_fhir_refusal(resp: TestResponse) -> None:
    assert resp.status_code == 400, resp.data[:300]
    assert resp.content_type == "application/fhir+json; charset=utf-8"
    outcome = orjson.loads(resp.data)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"] == NESTING_REFUSED


# -- the FHIR API: resources, Bundles, Consent operations --------------------------------------------------
FHIR_WRITES: dict[str, tuple[str, str, Callable[[bytes], bytes]]] = {
    "create": ("POST", "/fhir/Patient", patient),
    "update": ("PUT", "/fhir/Patient/deep-1", lambda v: patient(v)[:-1] + b',"id":"deep-1"}'),
    "batch": ("POST", "/fhir", lambda v: b'{"resourceType":"Bundle","type":"batch","entry":[{"resource":'
              + patient(v) + b',"request":{"method":"POST","url":"Patient"}}]}'),
    "transaction": ("POST", "/fhir", lambda v: b'{"resourceType":"Bundle","type":"transaction","entry":[{'
                    b'"fullUrl":"urn:uuid:' + str(uuid.uuid4()).encode() + b'","resource":'
                    + patient(v) + b',"request":{"method":"POST","url":"Patient"}}]}'),
    "conditional update": ("PUT", "/fhir/Patient?identifier=urn:deep|1", patient),
    "$sign": ("POST", "/fhir/Consent/no-such-consent/$sign",
              lambda v: b'{"resourceType":"Parameters","parameter":[{"name":"password","valueString":' + v + b"}]}"),
    "$revoke": ("POST", "/fhir/Consent/no-such-consent/$revoke",
                lambda v: b'{"resourceType":"Parameters","parameter":[{"name":"password","valueString":' + v + b"}]}"),
}


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("shape", NESTED)
@pytest.mark.parametrize("endpoint", FHIR_WRITES)
def test_fhir_api_refuses_deep_bodies_with_an_operation_outcome(
    client: FlaskClient, endpoint: str, shape: str, levels: int
) -> None:
    method, path, body = FHIR_WRITES[endpoint]
    assert_fhir_refusal(client.open(path, method=method, data=body(deep_value(shape, levels)), headers=JSON_HEADERS))


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("endpoint", FHIR_WRITES)
def test_fhir_api_reads_brackets_inside_strings(client: FlaskClient, endpoint: str, levels: int) -> None:
    method, path, body = FHIR_WRITES[endpoint]
    resp = client.open(path, method=method, data=body(deep_value("string", levels)), headers=JSON_HEADERS)
    if endpoint in ("$sign", "$revoke"):
        assert resp.status_code == 404, resp.data[:300]  # parsed, then the Consent was looked up
    elif endpoint in ("batch", "transaction"):
        assert resp.status_code == 200, resp.data[:300]
        assert orjson.loads(resp.data)["entry"][0]["response"]["status"].startswith("201")
    else:
        assert resp.status_code in (200, 201), resp.data[:300]
        assert orjson.loads(resp.data)["name"][0]["family"].startswith("[{[{")


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("shape", NESTED)
def test_patch_refuses_deep_json_patches(client: FlaskClient, shape: str, levels: int) -> None:
    body = b'[{"op":"add","path":"/name","value":' + deep_value(shape, levels) + b"}]"
    headers = {**JSON_HEADERS, "Content-Type": "application/json-patch+json"}
    assert_fhir_refusal(client.patch("/fhir/Patient/deep-patch", data=body, headers=headers))


def test_search_forms_are_not_json(client: FlaskClient) -> None:
    """`_search` takes a form: brackets in a parameter are just characters of the value."""
    resp = client.post("/fhir/Patient/_search", data=b"family=" + b"%5B" * 1000,
                       headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200 and orjson.loads(resp.data)["resourceType"] == "Bundle"


# -- CDS Hooks: its own error JSON -----------------------------------------------------------------------------
def cds_request(value: bytes) -> bytes:
    return (b'{"hook":"patient-consent-consult","hookInstance":"deep","context":{"patientId":[{"system":"s",'
            b'"value":"v"}],"actor":[{"system":"a","value":"b"}],"purposeOfUse":["TREAT"],"note":' + value + b"}}")


@pytest.mark.parametrize("levels", [*LEVELS, 30_000])  # 30,000 levels fit the service's 64 KiB body limit
@pytest.mark.parametrize("shape", NESTED)
def test_cds_hooks_refuses_deep_bodies_with_its_error_json(client: FlaskClient, shape: str, levels: int) -> None:
    resp = client.post(CDS_ENDPOINT, data=cds_request(deep_value(shape, levels)), headers=CDS_HEADERS)
    assert resp.status_code in (400, 413), resp.data[:300]
    assert resp.content_type == "application/json"
    assert orjson.loads(resp.data)["error"] in ("bad_request", "payload_too_large")


def test_cds_hooks_reads_brackets_inside_strings(client: FlaskClient) -> None:
    resp = client.post(CDS_ENDPOINT, data=cds_request(deep_value("string", 30_000)), headers=CDS_HEADERS)
    assert resp.status_code == 200, resp.data[:300]
    assert orjson.loads(resp.data)["cards"]


# -- /auth/token: client assertions whose header or payload is deep ------------------------------------------
def token_form(assertion: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


def claims(now: int) -> dict[str, object]:
    return {"iss": "deep-ehr", "sub": "deep-ehr", "aud": "http://127.0.0.1:8080" + TOKEN_PATH,
            "exp": now + 120, "jti": str(uuid.uuid4())}


# joserfc refuses compact tokens over 512 bytes of header or 128,000 of payload, unparsed; the payload of an
# assertion is read (for `iss`) before any signature check, so 95,000 levels got to the parser.
@pytest.mark.parametrize("levels", [*LEVELS, 95_000])
@pytest.mark.parametrize("shape", NESTED)
@pytest.mark.parametrize("segment", ["header", "payload"])
def test_token_endpoint_refuses_deep_assertions_with_an_oauth_error(
    client: FlaskClient, client_key: ECKey, segment: str, shape: str, levels: int
) -> None:
    if segment == "header":
        header = b'{"alg":"ES384","kid":"' + client_key.kid.encode() + b'","x":' + deep_value(shape, levels) + b"}"
        compact = f"{b64url(header)}.{b64url(json.dumps(claims(0)).encode())}.c2ln"
    else:
        payload = b'{"iss":"deep-ehr","x":' + deep_value(shape, levels) + b"}"
        compact = f"{b64url(json.dumps({'alg': 'ES384', 'kid': client_key.kid}).encode())}.{b64url(payload)}.c2ln"
    resp = client.post(TOKEN_PATH, data=token_form(compact))
    assert resp.status_code == 401, resp.data[:300]
    assert resp.content_type == "application/json"
    assert resp.get_json() == {"error": "invalid_client",
                               "error_description": "client_assertion is not a well-formed JWT"}


def test_token_endpoint_reads_brackets_inside_strings(client: FlaskClient, client_key: ECKey) -> None:
    import time

    assertion = jwt.encode({"alg": "ES384", "kid": client_key.kid, "cty": "[{" * 100},
                           {**claims(int(time.time())), "x": "[{" * 40_000}, client_key, algorithms=["ES384"])
    resp = client.post(TOKEN_PATH, data=token_form(assertion))
    assert resp.status_code == 200, resp.data[:300]
    assert resp.get_json()["access_token"]


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("shape", NESTED)
def test_bearer_tokens_with_a_deep_header_get_401(client: FlaskClient, shape: str, levels: int) -> None:
    header = b'{"alg":"ES256","x":' + deep_value(shape, levels) + b"}"
    resp = client.get("/fhir/Patient", headers={"Authorization": f"Bearer {b64url(header)}.e30.c2ln"})
    assert resp.status_code == 401, resp.data[:300]
    assert orjson.loads(resp.data)["resourceType"] == "OperationOutcome"


def test_bearer_tokens_with_brackets_inside_header_strings_work(
    app: Flask, client: FlaskClient, client_key: ECKey  # client_key: registers the token's client
) -> None:
    import time

    tokens = app.extensions["healthledger.tokens"]
    now = int(time.time())
    token = jwt.encode({"alg": "ES256", "kid": tokens._signer.key.kid, "cty": "[{" * 100},
                       {"iss": tokens.issuer, "aud": tokens.issuer, "sub": "deep-ehr", "iat": now, "exp": now + 60,
                        "scope": "system/Patient.rs", "x": "[{" * 40_000}, tokens._signer.key, algorithms=["ES256"])
    resp = client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.data[:300]


# -- commands: client JWKS registration, import -----------------------------------------------------------------
@pytest.fixture()
def cli_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    monkeypatch.delenv("HEALTHLEDGER_DATABASE_URL", raising=False)
    return tmp_path


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("shape", [*NESTED, "string"])
def test_clients_add_reads_a_jwks_file_safely(cli_data_dir: Path, shape: str, levels: int) -> None:
    public = json.dumps(KeySet([ECKey.generate_key("P-384", auto_kid=True)]).as_dict(private=False)).encode()
    path = cli_data_dir / "jwks.json"
    path.write_bytes(public[:-1] + b',"note":' + deep_value(shape, levels) + b"}")
    result = CliRunner().invoke(cli, ["clients", "add", "Lab", "--scopes", "system/*.rs", "--jwks", str(path)])
    if shape == "string":
        assert result.exit_code == 0, result.output
        assert "registered client" in result.output
    else:
        assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
        assert f"{path}: {NESTING_REFUSED}" in result.output


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("shape", [*NESTED, "string"])
@pytest.mark.parametrize("suffix", [".json", ".ndjson"])
def test_import_reads_deep_files_safely(cli_data_dir: Path, suffix: str, shape: str, levels: int) -> None:
    path = cli_data_dir / f"deep{suffix}"
    path.write_bytes(patient(deep_value(shape, levels)) + b"\n")
    result = CliRunner().invoke(cli, ["import", str(path)])
    if shape == "string":
        assert result.exit_code == 0, result.output
        assert "1 resources imported" in result.output
    else:
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert NESTING_REFUSED in result.output.replace("\n", " ").replace("│", " ").replace("  ", " ")


# -- a worker process survives -------------------------------------------------------------------------------------
def test_a_worker_process_survives_deep_bodies_even_at_py_ecc_recursion_limit(tmp_path: Path) -> None:
    """A gunicorn-like process: the app, a request thread, 10^6 levels to every JSON endpoint. Exit 0, not -11.

    The limit is forced back to py_ecc's 100,000, so this checks the refusal before parsing on its own.
    """
    code = textwrap.dedent(f"""
        import base64, sys, threading
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from fhir_api_support import AUTH, JSON_HEADERS, api_settings, build_app
        app = build_app(api_settings({str(tmp_path / "var")!r}, max_request_bytes={MAX_BODY}))
        sys.setrecursionlimit(100_000)  # what py_ecc's import does
        deep = b"[" * 10**6
        header = base64.urlsafe_b64encode(b'{{"alg":"ES256","x":' + deep[:300_000] + b"}}").rstrip(b"=").decode()
        statuses = []
        def serve():
            client = app.test_client()
            for path in ("/fhir/Patient", "/fhir", "/fhir/Consent/x/$sign"):
                statuses.append(client.post(path, data=deep, headers=JSON_HEADERS).status_code)
            statuses.append(client.post("/cds-services/patient-consent-consult", data=deep[:60_000],
                                        headers={{**AUTH, "Content-Type": "application/json"}}).status_code)
            statuses.append(client.post("/auth/token", data={{
                "grant_type": "client_credentials", "scope": "system/*.rs",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": header + ".e30.c2ln"}}).status_code)
            statuses.append(client.get("/fhir/Patient", headers={{"Authorization": "Bearer " + header + ".e30.c2ln"}}
                                       ).status_code)
        worker = threading.Thread(target=serve)
        worker.start()
        worker.join()
        print(*statuses)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert done.stdout.split() == ["400", "400", "400", "400", "401", "401"]


# -- the embedded chain's loopback JSON-RPC node (`healthledger chain node`) --------------------------------------
class EchoRPC:
    """Stands for EmbeddedRPC: answers any well-formed request."""

    def handle(self, payload: object) -> dict[str, object]:
        return {"jsonrpc": "2.0", "id": 1, "result": "parsed"}


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("shape", [*NESTED, "string"])
def test_the_chain_node_answers_deep_json_with_a_parse_error(shape: str, levels: int) -> None:
    import requests

    from healthledger.ledger.backends.rpc_server import MAX_REQUEST_BYTES, serve_in_thread

    server, url = serve_in_thread(EchoRPC())  # type: ignore[arg-type]
    try:
        body = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[' + deep_value(shape, levels) + b"]}"
        response = requests.post(url, data=body, timeout=30)
        if len(body) > MAX_REQUEST_BYTES:
            assert response.status_code == 413
        elif shape == "string":
            assert response.json()["result"] == "parsed"
        else:
            assert response.json()["error"]["code"] == -32700  # JSON-RPC 2.0 §5.1 parse error
        assert requests.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "eth_chainId"}, timeout=5).ok
    finally:
        server.shutdown()
        server.server_close()
