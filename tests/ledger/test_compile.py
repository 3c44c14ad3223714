"""The committed contract artifacts are exactly what the pinned solcjs builds from the sources."""

from __future__ import annotations

import pytest
from support import node_tool

from healthledger.ledger.compile import (
    ARTIFACTS_DIR,
    COMPILER_SETTINGS,
    artifact_differences,
    compile_contracts,
    load_artifact,
)


@pytest.mark.node
def test_committed_artifacts_match_a_fresh_build() -> None:
    documents = compile_contracts(solcjs=node_tool("solcjs"))
    assert {"ConsentRegistry", "AccessLogAnchor"} <= set(documents)
    assert artifact_differences(documents) == []


def test_artifacts_pin_an_evm_the_embedded_chain_runs_and_reproducible_metadata() -> None:
    assert COMPILER_SETTINGS["evmVersion"] in {"cancun", "prague"}
    assert COMPILER_SETTINGS["optimizer"]["enabled"] is True
    assert COMPILER_SETTINGS["metadata"] == {"bytecodeHash": "none", "appendCBOR": False}
    for name in ("ConsentRegistry", "AccessLogAnchor"):
        artifact = load_artifact(name)
        assert artifact.deployed_bytecode and artifact.bytecode.endswith(artifact.deployed_bytecode[-32:])
        assert (ARTIFACTS_DIR / f"{name}.json").exists()
