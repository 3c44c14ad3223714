"""gunicorn, embedded: `healthledger serve` runs it in-process with our settings."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from healthledger.config import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from healthledger.app import create_app

        return create_app(self.settings)


def run_gunicorn(settings: Settings, **extra: Any) -> None:
    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "accesslog": "-",
        "timeout": 60,
        **extra,
    }
    _Gunicorn(settings, options).run()
