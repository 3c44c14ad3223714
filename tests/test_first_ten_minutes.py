"""The README's "First ten minutes", run as written: `healthledger serve` on defaults (demo data, the home
organisation made on first start), then the second terminal's commands in bash, on loopback.

Only the port (a free one instead of 8080), the data directory and `.venv/bin/healthledger` (this
interpreter's `healthledger`) are substituted; every other character of the README's block is run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serving import Served
from support import ROOT

SECTION = "## First ten minutes"


def walkthrough_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[: section.index("\n## ", len(SECTION))]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_the_walkthrough() -> None:
    first, second = walkthrough_blocks()
    assert first.startswith("make run")
    assert "clients add" in second and "/auth/token" in second and "/fhir/Patient/$PATIENT" in second


@pytest.mark.slow
def test_first_ten_minutes_as_written(tmp_path: Path) -> None:
    _, commands = walkthrough_blocks()
    data_dir = tmp_path / "var"
    served = Served(data_dir, env={"HEALTHLEDGER_LOAD_DEMO_DATA": "true"})
    commands = commands.replace("127.0.0.1:8080", f"127.0.0.1:{served.port}")
    workdir = tmp_path / "integrator"
    (workdir / ".venv" / "bin").mkdir(parents=True)
    wrapper = workdir / ".venv" / "bin" / "healthledger"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m healthledger.cli "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
    env.update(HEALTHLEDGER_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    served.start(wait="/readyz", timeout=120)
    try:
        startup = served.output()
        assert f"http://127.0.0.1:{served.port}/" in startup
        assert 'home organisation: Organization/home "HealthLedger Hospital" (made' in startup, startup[-2000:]
        assert "demo data: 5 generated patients loaded" in startup
        assert "clients add" in startup and "/auth/token" in startup
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=workdir, env=env,
                             capture_output=True, text=True, timeout=240, check=False)
    finally:
        served.stop()
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr}"
    lines = out.splitlines()
    # Step 3: five demo patients listed, their observations readable.
    assert len([line for line in lines if re.fullmatch(r"[0-9a-f-]{36} \w+ \w+", line)]) == 5, out
    assert '"total": 6' in out, out
    # Step 4: the refusal recorded, observations withheld from then on, the patient still readable.
    assert re.search(r"Consent/[\w-]+: active", out), out
    assert '"total": 0' in out, out
    # Step 5: anchored (by this command, or by the service's worker a moment before) and verified.
    assert "tree head queued" in out or "nothing new to anchor" in out, out
    assert "intact:" in out and "mode_tightened" not in out + run.stderr, out
