"""Poseidon Merkle tree: circomlibjs vectors, a recursive reference tree, both node stores."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT

from zk.errors import MalformedInput
from zk.field import R
from zk.merkle import (
    MemoryNodeStore,
    MerklePath,
    NodeStore,
    PoseidonMerkleTree,
    SqliteNodeStore,
    TreeFull,
    compute_root,
    tree_from_leaves,
    verify_path,
    zero_hashes,
)
from zk.poseidon import poseidon

VECTORS = json.loads((ROOT / "tests" / "vectors" / "zk" / "merkle_circomlibjs.json").read_text())


def reference_root(leaves: list[int], depth: int) -> int:
    """Slow recursive definition: the tree as a full binary tree over leaves padded with 0."""

    def node(level: int, index: int) -> int:
        if level == 0:
            return leaves[index] if index < len(leaves) else 0
        return poseidon([node(level - 1, 2 * index), node(level - 1, 2 * index + 1)])

    return node(depth, 0)


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], NodeStore]]:
    made: list[SqliteNodeStore] = []

    def make() -> NodeStore:
        if request.param == "memory":
            return MemoryNodeStore()
        store = SqliteNodeStore(tmp_path / f"tree{len(made)}.sqlite")
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("case", VECTORS["trees"], ids=lambda t: f"depth{t['depth']}-{len(t['leaves'])}leaves")
def test_circomlibjs_roots_and_paths(case: dict, make_store: Callable[[], NodeStore]) -> None:  # type: ignore[type-arg]
    depth = case["depth"]
    tree = tree_from_leaves([int(x) for x in case["leaves"]], depth, make_store())
    assert tree.root == int(case["root"])
    assert list(zero_hashes(depth)) == [int(z) for z in case["zero_hashes"]]
    for p in case["paths"]:
        expected = MerklePath(p["leaf_index"], [int(s) for s in p["siblings"]], p["path_bits"])
        assert tree.path(p["leaf_index"]) == expected
        assert verify_path(tree.root, int(case["leaves"][p["leaf_index"]]), expected)


def test_empty_tree_root_is_zero_hash() -> None:
    assert PoseidonMerkleTree(20).root == zero_hashes(20)[20]
    assert PoseidonMerkleTree(3).root == reference_root([], 3)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(0, R - 1)),
        st.tuples(st.just("update"), st.integers(0, 15), st.sampled_from([0, 1, R - 1, 12345])),
        st.tuples(st.just("batch"), st.lists(st.integers(0, R - 1), max_size=3)),
    ),
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(1, 4), operations=ops, use_sqlite=st.booleans())
def test_matches_reference_tree(depth: int, operations: list[tuple], use_sqlite: bool) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as d:
        store: NodeStore = SqliteNodeStore(Path(d) / "t.sqlite") if use_sqlite else MemoryNodeStore()
        tree = PoseidonMerkleTree(depth, store)
        model: list[int] = []
        roots = []
        for op in operations:
            if op[0] == "insert":
                if len(model) == 2**depth:
                    with pytest.raises(TreeFull):
                        tree.insert(op[1])
                    continue
                assert tree.insert(op[1]) == len(model)
                model.append(op[1])
            elif op[0] == "batch":
                if len(model) + len(op[1]) > 2**depth:
                    with pytest.raises(TreeFull):
                        tree.insert_many(op[1])
                    continue
                assert tree.insert_many(op[1]) == list(range(len(model), len(model) + len(op[1])))
                model.extend(op[1])
                if not op[1]:
                    continue  # an empty batch commits nothing
            else:
                if op[1] >= len(model):
                    with pytest.raises(MalformedInput, match="leaf index"):
                        tree.update(op[1], op[2])
                    continue
                tree.update(op[1], op[2])
                model[op[1]] = op[2]
            roots.append(tree.root)
        assert tree.root == reference_root(model, depth)
        assert tree.size == len(model)
        for i, leaf in enumerate(model):
            assert tree.leaf(i) == leaf
            assert verify_path(tree.root, leaf, tree.path(i))
        assert tree.root_history == roots[-tree.root_history_size :]
        if isinstance(store, SqliteNodeStore):
            store.close()


@settings(max_examples=20, deadline=None)
@given(leaves=st.lists(st.integers(0, R - 1), min_size=1, max_size=6), data=st.data())
def test_tampered_paths_do_not_verify(leaves: list[int], data: st.DataObject) -> None:
    tree = tree_from_leaves(leaves, depth=3)
    i = data.draw(st.integers(0, len(leaves) - 1))
    path = tree.path(i)
    h = data.draw(st.integers(0, 2))
    assert not verify_path(tree.root, (leaves[i] + 1) % R, path)
    bad_sibling = list(path.siblings)
    bad_sibling[h] = (bad_sibling[h] + 1) % R
    assert not verify_path(tree.root, leaves[i], MerklePath(i, bad_sibling, path.path_bits))
    assert not verify_path((tree.root + 1) % R, leaves[i], path)
    flipped = list(path.path_bits)
    flipped[h] ^= 1
    other_index = i ^ (1 << h)
    # A path claiming another position is a different statement: it verifies only if the tree agrees.
    claimed = MerklePath(other_index, path.siblings, flipped)
    assert verify_path(tree.root, leaves[i], claimed) == (
        compute_root(leaves[i], claimed) == tree.root
    )


def test_batch_equals_one_by_one() -> None:
    leaves = [7, 8, 9, 10, 11]
    a = tree_from_leaves(leaves, depth=5)
    b = PoseidonMerkleTree(5)
    for x in leaves:
        b.insert(x)
    assert a.root == b.root == reference_root(leaves, 5)


def test_only_non_empty_nodes_are_stored(make_store: Callable[[], NodeStore]) -> None:
    store = make_store()
    tree = PoseidonMerkleTree(20, store)
    tree.insert_many([1, 2, 3])
    count = len(store) if isinstance(store, MemoryNodeStore) else store.node_count()  # type: ignore[attr-defined]
    assert count == 3 + 2 + 19  # leaves, their two parents, then one node per level up to the root
    for i in range(3):
        tree.update(i, 0)
    count = len(store) if isinstance(store, MemoryNodeStore) else store.node_count()  # type: ignore[attr-defined]
    assert count == 0
    assert tree.root == zero_hashes(20)[20]


def test_root_history_is_bounded_and_known_roots() -> None:
    tree = PoseidonMerkleTree(4, MemoryNodeStore(root_history=3), root_history_size=3)
    roots = []
    for x in range(1, 6):
        tree.insert(x)
        roots.append(tree.root)
    assert tree.root_history == roots[-3:]
    assert tree.is_known_root(roots[-3]) and not tree.is_known_root(roots[0])


def test_sqlite_store_persists_and_checks_depth(tmp_path: Path) -> None:
    path = tmp_path / "issuer.sqlite"
    store = SqliteNodeStore(path)
    tree = PoseidonMerkleTree(20, store)
    tree.insert_many([5, 6, 7])
    root, p = tree.root, tree.path(1)
    store.close()
    reopened = PoseidonMerkleTree(20, SqliteNodeStore(path))
    assert reopened.root == root and reopened.size == 3 and reopened.path(1) == p
    assert reopened.insert(8) == 3
    with pytest.raises(MalformedInput, match="depth 20, not 16"):
        PoseidonMerkleTree(16, SqliteNodeStore(path))


def test_full_tree() -> None:
    tree = tree_from_leaves([1, 2, 3, 4], depth=2)
    with pytest.raises(TreeFull):
        tree.insert(5)


@pytest.mark.parametrize(
    ("leaf", "path", "message"),
    [
        (R, MerklePath(0, [0], [0]), "leaf"),
        (1, MerklePath(0, [0, 0], [0]), "same length"),
        (1, MerklePath(0, [R], [0]), "sibling 0"),
        (1, MerklePath(0, [0], [2]), "path bit 0"),
        (1, MerklePath(0, [0], [1]), "leaf_index"),
    ],
)
def test_malformed_paths_raise(leaf: int, path: MerklePath, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        verify_path(0, leaf, path)


@pytest.mark.parametrize("depth", [0, 49, "20"])
def test_bad_depth(depth: object) -> None:
    with pytest.raises(MalformedInput, match="depth"):
        PoseidonMerkleTree(depth)  # type: ignore[arg-type]


def test_bad_leaf_and_index() -> None:
    tree = tree_from_leaves([1], depth=3)
    with pytest.raises(MalformedInput, match="leaf"):
        tree.insert(-1)
    with pytest.raises(MalformedInput, match="leaf index"):
        tree.path(1)


@pytest.mark.node
def test_committed_vectors_are_what_circomlibjs_computes() -> None:
    import subprocess

    from support import node_tool

    node_tool("snarkjs")
    out = subprocess.run(
        ["node", str(ROOT / "tests" / "vectors" / "zk" / "gen_merkle.mjs")],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert json.loads(out.stdout) == VECTORS
