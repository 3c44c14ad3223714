"""create_app(settings): the only place that wires HealthLedger together."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from healthledger.config import Settings
from healthledger.data_dir import secure_data_dir
from healthledger.db import make_engine, upgrade
from healthledger.keys import key_provider_for


@dataclass(frozen=True)
class Bootstrapped:
    """What `bootstrap` found or made: the home organisation and the demo data (for start-up output)."""

    home_organization: str  # "Organization/{id}", or "" when there is none
    home_name: str  # its name when `bootstrap` made or read it, else ""
    home_made: bool  # made (or renamed) just now
    demo_loaded: int  # demo resources written just now (0: none, or already there)
    demo_patients: int  # demo patients the data set holds (0 when demo data is off)


def bootstrap(settings: Settings, *, organization: str | None = None, ensure_home: bool | None = None) -> Bootstrapped:
    """One-time setup before serving: data dir, schema, keys, home organisation, demo data (once). Idempotent.

    The data directory is made private (0700, files 0600) and looser modes left in it are tightened.
    Unless HEALTHLEDGER_HOME_ORGANIZATION names one, the hospital's own Organization is made (named
    `organization`, or a default) when `ensure_home` (default: when demo data is loaded, i.e. a first
    `make run`; `healthledger init` always asks for it).
    """
    secure_data_dir(settings.data_dir)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        key_provider = key_provider_for(settings.key_provider, settings.keys_dir)  # creates the KEK file
        # Server keys, once, before any worker forks: workers racing to create them would each sign
        # with a key of their own.
        from healthledger.auth.tokens import TokenSigner
        from healthledger.consent.enforcement import ACCESS_LOG_KEY_CLASS
        from healthledger.store.repository import store_for_settings
        from healthledger.web.sessions import SessionSecret

        TokenSigner.load_or_create(settings.keys_dir, key_provider)
        SessionSecret.load_or_create(settings.keys_dir, key_provider)
        store = store_for_settings(engine, key_provider, settings)
        # The key that seals break-the-glass reasons, before the first emergency needs it (made then, on
        # SQLite, it would wait for the write lock the emergency's own write holds).
        with engine.begin() as conn:
            store.keyring.key_for_scope(conn, ACCESS_LOG_KEY_CLASS, b"")
        home, home_name, home_made = settings.home_organization, "", False
        if ensure_home is None:
            ensure_home = settings.load_demo_data
        if not home and (ensure_home or organization is not None):
            from healthledger.store.home_organization import ensure_home_organization

            home, home_name, home_made = ensure_home_organization(store, organization)
        elif not home:
            from healthledger.store.home_organization import stored_home_organization

            home = stored_home_organization(store)
        demo_loaded = demo_patients = 0
        if settings.load_demo_data:
            from healthledger.demo import DEMO_PATIENTS, load_demo_data

            demo_loaded, demo_patients = load_demo_data(store), DEMO_PATIENTS
    finally:
        engine.dispose()
    return Bootstrapped(home, home_name, home_made, demo_loaded, demo_patients)


def configure_logging(fmt: str = "json") -> None:
    """JSON log lines with request ids (healthledger.observability), unless the host process configured
    structlog already. Exceptions are logged as their type and frames, never their message or locals:
    those may hold request bodies and decrypted resources, i.e. PHI."""
    from healthledger.observability import configure_logging as configure

    configure(fmt)


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask application with every component built from `settings` (no import-time side effects)."""
    from healthledger.api.audit_events import AuditPages, audit_event_blueprint
    from healthledger.api.auth_seam import Authenticator
    from healthledger.api.cds_hooks import cds_hooks_blueprint
    from healthledger.api.cors import bodiless_options_answer, install_cors
    from healthledger.api.federation import federation_blueprint
    from healthledger.api.fhir import fhir_blueprint, request_is_fhir
    from healthledger.api.operations import (
        LedgerGauges,
        Readiness,
        install_request_hooks,
        operations_blueprint,
        replica_started_at,
    )
    from healthledger.api.outcomes import error_response
    from healthledger.auth.app_launch import AppLaunch
    from healthledger.auth.directory import ActorDirectory
    from healthledger.auth.smart import AUTHORIZE_PATH, MANAGE_PATH, TOKEN_PATH, smart_blueprint
    from healthledger.auth.tokens import TokenService, TokenSigner
    from healthledger.auth.users import AccountNames
    from healthledger.consent.consult import ConsentConsultant
    from healthledger.consent.consult_hook import CardSource
    from healthledger.consent.enforcement import ConsentPolicy, policy_from_settings
    from healthledger.consent.index import CONSENT_INPUT_TYPES, ConsentIndex, Freshness
    from healthledger.consent.obligations import Obligations
    from healthledger.db import session_factory
    from healthledger.federation.exchange import FederatedTokens
    from healthledger.federation.keys import MemberKeys
    from healthledger.federation.service import Federation
    from healthledger.observability import Metrics
    from healthledger.principal import Principal
    from healthledger.store.repository import store_for_settings
    from healthledger.web.pages import AccountServices, web_blueprint
    from healthledger.web.sessions import SessionLifetime, SessionSecret, init_web, session_principal

    settings = settings or Settings.load()
    configure_logging(settings.log_format)
    app = Flask("healthledger")
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = None  # the FHIR API enforces its own limit with an OperationOutcome

    engine = make_engine(settings.database_url)
    key_provider = key_provider_for(settings.key_provider, settings.keys_dir)
    store = store_for_settings(engine, key_provider, settings, bump_generation_on=CONSENT_INPUT_TYPES)
    from healthledger.store.home_organization import effective_home_organization

    index = ConsentIndex(store, home_organization=effective_home_organization(settings.home_organization, store))
    metrics = Metrics.create()
    consent_rules = policy_from_settings(settings.consent_policy)
    policy = ConsentPolicy(
        store, index, consent_rules, obligations=Obligations(store), on_decision=metrics.observe_decision
    )
    if not settings.enforcement_off_for_benchmark:
        store.policy = policy
    sessions = session_factory(engine)
    issuer = settings.base_url.rstrip("/") or f"http://{settings.host}:{settings.port}"
    tokens = TokenService(
        sessions,
        TokenSigner.load_or_create(settings.keys_dir, key_provider),
        issuer=issuer,
        token_endpoint=issuer + TOKEN_PATH,
        lifetime_seconds=settings.token_lifetime_seconds,
        federation=FederatedTokens(  # other member hospitals, by the consortium's directory
            store, index, token_endpoint=issuer + TOKEN_PATH, fhir_base=issuer + "/fhir",
            max_index_age_seconds=consent_rules.max_index_age_seconds,
        ),
        piggyback=index.freshness(),  # the consent index's freshness, read with the token's client
    )
    # What a request's token check read for the index is for that request only (healthledger.consent.index):
    # nothing survives into the next request, nor into other work the thread does after this one.
    app.before_request(Freshness.forget)
    app.teardown_request(lambda _error: Freshness.forget())
    app.extensions["healthledger.engine"] = engine
    app.extensions["healthledger.store"] = store
    app.extensions["healthledger.consent_index"] = index
    app.extensions["healthledger.tokens"] = tokens
    app.extensions["healthledger.metrics"] = metrics
    install_request_hooks(app, metrics)
    install_cors(app, settings.cors_allowed_origins)
    app.after_request(bodiless_options_answer)
    readiness = Readiness(engine, key_provider, max_index_age_seconds=consent_rules.max_index_age_seconds,
                          started_at=replica_started_at(default=time.time()), tenant=settings.tenant)
    gauges = LedgerGauges(engine, tenant=settings.tenant, max_index_age_seconds=consent_rules.max_index_age_seconds)
    app.register_blueprint(operations_blueprint(readiness, metrics, gauges))

    secure = settings.session_secure_cookies
    init_web(
        app,
        secret_key=SessionSecret.load_or_create(settings.keys_dir, key_provider),
        secure_cookies=settings.base_url.startswith("https://") if secure is None else secure,
        lifetime=SessionLifetime(
            idle=timedelta(minutes=settings.session_idle_minutes),
            absolute=timedelta(hours=settings.session_absolute_hours),
        ),
    )
    authenticate = Authenticator(settings, tokens, lambda: session_principal(sessions))
    app.extensions["healthledger.authenticate"] = authenticate

    def caller() -> Principal:
        principal: Principal = g.healthledger_principal
        return principal

    # CDS Hooks callers are systems with bearer tokens; the web session is not accepted there (that path
    # is exempt from CSRF checks because it never reads the session).
    bearer_only = Authenticator(settings, tokens)

    def authenticate_cds() -> Principal:
        g.healthledger_principal = bearer_only(request)
        return g.healthledger_principal

    app_launch = AppLaunch(sessions, tokens)
    app.register_blueprint(smart_blueprint(tokens, app_launch))
    app.register_blueprint(web_blueprint(
        sessions=sessions, names=AccountNames(store), limiter_storage_uri=settings.rate_limit_storage_uri,
        login_limit=settings.login_rate_limit, accounts=AccountServices(store, key_provider), app_launch=app_launch,
        own_member=settings.federation_org_id, workers=settings.workers,
    ))
    app.register_blueprint(cds_hooks_blueprint(
        ConsentConsultant(store, policy, caller), authenticate_cds,
        source=CardSource(url=f"{issuer}/cds-services"),
    ))
    actor_names = ActorDirectory(sessions, AccountNames(store), store)
    # Before the generic /fhir rules: every /fhir/AuditEvent path is the access log's, read-only.
    app.register_blueprint(audit_event_blueprint(
        store, lambda: authenticate(request), policy.record_audit_access, index,
        pages=AuditPages(settings.default_page_size, settings.max_page_size, settings.base_url),
        names=actor_names, break_glass_reason=policy.break_glass_reason,
    ))
    # Before the generic /fhir rules too: studies, subjects, credentials and enrolment (healthledger.research).
    from healthledger.api.research import bundle_reads, research_blueprint
    from healthledger.research.enrolment import Enrolments
    from healthledger.research.studies import Studies

    studies = Studies(store)
    enrolments = Enrolments(store, studies)
    app.register_blueprint(research_blueprint(store, settings, lambda: authenticate(request), studies=studies,
                                              enrolments=enrolments))
    from healthledger.api.research_data import research_data_blueprint
    from healthledger.research.export import BackgroundExports, Exports, ExportWorker
    from healthledger.research.feasibility import BudgetPolicy, Feasibility

    # Before the generic /fhir rules: research operations ($feasibility, $export and its status and files).
    exports = Exports(store, index, retention=timedelta(hours=settings.export_retention_hours),
                      min_poll_seconds=settings.export_min_poll_seconds,
                      max_index_age_seconds=consent_rules.max_index_age_seconds)
    background_exports = BackgroundExports(ExportWorker(exports))
    app.extensions["healthledger.research_exports"] = background_exports
    app.register_blueprint(research_data_blueprint(
        Feasibility(store, BudgetPolicy(
            settings.feasibility_epsilon_per_query, settings.feasibility_epsilon_per_study,
            settings.feasibility_epsilon_per_researcher, settings.feasibility_threshold,
        )),
        exports, background_exports, lambda req: authenticate(req),
        max_request_bytes=settings.max_request_bytes, base_url=settings.base_url,
    ))
    federation = Federation(
        store, sessions, org_id=settings.federation_org_id, fhir_base=issuer + "/fhir",
        keys=lambda: MemberKeys.load_or_create(settings.keys_dir, key_provider), user_names=actor_names.actor,
    )
    app.extensions["healthledger.federation"] = federation
    app.register_blueprint(federation_blueprint(
        federation, authenticate, max_request_bytes=settings.max_request_bytes))
    app.register_blueprint(fhir_blueprint(
        store, settings, authenticate, token_url=issuer + TOKEN_PATH,
        oauth_uris={"authorize": issuer + AUTHORIZE_PATH, "manage": issuer + MANAGE_PATH},
        refusals=None if settings.enforcement_off_for_benchmark else policy,
        bundle_reads=bundle_reads(studies, enrolments),  # Bundle entries read studies as api/research.py does
    ))

    @app.errorhandler(Exception)
    def _fhir_errors(error: Exception) -> Response | HTTPException:
        # Under /fhir every error, including routing 404/405, is an OperationOutcome; elsewhere
        # HTTP errors keep Flask's default rendering and anything unexpected is still a generic 500.
        if isinstance(error, HTTPException) and not request_is_fhir(request):
            return error
        return error_response(error)

    return app
