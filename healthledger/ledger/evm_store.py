"""py-evm's atomic key-value database over one SQLite file, so the embedded chain survives restarts.

py-evm 0.12 ships only an in-memory backend. This one keeps every trie node and chain record in a
`kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID` table (WAL mode). Writes accumulate in one open
SQLite transaction; the chain calls `commit()` after each mined block, so a crash loses at most the
block being built, never part of a block. Nothing is pruned (~40 KB per block).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eth.abc import AtomicWriteBatchAPI
from eth.db.atomic import AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB

from healthledger.data_dir import private_sqlite_file
from healthledger.errors import ConfigurationError


class SQLiteAtomicDB(BaseAtomicDB):
    """A BaseAtomicDB whose durable state is the last `commit()`; one connection shared under a lock."""

    def __init__(self, path: Path) -> None:
        private_sqlite_file(path)  # 0600 before SQLite opens it: its -wal and -shm get the same mode
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per block.
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"chain database {path} cannot be opened") from exc
        self._lock = threading.RLock()
        self._in_transaction = False

    # -- DatabaseAPI ---------------------------------------------------------------------------
    def __getitem__(self, key: bytes) -> bytes:
        with self._lock:
            row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._begin()
            self._conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def __delitem__(self, key: bytes) -> None:
        with self._lock:
            self._begin()
            deleted = self._conn.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount
        if not deleted:
            raise KeyError(key)

    def _exists(self, key: bytes) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        # py-evm's own batch keeps the diff in memory and applies it only if the block finishes.
        with AtomicDBWriteBatch._commit_unless_raises(self) as readable_batch:
            yield readable_batch

    # -- durability ----------------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._in_transaction:
            self._conn.execute("BEGIN")
            self._in_transaction = True

    def commit(self) -> None:
        """Make every write so far durable (called once per mined block)."""
        with self._lock:
            if self._in_transaction:
                self._conn.execute("COMMIT")
                self._in_transaction = False

    def rollback(self) -> None:
        """Drop writes since the last commit (a half-built block)."""
        with self._lock:
            if self._in_transaction:
                self._conn.execute("ROLLBACK")
                self._in_transaction = False

    def close(self) -> None:
        with self._lock:
            self.rollback()
            self._conn.close()
