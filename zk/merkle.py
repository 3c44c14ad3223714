"""Poseidon Merkle tree (binary, append-mostly) with root history, over a pluggable node store.

Layout: level 0 holds the leaves, level `depth` the root; node (level, i) = Poseidon(node(level-1, 2i),
node(level-1, 2i+1)). An empty leaf is 0 and an empty subtree of height h has the precomputed
"zero hash" Z[h] (Z[0] = 0, Z[h+1] = Poseidon(Z[h], Z[h])). Stores keep only nodes that differ from the
empty subtree at their level, so a depth-20 tree with n leaves holds about 2n nodes whatever its
capacity. Paths follow circomlib's MerkleTreeInclusionProof convention: `path_bits[h]` is 1 when the
node at height h is a right child, `siblings[h]` is its sibling.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from zk.errors import MalformedInput, ZkError
from zk.field import R
from zk.poseidon import hash2

DEFAULT_DEPTH = 20
MAX_DEPTH = 48
DEFAULT_ROOT_HISTORY = 100

NodeKey = tuple[int, int]  # (level, index)
PairHasher = Callable[[Sequence[tuple[int, int]]], list[int]]
"""Hashes many (left, right) pairs at once: [Poseidon(l, r) ...] (e.g. circomlibjs in Node for bulk builds)."""


def hash_pairs(pairs: Sequence[tuple[int, int]]) -> list[int]:
    """The reference PairHasher: `hash2` one pair at a time, in Python."""
    return [hash2(left, right) for left, right in pairs]


class TreeFull(ZkError):
    """No free leaf left (a tree of depth d holds 2**d leaves)."""


@lru_cache(maxsize=1)
def _zero_hashes_upto_max() -> tuple[int, ...]:
    zeros = [0]
    for _ in range(MAX_DEPTH):
        zeros.append(hash2(zeros[-1], zeros[-1]))
    return tuple(zeros)


def zero_hashes(depth: int) -> tuple[int, ...]:
    """Z[0..depth]: the value of an empty subtree of each height."""
    _check_depth(depth)
    return _zero_hashes_upto_max()[: depth + 1]


def _check_depth(depth: int) -> None:
    if type(depth) is not int or not 1 <= depth <= MAX_DEPTH:
        raise MalformedInput(f"merkle depth: must be an integer in 1..{MAX_DEPTH}")


def _check_leaf(leaf: object) -> int:
    if type(leaf) is not int or not 0 <= leaf < R:
        raise MalformedInput("merkle leaf: not a field element in [0, R)")
    return leaf


@dataclass(frozen=True)
class MerklePath:
    """Inclusion path of leaf `leaf_index`: siblings and direction bits from the leaf up to the root."""

    leaf_index: int
    siblings: list[int]
    path_bits: list[int]


class NodeStore(Protocol):
    """Persistence for a tree: non-empty nodes, leaf count and the roots it has had (oldest first)."""

    def bind_depth(self, depth: int) -> None:
        """Record the tree depth on first use; raise MalformedInput if the store holds another depth."""

    def node(self, level: int, index: int) -> int | None:
        """The stored node, or None when it is the empty subtree."""

    def leaf_count(self) -> int: ...

    def recent_roots(self, limit: int) -> list[int]:
        """The last `limit` roots, oldest first."""

    def commit(self, nodes: Mapping[NodeKey, int | None], leaf_count: int, root: int) -> None:
        """Atomically write changed nodes (None deletes), the new leaf count, and append `root`."""


class MemoryNodeStore:
    """Dict-backed store (tests, small trees). Keeps the last `root_history` roots."""

    def __init__(self, root_history: int = DEFAULT_ROOT_HISTORY) -> None:
        self._nodes: dict[NodeKey, int] = {}
        self._leaf_count = 0
        self._roots: deque[int] = deque(maxlen=root_history)
        self._depth: int | None = None

    def bind_depth(self, depth: int) -> None:
        if self._depth is None:
            self._depth = depth
        elif self._depth != depth:
            raise MalformedInput(f"merkle store: holds a tree of depth {self._depth}, not {depth}")

    def node(self, level: int, index: int) -> int | None:
        return self._nodes.get((level, index))

    def leaf_count(self) -> int:
        return self._leaf_count

    def recent_roots(self, limit: int) -> list[int]:
        return list(self._roots)[-limit:] if limit > 0 else []

    def commit(self, nodes: Mapping[NodeKey, int | None], leaf_count: int, root: int) -> None:
        for key, value in nodes.items():
            if value is None:
                self._nodes.pop(key, None)
            else:
                self._nodes[key] = value
        self._leaf_count = leaf_count
        self._roots.append(root)

    def __len__(self) -> int:
        """Number of stored (non-empty) nodes."""
        return len(self._nodes)


class SqliteNodeStore:
    """SQLite-backed store: nodes on disk (32-byte big-endian values), WAL mode, one transaction per commit.

    Usable from several threads (one connection guarded by a lock). All roots are kept on disk.
    """

    _SCHEMA = (
        (
            "CREATE TABLE IF NOT EXISTS merkle_node (level INTEGER NOT NULL, idx INTEGER NOT NULL,"
            " value BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID"
        ),
        "CREATE TABLE IF NOT EXISTS merkle_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS merkle_root (seq INTEGER PRIMARY KEY AUTOINCREMENT, root BLOB NOT NULL)",
    )

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            for stmt in self._SCHEMA:
                self._db.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM merkle_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def bind_depth(self, depth: int) -> None:
        with self._lock:
            stored = self._meta("depth")
            if stored is None:
                self._db.execute("INSERT INTO merkle_meta (key, value) VALUES ('depth', ?)", (depth,))
            elif stored != depth:
                raise MalformedInput(f"merkle store: holds a tree of depth {stored}, not {depth}")

    def node(self, level: int, index: int) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM merkle_node WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
        return None if row is None else int.from_bytes(row[0], "big")

    def leaf_count(self) -> int:
        with self._lock:
            return self._meta("leaf_count") or 0

    def recent_roots(self, limit: int) -> list[int]:
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT root FROM merkle_root ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [int.from_bytes(r[0], "big") for r in reversed(rows)]

    def commit(self, nodes: Mapping[NodeKey, int | None], leaf_count: int, root: int) -> None:
        puts = [(lv, i, v.to_bytes(32, "big")) for (lv, i), v in nodes.items() if v is not None]
        dels = [(lv, i) for (lv, i), v in nodes.items() if v is None]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO merkle_node (level, idx, value) VALUES (?, ?, ?)", puts
                )
                self._db.executemany("DELETE FROM merkle_node WHERE level = ? AND idx = ?", dels)
                self._db.execute(
                    "INSERT OR REPLACE INTO merkle_meta (key, value) VALUES ('leaf_count', ?)", (leaf_count,)
                )
                self._db.execute("INSERT INTO merkle_root (root) VALUES (?)", (root.to_bytes(32, "big"),))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def node_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM merkle_node").fetchone()[0])


class PoseidonMerkleTree:
    """A Poseidon Merkle tree of fixed `depth` whose nodes live in `store`."""

    def __init__(self, depth: int = DEFAULT_DEPTH, store: NodeStore | None = None,
                 root_history_size: int = DEFAULT_ROOT_HISTORY) -> None:
        _check_depth(depth)
        self.depth = depth
        self.capacity = 1 << depth
        self.store: NodeStore = store if store is not None else MemoryNodeStore(root_history_size)
        self.store.bind_depth(depth)
        self.root_history_size = root_history_size
        self._zeros = zero_hashes(depth)

    # -- reading ---------------------------------------------------------------------------------------
    def _get(self, level: int, index: int) -> int:
        value = self.store.node(level, index)
        return self._zeros[level] if value is None else value

    @property
    def size(self) -> int:
        """Number of leaves appended so far (the next insert goes to this index)."""
        return self.store.leaf_count()

    @property
    def root(self) -> int:
        return self._get(self.depth, 0)

    @property
    def root_history(self) -> list[int]:
        """The last `root_history_size` roots, oldest first (the current root last)."""
        return self.store.recent_roots(self.root_history_size)

    def is_known_root(self, root: int) -> bool:
        return root == self.root or root in self.root_history

    def leaf(self, index: int) -> int:
        self._check_index(index)
        return self._get(0, index)

    def path(self, index: int) -> MerklePath:
        """Inclusion path of leaf `index`. Requires 0 <= index < size."""
        self._check_index(index)
        siblings, bits = [], []
        i = index
        for level in range(self.depth):
            siblings.append(self._get(level, i ^ 1))
            bits.append(i & 1)
            i >>= 1
        return MerklePath(leaf_index=index, siblings=siblings, path_bits=bits)

    # -- writing ---------------------------------------------------------------------------------------
    def insert(self, leaf: int) -> int:
        """Append `leaf`; returns its index."""
        return self.insert_many([leaf])[0]

    def insert_many(self, leaves: Sequence[int]) -> list[int]:
        """Append leaves in one batch (each touched node hashed once, one store commit)."""
        checked = [_check_leaf(x) for x in leaves]
        start = self.size
        if start + len(checked) > self.capacity:
            raise TreeFull(f"merkle tree: depth {self.depth} holds {self.capacity} leaves, full")
        if not checked:
            return []
        self._write({start + k: v for k, v in enumerate(checked)}, start + len(checked))
        return list(range(start, start + len(checked)))

    def update(self, index: int, leaf: int) -> None:
        """Replace leaf `index` (0 empties it). Requires 0 <= index < size."""
        self._check_index(index)
        self._write({index: _check_leaf(leaf)}, self.size)

    def set_leaves(self, leaves: Mapping[int, int], *, hash_pairs: PairHasher | None = None) -> None:
        """Write several leaves in one batch: indexes below `size` are replaced, the others must extend the
        tree contiguously from `size`. Each touched node is hashed once (`hash_pairs` per level)."""
        size = self.size
        new = sorted(i for i in leaves if type(i) is not int or i >= size)
        if any(type(i) is not int or i < 0 for i in leaves):
            raise MalformedInput("merkle leaf index: must be a non-negative integer")
        if new != list(range(size, size + len(new))):
            raise MalformedInput("merkle leaves: new leaves must follow the last one without gaps")
        if size + len(new) > self.capacity:
            raise TreeFull(f"merkle tree: depth {self.depth} holds {self.capacity} leaves, full")
        if leaves:
            self._write({i: _check_leaf(v) for i, v in leaves.items()}, size + len(new), hash_pairs)

    def _check_index(self, index: int) -> None:
        if type(index) is not int or not 0 <= index < self.size:
            raise MalformedInput(f"merkle leaf index: must be in 0..{self.size - 1}")

    def _write(self, leaves: Mapping[int, int], leaf_count: int, pair_hasher: PairHasher | None = None) -> None:
        hasher = pair_hasher or hash_pairs
        changes: dict[NodeKey, int | None] = {}
        level_values = dict(leaves)
        for level in range(self.depth + 1):
            zero = self._zeros[level]
            for i, v in level_values.items():
                changes[(level, i)] = None if v == zero else v
            if level == self.depth:
                break
            indexes = sorted({i >> 1 for i in level_values})
            pairs = []
            for i in indexes:
                left = level_values.get(2 * i)
                right = level_values.get(2 * i + 1)
                if left is None:
                    left = self._get(level, 2 * i)
                if right is None:
                    right = self._get(level, 2 * i + 1)
                pairs.append((left, right))
            hashed = hasher(pairs)
            if len(hashed) != len(pairs):
                raise ZkError("merkle: the pair hasher returned the wrong number of hashes")
            level_values = dict(zip(indexes, hashed, strict=True))
        self.store.commit(changes, leaf_count, level_values[0])


def compute_root(leaf: int, path: MerklePath) -> int:
    """The root implied by `leaf` and `path` (raises MalformedInput for a malformed path)."""
    _check_leaf(leaf)
    if len(path.siblings) != len(path.path_bits) or not 1 <= len(path.siblings) <= MAX_DEPTH:
        raise MalformedInput("merkle path: siblings and path_bits must have the same length (the depth)")
    node = leaf
    index = 0
    for h, (sibling, bit) in enumerate(zip(path.siblings, path.path_bits, strict=True)):
        if type(sibling) is not int or not 0 <= sibling < R:
            raise MalformedInput(f"merkle path: sibling {h} is not a field element")
        if bit not in (0, 1) or type(bit) is not int:
            raise MalformedInput(f"merkle path: path bit {h} must be 0 or 1")
        node = hash2(sibling, node) if bit else hash2(node, sibling)
        index |= bit << h
    if index != path.leaf_index:
        raise MalformedInput("merkle path: path_bits do not encode leaf_index")
    return node


def verify_path(root: int, leaf: int, path: MerklePath) -> bool:
    """True when `leaf` sits at `path.leaf_index` in a tree with `root`."""
    return compute_root(leaf, path) == root


def tree_from_leaves(leaves: Iterable[int], depth: int = DEFAULT_DEPTH,
                     store: NodeStore | None = None) -> PoseidonMerkleTree:
    """A new tree holding `leaves` (one batch)."""
    tree = PoseidonMerkleTree(depth, store)
    tree.insert_many(list(leaves))
    return tree
