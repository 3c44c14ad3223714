"""One typed settings object, read from HEALTHLEDGER_* environment variables and an optional file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from healthledger.errors import ConfigurationError

# A file of settings (JSON, keys as the field names below) may be named by this variable;
# environment variables override what the file says.
SETTINGS_FILE_ENV = "HEALTHLEDGER_SETTINGS_FILE"


class Settings(BaseSettings):
    """Everything configurable. Embedded defaults run on a fresh machine with nothing set."""

    model_config = SettingsConfigDict(env_prefix="HEALTHLEDGER_", extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(default=Path("var"), description="SQLite file, key file and chain state")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite under data_dir")
    tenant: str = Field(default="default", description="tenant bound into every ciphertext's AAD")
    base_url: str = Field(default="", description="public base URL for absolute links; empty = from request")

    # --- keys ---------------------------------------------------------------------------
    key_provider: str = Field(default="file", description="key-encryption-key provider: 'file'")

    # --- FHIR API -----------------------------------------------------------------------
    dev_token: str = Field(default="dev-token", description="bearer token accepted as the development client")
    max_request_bytes: int = Field(default=10 * 1024 * 1024, description="payloads above this get 413")
    default_page_size: int = Field(default=50)
    max_page_size: int = Field(default=500)
    load_demo_data: bool = Field(default=True, description="load generated demo patients on first start")
    # Benchmarks only: store resources unencrypted and without blind indexes, to measure the cost of privacy.
    privacy_off_for_benchmark: bool = Field(default=False)
    # Benchmarks only: no consent decisions and no access log (the development token still works), to
    # measure what enforcement costs. Every other caller is refused.
    enforcement_off_for_benchmark: bool = Field(default=False)

    # --- identity and consent ----------------------------------------------------------
    token_lifetime_seconds: int = Field(default=300, description="lifetime of SMART access tokens")
    home_organization: str = Field(
        default="", description="Organization/{id} of the hospital running this service: a care organisation of every patient"
    )
    federation_org_id: str = Field(
        default="", description="this hospital's organisation id in the consortium's member directory; empty = not a member"
    )
    cors_allowed_origins: str = Field(
        default="*",
        description="origins of browser apps allowed to call /fhir and the SMART endpoints (comma-separated; "
        "* = any, never with credentials; empty = no CORS): healthledger/api/cors.py",
    )
    consent_policy: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the consent policy defaults (healthledger.consent.engine.Policy fields), as JSON",
    )

    # --- research data releases (healthledger/research: feasibility, export; docs/research.md) ---------
    feasibility_epsilon_per_query: float = Field(default=0.25, gt=0, description="ε one new feasibility question spends")
    feasibility_epsilon_per_study: float = Field(default=1.0, gt=0, description="ε budget of each study, for its life")
    feasibility_epsilon_per_researcher: float = Field(default=3.0, gt=0, description="ε budget of each researcher, over all their studies")
    feasibility_threshold: int = Field(default=11, ge=11, description="noisy counts below this are shown as 'fewer than N'")
    export_retention_hours: float = Field(default=24.0, gt=0, description="how long completed export files are kept")
    export_min_poll_seconds: float = Field(default=2.0, ge=0, description="status polls closer than this get 429")

    # --- web sessions -------------------------------------------------------------------
    session_secure_cookies: bool | None = Field(
        default=None, description="Secure session cookies; empty = on when base_url is https"
    )
    session_idle_minutes: int = Field(default=30)
    session_absolute_hours: int = Field(default=12)
    login_rate_limit: str = Field(default="10 per minute", description="sign-in attempts per client address")
    rate_limit_storage_uri: str = Field(
        default="memory://", description="flask-limiter storage; memory:// counts per worker, use redis:// to share"
    )

    # --- chain --------------------------------------------------------------------------
    chain_url: str = Field(default="", description="JSON-RPC URL; empty = embedded persistent EVM under data_dir")
    chain_network: str = Field(
        default="", description="embedded, anvil, besu-qbft, cosmos-evm, ethereum or generic (healthledger.ledger.networks); "
        "empty = embedded without chain_url, generic with one"
    )
    chain_confirmations: int = Field(default=0, description="blocks before an event or receipt counts (overrides the network's)")
    chain_poll_seconds: float = Field(default=2.0)
    anchor_interval_seconds: float = Field(default=60.0, description="how often serve anchors the access log")
    credential_reissue_seconds: float = Field(
        default=300.0, description="how often the ledger worker re-issues the credentials of patients whose records changed"
    )

    # --- server -------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1")
    port: int = Field(default=8080)
    workers: int = Field(default=2)
    threads: int = Field(
        default=4, description="threads per gunicorn worker (gthread: keep-alive connections); enough that a read "
        "waiting for its access-log group commit leaves the worker's core to others (deploy/gunicorn.conf.py: 4 too)"
    )

    # --- operations ---------------------------------------------------------------------
    log_format: Literal["json", "console"] = Field(default="json", description="log lines: JSON objects or plain text")

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{(self.data_dir / 'healthledger.db').resolve()}")
        return self

    @property
    def accepted_dev_token(self) -> str:
        """The development token, if it is to be honoured: one configured on purpose, or the built-in
        default only while the server listens on loopback (a deployment left on defaults must not open
        an unrestricted door to the network)."""
        if "dev_token" in self.model_fields_set or self.host in ("127.0.0.1", "::1", "localhost"):
            return self.dev_token
        return ""

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Settings from the optional file, then the environment, then explicit overrides.

        A file that cannot be read, is not a JSON object, or holds values of the wrong type is a
        ConfigurationError naming the file or the setting, never a traceback.
        """
        values: dict[str, Any] = {}
        path = os.environ.get(SETTINGS_FILE_ENV)
        if path:
            try:
                loaded = json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"the settings file {path} cannot be read as JSON ({type(exc).__name__})") from None
            if not isinstance(loaded, dict):
                raise ConfigurationError(f"the settings file {path} must hold a JSON object of settings")
            values.update(loaded)
        try:
            env = cls()  # environment (and defaults)
            merged = {**values, **{k: v for k, v in env.model_dump().items() if k in env.model_fields_set}}
            merged.update(overrides)
            return cls(**merged) if merged else env
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
            raise ConfigurationError(f"invalid settings: {problems}") from None
