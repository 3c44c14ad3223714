"""`healthledger serve` as a test runs it: start on a free loopback port, wait for readiness, find its sidecars,
kill them, stop it. Importable by name (`from serving import Served`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from support import ROOT, append_to_session_log

FHIR = "application/fhir+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(poll)
    return False


def http(method: str, url: str, body: Any = None, *, token: str | None = "dev-token",
         headers: dict[str, str] | None = None, timeout: float = 15) -> tuple[int, Any]:
    """One request; (status, parsed JSON body or text)."""
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/fhir+json"
    sent.update(headers or {})
    request = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Served:
    """One `healthledger serve` process group on loopback."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    kept_output: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: str = "/healthz", timeout: float = 90) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
        env.update(HEALTHLEDGER_DATA_DIR=str(self.data_dir), HEALTHLEDGER_LOAD_DEMO_DATA="false",
                   HEALTHLEDGER_CHAIN_POLL_SECONDS="0.3", HEALTHLEDGER_ANCHOR_INTERVAL_SECONDS="1")
        env.update(self.env)
        self.log_path = Path(tempfile.mkstemp(prefix="serve-", suffix=".log")[1])
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "healthledger.cli", "serve", "--port", str(self.port), *self.args],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}: {self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + wait, timeout=2):
                    return self
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.2)
        self.kill()
        raise AssertionError(f"serve did not answer {wait} in {timeout:.0f} s: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else self.kept_output

    def members(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process still in the serve process group."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-a", "-g", str(self.process.pid)], capture_output=True, text=True,
                             check=False).stdout
        return [(int(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in out.splitlines()]

    def pid_of(self, marker: str) -> int | None:
        found = [pid for pid, command in self.members() if marker in command]
        return found[0] if found else None

    def node_pid(self) -> int | None:
        try:
            return int(json.loads((self.data_dir / "chain" / "node.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM to the master only (it must stop its sidecars itself); its exit status."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        return self._exit_status(timeout)

    def interrupt(self, timeout: float = 40) -> int:
        """SIGINT to the whole group, as Ctrl-C in a terminal sends it; the master's exit status."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        return self._exit_status(timeout)

    def _exit_status(self, timeout: float) -> int:
        """The master's exit status once it stopped (killed with its group past `timeout`)."""
        assert self.process is not None
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._keep_log()
        return status

    def kill(self) -> None:
        """SIGKILL to the whole group (cleanup)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self._keep_log()

    def _keep_log(self) -> None:
        if self.log_path is not None and self.log_path.exists():
            self.kept_output = self.output()
            append_to_session_log(self.kept_output)
            self.log_path.unlink()
            self.log_path = None


class PatientBrowser:
    """A patient signed in to a served web app, as a browser is: the session cookie and the CSRF token that the
    patient's own /fhir calls (Consent, `$sign`) carry."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.http = requests.Session()
        page = self.http.get(f"{base}/app/login", timeout=30).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        signed_in = self.http.post(f"{base}/app/login", allow_redirects=False, timeout=30, data={
            "csrf_token": token.group(1), "username": username, "password": password})
        assert signed_in.status_code == 303, signed_in.text[-500:]
        home = self.http.get(f"{base}/app/account", timeout=30).text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', home) or re.search(
            r'name="csrf_token" value="([^"]+)"', home)
        assert csrf
        self.csrf = csrf.group(1)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.http.post(f"{self.base}/fhir/{path}", json=body, timeout=60, headers={
            "Content-Type": FHIR, "Accept": FHIR, "X-CSRFToken": self.csrf})

    def get(self, path: str) -> requests.Response:
        return self.http.get(f"{self.base}/fhir/{path}", timeout=60, headers={"Accept": FHIR})
