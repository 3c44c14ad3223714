"""create_app(settings): the only place that wires HealthLedger together."""

from __future__ import annotations

from flask import Flask

from healthledger.config import Settings
from healthledger.db import make_engine, upgrade


def bootstrap(settings: Settings) -> None:
    """One-time setup before serving: data dir, schema up to date. Idempotent."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.load()
    app = Flask("healthledger")
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = None  # the FHIR API enforces its own limit with an OperationOutcome

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
