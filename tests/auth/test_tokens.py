"""SMART Backend Services token endpoint: private_key_jwt (RS384/ES384), secrets, replay, expiry, scopes."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner
from flask import Flask
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from healthledger.auth.smart import TOKEN_PATH, smart_blueprint
from healthledger.auth.tokens import ASSERTION_TYPE, TokenService, TokenSigner, register_client
from healthledger.cli import cli
from healthledger.db import make_engine, session_factory
from healthledger.errors import Unauthorized
from healthledger.keys import LocalFileKeyProvider

ISSUER = "http://127.0.0.1:8080"
TOKEN_URL = ISSUER + TOKEN_PATH
NOW0 = time.time()


class Clock:
    def __init__(self) -> None:
        self.t = NOW0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def keys() -> dict[str, object]:
    return {"rsa": RSAKey.generate_key(2048, auto_kid=True), "ec": ECKey.generate_key("P-384", auto_kid=True),
            "other": ECKey.generate_key("P-384", auto_kid=True)}


@pytest.fixture()
def env(tmp_path, keys, migrated_sqlite_url):
    engine = make_engine(migrated_sqlite_url)
    sessions = session_factory(engine)
    clock = Clock()
    signer = TokenSigner.load_or_create(tmp_path / "keys", LocalFileKeyProvider(tmp_path / "keys"))
    tokens = TokenService(sessions, signer, issuer=ISSUER, token_endpoint=TOKEN_URL, clock=clock)
    app = Flask("t")
    app.register_blueprint(smart_blueprint(tokens))
    public = KeySet([keys["rsa"], keys["ec"]]).as_dict(private=False)
    with sessions.begin() as s:
        register_client(s, client_id="ehr", name="EHR", scopes="system/Observation.cruds system/Patient.rs",
                        role="system", organization="Organization/h1", jwks=public, now=datetime.now(UTC))
        register_client(s, client_id="other-ehr", name="Other", scopes="system/*.cruds", role="system",
                        jwks=KeySet([keys["other"]]).as_dict(private=False), now=datetime.now(UTC))
    yield {"client": app.test_client(), "tokens": tokens, "clock": clock, "sessions": sessions,
           "tmp": tmp_path}
    engine.dispose()


def assertion(key, alg: str, *, iss="ehr", sub=None, aud=TOKEN_URL, exp_in=240, jti=None, kid=None, now=None) -> str:
    now = int(now if now is not None else NOW0)
    claims = {"iss": iss, "sub": sub or iss, "aud": aud, "exp": now + exp_in, "jti": jti or str(uuid.uuid4())}
    return jwt.encode({"alg": alg, "kid": kid or key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def token_request(client, a: str, scope: str = "system/Observation.rs", **extra):
    form = {"grant_type": "client_credentials", "scope": scope, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": a, **extra}
    return client.post(TOKEN_PATH, data=form)


@pytest.mark.parametrize("which, alg", [("rsa", "RS384"), ("ec", "ES384")])
def test_private_key_jwt_issues_a_token_the_api_accepts(env, keys, which, alg) -> None:
    resp = token_request(env["client"], assertion(keys[which], alg), scope="system/*.rs")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == "system/Observation.rs system/Patient.rs"  # intersected with the registration
    assert resp.headers["Cache-Control"] == "no-store"
    grant = env["tokens"].authenticate(body["access_token"])
    assert grant.client_id == "ehr" and grant.organization == "Organization/h1" and grant.role == "system"
    assert [str(s) for s in grant.scopes] == ["system/Observation.rs", "system/Patient.rs"]
    # What the registration says travels with the grant: a token's scopes alone cannot tell a client
    # registered for a type from one registered for `*` that asked for that type.
    assert [str(s) for s in grant.registered_scopes] == ["system/Observation.cruds", "system/Patient.rs"]
    assert grant.consult_for_others is False


def test_a_wildcard_client_asking_for_one_type_is_still_registered_for_the_wildcard(env, keys) -> None:
    a = assertion(keys["other"], "ES384", iss="other-ehr")
    body = token_request(env["client"], a, scope="system/AuditEvent.rs").get_json()
    assert body["scope"] == "system/AuditEvent.rs"
    grant = env["tokens"].authenticate(body["access_token"])
    assert [str(s) for s in grant.registered_scopes] == ["system/*.cruds"]


def test_consult_for_others_is_read_from_the_registration_on_every_use(env, keys) -> None:
    from healthledger.auth.models import ApiClient

    with env["sessions"].begin() as s:
        register_client(s, client_id="broker", name="Broker", scopes="system/Consent.rs", role="system",
                        jwks=KeySet([keys["other"]]).as_dict(private=False), consult_for_others=True,
                        now=datetime.now(UTC))
    a = assertion(keys["other"], "ES384", iss="broker")
    token = token_request(env["client"], a, scope="system/Consent.rs").get_json()["access_token"]
    assert env["tokens"].authenticate(token).consult_for_others is True
    with env["sessions"].begin() as s:
        s.get(ApiClient, "broker").consult_for_others = False
    assert env["tokens"].authenticate(token).consult_for_others is False  # withdrawn: at once


@pytest.mark.parametrize("case", ["replayed jti", "wrong aud", "expired", "exp too far", "unknown kid", "wrong key",
                                  "wrong iss", "sub differs", "HS256 with public key", "alg none", "RS256",
                                  "garbage", "unknown client"])
def test_bad_assertions_are_rejected(env, keys, case) -> None:
    c = env["client"]
    if case == "replayed jti":
        a = assertion(keys["ec"], "ES384", jti="once")
        assert token_request(c, a).status_code == 200
        a = assertion(keys["ec"], "ES384", jti="once")
    elif case == "wrong aud":
        a = assertion(keys["ec"], "ES384", aud="http://elsewhere/token")
    elif case == "expired":
        a = assertion(keys["ec"], "ES384", now=NOW0 - 600)
    elif case == "exp too far":
        a = assertion(keys["ec"], "ES384", exp_in=3600)
    elif case == "unknown kid":
        a = assertion(keys["ec"], "ES384", kid="nope")
    elif case == "wrong key":
        a = assertion(keys["other"], "ES384", kid=keys["ec"].kid)
    elif case == "wrong iss":
        a = assertion(keys["ec"], "ES384", iss="other-ehr")  # signed with ehr's key, claiming another client
    elif case == "sub differs":
        a = assertion(keys["ec"], "ES384", sub="someone-else")
    elif case == "HS256 with public key":
        from joserfc.jwk import OctKey
        fake = OctKey.import_key(json.dumps(keys["rsa"].as_dict(private=False)).encode())
        a = jwt.encode({"alg": "HS256", "kid": keys["rsa"].kid}, {"iss": "ehr", "sub": "ehr", "aud": TOKEN_URL,
                       "exp": int(NOW0) + 60, "jti": "x"}, fake, algorithms=["HS256"])
    elif case == "alg none":
        import base64
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
        a = enc({"alg": "none", "kid": keys["ec"].kid}) + "." + enc({"iss": "ehr", "sub": "ehr", "aud": TOKEN_URL,
                                                                      "exp": int(NOW0) + 60, "jti": "y"}) + "."
    elif case == "RS256":
        a = assertion(keys["rsa"], "RS256")
    elif case == "garbage":
        a = "not.a.jwt"
    else:
        a = assertion(keys["ec"], "ES384", iss="nobody")
    resp = token_request(c, a)
    assert resp.status_code == 401, case
    assert resp.get_json()["error"] == "invalid_client"


def test_request_errors(env, keys) -> None:
    c = env["client"]
    r = c.post(TOKEN_PATH, data={"grant_type": "authorization_code", "scope": "system/*.rs"})
    assert r.status_code == 400 and r.get_json()["error"] == "unsupported_grant_type"
    r = token_request(c, assertion(keys["ec"], "ES384"), scope="system/Condition.rs")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_scope"
    r = token_request(c, assertion(keys["ec"], "ES384"), scope="system/Observation.zz")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_scope"
    r = c.post(TOKEN_PATH, json={"grant_type": "client_credentials"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"
    r = c.post(TOKEN_PATH, data={"grant_type": "client_credentials", "scope": "system/*.rs"})
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"


def test_client_secret_basic_and_post(env) -> None:
    import base64
    c = env["client"]
    with env["sessions"].begin() as s:  # argon2 hashing is slow on purpose: only this test pays for it
        _, secret = register_client(s, client_id="dev", name="Dev", scopes="system/*.rs", role="system",
                                    with_secret=True, now=datetime.now(UTC))
    env["secret"] = secret
    basic = base64.b64encode(f"dev:{env['secret']}".encode()).decode()
    r = c.post(TOKEN_PATH, data={"grant_type": "client_credentials", "scope": "system/Patient.rs"},
               headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200 and r.get_json()["scope"] == "system/Patient.rs"
    r = c.post(TOKEN_PATH, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                 "client_id": "dev", "client_secret": env["secret"]})
    assert r.status_code == 200
    r = c.post(TOKEN_PATH, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                 "client_id": "dev", "client_secret": "wrong"})
    assert r.status_code == 401
    # A key-registered client cannot fall back to a secret.
    r = c.post(TOKEN_PATH, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                 "client_id": "ehr", "client_secret": "anything"})
    assert r.status_code == 401


def test_tokens_expire_and_die_with_their_client(env, keys) -> None:
    tok = token_request(env["client"], assertion(keys["ec"], "ES384")).get_json()["access_token"]
    env["tokens"].authenticate(tok)
    from healthledger.auth.tokens import ACCESS_TOKEN_LEEWAY
    lifetime = env["tokens"].lifetime
    env["clock"].t = NOW0 + lifetime + ACCESS_TOKEN_LEEWAY  # the last second a replica's clock may be behind
    env["tokens"].authenticate(tok)
    env["clock"].t += 1
    with pytest.raises(Unauthorized):
        env["tokens"].authenticate(tok)
    env["clock"].t = NOW0
    env["tokens"].authenticate(tok)
    from healthledger.auth.tokens import disable_client
    with env["sessions"].begin() as s:
        disable_client(s, "ehr")
    with pytest.raises(Unauthorized):
        env["tokens"].authenticate(tok)
    with pytest.raises(Unauthorized):
        env["tokens"].authenticate(tok[:-4] + "AAAA")  # forged signature
    assert token_request(env["client"], assertion(keys["ec"], "ES384")).status_code == 401


def test_discovery_and_server_jwks(env) -> None:
    conf = env["client"].get("/.well-known/smart-configuration").get_json()
    assert conf["token_endpoint"] == TOKEN_URL
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    assert set(conf["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert len(conf["scopes_supported"]) == len(set(conf["scopes_supported"]))
    # SMART App Launch 2.x clients ask below the FHIR base: the same document there.
    assert env["client"].get("/fhir/.well-known/smart-configuration").get_json() == conf
    jwks = env["client"].get("/auth/jwks").get_json()
    assert len(jwks["keys"]) == 1 and "d" not in jwks["keys"][0]  # public half only


@pytest.fixture()
def jwks_server(keys) -> Iterator[tuple[str, dict]]:
    served = {"jwks": KeySet([keys["other"]]).as_dict(private=False)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(served["jwks"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", served
    server.shutdown()


def test_jwks_url_with_key_rotation(env, keys, jwks_server) -> None:
    url, served = jwks_server
    with env["sessions"].begin() as s:
        register_client(s, client_id="lab", name="Lab", scopes="system/Observation.c", role="system",
                        jwks_url=url, now=datetime.now(UTC))
    c = env["client"]
    assert token_request(c, assertion(keys["other"], "ES384", iss="lab"), scope="system/Observation.c").status_code == 200
    # The client rotates to a new key: the cached JWKS misses its kid, one refetch finds it.
    served["jwks"] = KeySet([keys["ec"]]).as_dict(private=False)
    assert token_request(c, assertion(keys["ec"], "ES384", iss="lab"), scope="system/Observation.c").status_code == 200


def test_signing_key_persists_across_restarts(tmp_path) -> None:
    provider = LocalFileKeyProvider(tmp_path)
    a = TokenSigner.load_or_create(tmp_path, provider)
    b = TokenSigner.load_or_create(tmp_path, LocalFileKeyProvider(tmp_path))
    assert a.key.thumbprint() == b.key.thumbprint()
    assert b"\"d\"" not in (tmp_path / "token-signing-key.json").read_bytes()  # stored wrapped, not in the clear


def test_clients_cli(tmp_path, keys, monkeypatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(KeySet([keys["ec"]]).as_dict(private=False)))
    runner = CliRunner()
    r = runner.invoke(cli, ["clients", "add", "Lab system", "--scopes", "system/Observation.cruds",
                            "--organization", "Organization/lab", "--jwks", str(jwks_file), "--json"])
    assert r.exit_code == 0, r.output
    added = json.loads(r.output)
    assert added["auth_method"] == "private_key_jwt" and "client_secret" not in added
    assert added["consult_for_others"] is False  # asks only as itself unless registered otherwise
    r = runner.invoke(cli, ["clients", "add", "Dev", "--scopes", "system/*.rs", "--secret", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)["client_secret"]) > 30
    r = runner.invoke(cli, ["clients", "add", "Consent broker", "--scopes", "system/Consent.rs",
                            "--jwks", str(jwks_file), "--consult-for-others", "--json"])
    assert r.exit_code == 0, r.output
    broker = json.loads(r.output)
    assert broker["consult_for_others"] is True
    r = runner.invoke(cli, ["clients", "disable", added["client_id"], "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["disabled"] is True
    listed = json.loads(runner.invoke(cli, ["clients", "list", "--json"]).output)
    assert [c["disabled"] for c in listed] == [True, False, False]
    assert [c["consult_for_others"] for c in listed] == [False, False, True]
    text = runner.invoke(cli, ["clients", "list"]).output.splitlines()
    assert [line.split()[0] for line in text] == [c["client_id"] for c in listed]
    assert ["consults-for-others" in line for line in text] == [False, False, True]
    assert ["consults-as-itself" in line for line in text] == [True, True, False]
    # Clear errors, no tracebacks.
    private = tmp_path / "private.json"
    private.write_text(json.dumps(KeySet([keys["ec"]]).as_dict(private=True)))
    r = runner.invoke(cli, ["clients", "add", "X", "--scopes", "system/*.rs", "--jwks", str(private)])
    assert r.exit_code == 1 and "private key material" in r.output
    r = runner.invoke(cli, ["clients", "add", "X", "--scopes", "system/Obs.zz", "--secret"])
    assert r.exit_code == 1 and "scope" in r.output
    r = runner.invoke(cli, ["clients", "disable", "nope"])
    assert r.exit_code == 1 and "no such client" in r.output


def test_migration_registers_existing_clients_as_asking_only_for_themselves(tmp_path) -> None:
    import sqlalchemy as sa
    from alembic import command

    from healthledger.db import alembic_config, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        cfg = alembic_config(engine)
        command.upgrade(cfg, "auth_0002")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO api_clients (client_id, name, scopes, auth_method, role, organization, default_purpose,"
                " disabled, created_at) VALUES ('old', 'Old', 'system/*.rs', 'client_secret', 'system', '',"
                " 'TREAT', 0, '2026-01-01 00:00:00')"))
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT consult_for_others FROM api_clients")).scalar_one() in (0, False)
        command.downgrade(cfg, "auth@auth_0002")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("api_clients")}
            assert "consult_for_others" not in columns
            assert conn.execute(sa.text("SELECT count(*) FROM api_clients")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(("case", "said"), [
    ("no kid", ["header has no 'kid'", "SMART"]),
    ("unknown kid", ["kid 'nope'", "registered keys"]),
    ("wrong aud", ["aud must be", TOKEN_URL, "http://elsewhere/token"]),
    ("exp too far", ["exp is 3600 s ahead", "300 s"]),
    ("RS256", ["alg 'RS256'", "RS384 or ES384"]),
    ("expired", ["expired", "(exp)"]),
])
def test_assertion_errors_name_the_header_or_claim_and_what_is_allowed(env, keys, case, said) -> None:
    """SMART requires `kid` even for a client with one key; each refusal says which header or claim and what is
    allowed (authlib's private_key_jwt leaves out kid and sets exp an hour ahead by default)."""
    now = int(NOW0)
    if case == "no kid":
        claims = {"iss": "ehr", "sub": "ehr", "aud": TOKEN_URL, "exp": now + 60, "jti": str(uuid.uuid4())}
        a = jwt.encode({"alg": "ES384", "typ": "JWT"}, claims, keys["ec"], algorithms=["ES384"])
    elif case == "unknown kid":
        a = assertion(keys["ec"], "ES384", kid="nope")
    elif case == "wrong aud":
        a = assertion(keys["ec"], "ES384", aud="http://elsewhere/token")
    elif case == "exp too far":
        a = assertion(keys["ec"], "ES384", exp_in=3600, now=now)
    elif case == "RS256":
        a = assertion(keys["rsa"], "RS256")
    else:
        a = assertion(keys["ec"], "ES384", now=now - 600)
    resp = token_request(env["client"], a)
    assert resp.status_code == 401 and resp.get_json()["error"] == "invalid_client"
    for text in said:
        assert text in resp.get_json()["error_description"], (case, resp.get_json())
