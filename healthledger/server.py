"""gunicorn, embedded: `healthledger serve` runs it in-process with our settings."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from healthledger.config import Settings
from healthledger.observability import gunicorn_log_config, mark_worker_dead

WORKER_CLASS = "healthledger.balanced_worker.BalancedThreadWorker"


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, telling `on_stop` first when a signal asks it to stop (from its main loop, not the handler).

    Ctrl-C in a terminal signals the whole process group: `serve`'s sidecars (chain node, ledger worker) stop at
    the same moment as the master, and without this their supervisor would take them for crashed and start them
    again while the master shuts down.
    """

    def __init__(self, app: Any, on_stop: Callable[[], None] | None) -> None:
        self._on_stop = on_stop
        super().__init__(app)

    def _stopping(self) -> None:
        if self._on_stop is not None:
            self._on_stop()

    def handle_int(self) -> None:
        self._stopping()
        super().handle_int()

    def handle_term(self) -> None:
        self._stopping()
        super().handle_term()

    def handle_quit(self) -> None:
        self._stopping()
        super().handle_quit()

    def reap_workers(self) -> None:
        # gunicorn reaps with waitpid(-1), so a child of the master that is no worker of its (serve's chain node and
        # ledger worker) is reaped and its exit status dropped; the sidecars' own Popen objects take theirs first.
        from healthledger.ledger.service import reap_sidecars

        reap_sidecars()
        super().reap_workers()


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any], on_stop: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.options = options
        self.on_stop = on_stop
        super().__init__()

    def run(self) -> None:
        """BaseApplication.run with our arbiter."""
        try:
            _Arbiter(self, self.on_stop).run()
        except RuntimeError as e:
            print(f"\nError: {e}\n", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from healthledger.app import create_app

        return create_app(self.settings)


# AF_UNIX paths are limited to 108 bytes (unix(7)); leave room for the terminator.
_MAX_SOCKET_PATH = 100


def gunicorn_options(settings: Settings, **extra: Any) -> dict[str, Any]:
    """gunicorn settings for our Settings: one control socket per data directory, not one per user.

    gunicorn's default control socket is `~/.gunicorn/gunicorn.ctl`, shared by every instance the user
    runs; two HealthLedger instances (or a test beside a server) would take each other's socket.
    """
    options: dict[str, Any] = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        # Threaded workers keep HTTP/1.1 connections alive (sync workers close after every response,
        # which costs a TCP handshake per request); the store and SQLAlchemy's pool are thread-safe.
        # gthread, taking only its share of the connections (else one worker may take them all).
        "worker_class": WORKER_CLASS,
        "threads": settings.threads,
        "keepalive": 5,
        # No gunicorn access log: the application writes one JSON line per request with its request id and
        # route rule (healthledger.api.operations), never the URL: search parameters carry names, birth
        # dates and identifiers, and logs are not encrypted. gunicorn's own messages are JSON lines too.
        "accesslog": None,
        "logconfig_dict": gunicorn_log_config() if settings.log_format == "json" else {},
        "timeout": 60,
        "graceful_timeout": 30,
        # Metrics of a dead worker's live gauges are dropped (prometheus-client multiprocess mode).
        "child_exit": _child_exit,
    }
    control = (settings.data_dir / "gunicorn.ctl").resolve()
    if len(str(control)) <= _MAX_SOCKET_PATH:
        options["control_socket"] = str(control)
    else:
        options["control_socket_disable"] = True
    options.update(extra)
    return options


def _child_exit(_server: Any, worker: Any) -> None:
    mark_worker_dead(worker.pid)


def run_gunicorn(settings: Settings, *, on_stop: Callable[[], None] | None = None, **extra: Any) -> None:
    """Serve until a signal stops the master; `on_stop` is called as soon as one does (before the workers stop)."""
    _Gunicorn(settings, gunicorn_options(settings, **extra), on_stop).run()
