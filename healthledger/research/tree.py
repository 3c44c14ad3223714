"""The tenant's Poseidon credential tree in the database: `zk.merkle.NodeStore` over the research tables.

The store works on one connection, inside the caller's transaction: the leaves, the new root and the outbox
item that anchors it commit together (or not at all). Roots are kept in order with their anchoring writes,
which is what an enrolment's "is this root current enough" check reads (`known_roots`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from healthledger.research.models import TreeNode, TreeRoot
from zk.credential import TREE_DEPTH
from zk.errors import MalformedInput
from zk.merkle import NodeKey, PoseidonMerkleTree

nodes_t: sa.Table = TreeNode.__table__  # type: ignore[assignment]
roots_t: sa.Table = TreeRoot.__table__  # type: ignore[assignment]

# CredentialRegistry.ROOT_HISTORY: a proof against one of the issuer's last 30 anchored roots is accepted.
ROOT_HISTORY = 30
_BATCH = 5000  # rows per executemany


class SqlNodeStore:
    """Non-empty nodes in `research_tree_nodes`, roots in `research_tree_roots`, for one tenant."""

    def __init__(self, conn: Connection, tenant: str) -> None:
        self.conn = conn
        self.tenant = tenant
        self.last_root_id: int | None = None  # the row `commit` appended
        self._cache: dict[NodeKey, int | None] = {}
        self._leaf_count: int | None = None  # read once per store (this transaction), kept by `commit`

    def preload_paths(self, indexes: list[int]) -> None:
        """Read the siblings on the paths of these leaves in one query (a re-issue touches a few leaves and
        would otherwise read its 20 siblings one by one). Cleared by `commit`."""
        wanted: set[NodeKey] = set()
        for index in indexes:
            i = index
            for level in range(TREE_DEPTH):
                wanted.add((level, i ^ 1))
                i >>= 1
        if not wanted or len(wanted) > 400:
            return
        keys = sorted(wanted)
        params: dict[str, object] = {"tenant": self.tenant}
        for n, (level, idx) in enumerate(keys):
            params[f"l{n}"], params[f"i{n}"] = level, idx
        self._cache = {key: None for key in keys}
        for level, idx, value in self.conn.execute(_sibling_query(len(keys)), params):
            self._cache[(int(level), int(idx))] = int.from_bytes(value, "big")

    def bind_depth(self, depth: int) -> None:
        if depth != TREE_DEPTH:
            raise MalformedInput(f"the credential tree has depth {TREE_DEPTH}, not {depth}")

    def node(self, level: int, index: int) -> int | None:
        if (level, index) in self._cache:
            return self._cache[(level, index)]
        value = self.conn.execute(
            sa.select(nodes_t.c.value).where(
                nodes_t.c.tenant == self.tenant, nodes_t.c.level == level, nodes_t.c.idx == index
            )
        ).scalar_one_or_none()
        return None if value is None else int.from_bytes(value, "big")

    def leaf_count(self) -> int:
        if self._leaf_count is None:
            count = self.conn.execute(
                sa.select(roots_t.c.leaf_count).where(roots_t.c.tenant == self.tenant)
                .order_by(roots_t.c.id.desc()).limit(1)
            ).scalar_one_or_none()
            self._leaf_count = int(count or 0)
        return self._leaf_count

    def recent_roots(self, limit: int) -> list[int]:
        rows = self.conn.execute(
            sa.select(roots_t.c.root).where(roots_t.c.tenant == self.tenant).order_by(roots_t.c.id.desc()).limit(limit)
        ).scalars().all()
        return [int(r) for r in reversed(rows)]

    def commit(self, nodes: Mapping[NodeKey, int | None], leaf_count: int, root: int) -> None:
        self._cache = {}
        self._leaf_count = leaf_count
        puts = [
            {"tenant": self.tenant, "level": lv, "idx": i, "value": v.to_bytes(32, "big")}
            for (lv, i), v in nodes.items()
            if v is not None
        ]
        dels = [(lv, i) for (lv, i), v in nodes.items() if v is None]
        dialect = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        for start in range(0, len(puts), _BATCH):
            stmt = dialect.insert(nodes_t)
            stmt = stmt.on_conflict_do_update(
                index_elements=[nodes_t.c.tenant, nodes_t.c.level, nodes_t.c.idx],
                set_={"value": stmt.excluded.value},
            )
            self.conn.execute(stmt, puts[start : start + _BATCH])
        for level, index in dels:
            self.conn.execute(
                sa.delete(nodes_t).where(
                    nodes_t.c.tenant == self.tenant, nodes_t.c.level == level, nodes_t.c.idx == index
                )
            )
        result = self.conn.execute(
            sa.insert(roots_t).values(tenant=self.tenant, root=str(root), leaf_count=leaf_count, created_at=0.0)
        )
        self.last_root_id = int(result.inserted_primary_key[0])  # type: ignore[index]


@lru_cache(maxsize=64)
def _sibling_query(count: int) -> sa.TextClause:
    """`count` primary-key lookups in one statement (UNION ALL): SQLite's planner turns a row-value IN or an
    OR over levels into a scan of every node of the tenant; each term here is an index search."""
    terms = [
        f"SELECT level, idx, value FROM research_tree_nodes WHERE tenant = :tenant AND level = :l{n} AND idx = :i{n}"
        for n in range(count)
    ]
    return sa.text(" UNION ALL ".join(terms))


def credential_tree(conn: Connection, tenant: str) -> tuple[PoseidonMerkleTree, SqlNodeStore]:
    store = SqlNodeStore(conn, tenant)
    return PoseidonMerkleTree(TREE_DEPTH, store, root_history_size=ROOT_HISTORY), store


@dataclass(frozen=True)
class RootRecord:
    """One root of the tree, and the outbox item anchoring it (None: nothing to anchor, an empty tree)."""

    root: int
    leaf_count: int
    anchor_item: int | None


def known_roots(conn: Connection, tenant: str, limit: int = ROOT_HISTORY) -> list[RootRecord]:
    """The last `limit` roots, newest first (the window CredentialRegistry.isKnownRoot accepts)."""
    rows = conn.execute(
        sa.select(roots_t.c.root, roots_t.c.leaf_count, roots_t.c.anchor_item)
        .where(roots_t.c.tenant == tenant)
        .order_by(roots_t.c.id.desc())
        .limit(limit)
    ).all()
    return [RootRecord(int(r.root), int(r.leaf_count), r.anchor_item) for r in rows]
