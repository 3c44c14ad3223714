"""One-shot commands log as the service does (JSON lines by default, HEALTHLEDGER_LOG_FORMAT=console for plain
text), on stderr: stdout holds only the command's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name != "HEALTHLEDGER_LOG_FORMAT"}
    environment.update(HEALTHLEDGER_DATA_DIR=str(data_dir), HEALTHLEDGER_LOAD_DEMO_DATA="false", **env)
    return subprocess.run([sys.executable, "-m", "healthledger.cli", *args], env=environment, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("log_format", ["", "console"])
def test_a_one_shot_command_logs_in_the_configured_format_on_stderr_only(tmp_path: Path, log_format: str) -> None:
    data_dir = tmp_path / "var"
    assert _run(data_dir, "init").returncode == 0
    (data_dir / "keys" / "kek.json").chmod(0o644)  # a loose key file: tightened, with a warning logged
    env = {"HEALTHLEDGER_LOG_FORMAT": log_format} if log_format else {}
    done = _run(data_dir, "keys", "list", **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("(active)") and len(done.stdout.splitlines()) == 1  # the command's output only
    warnings = [line for line in done.stderr.splitlines() if "data_dir.mode_tightened" in line]
    assert warnings, done.stderr
    if log_format == "console":
        assert not warnings[0].startswith("{") and "[warning" in warnings[0]
    else:
        line = json.loads(warnings[0])  # the documented default: one JSON object per line
        assert line["event"] == "data_dir.mode_tightened" and line["level"] == "warning"
