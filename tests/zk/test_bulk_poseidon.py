"""Poseidon pair hashes from circomlibjs in Node equal zk.poseidon's, and a tree built with them equals one
built in Python."""

from __future__ import annotations

import random

from support import node_tool

from zk.bulk_poseidon import NodePairHasher
from zk.field import R
from zk.merkle import PoseidonMerkleTree
from zk.poseidon import hash2


def test_node_pair_hashes_equal_the_python_reference() -> None:
    node_tool("snarkjs")  # the npm tools are installed (circomlibjs comes with them)
    rng = random.Random(11)
    pairs = [(rng.randrange(R), rng.randrange(R)) for _ in range(200)] + [(0, 0), (R - 1, 1)]
    with NodePairHasher() as hasher:
        assert hasher(pairs) == [hash2(a, b) for a, b in pairs]
        leaves = {i: rng.randrange(1, R) for i in range(300)}
        fast, slow = PoseidonMerkleTree(20), PoseidonMerkleTree(20)
        fast.set_leaves(leaves, hash_pairs=hasher)
        slow.set_leaves(leaves)
        assert fast.root == slow.root
