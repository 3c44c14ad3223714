"""The skeleton: settings resolve, the schema migrates, the app answers."""

from pathlib import Path

from click.testing import CliRunner

from healthledger.app import bootstrap, create_app
from healthledger.cli import cli
from healthledger.config import Settings


def test_default_database_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d")
    assert s.database_url == f"sqlite:///{(tmp_path / 'd' / 'healthledger.db').resolve()}"


def test_env_overrides(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HEALTHLEDGER_DATABASE_URL", "postgresql://x@127.0.0.1/y")
    s = Settings.load()
    assert s.data_dir == tmp_path and s.database_url == "postgresql://x@127.0.0.1/y"


def test_bootstrap_and_healthz(settings: Settings) -> None:
    bootstrap(settings)
    assert (settings.data_dir / "healthledger.db").exists()
    resp = create_app(settings).test_client().get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


def test_cli_init(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HEALTHLEDGER_DATA_DIR", str(tmp_path / "v"))
    result = CliRunner().invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v" / "healthledger.db").exists()


def test_every_command_loads_and_has_help() -> None:
    runner = CliRunner()
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
    assert {"serve", "init", "import", "rotate-keys", "erase-patient", "zk", "clients", "chain"} <= set(
        cli.list_commands(None)  # type: ignore[arg-type]
    )


def test_settings_file_then_environment(monkeypatch, tmp_path: Path) -> None:
    import json

    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"data_dir": str(tmp_path / "from-file"), "tenant": "file-tenant", "port": 9000}))
    monkeypatch.setenv("HEALTHLEDGER_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("HEALTHLEDGER_TENANT", "env-tenant")
    s = Settings.load(port=9100)
    assert s.data_dir == tmp_path / "from-file" and s.tenant == "env-tenant" and s.port == 9100
    assert s.database_url == f"sqlite:///{(tmp_path / 'from-file' / 'healthledger.db').resolve()}"


def test_bootstrap_creates_the_server_keys_before_workers_start(tmp_path) -> None:
    from healthledger.app import bootstrap
    from healthledger.config import Settings

    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    bootstrap(settings)
    names = {p.name for p in settings.keys_dir.iterdir()}
    assert "token-signing-key.json" in names and any("session" in n for n in names)
    for path in settings.keys_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_the_default_development_token_is_honoured_on_loopback_only(tmp_path) -> None:
    from healthledger.config import Settings

    assert Settings(data_dir=tmp_path).accepted_dev_token == "dev-token"
    assert Settings(data_dir=tmp_path, host="0.0.0.0").accepted_dev_token == ""
    assert Settings(data_dir=tmp_path, host="0.0.0.0", dev_token="chosen").accepted_dev_token == "chosen"
    assert Settings(data_dir=tmp_path, dev_token="").accepted_dev_token == ""


def test_make_test_installs_chromium_when_it_is_missing() -> None:
    """`make test` (what CI runs) brings its own system packages: the browser tests need Debian's chromium."""
    import subprocess

    from support import ROOT

    dry_run = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert "scripts/system-deps.sh" in dry_run.stdout, dry_run.stdout + dry_run.stderr
    script = (ROOT / "scripts" / "system-deps.sh").read_text()
    assert "DEBIAN_FRONTEND=noninteractive" in script and "apt-get install -y" in script and "chromium" in script
