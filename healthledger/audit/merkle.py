"""Append-only Merkle log hashing and proofs, RFC 6962 §2.1 (as restated in RFC 9162 §2.1).

Pure functions over hashes. The tree is never held whole: callers hand in a `NodeReader` that returns
the hash of a *perfect, aligned* subtree (2**level leaves starting at index * 2**level), which the
store persists as nodes complete (`MerkleFrontier.append` says which). Every other subtree hash, the
root included, is derived from those in O(log n) reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from healthledger.errors import HealthLedgerError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"  # RFC 6962 §2.1: MTH({d(0)}) = SHA-256(0x00 || d(0))
NODE_PREFIX = b"\x01"  # RFC 6962 §2.1: MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962 §2.1: the hash of an empty list is SHA-256 of ""

# (level, index) -> hash of the perfect subtree covering leaves [index * 2**level, (index + 1) * 2**level).
NodeReader = Callable[[int, int], bytes]


class ProofError(HealthLedgerError, ValueError):
    """A proof does not verify; carries what was expected and what was calculated."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, expected: bytes | None = None, calculated: bytes | None = None) -> None:
        detail = message
        if expected is not None and calculated is not None:
            detail = f"{message}: expected {expected.hex()}, calculated {calculated.hex()}"
        super().__init__(detail)
        self.expected = expected
        self.calculated = calculated


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """k with k < n <= 2k (RFC 6962 §2.1's split point). Requires n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(start: int, end: int, nodes: NodeReader) -> bytes:
    """MTH(D[start:end]) for a range the RFC's recursion produces (start aligned to a power of two ≥ its size).

    Requires 0 <= start < end; perfect aligned ranges are read, others split at the largest power of two.
    """
    size = end - start
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return nodes(level, start >> level)
    k = _largest_power_of_two_below(size)
    return node_hash(subtree_hash(start, start + k, nodes), subtree_hash(start + k, end, nodes))


def root_hash(size: int, nodes: NodeReader) -> bytes:
    """MTH of the first `size` leaves. Requires size >= 0."""
    if size < 0:
        raise ValueError("tree size must be >= 0")
    return EMPTY_ROOT if size == 0 else subtree_hash(0, size, nodes)


def inclusion_proof(index: int, size: int, nodes: NodeReader) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1. Requires 0 <= index < size."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    # Walk from the root down, collecting the sibling subtree at each split, then reverse (leaf first).
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            proof.append(subtree_hash(start + k, end, nodes))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k, nodes))
            start = start + k
    proof.reverse()
    return proof


def consistency_proof(size1: int, size2: int, nodes: NodeReader) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 6962 §2.1.2. Requires 0 < size1 <= size2; empty when size1 == size2."""
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    if size1 == size2:
        return []
    proof: list[bytes] = []
    # SUBPROOF(m, D[start:end], b), iteratively; `complete` is the RFC's b flag.
    m, start, end, complete = size1, 0, size2, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(subtree_hash(start, end, nodes))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(subtree_hash(start + k, end, nodes))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k, nodes))
            m -= k
            start += k
            complete = False
    proof.reverse()
    return proof


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root a leaf hash and its audit path imply. Raises ProofError if malformed."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError("leaf hash has the wrong length")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if len(p) != HASH_SIZE:
            raise ProofError("proof element has the wrong length")
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` in the tree of `size` with `root`."""
    calculated = root_from_inclusion_proof(index, size, leaf, proof)
    if calculated != root:
        raise ProofError("inclusion proof does not lead to the root", expected=root, calculated=calculated)


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """RFC 9162 §2.1.4.2: raise ProofError unless the tree of size2/root2 extends the one of size1/root1."""
    if size2 < size1:
        raise ProofError(f"tree size went backwards: {size1} -> {size2}")
    if size1 == size2:
        if proof:
            raise ProofError("proof between equal sizes must be empty")
        if root1 != root2:
            raise ProofError("equal tree sizes with different roots", expected=root1, calculated=root2)
        return
    if size1 == 0:
        if proof:
            raise ProofError("proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("proof element has the wrong length")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: the old root is the first node of the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != root1:
        raise ProofError("consistency proof does not lead to the old root", expected=root1, calculated=fr)
    if sr != root2:
        raise ProofError("consistency proof does not lead to the new root", expected=root2, calculated=sr)


@dataclass
class MerkleFrontier:
    """The right edge of an append-only tree: the roots of its perfect subtrees, largest first.

    `append` returns every perfect subtree the new leaf completes, as (level, index, hash), which is
    exactly what a store must persist for `NodeReader` to serve any proof at any later size.
    """

    size: int = 0
    # (level, hash) for each set bit of `size`, from the highest level down.
    peaks: list[tuple[int, bytes]] = field(default_factory=list)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        if len(leaf) != HASH_SIZE:
            raise ValueError("leaf hash must be 32 bytes")
        completed = [(0, self.size, leaf)]
        level, h = 0, leaf
        while self.peaks and self.peaks[-1][0] == level:
            _, left = self.peaks.pop()
            h = node_hash(left, h)
            level += 1
            completed.append((level, self.size >> level, h))
        self.peaks.append((level, h))
        self.size += 1
        return completed

    def root(self) -> bytes:
        """MTH of all leaves so far: fold the peaks right to left (RFC 6962's split is the largest peak)."""
        if not self.peaks:
            return EMPTY_ROOT
        h = self.peaks[-1][1]
        for _, left in reversed(self.peaks[:-1]):
            h = node_hash(left, h)
        return h

    @classmethod
    def from_nodes(cls, size: int, nodes: NodeReader) -> MerkleFrontier:
        """Rebuild the frontier of a tree of `size` from stored perfect-subtree nodes."""
        return cls(size=size, peaks=[(level, nodes(level, index)) for level, index in peak_nodes(size)])


def peak_nodes(size: int) -> list[tuple[int, int]]:
    """(level, index) of the perfect subtrees a tree of `size` leaves splits into, largest first: one per set
    bit of `size` (what `MerkleFrontier.from_nodes` reads, so a store can fetch them in one query). Requires size >= 0."""
    keys: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    return keys
