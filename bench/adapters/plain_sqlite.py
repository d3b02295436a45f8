"""Plain sqlite3: the least work a queue on SQLite can do, as the reference for ratios.

One table (rowid, payload, status, lease expiry) with a partial index on the pending
rows (what a claim needs to stay cheap at any depth), WAL and
synchronous=NORMAL like sqqueue. Enqueue is one INSERT per transaction; dequeue is a claim
``UPDATE ... RETURNING`` in one transaction and a ``DELETE`` in another; batches use one
``executemany`` per batch. Every write is ``BEGIN IMMEDIATE`` with a 30 s busy timeout, so
several processes can share it; there is no redelivery logic.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import Adapter as Base

_CREATE = """
CREATE TABLE IF NOT EXISTS q (
    id          INTEGER PRIMARY KEY,
    payload     TEXT NOT NULL,
    status      INTEGER NOT NULL DEFAULT 0,  -- 0 pending, 1 claimed
    lease_until REAL
)"""
# The index a claim needs to find the oldest pending row in O(log n) at any depth.
_INDEX = "CREATE INDEX IF NOT EXISTS q_pending ON q (id) WHERE status = 0"
_INSERT = "INSERT INTO q (payload) VALUES (?)"
# One row: "id = (subquery)": on this schema SQLite ran "id IN (subquery LIMIT 1)" about
# half as fast (measured while writing this benchmark).
_CLAIM_ONE = """
UPDATE q SET status = 1, lease_until = ?
 WHERE id = (SELECT id FROM q WHERE status = 0 ORDER BY id LIMIT 1)
RETURNING id, payload"""
_CLAIM = """
UPDATE q SET status = 1, lease_until = ?
 WHERE id IN (SELECT id FROM q WHERE status = 0 ORDER BY id LIMIT ?)
RETURNING id, payload"""
_DELETE = "DELETE FROM q WHERE id = ?"


class Adapter(Base):
    name = "sqlite3"
    package = "stdlib"
    at_least_once = "baseline"
    semantics = "reference shape only: atomic claim, no redelivery, no queue features"
    how: ClassVar[dict[str, str]] = {
        "enqueue_batch": "executemany INSERT, one transaction",
        "dequeue_batch": "claim UPDATE ... LIMIT 100 RETURNING, then executemany DELETE",
        "claim_batch": "claim UPDATE ... LIMIT 100 RETURNING",
        "wait": "none",
        "fill": "executemany INSERT of 1,000",
        "stats": "SELECT count(*) ... WHERE status = 0",
    }

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.path = os.path.join(workdir, "plain.db")
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self._write(lambda c: (c.execute(_CREATE), c.execute(_INDEX)))

    @classmethod
    def version(cls) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def _write(self, fn: Any) -> Any:
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                out = fn(c)
                c.execute("COMMIT")
                return out
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._error(exc)
            return None

    def enqueue(self, payload: str) -> bool:
        return self._write(lambda c: c.execute(_INSERT, (payload,))) is not None

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        rows = [(p,) for p in payloads]
        return self._write(lambda c: c.executemany(_INSERT, rows)) is not None

    def _claim(self, n: int) -> list[tuple[int, str]]:
        until = time.time() + 300.0
        if n == 1:
            rows = self._write(lambda c: c.execute(_CLAIM_ONE, (until,)).fetchall())
        else:
            rows = self._write(lambda c: c.execute(_CLAIM, (until, n)).fetchall())
        return rows or []

    def dequeue_ack(self) -> str | None:
        rows = self._claim(1)
        if not rows:
            return None
        ident, payload = rows[0]
        self._write(lambda c: c.execute(_DELETE, (ident,)))
        return payload  # type: ignore[no-any-return]

    def dequeue_batch_ack(self, n: int) -> list[str]:
        rows = self._claim(n)
        if rows:
            ids = [(r[0],) for r in rows]
            self._write(lambda c: c.executemany(_DELETE, ids))
        return [r[1] for r in rows]

    def claim_batch(self, n: int) -> int:
        return len(self._claim(n))

    def stats(self) -> Any:
        return self.conn.execute("SELECT count(*) FROM q WHERE status = 0").fetchone()[0]

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        self.conn.close()
