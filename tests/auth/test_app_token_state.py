"""An app's access token (SMART App Launch) is re-checked against the patient's authorisation on every use, on
SQLite and on PostgreSQL: revoked, the patient's account disabled, or another patient's, it is refused on the
very next request; and a disabled client's token likewise (nothing about either is remembered between uses).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from healthledger.auth.models import ApiClient, AppAuthorization, User
from healthledger.auth.tokens import TokenService, TokenSigner, register_client
from healthledger.db import make_engine, session_factory, upgrade
from healthledger.errors import Unauthorized
from healthledger.keys import LocalFileKeyProvider

ISSUER = "http://127.0.0.1:8080"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        engine = make_engine(request.getfixturevalue("migrated_sqlite_url"))
    else:
        engine = make_engine(request.getfixturevalue("postgres_own_schema_url")[0])
        upgrade(engine)
    sessions = session_factory(engine)
    signer = TokenSigner.load_or_create(tmp_path / "keys", LocalFileKeyProvider(tmp_path / "keys"))
    tokens = TokenService(sessions, signer, issuer=ISSUER, token_endpoint=ISSUER + "/token")
    now = datetime.now(UTC)
    with sessions.begin() as s:
        register_client(s, client_id="app", name="App", scopes="patient/*.rs", role="app", public=True,
                        redirect_uris=["https://app.example/cb"], now=now)
        s.add(User(user_id="u1", username_index=b"1" * 32, username_sealed=b"x", password_hash="x", role="patient",
                   patient_id="p1", created_at=now))
        s.add(AppAuthorization(authorization_id="a1", client_id="app", user_id="u1", patient_id="p1",
                               scopes="patient/*.rs", created_at=now))
    yield {"tokens": tokens, "sessions": sessions}
    engine.dispose()


def _token(tokens: TokenService, patient: str = "p1") -> str:
    return tokens.access_token("app", "patient/*.rs", tokens.now(), patient=patient, auth="a1")


def test_an_app_token_works_while_its_authorisation_stands(service: dict[str, Any]) -> None:
    grant = service["tokens"].authenticate(_token(service["tokens"]))
    assert grant.patient_id == "p1" and grant.authorization_id == "a1"


def test_an_app_token_naming_another_patient_is_refused(service: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized, match="disconnected"):
        service["tokens"].authenticate(_token(service["tokens"], patient="p2"))


@pytest.mark.parametrize("change", ["revoked", "account disabled", "client disabled"])
def test_an_app_token_is_refused_on_its_very_next_use(service: dict[str, Any], change: str) -> None:
    tokens, sessions = service["tokens"], service["sessions"]
    token = _token(tokens)
    tokens.authenticate(token)
    with sessions.begin() as s:
        if change == "revoked":
            s.execute(update(AppAuthorization).values(revoked_at=datetime.now(UTC)))
        elif change == "account disabled":
            s.execute(update(User).values(disabled=True))
        else:
            s.execute(update(ApiClient).values(disabled=True))
    with pytest.raises(Unauthorized):
        tokens.authenticate(token)
