"""create_app(settings): the only place that wires HealthLedger together."""

from __future__ import annotations

import structlog
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from healthledger.config import Settings
from healthledger.db import make_engine, upgrade
from healthledger.keys import key_provider_for


def bootstrap(settings: Settings) -> None:
    """One-time setup before serving: data dir, schema, keys, demo data (once). Idempotent."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        key_provider = key_provider_for(settings.key_provider, settings.keys_dir)  # creates the KEK file
        if settings.load_demo_data:
            from healthledger.demo import load_demo_data
            from healthledger.store.repository import ResourceStore

            load_demo_data(ResourceStore(engine, key_provider, settings))
    finally:
        engine.dispose()


def configure_logging() -> None:
    """Structured logs with plain tracebacks, unless the host process configured structlog already.

    structlog's default development renderer prints rich tracebacks *with local variables*: those hold
    request bodies and decrypted resources, i.e. PHI, and rendering deep ones is slow. Plain tracebacks
    name the code, not the data.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ],
        cache_logger_on_first_use=False,  # others (tests, a host process) may reconfigure later
    )


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask application with every component built from `settings` (no import-time side effects)."""
    from healthledger.api.fhir import fhir_blueprint, request_is_fhir
    from healthledger.api.outcomes import error_response
    from healthledger.store.repository import ResourceStore

    settings = settings or Settings.load()
    configure_logging()
    app = Flask("healthledger")
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = None  # the FHIR API enforces its own limit with an OperationOutcome

    engine = make_engine(settings.database_url)
    key_provider = key_provider_for(settings.key_provider, settings.keys_dir)
    store = ResourceStore(engine, key_provider, settings)
    app.extensions["healthledger.engine"] = engine
    app.extensions["healthledger.store"] = store

    app.register_blueprint(fhir_blueprint(store, settings))

    @app.errorhandler(Exception)
    def _fhir_errors(error: Exception) -> Response | HTTPException:
        # Under /fhir every error, including routing 404/405, is an OperationOutcome; elsewhere
        # HTTP errors keep Flask's default rendering and anything unexpected is still a generic 500.
        if isinstance(error, HTTPException) and not request_is_fhir(request):
            return error
        return error_response(error)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
