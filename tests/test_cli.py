"""The command line's one runtime: command modules are handed it (they import neither the app nor the
CLI), a command makes only what it uses, and every error a command lets through is one line, exit 1."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support import ROOT, imported_modules

from healthledger.cli import LAZY_COMMANDS, cli
from healthledger.config import Settings
from healthledger.errors import ConfigurationError
from healthledger.runtime import Runtime

ROOT_MODULE = ROOT / "healthledger" / "cli.py"  # the one module that wires commands to the app

# Arguments that get each command past its own argument checks to the runtime. Every command of the
# healthledger CLI is listed (a new one must be added); `zk` has its own exit codes (tests/zk).
RUNTIME_ARGS: dict[str, list[str]] = {
    "init": [],
    "serve": ["--no-ledger"],
    "import": ["{json_file}"],
    "rotate-keys": [],
    "erase-patient": ["some-patient", "--yes"],
    "clients add": ["svc", "--scopes", "system/*.rs", "--secret"],
    "clients list": [],
    "clients disable": ["some-client"],
    "users add": ["someone", "--role", "auditor"],
    "users list": [],
    "users disable": ["someone"],
    "users invite": ["some-patient"],
    "chain deploy": [],
    "chain status": [],
    "chain operator": [],
    "chain role": ["grant", "RELAYER", "0x0000000000000000000000000000000000000001"],
    "chain pause": [],
    "chain node": ["--port", "0"],
    "relay status": [],
    "relay show": ["1"],
    "relay requeue": ["1"],
    "relay work": ["--once"],
    "anchor": ["--queue-only"],
    "audit verify": [],
    "audit prove": ["1"],
    "audit check-proof": ["{json_file}"],
    "backup": ["{json_file}.d"],
    "restore": ["."],
    "keys list": [],
    "keys add": [],
    "keys check-backup": ["."],
    "chain besu-network": ["{json_file}.network"],
    "credentials issue": [],
    "research-data budgets": [],
    "research-data exports": [],
    "federation deploy": [],
    "federation attach": ["0x0000000000000000000000000000000000000001"],
    "federation join": ["--org-id", "b", "--name", "B", "--fhir-base-url", "http://b/fhir"],
    "federation admit": ["b"],
    "federation remove": ["b"],
    "federation rotate-key": [],
    "federation status": [],
    "federation members": [],
    "federation link": ["p1", "HLRL1.x", "--user", "u"],
    "federation fetch": ["p1", "--user", "u"],
    "federation unlink": ["p1", "hospital-a"],
}
# Commands that use no runtime: a patient's or a researcher's side, talking HTTP to a service elsewhere
# (research/commands.py).
HTTP_CLIENT_ARGS: dict[str, list[str]] = {
    "study join": ["some-study", "--url", "http://127.0.0.1:9", "--user", "ann", "--password-stdin"],
    "study leave": ["some-study", "--url", "http://127.0.0.1:9", "--user", "ann", "--password-stdin"],
    "research studies": ["--url", "http://127.0.0.1:9", "--user", "rita", "--password-stdin"],
    "research create": [str(ROOT / "package.json"), "--url", "http://127.0.0.1:9", "--user", "rita", "--password-stdin"],
    "research publish": ["some-study", "--url", "http://127.0.0.1:9", "--user", "rita", "--password-stdin"],
    "research feasibility": ["some-study", "--url", "http://127.0.0.1:9", "--user", "rita", "--password-stdin"],
    "research export": ["some-study", "--out", "exported", "--url", "http://127.0.0.1:9", "--user", "rita",
                        "--password-stdin"],
}

# Commands that read neither settings nor the runtime: a liveness probe reads one file's age.
NO_RUNTIME_ARGS: dict[str, list[str]] = {"relay alive": ["--heartbeat", "{json_file}.missing"]}


def _leaf_commands(group: click.Group, prefix: str = "") -> set[str]:
    ctx = click.Context(group)
    names: set[str] = set()
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            names |= _leaf_commands(command, f"{path} ")
        else:
            names.add(path)
    return names


def _command_modules() -> list[Path]:
    """Every healthledger module that defines click commands, except the root that mounts them."""
    return sorted(path for path in (ROOT / "healthledger").rglob("*.py")
                  if path != ROOT_MODULE and "click" in imported_modules(path))


def test_command_modules_import_neither_the_app_nor_the_cli() -> None:
    modules = _command_modules()
    table = {target.partition(":")[0] for target in LAZY_COMMANDS.values() if target.startswith("healthledger.")}
    assert table <= {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in modules}
    for path in modules:
        wired = {"healthledger.app", "healthledger.cli"} & imported_modules(path)
        assert not wired, f"{path.relative_to(ROOT)} imports {sorted(wired)}: take the runtime (click.pass_obj)"


def test_the_table_lists_every_command_here() -> None:
    assert _leaf_commands(cli) - {c for c in _leaf_commands(cli) if c.startswith("zk ")} == (
        set(RUNTIME_ARGS) | set(HTTP_CLIENT_ARGS) | set(NO_RUNTIME_ARGS))


@pytest.mark.parametrize("command", sorted(NO_RUNTIME_ARGS))
def test_a_probe_command_answers_without_settings(command: str, tmp_path: Path) -> None:
    def unreadable_settings(**_overrides: object) -> Settings:
        raise ConfigurationError("the settings file cannot be read")

    args = [*command.split(), *(a.format(json_file=tmp_path / "f") for a in NO_RUNTIME_ARGS[command])]
    result = CliRunner().invoke(cli, args, obj=Runtime(load_settings=unreadable_settings))
    assert result.exit_code == 1 and result.stderr.startswith("Error: no heartbeat at")


@pytest.mark.parametrize("command", sorted(HTTP_CLIENT_ARGS))
def test_an_http_client_command_against_an_unreachable_service_is_one_line_and_exit_1(command: str) -> None:
    result = CliRunner().invoke(cli, [*command.split(), *HTTP_CLIENT_ARGS[command]], input="a password\n")
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: cannot reach http://127.0.0.1:9") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", sorted(RUNTIME_ARGS))
def test_an_error_in_any_command_is_one_line_and_exit_1(command: str, tmp_path: Path) -> None:
    def unreadable_settings(**_overrides: object) -> Settings:
        raise ConfigurationError("the settings file cannot be read")

    json_file = tmp_path / "bundle.json"
    json_file.write_text("{}")
    args = [*command.split(), *(a.format(json_file=json_file) for a in RUNTIME_ARGS[command])]
    result = CliRunner().invoke(cli, args, obj=Runtime(load_settings=unreadable_settings))
    assert isinstance(result.exception, SystemExit), result.exception  # not the error itself: no traceback
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "Error: the settings file cannot be read\n")


def test_an_error_deep_in_a_command_is_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEALTHLEDGER_LOAD_DEMO_DATA", "false")
    runner = CliRunner()
    for args, message in [(["relay", "show", "999"], "no such chain write"),
                          (["audit", "prove", "999"], "no such access-log entry"),
                          (["erase-patient", "not an id!", "--yes"], "resource id must be")]:
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.exception)
        assert result.stdout == "" and result.stderr.startswith(f"Error: {message}"), args
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_a_command_makes_only_what_it_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`clients list` needs the database, not the key-encryption key nor the chain."""
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "var"))
    runtime = Runtime()
    result = CliRunner().invoke(cli, ["clients", "list", "--json"], obj=runtime)
    assert result.exit_code == 0 and result.output.strip() == "[]", result.output
    assert (tmp_path / "var" / "healthledger.db").exists()
    assert not (tmp_path / "var" / "keys").exists() and not (tmp_path / "var" / "chain").exists()
    runtime.close()


def test_settings_overrides_come_before_the_settings_are_read(tmp_path: Path) -> None:
    runtime = Runtime(load_settings=lambda **o: Settings(data_dir=tmp_path, **o))
    runtime.override(port=9100)
    assert runtime.settings.port == 9100
    with pytest.raises(RuntimeError):
        runtime.override(port=9200)


@pytest.mark.parametrize(("content", "message"), [
    ('{"port": 80', "cannot be read as JSON"),
    ('["a list"]', "must hold a JSON object"),
    ('{"port": "eighty"}', "invalid settings: port"),
])
def test_a_bad_settings_file_is_one_line_and_exit_1(
    content: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(content)
    monkeypatch.setenv("HEALTHLEDGER_SETTINGS_FILE", str(settings_file))
    result = CliRunner().invoke(cli, ["clients", "list"], obj=Runtime())
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("Error: ") and message in result.stderr and "Traceback" not in result.output
