"""The command line's runtime: settings, database, keys, store and chain of one invocation, made on first use."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from healthledger.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from healthledger.keys import KeyProvider
    from healthledger.ledger.chain import Chain
    from healthledger.store.repository import ResourceStore


class Runtime:
    """One command's collaborators, handed to it by the `healthledger` CLI (`click.pass_obj`).

    Nothing is made before a command asks for it: `clients list` opens no key file, and only the
    commands that use the chain open one. `close()`, run by the click context when the command ends,
    closes the chain, then disposes of the engine. Settings are `load_settings(**overrides)`
    (`Settings.load`: file, then environment, then the options a command passed to `override`).
    """

    def __init__(self, load_settings: Callable[..., Settings] = Settings.load) -> None:
        self._load_settings = load_settings
        self._overrides: dict[str, Any] = {}
        self._bootstrapped = False
        self._migrated = False

    def override(self, **values: Any) -> None:
        """Settings given as a command's options (e.g. `serve --port`); only before the settings are read."""
        if "settings" in self.__dict__:
            raise RuntimeError("settings were read before the command's overrides were given")
        self._overrides.update(values)

    @cached_property
    def settings(self) -> Settings:
        return self._load_settings(**self._overrides)

    def bootstrap(self) -> None:
        """The service's one-time setup (data dir, schema, server keys, demo data), as `serve` does it."""
        if self._bootstrapped:
            return
        from healthledger.app import bootstrap

        bootstrap(self.settings)
        self._bootstrapped = self._migrated = True

    def migrate(self) -> None:
        """Bring the database schema up to date (every package's migrations), once."""
        if self._migrated:
            return
        from healthledger.db import upgrade

        upgrade(self.engine)
        self._migrated = True

    @cached_property
    def engine(self) -> Engine:
        from healthledger.db import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        from healthledger.db import session_factory

        sessions: sessionmaker[Session] = session_factory(self.engine)
        return sessions

    @cached_property
    def key_provider(self) -> KeyProvider:
        from healthledger.keys import key_provider_for

        return key_provider_for(self.settings.key_provider, self.settings.keys_dir)

    @cached_property
    def store(self) -> ResourceStore:
        """The encrypted FHIR store on this runtime's engine and key provider (data dir private, schema current)."""
        from healthledger.data_dir import secure_data_dir
        from healthledger.store.repository import store_for_settings

        secure_data_dir(self.settings.data_dir)
        self.migrate()
        return store_for_settings(self.engine, self.key_provider, self.settings)

    @cached_property
    def chain(self) -> Chain:
        """The configured chain (embedded, or the node that has it open, or a JSON-RPC URL); closed at exit."""
        from healthledger.ledger.chain import chain_for

        return chain_for(self.settings, self.key_provider)

    def background_passes(self, owner: str) -> list[Callable[[], object]]:
        """Work the ledger worker (`relay work`) does on every pass besides the chain's own: research studies
        turn active once registered, and changed patients' credentials are re-issued (under a lease)."""
        from healthledger.research.worker import ResearchWorker

        worker = ResearchWorker(self.store, self.sessions, owner=owner,
                                reissue_every=self.settings.credential_reissue_seconds)
        return [worker.run_once]

    def close(self) -> None:
        """Close the chain and dispose of the engine, if they were made; a later use makes them anew."""
        chain, engine = self.__dict__.pop("chain", None), self.__dict__.pop("engine", None)
        self.__dict__.pop("sessions", None)
        self.__dict__.pop("store", None)
        try:
            if chain is not None:
                chain.close()
        finally:
            if engine is not None:
                engine.dispose()

