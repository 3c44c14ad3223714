"""RFC 6962 Merkle log: external vectors (transparency-dev), reference equality, corruption probes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthledger.audit.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    peak_nodes,
    root_from_inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.audit import reference_merkle as ref

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "rfc6962_transparency_dev.json").read_text())
ENTRIES = [bytes.fromhex(h) for h in VECTORS["leaf_inputs_hex"]]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


class Store:
    """An in-memory node store fed by MerkleFrontier.append, as the database shell does."""

    def __init__(self) -> None:
        self.frontier = MerkleFrontier()
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.reads = 0

    def append(self, entry: bytes) -> None:
        for level, index, h in self.frontier.append(leaf_hash(entry)):
            self.nodes[(level, index)] = h

    def read(self, level: int, index: int) -> bytes:
        self.reads += 1
        return self.nodes[(level, index)]


def store_of(entries: list[bytes]) -> Store:
    s = Store()
    for e in entries:
        s.append(e)
    return s


def test_leaf_hashes_and_roots_match_vectors() -> None:
    assert EMPTY_ROOT.hex() == VECTORS["empty_root"]
    assert [leaf_hash(e).hex() for e in ENTRIES] == VECTORS["leaf_hashes"]
    s = Store()
    for size, entry in enumerate(ENTRIES, start=1):
        s.append(entry)
        assert s.frontier.root().hex() == VECTORS["roots_by_size"][str(size)]
        assert root_hash(size, s.read).hex() == VECTORS["roots_by_size"][str(size)]


@pytest.mark.parametrize("vec", VECTORS["inclusion"], ids=lambda v: f"{v['index']}@{v['size']}")
def test_inclusion_vectors(vec: dict) -> None:
    s = store_of(ENTRIES[: vec["size"]])
    got = inclusion_proof(vec["index"], vec["size"], s.read)
    assert [p.hex() for p in got] == vec["proof"]
    root = bytes.fromhex(VECTORS["roots_by_size"][str(vec["size"])])
    verify_inclusion(vec["index"], vec["size"], leaf_hash(ENTRIES[vec["index"]]), got, root)


@pytest.mark.parametrize("vec", VECTORS["consistency"], ids=lambda v: f"{v['size1']}-{v['size2']}")
def test_consistency_vectors(vec: dict) -> None:
    s = store_of(ENTRIES[: vec["size2"]])
    got = consistency_proof(vec["size1"], vec["size2"], s.read)
    assert [p.hex() for p in got] == vec["proof"]
    r1 = bytes.fromhex(VECTORS["roots_by_size"][str(vec["size1"])])
    r2 = bytes.fromhex(VECTORS["roots_by_size"][str(vec["size2"])])
    verify_consistency(vec["size1"], vec["size2"], got, r1, r2)


def _inclusion_probes(index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes):
    """Corruptions in the manner of transparency-dev's corruptInclusionProof; none may verify."""
    yield "index-1", index - 1, size, leaf, proof, root
    yield "index+1", index + 1, size, leaf, proof, root
    yield "index^2", index ^ 2, size, leaf, proof, root
    yield "size*2", index, size * 2, leaf, proof, root
    yield "size/2", index, size // 2, leaf, proof, root
    yield "wrong leaf", index, size, leaf_hash(b"WrongLeaf"), proof, root
    yield "empty root", index, size, leaf, proof, EMPTY_ROOT
    yield "random root", index, size, leaf, proof, SOME_HASH
    yield "trailing root", index, size, leaf, proof + [root], root
    yield "preceding root", index, size, leaf, [root] + proof, root
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        yield f"flip[{i}]", index, size, leaf, bad, root
    if proof:
        yield "removed", index, size, leaf, proof[:-1], root
    if len(proof) > 1:
        yield "inserted", index, size, leaf, [proof[0], SOME_HASH] + proof[1:], root


@pytest.mark.parametrize("vec", [v for v in VECTORS["inclusion"] if v["proof"]], ids=lambda v: f"{v['index']}@{v['size']}")
def test_corrupted_inclusion_proofs_fail(vec: dict) -> None:
    proof = [bytes.fromhex(p) for p in vec["proof"]]
    root = bytes.fromhex(VECTORS["roots_by_size"][str(vec["size"])])
    leaf = leaf_hash(ENTRIES[vec["index"]])
    for name, i, n, lf, pr, rt in _inclusion_probes(vec["index"], vec["size"], proof, root, leaf):
        if (i, n, lf, pr, rt) == (vec["index"], vec["size"], leaf, proof, root):
            continue  # e.g. index ^ 2 == index is not a corruption
        with pytest.raises(ProofError):
            verify_inclusion(i, n, lf, pr, rt)
        assert name  # the probe's name shows in a failure report


@pytest.mark.parametrize("vec", [v for v in VECTORS["consistency"] if v["proof"]], ids=lambda v: f"{v['size1']}-{v['size2']}")
def test_corrupted_consistency_proofs_fail(vec: dict) -> None:
    n1, n2 = vec["size1"], vec["size2"]
    proof = [bytes.fromhex(p) for p in vec["proof"]]
    r1 = bytes.fromhex(VECTORS["roots_by_size"][str(n1)])
    r2 = bytes.fromhex(VECTORS["roots_by_size"][str(n2)])
    probes = [
        (n1 - 1, n2, r1, r2, proof), (n1 + 1, n2, r1, r2, proof), (n1 ^ 2, n2, r1, r2, proof),
        (n1, n2 * 2, r1, r2, proof), (n1, n2 // 2, r1, r2, proof),
        (n1, n2, SOME_HASH, r2, proof), (n1, n2, r1, SOME_HASH, proof), (n1, n2, r2, r1, proof),
        (n1, n2, r1, r2, []), (n1, n2, r1, r2, proof + [r1]), (n1, n2, r1, r2, proof + [r2]),
        (n1, n2, r1, r2, [r1] + proof), (n1, n2, r1, r2, [r2] + proof), (n1, n2, r1, r2, [proof[0]] + proof),
        (n1, n2, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((n1, n2, r1, r2, bad))
    for a, b, x, y, p in probes:
        if (a, b, x, y, p) == (n1, n2, r1, r2, proof):
            continue
        with pytest.raises((ProofError, ValueError)):
            verify_consistency(a, b, p, x, y)


def test_trivial_consistency_rules() -> None:
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 5, [], EMPTY_ROOT, SOME_HASH)  # the empty tree is a prefix of every tree
    with pytest.raises(ProofError):
        verify_consistency(2, 1, [], SOME_HASH, SOME_HASH)  # time travel
    with pytest.raises(ProofError):
        verify_consistency(1, 1, [], EMPTY_ROOT, SOME_HASH)
    with pytest.raises(ProofError):
        verify_consistency(1, 1, [SOME_HASH], SOME_HASH, SOME_HASH)
    with pytest.raises(ProofError):
        root_from_inclusion_proof(0, 0, SOME_HASH, [])
    with pytest.raises(ProofError):
        root_from_inclusion_proof(0, 1, b"short", [])
    with pytest.raises(ValueError):
        inclusion_proof(3, 3, lambda level, index: SOME_HASH)
    with pytest.raises(ValueError):
        consistency_proof(0, 3, lambda level, index: SOME_HASH)


entries_st = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(entries=entries_st, data=st.data())
def test_fast_equals_reference(entries: list[bytes], data: st.DataObject) -> None:
    s = store_of(entries)
    n = len(entries)
    assert s.frontier.root() == root_hash(n, s.read) == ref.mth(entries)
    m = data.draw(st.integers(0, n - 1))
    p = inclusion_proof(m, n, s.read)
    assert p == ref.path(m, entries)
    verify_inclusion(m, n, leaf_hash(entries[m]), p, ref.mth(entries))
    size1 = data.draw(st.integers(1, n))
    c = consistency_proof(size1, n, s.read)
    assert c == ref.proof(size1, entries)
    verify_consistency(size1, n, c, ref.mth(entries[:size1]), ref.mth(entries))


@settings(max_examples=100, deadline=None)
@given(entries=entries_st, data=st.data())
def test_frontier_rebuilds_from_stored_nodes(entries: list[bytes], data: st.DataObject) -> None:
    s = store_of(entries)
    size = data.draw(st.integers(0, len(entries)))
    rebuilt = MerkleFrontier.from_nodes(size, s.read)
    assert rebuilt.root() == ref.mth(entries[:size])
    # Continuing from a rebuilt frontier completes the same nodes as the original did.
    for e in entries[size:]:
        for level, index, h in rebuilt.append(leaf_hash(e)):
            assert s.nodes[(level, index)] == h
    assert rebuilt.root() == s.frontier.root()


def test_proofs_read_logarithmically_many_nodes() -> None:
    s = store_of([i.to_bytes(4, "big") for i in range(5000)])
    s.reads = 0
    inclusion_proof(1234, 4999, s.read)
    assert s.reads <= 13 * 13  # O(log^2 n) at worst: each sibling is at most log n stored nodes
    s.reads = 0
    consistency_proof(1000, 4999, s.read)
    assert s.reads <= 13 * 13


@given(size=st.integers(0, 1 << 40))
def test_peak_nodes_are_the_nodes_a_frontier_is_rebuilt_from(size: int) -> None:
    """What the store prefetches in one query is exactly what from_nodes reads, and they tile [0, size)."""
    read: list[tuple[int, int]] = []
    MerkleFrontier.from_nodes(size, lambda level, index: read.append((level, index)) or bytes(32))
    assert peak_nodes(size) == read
    covered = 0
    for level, index in read:
        assert index << level == covered
        covered += 1 << level
    assert covered == size
