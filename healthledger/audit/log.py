"""The access log over the database: append in the caller's transaction, sequence, prove, verify.

Appending is one INSERT inside the transaction that made the access decision, so an entry commits
with the decision or not at all. A sequencer (`integrate`, run by the anchoring worker and before
proofs are served) then gives committed entries their leaf indexes and stores the Merkle nodes they
complete; this keeps the request path free of tree work and of a global lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, insert, select, text, union_all
from sqlalchemy.orm import Session

from healthledger.audit.entries import AccessEntry, decode_entry, encode_entry, entry_leaf_hash
from healthledger.audit.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    consistency_proof,
    inclusion_proof,
    peak_nodes,
    root_hash,
)
from healthledger.audit.models import AccessLogEntry, AuditCheckpoint, AuditHead, AuditNode
from healthledger.errors import NotFound

DEFAULT_LOG = "access"
_LOG = cast(Table, AccessLogEntry.__table__)
_NODES = cast(Table, AuditNode.__table__)
# Built once: a Core insert on the table (the ORM entity insert costs ~10x more per call on the request path).
_INSERT = insert(_LOG)
# The sequencer's writes (integrate): on SQLite for the driver's executemany, on PostgreSQL over arrays.
_SQLITE_SET_LEAF_INDEX = "UPDATE access_log SET leaf_index = ? WHERE id = ?"
_SQLITE_INSERT_NODE = "INSERT INTO audit_nodes (log_id, level, idx, hash) VALUES (?, ?, ?, ?)"
_PG_SET_LEAF_INDEX = text(
    "UPDATE access_log SET leaf_index = numbered.leaf_index"
    " FROM unnest(CAST(:leaf_indexes AS bigint[]), CAST(:row_ids AS bigint[])) AS numbered (leaf_index, row_id)"
    " WHERE access_log.id = numbered.row_id"
)
_PG_INSERT_NODES = text(
    "INSERT INTO audit_nodes (log_id, level, idx, hash)"
    " SELECT :log_id, level, idx, hash"
    " FROM unnest(CAST(:levels AS integer[]), CAST(:idxs AS bigint[]), CAST(:hashes AS bytea[])) AS node (level, idx, hash)"
)


def _row(entry: AccessEntry, log_id: str) -> dict[str, Any]:
    # recorded_at in UTC: SQLite keeps a datetime's wall-clock digits without its offset, so date
    # searches compare correctly only if every row is stored in one zone.
    return {
        "log_id": log_id,
        "body": encode_entry(entry),
        "recorded_at": entry.time.astimezone(UTC),
        "patient_pseudonym": entry.patient_pseudonym or None,
    }


def record_access(conn: Session | Connection, entry: AccessEntry, *, log_id: str = DEFAULT_LOG) -> int:
    """Append `entry` inside the caller's transaction (ORM session or Core connection); returns its row id.

    The leaf index comes later, from `integrate`.
    """
    result = conn.execute(_INSERT, _row(entry, log_id))
    return int(result.inserted_primary_key[0])  # type: ignore[attr-defined,index]


def record_accesses(
    conn: Session | Connection, entries: Sequence[AccessEntry], *, log_id: str = DEFAULT_LOG
) -> None:
    """Append several entries in one executemany INSERT, inside the caller's transaction.

    For a search that discloses (or withholds) many resources at once. Row ids, and so leaf order,
    follow the order of `entries`.
    """
    if not entries:
        return
    connection = conn.connection() if isinstance(conn, Session) else conn
    if connection.dialect.name == "sqlite":
        # On every request's path: the driver directly, in the text form SQLAlchemy's DateTime uses on
        # SQLite (SQLAlchemy's own statement handling cost more than the insert).
        connection.exec_driver_sql(SQLITE_INSERT, _driver_rows(entries, log_id, sqlite=True))
        return
    conn.execute(_INSERT, [_row(entry, log_id) for entry in entries])


SQLITE_INSERT = "INSERT INTO access_log (log_id, body, recorded_at, patient_pseudonym) VALUES (?, ?, ?, ?)"


def sqlite_time(moment: datetime) -> str:
    """`moment` as SQLAlchemy's DateTime stores it on SQLite: UTC, naive, microseconds."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _driver_rows(entries: Sequence[AccessEntry], log_id: str, *, sqlite: bool) -> list[tuple[Any, ...]]:
    """Parameters of the INSERT as the driver takes them (SQLite: the time as SQLAlchemy's DateTime stores it)."""
    return [(log_id, encode_entry(e), sqlite_time(e.time) if sqlite else e.time.astimezone(UTC),
             e.patient_pseudonym or None) for e in entries]


def commit_accesses_on_driver(conn: Connection, entries: Sequence[AccessEntry], *, log_id: str = DEFAULT_LOG) -> None:
    """Append `entries` and COMMIT, through the database driver of `conn` (group commit's leader, on every read).

    Commits whatever `conn`'s driver connection holds: a read's own transaction (PostgreSQL: read committed,
    nothing written) or none (SQLite: the read was rolled back first). A PostgreSQL read view, in autocommit
    (ResourceStore.reading), writes the group as one INSERT, atomic and committed by itself: no BEGIN and COMMIT
    round trips. On an error the driver's transaction is rolled back and the error raised.
    SQLAlchemy's statement and transaction handling, skipped here, cost as much as the INSERT and COMMIT
    themselves on this path; the caller's Connection is not used again for writing.
    """
    driver = conn.connection.driver_connection
    sqlite = conn.dialect.name == "sqlite"
    rows = _driver_rows(entries, log_id, sqlite=sqlite)
    try:
        cursor = driver.cursor()  # type: ignore[union-attr]
        try:
            if sqlite:
                cursor.executemany(SQLITE_INSERT, rows)
            elif not driver.autocommit:  # type: ignore[union-attr]
                cursor.executemany(_DRIVER_INSERT, rows)
            elif len(rows) <= _ONE_STATEMENT_ROWS:
                cursor.execute(_DRIVER_INSERT + _DRIVER_MORE_VALUES * (len(rows) - 1), [v for row in rows for v in row])
            else:
                with driver.transaction():  # type: ignore[union-attr]
                    cursor.executemany(_DRIVER_INSERT, rows)
        finally:
            cursor.close()
        driver.commit()  # type: ignore[union-attr]  # (in autocommit: nothing left to commit)
    except BaseException:
        driver.rollback()  # type: ignore[union-attr]
        raise


_DRIVER_INSERT = SQLITE_INSERT.replace("?", "%s")  # psycopg's placeholders
_DRIVER_MORE_VALUES = ", (%s, %s, %s, %s)"
_ONE_STATEMENT_ROWS = 2_000  # 8,000 parameters, far below PostgreSQL's 65,535 to a statement


class _CachedNodes:
    """A NodeReader over `audit_nodes` with a per-call cache; misses are fetched one at a time."""

    def __init__(self, session: Session, log_id: str) -> None:
        self._session = session
        self._log_id = log_id
        self._cache: dict[tuple[int, int], bytes] = {}

    def prefetch(self, keys: Iterable[tuple[int, int]]) -> None:
        """Fetch the nodes at `keys`, 100 point lookups to a query (UNION ALL): SQLite answers both
        `(level, idx) IN (VALUES ...)` and a long OR of equalities by scanning every node of the log."""
        wanted = [k for k in keys if k not in self._cache]
        for chunk_start in range(0, len(wanted), 100):
            lookups = [
                select(_NODES.c.level, _NODES.c.idx, _NODES.c.hash).where(
                    _NODES.c.log_id == self._log_id, _NODES.c.level == level, _NODES.c.idx == idx
                )
                for level, idx in wanted[chunk_start : chunk_start + 100]
            ]
            query = lookups[0] if len(lookups) == 1 else union_all(*lookups)
            for level, idx, h in self._session.connection().execute(query):
                self._cache[(level, idx)] = h

    def __call__(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self._cache:
            h = self._session.scalar(
                select(AuditNode.hash).where(
                    AuditNode.log_id == self._log_id, AuditNode.level == level, AuditNode.idx == index
                )
            )
            if h is None:
                raise NotFound(f"Merkle node {level}/{index} of log {self._log_id!r} is missing")
            self._cache[key] = h
        return self._cache[key]

    def put(self, level: int, index: int, h: bytes) -> None:
        self._cache[(level, index)] = h


@dataclass(frozen=True)
class TreeHead:
    log_id: str
    size: int
    root: bytes


def _head_row(session: Session, log_id: str, *, lock: bool) -> AuditHead | None:
    stmt = select(AuditHead).where(AuditHead.log_id == log_id)
    if lock:
        stmt = stmt.with_for_update()  # PostgreSQL serialises sequencers here; SQLite's writer lock does
    return session.scalar(stmt)


def tree_head(session: Session, *, log_id: str = DEFAULT_LOG) -> TreeHead:
    row = _head_row(session, log_id, lock=False)
    return TreeHead(log_id, 0, EMPTY_ROOT) if row is None else TreeHead(log_id, row.size, row.root)


def integrate(session: Session, now: datetime, *, log_id: str = DEFAULT_LOG, limit: int = 10_000) -> TreeHead:
    """Sequence up to `limit` committed, unsequenced entries (by row id) into the tree, in this transaction.

    The relay worker runs this for every entry, beside the web workers: rows are read, numbered and their nodes
    written through Core statements (the ORM's per-row objects and change tracking cost more than the rest).
    """
    head = _head_row(session, log_id, lock=True)  # (autoflushes entries added to the session but not written)
    if head is None:
        head = AuditHead(log_id=log_id, size=0, root=EMPTY_ROOT, updated_at=now)
        session.add(head)
        session.flush()
    conn = session.connection()
    pending = conn.execute(
        select(_LOG.c.id, _LOG.c.body)
        .where(_LOG.c.log_id == log_id, _LOG.c.leaf_index.is_(None))
        .order_by(_LOG.c.id)
        .limit(limit)
    ).all()
    if not pending:
        return TreeHead(log_id, head.size, head.root)
    nodes = _CachedNodes(session, log_id)
    nodes.prefetch(peak_nodes(head.size))  # one query for the frontier's nodes, not one per node
    frontier = MerkleFrontier.from_nodes(head.size, nodes)
    leaf_indexes: list[tuple[int, int]] = []  # (leaf index, row id)
    new_nodes: list[tuple[str, int, int, bytes]] = []  # (log id, level, index, hash)
    for row_id, body in pending:
        leaf_indexes.append((frontier.size, row_id))
        new_nodes.extend((log_id, level, idx, h) for level, idx, h in frontier.append(entry_leaf_hash(body)))
    if conn.dialect.name == "sqlite":
        # The driver directly, as record_accesses does: SQLAlchemy building each row's parameters cost ~8 us an entry.
        conn.exec_driver_sql(_SQLITE_SET_LEAF_INDEX, leaf_indexes)
        conn.exec_driver_sql(_SQLITE_INSERT_NODE, new_nodes)
    else:
        # PostgreSQL: one statement each, the rows as arrays (an executemany is a statement per row, ~25 us each).
        conn.execute(_PG_SET_LEAF_INDEX, {"leaf_indexes": [leaf for leaf, _ in leaf_indexes],
                                          "row_ids": [row_id for _, row_id in leaf_indexes]})
        conn.execute(_PG_INSERT_NODES, {"log_id": log_id, "levels": [n[1] for n in new_nodes],
                                        "idxs": [n[2] for n in new_nodes], "hashes": [n[3] for n in new_nodes]})
    _expire_leaf_indexes(session)
    head.size = frontier.size
    head.root = frontier.root()
    head.updated_at = now
    session.flush()
    return TreeHead(log_id, head.size, head.root)


def _expire_leaf_indexes(session: Session) -> None:
    """Entries this session already holds as objects reload their leaf index (set beneath the ORM, in Core)."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, AccessLogEntry):
            session.expire(obj, ["leaf_index"])


@dataclass(frozen=True)
class InclusionProof:
    log_id: str
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    root: bytes
    path: list[bytes]


def prove_inclusion(
    session: Session, entry_id: int, *, tree_size: int | None = None, log_id: str = DEFAULT_LOG
) -> InclusionProof:
    """Inclusion proof of a sequenced entry in the tree of `tree_size` (default: the current head)."""
    row = session.get(AccessLogEntry, entry_id)
    if row is None or row.log_id != log_id:
        raise NotFound("no such access-log entry")
    if row.leaf_index is None:
        raise NotFound("access-log entry is not sequenced yet")
    size = tree_head(session, log_id=log_id).size if tree_size is None else tree_size
    if not row.leaf_index < size:
        raise NotFound("access-log entry is not in a tree of that size")
    nodes = _CachedNodes(session, log_id)
    return InclusionProof(
        log_id=log_id,
        leaf_index=row.leaf_index,
        tree_size=size,
        leaf_hash=entry_leaf_hash(row.body),
        root=root_hash(size, nodes),
        path=inclusion_proof(row.leaf_index, size, nodes),
    )


def prove_consistency(session: Session, size1: int, size2: int, *, log_id: str = DEFAULT_LOG) -> list[bytes]:
    if size2 > tree_head(session, log_id=log_id).size:
        raise NotFound("tree size beyond the current head")
    return consistency_proof(size1, size2, _CachedNodes(session, log_id))


def checkpoint(session: Session, now: datetime, *, log_id: str = DEFAULT_LOG) -> AuditCheckpoint | None:
    """Sequence what is pending and record the head as a checkpoint to anchor; None if nothing new."""
    head = integrate(session, now, log_id=log_id)
    last = session.scalar(
        select(AuditCheckpoint).where(AuditCheckpoint.log_id == log_id).order_by(AuditCheckpoint.size.desc()).limit(1)
    )
    if head.size == 0 or (last is not None and last.size >= head.size):
        return None
    cp = AuditCheckpoint(log_id=log_id, size=head.size, root=head.root, created_at=now)
    session.add(cp)
    session.flush()
    return cp


# ---------------------------------------------------------------------------------------------------
# Verification: recompute everything from stored entries and compare with anchored heads.


@dataclass(frozen=True)
class Anchor:
    """A tree head attested elsewhere (on-chain): the log had `root` when it had `size` leaves."""

    size: int
    root: bytes
    where: str = ""  # e.g. "block 123 tx 0xabc"


@dataclass(frozen=True)
class Problem:
    kind: str  # altered | missing | reordered | truncated | anchor-mismatch | unknown-leaf
    message: str
    leaf_index: int | None = None
    entry_id: int | None = None
    anchor: Anchor | None = None
    expected: bytes | None = None
    calculated: bytes | None = None


@dataclass(frozen=True)
class VerificationReport:
    entries_checked: int
    anchors_checked: int
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_log(session: Session, anchors: Sequence[Anchor], *, log_id: str = DEFAULT_LOG) -> VerificationReport:
    """Recompute the log from the database and check every anchor; report the first problem found.

    Leaves are recomputed from entry bodies; stored level-0 nodes (written when each entry was
    sequenced) let us name the first entry that was altered, removed or moved, while the anchors
    (which an attacker with the database cannot change) decide whether the log is intact at all.

    The search-index columns `patient_pseudonym` and `recorded_at` are outside the leaf, so they are
    checked against each body instead: a row moved out of a patient's index, or to another time, would
    vanish from AuditEvent searches while every hash still matched. Such a mismatch is reported as
    "altered" when nothing worse is found.
    """
    rows = session.execute(
        select(
            AccessLogEntry.id, AccessLogEntry.leaf_index, AccessLogEntry.body, AccessLogEntry.patient_pseudonym,
            AccessLogEntry.recorded_at,
        )
        .where(AccessLogEntry.log_id == log_id, AccessLogEntry.leaf_index.is_not(None))
        .order_by(AccessLogEntry.leaf_index)
    ).all()
    stored_leaves = dict(
        session.execute(select(AuditNode.idx, AuditNode.hash).where(AuditNode.log_id == log_id, AuditNode.level == 0)).all()
    )
    index_of_stored = {h: i for i, h in stored_leaves.items()}

    # First local inconsistency, if any: names the entry; anchors decide below.
    suspect: Problem | None = None
    index_problem: Problem | None = None  # a search-index column that disagrees with its body
    leaves: list[bytes] = []
    ids: list[int] = []
    for expected_index, (entry_id, leaf_index, body, pseudonym, recorded_at) in enumerate(rows):
        if leaf_index != expected_index:
            suspect = suspect or Problem(
                "missing", f"entry at leaf {expected_index} is missing (next present is leaf {leaf_index})",
                leaf_index=expected_index,
            )
            break
        h = entry_leaf_hash(body)
        if suspect is None and stored_leaves.get(leaf_index) != h:
            moved_from = index_of_stored.get(h)
            if moved_from is not None:
                suspect = Problem(
                    "reordered", f"entry {entry_id} sits at leaf {leaf_index} but was sequenced at leaf {moved_from}",
                    leaf_index=leaf_index, entry_id=entry_id,
                )
            else:
                suspect = Problem(
                    "altered", f"entry {entry_id} at leaf {leaf_index} does not match the hash recorded for it",
                    leaf_index=leaf_index, entry_id=entry_id, expected=stored_leaves.get(leaf_index), calculated=h,
                )
        if index_problem is None and (column := _index_mismatch(body, pseudonym, recorded_at)) is not None:
            index_problem = Problem(
                "altered", f"entry {entry_id} at leaf {leaf_index}: its {column} column does not match its body",
                leaf_index=leaf_index, entry_id=entry_id,
            )
        leaves.append(h)
        ids.append(entry_id)
    if index_problem is None:
        index_problem = _unsequenced_index_problem(session, log_id)

    frontier = MerkleFrontier()
    checked = 0
    previous_size = 0
    for anchor in sorted(anchors, key=lambda a: a.size):
        if anchor.size > len(leaves):
            where = suspect if suspect is not None else None
            return VerificationReport(
                len(leaves), checked,
                where or Problem(
                    "truncated",
                    f"anchored tree has {anchor.size} entries but the database holds {len(leaves)}",
                    leaf_index=len(leaves), anchor=anchor,
                ),
            )
        while frontier.size < anchor.size:
            frontier.append(leaves[frontier.size])
        root = frontier.root()
        checked += 1
        if root != anchor.root:
            if suspect is not None and suspect.leaf_index is not None and suspect.leaf_index < anchor.size:
                named = suspect
            else:
                named = Problem(
                    "altered", f"an entry between leaf {previous_size} and {anchor.size - 1} was changed",
                    leaf_index=previous_size,
                )
            return VerificationReport(
                len(leaves), checked,
                Problem(
                    named.kind, f"{named.message}; contradicts the anchor of size {anchor.size} {anchor.where}".rstrip(),
                    leaf_index=named.leaf_index, entry_id=named.entry_id, anchor=anchor,
                    expected=anchor.root, calculated=root,
                ),
            )
        previous_size = anchor.size
    return VerificationReport(len(leaves), checked, suspect or index_problem)


def _index_mismatch(body: bytes, pseudonym: str | None, recorded_at: datetime) -> str | None:
    """The search-index column of a row that disagrees with its body, or None when both agree."""
    try:
        entry = decode_entry(body)
    except (ValueError, KeyError, TypeError):
        return "patient_pseudonym"  # an undecodable body: its leaf hash check names it too
    if (pseudonym or "") != entry.patient_pseudonym:  # NULL column = no patient in the body
        return "patient_pseudonym"
    stored = recorded_at if recorded_at.tzinfo is not None else recorded_at.replace(tzinfo=UTC)  # SQLite: UTC
    if stored != entry.time:
        return "recorded_at"
    return None


def _unsequenced_index_problem(session: Session, log_id: str) -> Problem | None:
    """The first committed but not yet sequenced entry whose search-index columns disagree with its body."""
    rows = session.execute(
        select(AccessLogEntry.id, AccessLogEntry.body, AccessLogEntry.patient_pseudonym, AccessLogEntry.recorded_at)
        .where(AccessLogEntry.log_id == log_id, AccessLogEntry.leaf_index.is_(None))
        .order_by(AccessLogEntry.id)
    )
    for entry_id, body, pseudonym, recorded_at in rows:
        if (column := _index_mismatch(body, pseudonym, recorded_at)) is not None:
            return Problem(
                "altered", f"entry {entry_id} (not yet sequenced): its {column} column does not match its body",
                entry_id=entry_id,
            )
    return None
