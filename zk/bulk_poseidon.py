"""Poseidon pair hashes in bulk through circomlibjs in a Node child process (JSON lines over pipes).

Building a credential tree of 100,000 leaves costs ~100,000 two-input hashes; circomlibjs in Node does them a
few times faster than `zk.poseidon` in Python. `NodePairHasher` is a `zk.merkle.PairHasher`: one request per
tree level, answers checked for count and range, and a sample of each batch checked against the Python
reference (a wrong answer raises instead of corrupting a tree).
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from zk.errors import ProverError
from zk.field import R
from zk.poseidon import hash2
from zk.prover import DEFAULT_NODE_MODULES

_SCRIPT = r"""
const { buildPoseidon } = require(process.argv[1] + "/circomlibjs");
const readline = require("readline");
buildPoseidon().then((poseidon) => {
  const F = poseidon.F;
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on("line", (line) => {
    const pairs = JSON.parse(line);
    const out = new Array(pairs.length);
    for (let i = 0; i < pairs.length; i++) out[i] = F.toString(poseidon([BigInt(pairs[i][0]), BigInt(pairs[i][1])]));
    process.stdout.write(JSON.stringify(out) + "\n");
  });
});
"""
SAMPLE = 4  # pairs per batch re-hashed in Python


class NodePairHasher:
    """A long-lived Node process hashing (left, right) pairs with circomlibjs' Poseidon."""

    def __init__(self, *, node: str = "node", node_modules: Path = DEFAULT_NODE_MODULES) -> None:
        if not (node_modules / "circomlibjs").is_dir():
            raise ProverError("circomlibjs is not installed (npm ci)")
        self._proc = subprocess.Popen([node, "-e", _SCRIPT, str(node_modules)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._rng = random.Random(0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __call__(self, pairs: Sequence[tuple[int, int]]) -> list[int]:
        if not pairs:
            return []
        if len(pairs) < 64:  # a round trip costs more than hashing a few in Python
            return [hash2(a, b) for a, b in pairs]
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps([[str(a), str(b)] for a, b in pairs]) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise ProverError("the Poseidon worker (Node, circomlibjs) stopped")
        out = [int(x) for x in json.loads(line)]
        if len(out) != len(pairs) or any(not 0 <= x < R for x in out):
            raise ProverError("the Poseidon worker answered the wrong number of hashes or non-field values")
        for i in self._rng.sample(range(len(pairs)), min(SAMPLE, len(pairs))):
            if out[i] != hash2(*pairs[i]):
                raise ProverError("the Poseidon worker disagrees with the Python reference")
        return out
