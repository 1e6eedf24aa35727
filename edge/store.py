"""One SQLite connection shared by threads, serialised, with immediate write transactions."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


class SqliteStore:
    """A connection to the database at ``path`` (autocommit, 5 s busy timeout) with its schema applied.

    ``pragmas`` are run first (e.g. ``synchronous = FULL``); ``schema`` statements then run in one
    transaction, so they must be idempotent (``CREATE ... IF NOT EXISTS``).
    """

    def __init__(self, path: str | Path, schema: Iterable[str], pragmas: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 5000")
        for pragma in pragmas:
            self._conn.execute(f"PRAGMA {pragma}")
        with self._tx() as conn:
            for statement in schema:
                conn.execute(statement)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed at the end, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
