"""deploy/ checked offline: the compose file and the Kubernetes manifests parse and hang together (selectors,
probes, non-root, settings that exist, secrets by reference only), the Dockerfile is multi-stage and non-root,
the gunicorn configuration loads; the compose file validates against the Compose Specification's JSON schema
(check-jsonschema's vendored copy) and every manifest against the Kubernetes 1.37 schemas in strict mode
(kubernetes-validate), both offline. (`docker compose config` needs the compose plugin, which is not here;
deploy/README.md says how to run it where it is.)"""

from __future__ import annotations

import copy
import multiprocessing
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from gunicorn.util import load_class
from gunicorn.workers.gthread import ThreadWorker

from healthledger.config import Settings
from healthledger.server import WORKER_CLASS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# Read by deploy/gunicorn.conf.py, not by Settings.
GUNICORN_ENV = {"HEALTHLEDGER_BIND", "HEALTHLEDGER_WORKERS", "HEALTHLEDGER_THREADS", "HEALTHLEDGER_METRICS_DIR",
                "HEALTHLEDGER_FORWARDED_ALLOW_IPS"}
SETTINGS_ENV = {f"HEALTHLEDGER_{name.upper()}" for name in Settings.model_fields}


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_manifests_have_every_kind_the_issue_names() -> None:
    kinds = {d["kind"] for d in _manifests()}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"} <= kinds
    for doc in _manifests():
        assert doc["apiVersion"] and doc["metadata"]["name"]
        assert doc["kind"] != "Secret", "secrets are referenced, never committed"


def test_workloads_are_non_root_with_probes_and_settings_that_exist() -> None:
    docs = _manifests()
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= SETTINGS_ENV, set(config["data"]) - SETTINGS_ENV
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for doc in [*deployments.values(), *(d for d in docs if d["kind"] == "Job")]:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        if doc["kind"] == "Deployment":
            assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert _env_names(container) <= SETTINGS_ENV | GUNICORN_ENV
            for env in container.get("env", []):
                assert "value" not in env or not env["name"].endswith("DATABASE_URL")  # credentials by reference
    api = deployments["healthledger-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["resources"]["limits"]["cpu"]


def _heartbeat(args: list[str]) -> str:
    return args[args.index("--heartbeat") + 1]


def test_the_ledger_worker_is_probed_by_its_heartbeat_only() -> None:
    """No start-up work and no database in the probe: `relay alive` on the file `relay work` beats, which lies
    on a writable volume (the root file system is read-only)."""
    worker = next(d for d in _manifests() if d["metadata"]["name"] == "healthledger-ledger-worker")
    pod = worker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[:3] == ["healthledger", "relay", "alive"] and _heartbeat(probe) == _heartbeat(container["args"])
    max_age = float(probe[probe.index("--max-age") + 1])
    assert 60 <= max_age <= 600  # room for a slow pass, yet a stuck loop is restarted within minutes
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for path, v in mounts.items() if _heartbeat(probe).startswith(path + "/"))
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == volume)
    service = _compose()["services"]["ledger-worker"]
    check = service["healthcheck"]["test"]
    assert check[1:4] == ["healthledger", "relay", "alive"] and _heartbeat(check) == _heartbeat(service["command"])


def test_services_budgets_and_autoscaler_point_at_deployments() -> None:
    docs = _manifests()
    labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] == "Deployment"}
    for doc in docs:
        if doc["kind"] == "Service":
            assert any(doc["spec"]["selector"].items() <= lab.items() for lab in labels.values())
        if doc["kind"] == "PodDisruptionBudget":
            assert any(doc["spec"]["selector"]["matchLabels"].items() <= lab.items() for lab in labels.values())
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] in labels
            assert doc["spec"]["minReplicas"] >= 2


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_replicas_a_proxy_postgres_and_four_validators() -> None:
    compose = _compose()
    services = compose["services"]
    assert services["api"]["deploy"]["replicas"] >= 2 and "proxy" in services and "postgres" in services
    validators = [services[f"validator{i}"] for i in range(1, 5)]
    ips = [v["networks"]["healthledger"]["ipv4_address"] for v in validators]
    assert len(set(ips)) == 4
    from healthledger.ledger.commands import besu_network_command

    default_hosts = next(p.default for p in besu_network_command.params if p.name == "hosts")
    assert ips == default_hosts.split(",")  # the generator's enode URLs name these addresses
    for name, service in services.items():
        for key in service.get("environment", {}):
            if key.startswith("HEALTHLEDGER_"):
                assert key in SETTINGS_ENV | GUNICORN_ENV, (name, key)
        for dependency in service.get("depends_on", {}):
            assert dependency in services
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], (name, source)
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"]
    assert "PASSWORD" not in str(services["postgres"]["environment"].get("POSTGRES_PASSWORD", ""))


def test_dockerfile_is_multi_stage_non_root_without_build_tools() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 3
    final = stages[-1]
    assert re.search(r"^USER 10001", final, re.MULTILINE) and "HEALTHCHECK" in final and "nodejs" in final
    assert "build-essential" not in final and "gcc" not in final and "npm " not in final
    assert "COPY --from=node-build" in final and "snarkjs" in text


def test_gunicorn_configuration_loads() -> None:
    namespace: dict[str, Any] = {}
    exec(compile((DEPLOY / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)  # noqa: S102
    assert namespace["workers"] == multiprocessing.cpu_count()
    # The same worker class as `healthledger serve`, and one gunicorn can load (a threaded worker).
    assert namespace["worker_class"] == WORKER_CLASS
    assert issubclass(load_class(namespace["worker_class"]), ThreadWorker)
    assert namespace["wsgi_app"] == "healthledger.app:create_app()" and namespace["graceful_timeout"] > 0
    assert callable(namespace["on_starting"]) and callable(namespace["child_exit"])


def _compose_schema_errors(path: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], check=False, capture_output=True, text=True, timeout=120)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    assert _compose_schema_errors(DEPLOY / "compose.yaml") == ""
    broken = _compose()
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")  # the check can fail
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert "healthchek" in _compose_schema_errors(tmp_path / "compose.yaml")


def test_manifests_follow_the_kubernetes_schemas_strictly() -> None:
    manifests = _manifests()
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    deployment = copy.deepcopy(next(m for m in manifests if m["kind"] == "Deployment"))
    deployment["spec"]["replicaz"] = 2  # the check can fail: strict mode rejects unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37.0", strict=True)
