"""Schemathesis against the OpenAPI description the service serves (`/openapi.json`): the non-FHIR JSON API
(SMART token endpoint and discovery, CDS Hooks consent consult, operations), with generated and mutated inputs,
unauthenticated and with a valid token. No input may get a 5xx or a response the document does not describe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fhir_api_support import TOKEN, api_settings, build_app, dispose
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import positive_data_acceptance

from healthledger.ledger.models import IndexerCursor


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    application = build_app(api_settings(Path(tmp_path_factory.mktemp("schemathesis"))))
    yield application
    dispose(application)


def _ready(app: Flask) -> None:
    import time

    import sqlalchemy as sa

    with sa.orm.Session(app.extensions["healthledger.engine"]) as session, session.begin():
        session.merge(IndexerCursor(name="ledger", last_block=0, updated_at=time.time() + 3600))


def test_no_input_gets_a_server_error_or_an_undocumented_answer(app: Flask) -> None:
    """Every operation, up to 40 generated cases each, each sent without and with a valid token; schemathesis's
    checks (no 5xx, status and content type documented, body conforms) on every answer. schemathesis's own
    pytest plugin is not used (it does not load under pytest 9): hypothesis drives its strategies directly."""
    _ready(app)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    tried: dict[str, int] = {}
    for result, mode in [(r, m) for r in schema.get_all_operations()
                         for m in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)]:
        operation = result.ok()
        try:
            strategy = operation.as_strategy(generation_mode=mode)
        except Exception:  # noqa: BLE001, S112 (an operation without inputs has no negative cases)
            continue

        @given(case=strategy)
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            key = f"{case.method} {case.path}"
            tried[key] = tried.get(key, 0) + 2
            # Every check but "schema-valid data is accepted": the token endpoint refuses well-formed requests from
            # unknown clients or for unknown scopes (400/401) by design, and the document cannot list every client.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=[positive_data_acceptance])

        try:
            run()
        except Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to mutate in an operation without inputs
    assert len(tried) >= 8
    print(f"\nschemathesis: {sum(tried.values())} requests over {len(tried)} operations, server errors 0, "
          "undocumented answers 0")
