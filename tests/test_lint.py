"""`make lint` holds in CI too: ruff over the tree, mypy --strict over the pure packages and mypy over the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "healthledger", "zk", "fhir_adapters", "tests", "benchmarks"],
        ["mypy", "--strict", "zk", "fhir_adapters"],
        ["mypy", "healthledger"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_lint(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
