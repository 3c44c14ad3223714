"""Browser tests' support (`from browser_support import ...`): the real app served on loopback with a ledger
worker beside it, Debian's chromium driven by Playwright, axe-core checks and screenshots.

- `LiveServer` serves a `consent_world.World` on 127.0.0.1 (werkzeug, threaded) and runs what `serve`'s
  ledger worker does every poll (submit the outbox, index the chain, anchor the access log) in a thread.
- `launch_chromium()` starts /usr/bin/chromium headless with the flags that work here (never `playwright
  install`). Without chromium the tests fail in CI and are skipped elsewhere: `make test` installs it.
- `check_accessibility(page)` runs axe-core (npm, pinned) in the page and fails on serious or critical
  violations; `screenshot(page, name)` keeps a full-page PNG under `test-artifacts/screenshots/`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pytest
from consent_world import World
from support import ROOT
from werkzeug.serving import make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("HEALTHLEDGER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# axe-core from npm (package.json pins it). HEALTHLEDGER_AXE_JS may point elsewhere for a local run.
AXE_JS = Path(os.environ.get("HEALTHLEDGER_AXE_JS", ROOT / "node_modules" / "axe-core" / "axe.min.js"))
WIDTHS = {"phone": (375, 740), "desktop": (1280, 900)}
SERIOUS = ("serious", "critical")


def require_chromium() -> None:
    if not CHROMIUM.exists():
        message = "Debian chromium is missing: `make system-deps` (or `make test`, which runs it) installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_axe() -> Path:
    if not AXE_JS.exists():
        pytest.fail(f"axe-core missing at {AXE_JS}: run `make test` (it runs `npm ci`)")
    return AXE_JS


class LiveServer:
    """The world's app on a loopback port, with the ledger worker's loop in a thread."""

    def __init__(self, world: World, *, poll_seconds: float = 0.4, port: int = 0) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self.world = world
        self._server = make_server("127.0.0.1", port, world.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._serving = threading.Thread(target=self._server.serve_forever, name="live-server", daemon=True)
        self._ledger = threading.Thread(target=self._ledger_worker, name="ledger-worker", daemon=True)
        self.ledger_errors: list[BaseException] = []

    def _ledger_worker(self) -> None:
        from healthledger.audit.anchoring import anchor_batch

        tenant = self.world.app.config["SETTINGS"].tenant
        while not self._stop.wait(self._poll):
            try:
                with self.world.sessions.begin() as s:
                    anchor_batch(s, datetime.now(UTC), tenant=tenant)
                self.world.sync()
            except Exception as exc:  # noqa: BLE001 - recorded, and the tests fail on it
                self.ledger_errors.append(exc)

    def __enter__(self) -> Self:
        self._serving.start()
        self._ledger.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._ledger.join(timeout=30)
        self._server.shutdown()
        self._serving.join(timeout=30)
        assert not self.ledger_errors, self.ledger_errors


def free_port() -> int:
    """A loopback port free now (for a server whose URL must be known before it starts: its issuer)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def launch_chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def check_accessibility(page: Any, where: str) -> list[dict[str, Any]]:
    """axe-core on the page as it is now; fails on any serious or critical violation. Returns all violations."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Injected through the devtools protocol: the page's CSP (script-src 'self') does not apply to it.
        page.evaluate(require_axe().read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    violations: list[dict[str, Any]] = result["violations"]
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations if v.get("impact") in SERIOUS
    ]
    assert not serious, f"{where}: " + "; ".join(serious)
    return violations


def screenshot(page: Any, name: str) -> Path:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def no_horizontal_scroll(page: Any, where: str) -> None:
    width = page.evaluate("document.documentElement.clientWidth")
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width + 1, f"{where}: the page is {scroll}px wide in a {width}px window"


def wait_until(predicate: Any, timeout: float = 30.0, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")
