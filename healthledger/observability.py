"""What operators see: JSON logs with request ids (never PHI), and Prometheus metrics shared by gunicorn workers.

Logs. Every line is one JSON object (structlog): level, ISO time in UTC, event name, the request id of the
request being served. What is logged is chosen, never dumped: route rules, not URLs (paths hold ids, query
strings hold names and birth dates), and exceptions as their type and frames only: an exception's message
may quote the input that caused it (a name, a date), so it is not written.

Metrics. One `Metrics` object per application, on a registry of its own (no module-level metric objects, so
tests can build any number of apps). Under gunicorn several worker processes serve one port; prometheus-client's
multiprocess mode (`enable_multiprocess`, called by `serve` before the workers fork) has each process write its
values to files in one directory and a scrape, answered by any worker, reads them all.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import sys
import traceback
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import structlog

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's request id is kept (so a proxy's id follows the request through) only if it is short and plain.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOG_FORMATS = ("json", "console")

# Request latency buckets (seconds): a decided read takes ~2 ms, a transaction Bundle up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# ---- request ids ------------------------------------------------------------------------------


def request_id_for(offered: str | None, new_id: Callable[[], str] = lambda: secrets.token_hex(8)) -> str:
    """The caller's `X-Request-Id` when it is 8-64 characters of [A-Za-z0-9._:-]; otherwise a new one."""
    if offered and _ACCEPTED_REQUEST_ID.fullmatch(offered):
        return offered
    return new_id()


# ---- logs ---------------------------------------------------------------------------------------


def safe_exception(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: `exc_info` becomes `exception` = type and frames, without the message."""
    exc_info = event.pop("exc_info", None)
    if not exc_info:
        return event
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        event["exception"] = exception_summary(exc_info[0], exc_info[2])
    return event


def exception_summary(exc_type: type[BaseException], tb: TracebackType | None) -> str:
    frames = traceback.extract_tb(tb)[-12:]
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{exc_type.__module__}.{exc_type.__qualname__} at {where}" if where else exc_type.__qualname__


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        safe_exception,
    ]


def configure_logging(fmt: str = "json", stream: TextIO | None = None, *, force: bool = False) -> None:
    """structlog to one JSON object per line (or plain console lines), unless the host process configured
    structlog already (tests, an embedding application) and `force` is not given."""
    if structlog.is_configured() and not force:
        return
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*_shared_processors(), renderer],
        # stderr: stdout belongs to command output (`clients list --json`), which log lines must not corrupt.
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,  # others (tests, a host process) may reconfigure later
    )


def stdlib_json_formatter() -> logging.Formatter:
    """A logging.Formatter that renders stdlib records (gunicorn's, werkzeug's) as the same JSON lines."""

    def _drop_args(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.pop("positional_args", None)
        return event

    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _drop_args,
                    structlog.processors.JSONRenderer()],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
    )


def gunicorn_log_config() -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its error log as JSON lines on stderr (its access log is off: the
    application logs each request itself, by route, with its request id)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": stdlib_json_formatter}},
        "handlers": {"error": handler},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False}},
        "root": {"level": "WARNING", "handlers": ["error"]},
    }


# ---- metrics ------------------------------------------------------------------------------------


def enable_multiprocess(directory: Path) -> Path:
    """Let every process started after this (gunicorn workers) share metrics through files in `directory`.

    Empties the directory (values of processes of an earlier run must not be added to this run's) and sets
    PROMETHEUS_MULTIPROC_DIR. prometheus-client chooses its value class when it is first imported: it is chosen
    again here, so this works whether or not the client was imported before.
    """
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory.resolve())
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return directory


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_worker_dead(pid: int) -> None:
    """gunicorn's `child_exit` hook: a dead worker's live gauges are dropped (its counters are kept)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


@dataclass(frozen=True)
class Metrics:
    """The service's own counters and histograms (gauges that describe the database are read at scrape)."""

    registry: Any
    request_seconds: Any  # Histogram(route, method, status)
    consent_decisions: Any  # Counter(decision, rule)

    @classmethod
    def create(cls) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            request_seconds=Histogram(
                "healthledger_http_request_duration_seconds", "HTTP request latency by route rule and status",
                ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=registry,
            ),
            consent_decisions=Counter(
                "healthledger_consent_decisions", "Consent decisions recorded in the access log, by outcome and rule",
                ["decision", "rule"], registry=registry,
            ),
        )  # fmt: skip

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route, method, str(status)).observe(seconds)

    def observe_decision(self, decision: str, rule: str) -> None:
        self.consent_decisions.labels(decision, rule).inc()

    def exposition(self, collectors: Iterable[Any] = ()) -> tuple[bytes, str]:
        """The text exposition format: this process's metrics (or every worker's, in multiprocess mode)
        and the given collectors' (read now)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        scrape = CollectorRegistry(auto_describe=False)
        directory = multiprocess_dir()
        if directory:
            MultiProcessCollector(scrape, path=directory)
        else:
            scrape.register(_Forward(self.registry))
        for collector in collectors:
            scrape.register(collector)
        return generate_latest(scrape), CONTENT_TYPE_LATEST


class _Forward:
    """A collector that yields another registry's metrics (single-process mode)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Any]:
        return self._registry.collect()  # type: ignore[no-any-return]
