"""The Besu QBFT network generator: extraData golden-tested against Besu's documentation, and the files it writes."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from click.testing import CliRunner

from healthledger.cli import cli
from healthledger.config import Settings
from healthledger.ledger.besu import decode_validators, qbft_extra_data, qbft_genesis
from healthledger.ledger.chain import load_or_create_operator
from healthledger.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]

# Besu documentation, "Configure QBFT consensus" (docs/private-networks/how-to/configure/consensus/qbft.md),
# genesis file, block header validator selection: these four validators and this extraData.
DOCS_VALIDATORS = [
    "0x64a702e6263b7297a96638cac6ae65e6541f4169",
    "0x3923390ad55e90c237593b3b0e401f3b08a03185",
    "0xaefdb9a738c9f433e5b6b212a6d62f6370c2f692",
    "0xc7eeb9a4e00ce683cf93039b212648e01c6c6b78",
]
DOCS_EXTRA_DATA = (
    "0xf87aa00000000000000000000000000000000000000000000000000000000000000000f8549464a702e6263b7297a96638cac6ae65e654"
    "1f4169943923390ad55e90c237593b3b0e401f3b08a0318594aefdb9a738c9f433e5b6b212a6d62f6370c2f69294c7eeb9a4e00ce683cf"
    "93039b212648e01c6c6b78c080c0"
)
# Same page, contract validator selection: no validators in the header.
DOCS_EXTRA_DATA_CONTRACT = "0xe5a00000000000000000000000000000000000000000000000000000000000000000c0c080c0"


def test_extra_data_matches_besu_documentation() -> None:
    assert qbft_extra_data(DOCS_VALIDATORS) == DOCS_EXTRA_DATA
    assert qbft_extra_data([]) == DOCS_EXTRA_DATA_CONTRACT
    assert [a.lower() for a in decode_validators(DOCS_EXTRA_DATA)] == DOCS_VALIDATORS


def test_genesis_has_qbft_settings_and_prague() -> None:
    genesis = qbft_genesis(2026, DOCS_VALIDATORS, alloc={"0x" + "ab" * 20: "0x1"})
    assert genesis["config"]["qbft"] == {"blockperiodseconds": 2, "epochlength": 30000, "requesttimeoutseconds": 10}
    assert genesis["config"]["pragueTime"] == 0 and genesis["config"]["zeroBaseFee"] is True
    assert genesis["extraData"] == DOCS_EXTRA_DATA and genesis["alloc"] == {"ab" * 20: {"balance": "0x1"}}


def test_generator_writes_keys_private_and_configs_that_agree(tmp_path: Path) -> None:
    out = tmp_path / "network"
    settings = Settings(data_dir=tmp_path / "var", load_demo_data=False)
    runtime = Runtime(load_settings=lambda **o: settings)
    result = CliRunner().invoke(cli, ["chain", "besu-network", str(out), "--fund", "0x" + "cd" * 20], obj=runtime)
    assert result.exit_code == 0, result.output
    genesis = json.loads((out / "genesis.json").read_text())
    validators = decode_validators(genesis["extraData"])
    assert len(validators) == 4
    for i, address in enumerate(validators, start=1):
        node = out / f"validator{i}"
        assert (node / "address").read_text() == address
        assert stat.S_IMODE((node / "key").stat().st_mode) == 0o600
        config = (node / "config.toml").read_text()
        assert 'genesis-file="/config/genesis.json"' in config and "rpc-max-logs-range=5000" in config
        assert config.count("enode://") == 3  # the other three validators as bootnodes
    operator = load_or_create_operator(settings.keys_dir, runtime.key_provider).address.lower().removeprefix("0x")
    assert set(genesis["alloc"]) == {"cd" * 20, operator}  # the given address and this service's operator


def test_generated_keys_are_never_committed() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/besu/network/validator1/key"], cwd=ROOT, check=False)
    assert ignored.returncode == 0
