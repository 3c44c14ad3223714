"""Python Groth16 verification time: our verifier (multi-Miller loop, split final exponentiation) vs plain py_ecc.

    .venv/bin/python benchmarks/zk_verify.py [--rounds 9] [--reference-rounds 3]

Uses the snarkjs-made interop proof in tests/vectors/zk/interop (3 public signals). Reports medians of
wall-clock and CPU (process) time: the machine is shared, so CPU time is the steadier figure. Also times
Poseidon and the depth-20 Poseidon Merkle tree. Prints the figures and writes
benchmarks/results/zk_verify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zk import pairing
from zk.groth16 import (
    g1_linear_combination,
    g2_in_subgroup,
    prepare_verification_key,
    verify,
    verify_reference,
)
from zk.merkle import PoseidonMerkleTree, SqliteNodeStore
from zk.poseidon import poseidon
from zk.snarkjs_io import load_proof, load_public_signals, load_verification_key

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "tests" / "vectors" / "zk" / "interop"
RESULTS = ROOT / "benchmarks" / "results" / "zk_verify.json"


def measure(fn: Callable[[], Any], rounds: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return {"wall_ms": round(statistics.median(walls) * 1000, 2), "cpu_ms": round(statistics.median(cpus) * 1000, 2)}


def plain_py_ecc_check(vk: Any, proof: Any, public: list[int]) -> bool:
    """What a plain py_ecc verifier does: four `pairing(..., final_exponentiate=False)` and one FE, no checks."""
    from py_ecc.fields import optimized_bn128_FQ as FQ
    from py_ecc.fields import optimized_bn128_FQ2 as FQ2
    from py_ecc.fields import optimized_bn128_FQ12 as FQ12
    from py_ecc.optimized_bn128.optimized_curve import add, multiply, neg
    from py_ecc.optimized_bn128.optimized_pairing import final_exponentiate
    from py_ecc.optimized_bn128.optimized_pairing import pairing as py_pairing

    def g1(p: tuple[int, int]) -> tuple[FQ, FQ, FQ]:
        return FQ(p[0]), FQ(p[1]), FQ(1)

    def g2(p: tuple[tuple[int, int], tuple[int, int]]) -> tuple[FQ2, FQ2, FQ2]:
        return FQ2(list(p[0])), FQ2(list(p[1])), FQ2([1, 0])

    vk_x = g1(vk.ic[0])
    for s, p in zip(public, vk.ic[1:], strict=True):
        vk_x = add(vk_x, multiply(g1(p), s))
    f = (
        py_pairing(g2(proof.b), neg(g1(proof.a)), final_exponentiate=False)
        * py_pairing(g2(vk.beta2), g1(vk.alpha1), final_exponentiate=False)
        * py_pairing(g2(vk.gamma2), vk_x, final_exponentiate=False)
        * py_pairing(g2(vk.delta2), g1(proof.c), final_exponentiate=False)
    )
    return bool(final_exponentiate(f) == FQ12.one())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reference-rounds", type=int, default=3)
    args = parser.parse_args()

    vk = load_verification_key(INTEROP / "verification_key.json")
    proof = load_proof(INTEROP / "proof.json")
    public = load_public_signals(INTEROP / "public.json")

    w, c = time.perf_counter(), time.process_time()
    assert verify(vk, proof, public)  # first call: key checks, line precomputation, Frobenius tables
    cold = {"wall_ms": round((time.perf_counter() - w) * 1000, 2), "cpu_ms": round((time.process_time() - c) * 1000, 2)}
    prepared = prepare_verification_key(vk)
    assert proof.b is not None and proof.a is not None
    lines_b = pairing.prepare_g2(proof.b)
    assert prepared.gamma_lines is not None and prepared.delta_lines is not None
    f = pairing.miller_loop([(proof.a, lines_b), (proof.c, prepared.gamma_lines), (proof.c, prepared.delta_lines)])

    results: dict[str, Any] = {
        "proof": "snarkjs 0.7.6 CLI, tests/vectors/zk/interop (3 public signals)",
        "rounds": args.rounds,
        "fast_verify_first_call": cold,
        "fast_verify_warm_key": measure(lambda: verify(prepared, proof, public), args.rounds),
        "fast_parts": {
            "g2_subgroup_check_B": measure(lambda: g2_in_subgroup(proof.b), args.rounds),  # type: ignore[arg-type]
            "vk_x_msm": measure(lambda: g1_linear_combination(vk.ic, [1, *public]), args.rounds),
            "prepare_lines_B": measure(lambda: pairing.prepare_g2(proof.b), args.rounds),  # type: ignore[arg-type]
            "multi_miller_loop_3_pairs": measure(
                lambda: pairing.miller_loop(
                    [(proof.a, lines_b), (proof.c, prepared.gamma_lines), (proof.c, prepared.delta_lines)]  # type: ignore[list-item]
                ),
                args.rounds,
            ),
            "final_exponentiation": measure(lambda: pairing.final_exponentiation(f), args.rounds),
            "final_exponentiation_plain_hard_part": measure(
                lambda: pairing.final_exponentiation_slow(f), max(1, args.rounds // 3)
            ),
        },
        "plain_py_ecc_verify": measure(lambda: plain_py_ecc_check(vk, proof, public), args.reference_rounds),
        "reference_verify_with_subgroup_checks": measure(
            lambda: verify_reference(vk, proof, public), max(1, args.reference_rounds // 3)
        ),
    }
    tree = PoseidonMerkleTree(20)
    counter = iter(range(1, 10**9))
    results["poseidon_2_inputs_us"] = round(measure(lambda: poseidon([1, 2]), 200)["cpu_ms"] * 1000, 1)
    results["merkle_depth20_insert"] = measure(lambda: tree.insert(next(counter)), 20)
    results["merkle_depth20_batch_1000_leaves"] = measure(
        lambda: PoseidonMerkleTree(20).insert_many(list(range(1, 1001))), 1
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteNodeStore(Path(tmp) / "tree.sqlite")
        sqlite_tree = PoseidonMerkleTree(20, store)
        results["merkle_sqlite_depth20_batch_1000_leaves"] = measure(
            lambda: sqlite_tree.insert_many([sqlite_tree.size + k + 1 for k in range(1000)]), 5
        )
        results["merkle_sqlite_5000_leaves_nodes_stored"] = store.node_count()
        results["merkle_sqlite_5000_leaves_file_bytes"] = sum(f.stat().st_size for f in Path(tmp).iterdir())
        store.close()
    speedup = results["plain_py_ecc_verify"]["cpu_ms"] / results["fast_verify_warm_key"]["cpu_ms"]
    results["speedup_cpu_vs_plain_py_ecc"] = round(speedup, 1)
    results["target_ms"] = 500
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}

    w_fast, w_plain = results["fast_verify_warm_key"], results["plain_py_ecc_verify"]
    print(f"Groth16 verify (ours, warm key):  {w_fast['wall_ms']:8.1f} ms wall  {w_fast['cpu_ms']:8.1f} ms CPU")
    print(f"Groth16 verify (ours, first call):{cold['wall_ms']:8.1f} ms wall  {cold['cpu_ms']:8.1f} ms CPU")
    print(f"plain py_ecc (4 pairings + FE):   {w_plain['wall_ms']:8.1f} ms wall  {w_plain['cpu_ms']:8.1f} ms CPU")
    for name, m in results["fast_parts"].items():
        print(f"  {name:40s} {m['cpu_ms']:8.2f} ms CPU")
    print(f"speed-up (CPU): {speedup:.1f}x; target <= 500 ms per verification")
    print(f"Poseidon(2): {results['poseidon_2_inputs_us']} us; depth-20 insert: "
          f"{results['merkle_depth20_insert']['cpu_ms']} ms; 1,000-leaf batch: "
          f"{results['merkle_depth20_batch_1000_leaves']['cpu_ms']} ms (memory), "
          f"{results['merkle_sqlite_depth20_batch_1000_leaves']['cpu_ms']} ms (SQLite; 5,000 leaves -> "
          f"{results['merkle_sqlite_5000_leaves_nodes_stored']} nodes, "
          f"{results['merkle_sqlite_5000_leaves_file_bytes'] // 1024} KiB)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
