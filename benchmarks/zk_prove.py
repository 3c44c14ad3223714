"""Eligibility proofs: constraint count, proving time (Node worker cold and warm), Python verification time,
on-chain enrolment gas (embedded EVM; anvil with --anvil) and proof size.

    .venv/bin/python benchmarks/zk_prove.py [--warm 5] [--anvil]

Prints a table and writes benchmarks/results/zk_prove.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zk import groth16
from zk.credential import (
    PatientAttributes,
    condition_hasher,
    eligibility_inputs,
    encode,
    identity_commitment,
    leaf,
)
from zk.criteria import compile_criteria
from zk.merkle import PoseidonMerkleTree
from zk.prover import CircuitFiles, NodeProver
from zk.snarkjs_io import load_proof, load_verification_key

STUDY = {"age": {"$between": [40, 75]}, "conditions": {"$in": ["icd10|E11"]}, "hba1c": {"$gte": 6.5}}
REFERENCE = date(2025, 6, 1)
STUDY_ID = 7


def constraint_count(files: CircuitFiles) -> int:
    build_md = (files.wasm.parent / "BUILD.md").read_text()
    for line in build_md.splitlines():
        if line.startswith("- Constraints:"):
            return int(line.split(":")[1].split(";")[0].replace(",", "").strip())
    raise SystemExit("BUILD.md has no constraint count")


def statement(enrollee: str) -> tuple[dict[str, object], PoseidonMerkleTree, int]:
    hasher = condition_hasher(b"benchmark condition key........")
    patient = PatientAttributes(date(1960, 5, 1), "female", ("icd10|E11",), {"hba1c": Decimal("7.2")}, 1)
    attrs = encode(patient, hasher)
    secret = 987654321
    tree = PoseidonMerkleTree(20)
    tree.insert(leaf(identity_commitment(secret), attrs))
    path = tree.path(0)
    criteria = compile_criteria(STUDY, REFERENCE, hasher)
    inputs = eligibility_inputs(secret=secret, attrs=attrs, siblings=path.siblings, path_bits=path.path_bits,
                                root=tree.root, study_id=STUDY_ID, criteria=criteria, enrollee=enrollee)
    return inputs, tree, criteria.criteria_hash


def onchain_gas(kind: str, prove: NodeProver) -> dict[str, int]:
    """Deploy verifier + registries, anchor a root, register a study, enrol once; gas per step."""

    from healthledger.keys import LocalFileKeyProvider
    from healthledger.ledger.chain import embedded_chain, rpc_chain
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        keys = LocalFileKeyProvider(data / "keys")
        if kind == "embedded":
            chain = embedded_chain(data, keys)
            anvil_ctx = None
        else:
            from tests.integration.anvil import running_anvil

            anvil_ctx = running_anvil(REPO / "node_modules" / ".bin" / "anvil")
            url = anvil_ctx.__enter__()
            chain = rpc_chain(url, keys, keys_dir=data / "keys", poll_seconds=0.02)
            chain.w3.provider.make_request("anvil_setBalance", [chain.operator.address, hex(10**24)])  # type: ignore[arg-type]
        try:
            op = chain.operator.address
            verifier, _ = chain.deploy("EligibilityVerifier")
            credentials, _ = chain.deploy("CredentialRegistry", op)
            chain.deploy("StudyRegistry", op, verifier, credentials)
            creg, sreg = chain.contract("CredentialRegistry"), chain.contract("StudyRegistry")
            chain.send(creg.functions.grantRole(chain.call(creg.functions.ISSUER()), op))
            chain.send(sreg.functions.grantRole(chain.call(sreg.functions.STUDY_REGISTRAR()), op))
            inputs, tree, criteria_hash = statement(op)
            anchor = chain.send(creg.functions.anchorRoot(tree.root, 1))
            register = chain.send(sreg.functions.registerStudy(STUDY_ID, criteria_hash, b"\x01" * 32, 1, 0, 1000, op))
            result = prove.prove(inputs)
            enrol = chain.send(sreg.functions.enrol(*result.enrol_args()), gas=600_000)
            return {"anchor_root": int(anchor["gasUsed"]), "register_study": int(register["gasUsed"]),
                    "enrol": int(enrol["gasUsed"])}
        finally:
            chain.close()
            if anvil_ctx is not None:
                anvil_ctx.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=5, help="warm proofs to time")
    parser.add_argument("--anvil", action="store_true", help="also measure gas on anvil")
    parser.add_argument("--no-chain", action="store_true", help="skip the on-chain part")
    args = parser.parse_args(argv)

    files = CircuitFiles.committed()
    inputs, _, _ = statement("0x" + "11" * 20)
    results: dict[str, object] = {"constraints": constraint_count(files),
                                  "zkey_bytes": files.zkey.stat().st_size, "wasm_bytes": files.wasm.stat().st_size}
    with NodeProver(files) as prover:
        cold = prover.prove(inputs)
        warm = [prover.prove(inputs) for _ in range(args.warm)]
        vk = load_verification_key(files.verification_key)
        proof = load_proof(cold.proof)
        groth16.verify(vk, proof, cold.public_signals)  # prepares (caches) the key
        verify_s = []
        for _ in range(5):
            t = time.perf_counter()
            ok = groth16.verify(vk, proof, cold.public_signals)
            verify_s.append(time.perf_counter() - t)
            assert ok
        results.update({
            "prove_cold_ms": round(cold.timings.round_trip_ms + cold.timings.startup_ms, 1),
            "worker_startup_ms": round(cold.timings.startup_ms, 1),
            "prove_warm_ms_median": round(statistics.median(w.timings.round_trip_ms for w in warm), 1),
            "witness_warm_ms_median": round(statistics.median(w.timings.witness_ms for w in warm), 1),
            "groth16_warm_ms_median": round(statistics.median(w.timings.prove_ms for w in warm), 1),
            "python_verify_ms_median": round(statistics.median(verify_s) * 1000, 1),
            "proof_json_bytes": len(json.dumps(cold.proof, separators=(",", ":"))),
            "proof_calldata_bytes": 8 * 32,  # a (2), b (4), c (2) field elements, as enrol() takes them
            "public_signals": len(cold.public_signals),
            # The machine is shared: timings scale with the load (2 cores).
            "load_average_1m": round(os.getloadavg()[0], 2),
        })
        if not args.no_chain:
            results["gas_embedded"] = onchain_gas("embedded", prover)
            if args.anvil:
                results["gas_anvil"] = onchain_gas("anvil", prover)

    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    out = REPO / "benchmarks" / "results" / "zk_prove.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
