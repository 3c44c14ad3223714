"""The wheel serves: what `pip install .` puts in the image (deploy/Dockerfile) is built from a clean copy of the
tracked sources, unpacked outside the source tree, and an app is created from it alone and answers `/healthz`,
`/fhir/metadata` and the prover's manifest; the prover worker script is in it and parses. Every tracked data file
of the packages is in the wheel except those named in NOT_SHIPPED (a data file left out once made the image
fail at its first request: `zk/artifacts/eligibility/SHA256SUMS`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("healthledger", "fhir_adapters", "zk")
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", *PACKAGES)  # what deploy/Dockerfile copies
NOT_SHIPPED = {"zk/artifacts/ptau/pot14_local_dev.ptau"}  # pyproject.toml says why

_SERVE_FROM_WHEEL = """
import json, subprocess, sys
from pathlib import Path
import healthledger, zk.prover
from healthledger.app import bootstrap, create_app
from healthledger.config import Settings

site, data = Path(sys.argv[1]), Path(sys.argv[2])
settings = Settings(data_dir=data, load_demo_data=False, tenant="wheel")
bootstrap(settings)
client = create_app(settings).test_client()
answers = {path: client.get(path) for path in ("/healthz", "/fhir/metadata", "/app/zk/manifest.json")}
print(json.dumps({
    "healthledger": healthledger.__file__,
    "worker_script": str(zk.prover.WORKER_SCRIPT),
    "statuses": {path: r.status_code for path, r in answers.items()},
    "metadata_type": answers["/fhir/metadata"].json.get("resourceType"),
    "manifest_files": sorted(answers["/app/zk/manifest.json"].json["files"]),
}))
"""


def _tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", *paths], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout (the wheel is built from its tracked files)")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for name in _tracked(*BUILD_INPUTS):  # a clean copy: no egg-info, build/ or caches of the working tree
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(work / "dist")],
                           cwd=src, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (work / "dist").glob("healthledger-*.whl")
    site = work / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


@pytest.mark.slow
def test_the_wheel_holds_every_data_file_of_the_packages(unpacked: Path) -> None:
    data_files = {p for p in _tracked(*PACKAGES) if not p.endswith(".py")}
    assert "zk/artifacts/eligibility/SHA256SUMS" in data_files and "zk/prover_worker.mjs" in data_files
    missing = sorted(p for p in data_files - NOT_SHIPPED if not (unpacked / p).is_file())
    assert missing == []
    assert not any((unpacked / p).exists() for p in NOT_SHIPPED)
    migrations = {p for p in _tracked("healthledger/migrations") if p.endswith(".py")}
    assert migrations and all((unpacked / p).is_file() for p in migrations)


@pytest.mark.slow
def test_an_app_created_from_the_unpacked_wheel_serves(unpacked: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHLEDGER_")}
    env["PYTHONPATH"] = str(unpacked)  # ahead of the editable install of the source tree
    run = subprocess.run([sys.executable, "-P", "-c", _SERVE_FROM_WHEEL, str(unpacked), str(tmp_path / "var")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(seen["healthledger"]).is_relative_to(unpacked)  # the wheel's code, not the source tree's
    assert seen["statuses"] == {"/healthz": 200, "/fhir/metadata": 200, "/app/zk/manifest.json": 200}
    assert seen["metadata_type"] == "CapabilityStatement"
    assert seen["manifest_files"] == ["eligibility.wasm", "eligibility.zkey"]
    worker = Path(seen["worker_script"])
    assert worker.is_relative_to(unpacked) and worker.is_file()
    if shutil.which("node") is not None:
        checked = subprocess.run(["node", "--check", str(worker)], capture_output=True, text=True, timeout=60,
                                 check=False)
        assert checked.returncode == 0, checked.stderr
