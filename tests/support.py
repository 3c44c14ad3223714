"""Test support importable by name from any test module (`from support import ...`).

Test modules must not import `conftest`: several folders have one, and which one a bare
`import conftest` finds depends on collection order.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures"
NODE_BIN = ROOT / "node_modules" / ".bin"


def node_tool(name: str) -> Path:
    """A pinned npm tool from node_modules/.bin; fails (not skips) when missing: `make test` installs them."""
    path = NODE_BIN / name
    if not path.exists() or shutil.which("node") is None:
        pytest.fail(f"{name} missing: run `make test` (it runs `npm ci`)")
    return path


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, anywhere in it (function-local imports too), as dotted names;
    `from a import b` counts as both `a` and `a.b`, relative imports are resolved against the file."""
    package = ".".join(path.resolve().relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


# The whole test session's log lines (structlog and stdlib logging in the test process, and the output of the
# servers tests start, appended by those tests) go to this file; conftest scans it for the fixtures' PHI.
SESSION_LOG_ENV = "HEALTHLEDGER_TEST_SESSION_LOG"
MIN_PHI_LENGTH = 6  # shorter strings could occur by chance in log text (times, hex ids)


def append_to_session_log(text: str) -> None:
    """Add a subprocess's output (a server a test ran) to the session's log, scanned for PHI at the end."""
    import os

    path = os.environ.get(SESSION_LOG_ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")


def patient_phi(resource: dict) -> set[str]:  # type: ignore[type-arg]
    """A Patient's names, identifiers (other than its resource id) and birth date, each of 6+ characters."""
    if resource.get("resourceType") != "Patient":
        return set()
    out: set[str] = set()
    for name in resource.get("name", []):
        out.update([name.get("family", "")] + name.get("given", []))
    for ident in resource.get("identifier", []):
        if ident.get("value") != resource.get("id"):
            out.add(str(ident.get("value", "")))
    out.add(resource.get("birthDate", ""))
    return {v for v in out if len(v) >= MIN_PHI_LENGTH}


def fixture_phi(fixtures: Path = FIXTURES) -> set[str]:
    """The PHI of every Patient in the shared fixtures (Synthea bundles, Bulk Data NDJSON, R4 examples)."""
    import json

    phi: set[str] = set()
    for path in sorted(fixtures.rglob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        resources = [e.get("resource", {}) for e in document.get("entry", [])] if isinstance(document, dict) else []
        for resource in [document, *resources] if isinstance(document, dict) else []:
            if isinstance(resource, dict):
                phi |= patient_phi(resource)
    for path in sorted(fixtures.rglob("*.ndjson")):
        for line in path.read_text().splitlines():
            if line.strip():
                phi |= patient_phi(json.loads(line))
    return phi


def phi_in(text: str, phi: set[str]) -> set[str]:
    """The PHI values that occur in `text` (as written or lower-cased)."""
    lowered = text.lower()
    return {v for v in phi if v in text or v.lower() in lowered}


def invoke_cli(settings: Any, *args: str) -> Any:
    """`healthledger ARGS` in process, on `settings` (a Settings), through click's runner; the runtime (and the
    embedded chain it may have opened) closed afterwards."""
    from click.testing import CliRunner

    from healthledger.cli import cli
    from healthledger.runtime import Runtime

    runtime = Runtime(load_settings=lambda **o: settings.model_copy(update=o))
    try:
        return CliRunner().invoke(cli, list(args), obj=runtime)
    finally:
        runtime.close()
