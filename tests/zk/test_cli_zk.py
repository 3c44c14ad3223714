"""`zk verify` / `zk calldata`: exit codes 0 valid, 1 invalid, 2 malformed, with one-line messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import ROOT, imported_modules

from zk.cli import zk_group

INTEROP = ROOT / "tests" / "vectors" / "zk" / "interop"


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(zk_group, list(args))
    return result.exit_code, result.stdout, result.stderr


def _verify_args(vkey: Path, proof: Path, public: Path) -> list[str]:
    return ["verify", "--vkey", str(vkey), "--proof", str(proof), "--public", str(public)]


def test_valid_proof_exits_0() -> None:
    code, out, _ = _run(*_verify_args(INTEROP / "verification_key.json", INTEROP / "proof.json",
                                      INTEROP / "public.json"))
    assert code == 0 and out.strip() == "valid proof"


def test_invalid_proof_exits_1(tmp_path: Path) -> None:
    public = json.loads((INTEROP / "public.json").read_text())
    public[1] = str(int(public[1]) + 1)
    (tmp_path / "public.json").write_text(json.dumps(public))
    code, _, err = _run(*_verify_args(INTEROP / "verification_key.json", INTEROP / "proof.json",
                                      tmp_path / "public.json"))
    assert code == 1 and err.strip() == "invalid proof"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.update(pi_a=["1", "3", "1"]), "proof.pi_a: point is not on the BN254 curve"),
        (lambda p: p.pop("pi_c"), "proof: missing field pi_c"),
    ],
)
def test_malformed_proof_exits_2(tmp_path: Path, mutate: object, message: str) -> None:
    proof = json.loads((INTEROP / "proof.json").read_text())
    mutate(proof)  # type: ignore[operator]
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    code, out, err = _run(*_verify_args(INTEROP / "verification_key.json", tmp_path / "proof.json",
                                        INTEROP / "public.json"))
    assert code == 2 and out == ""
    assert err.strip() == f"malformed input: {message}" and "\n" not in err.strip()
    assert "Traceback" not in err


def test_missing_file_and_wrong_signal_count_exit_2(tmp_path: Path) -> None:
    code, _, err = _run(*_verify_args(tmp_path / "nope.json", INTEROP / "proof.json", INTEROP / "public.json"))
    assert code == 2 and "cannot read nope.json" in err
    (tmp_path / "public.json").write_text('["1"]')
    code, _, err = _run(*_verify_args(INTEROP / "verification_key.json", INTEROP / "proof.json",
                                      tmp_path / "public.json"))
    assert code == 2 and "expects 3, got 1" in err


def test_calldata_prints_snarkjs_format() -> None:
    code, out, _ = _run("calldata", "--proof", str(INTEROP / "proof.json"), "--public", str(INTEROP / "public.json"))
    assert code == 0 and out.strip() == (INTEROP / "soliditycalldata.txt").read_text().strip()


def test_registered_in_healthledger_cli_and_python_m_zk() -> None:
    from healthledger.cli import cli

    result = CliRunner().invoke(cli, ["zk", *_verify_args(INTEROP / "verification_key.json",
                                                          INTEROP / "proof.json", INTEROP / "public.json")])
    assert result.exit_code == 0, result.output
    proc = subprocess.run(
        [sys.executable, "-m", "zk", *_verify_args(INTEROP / "verification_key.json", INTEROP / "proof.json",
                                                   INTEROP / "input.json")],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("malformed input: public signals")


def test_zk_core_does_not_import_the_service() -> None:
    code = (
        "import sys, zk.cli, zk.groth16, zk.merkle, zk.poseidon, zk.snarkjs_io, zk.pairing;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('healthledger', 'flask', 'sqlalchemy'));"
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=True)
    assert proc.stdout.strip() == ""


def test_only_the_cli_modules_import_click_or_the_cli() -> None:
    """The ceremony (and every other zk module) is a library; its commands are listed in zk.cli's table."""
    cli_modules = {"cli.py", "ceremony_cli.py", "__main__.py"}
    for path in sorted((ROOT / "zk").glob("*.py")):
        imports = imported_modules(path)
        assert not {m for m in imports if m.split(".")[0] == "healthledger"}, path.name
        if path.name not in cli_modules:
            assert not {"click", "zk.cli", "zk.ceremony_cli"} & imports, path.name


def test_a_deeply_nested_file_is_malformed_not_a_crash(tmp_path: Path) -> None:
    deep = tmp_path / "proof.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, out, err = _run(*_verify_args(INTEROP / "verification_key.json", deep, INTEROP / "public.json"))
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip() == "malformed input: proof: proof.json is nested too deeply to be a snarkjs file"
