"""Plain sqlite3 doing the least work a queue on SQLite can do: the reference for ratios.

One table (rowid, payload, status, lease expiry) with the one index a claim needs (the
pending rows, by id), WAL and synchronous=NORMAL like sqqueue. The connection is in
autocommit mode, so where one statement does the whole job it is its own transaction,
with nothing around it:

* enqueue: one ``INSERT``;
* dequeue + ack: one claim ``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING``,
  then one ``DELETE``;
* batches: one ``executemany`` inside one ``BEGIN IMMEDIATE ... COMMIT`` (the claim of a
  batch is one ``UPDATE ... LIMIT 100 RETURNING`` statement).

A single statement takes the write lock when it starts, as ``BEGIN IMMEDIATE`` would, and
waits for a busy lock up to the 30 s busy timeout, so several processes can share the
file. There is no redelivery logic: a shape, not a queue library.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import BARRIER
from .base import Adapter as Base

CREATE = """
CREATE TABLE IF NOT EXISTS q (
    id          INTEGER PRIMARY KEY,
    payload     TEXT NOT NULL,
    status      INTEGER NOT NULL DEFAULT 0,  -- 0 pending, 1 claimed
    lease_until REAL
)"""
# The index a claim needs to find the oldest pending row in O(log n) at any depth.
INDEX = "CREATE INDEX IF NOT EXISTS q_pending ON q (id) WHERE status = 0"
INSERT = "INSERT INTO q (payload) VALUES (?)"
# One row: "id = (subquery)": on this schema SQLite ran "id IN (subquery LIMIT 1)" about
# half as fast (measured while writing this benchmark).
CLAIM_ONE = """
UPDATE q SET status = 1, lease_until = ?
 WHERE id = (SELECT id FROM q WHERE status = 0 ORDER BY id LIMIT 1)
RETURNING id, payload"""
CLAIM = """
UPDATE q SET status = 1, lease_until = ?
 WHERE id IN (SELECT id FROM q WHERE status = 0 ORDER BY id LIMIT ?)
RETURNING id, payload"""
DELETE = "DELETE FROM q WHERE id = ?"
LEASE = 300.0

# A worker process as a user of plain sqlite3 would write it: claim, (no-op), delete, one
# message at a time; a short sleep when the queue is empty. Stopped by SIGTERM.
_WORKER = """
import sys, time
sys.path.insert(0, {bench!r})
from adapters.plain_sqlite import Adapter

queue = Adapter({workdir!r})
{barrier}
while True:
    if queue.dequeue_ack() is None:
        time.sleep(0.001)
"""


class Adapter(Base):
    name = "sqlite3"
    package = "stdlib"
    at_least_once = "baseline"
    semantics = (
        "reference shape only, the least work: each single statement in autocommit (INSERT; "
        "claim UPDATE ... RETURNING; DELETE), batches in one transaction; atomic claim, "
        "no redelivery, no queue features"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue": "one INSERT, autocommit",
        "dequeue": "claim UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING, then DELETE; "
        "each a statement in autocommit",
        "enqueue_batch": "executemany INSERT, one transaction",
        "dequeue_batch": "claim UPDATE ... LIMIT 100 RETURNING (autocommit), then executemany "
        "DELETE in one transaction",
        "claim_batch": "claim UPDATE ... LIMIT 100 RETURNING",
        "wait": "none",
        "fill": "executemany INSERT of 1,000",
        "stats": "SELECT count(*) ... WHERE status = 0",
        "worker": "a process looping claim + DELETE one message at a time (the dequeue above)",
        "producers": "each thread its own connection, one INSERT per message",
    }
    shared_across_threads = False  # a sqlite3 connection belongs to the thread that made it

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.path = os.path.join(workdir, "plain.db")
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute(CREATE)
        self.conn.execute(INDEX)

    @classmethod
    def version(cls) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def _one(self, sql: str, params: tuple[Any, ...]) -> list[Any] | None:
        """One statement in autocommit: its rows, or None if it failed."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._error(exc)
            return None

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> bool:
        """``executemany`` inside one transaction."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(sql, rows)
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._error(exc)
            return False
        return True

    def enqueue(self, payload: str) -> bool:
        return self._one(INSERT, (payload,)) is not None

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        return self._many(INSERT, [(p,) for p in payloads])

    def dequeue_ack(self) -> str | None:
        rows = self._one(CLAIM_ONE, (time.time() + LEASE,))
        if not rows:
            return None
        ident, payload = rows[0]
        self._one(DELETE, (ident,))
        return payload  # type: ignore[no-any-return]

    def dequeue_batch_ack(self, n: int) -> list[str]:
        rows = self._one(CLAIM, (time.time() + LEASE, n)) or []
        if rows:
            self._many(DELETE, [(r[0],) for r in rows])
        return [r[1] for r in rows]

    def claim_batch(self, n: int) -> int:
        return len(self._one(CLAIM, (time.time() + LEASE, n)) or [])

    def stats(self) -> Any:
        return self.conn.execute("SELECT count(*) FROM q WHERE status = 0").fetchone()[0]

    def remaining(self) -> int:
        """Messages not yet deleted (pending or claimed)."""
        return int(self.conn.execute("SELECT count(*) FROM q").fetchone()[0])

    def run_worker(self, n: int, cap: float, processes: int, concurrency: int) -> dict[str, Any]:
        self.prefill(n)
        bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        script = self._script(
            "plainworker.py", _WORKER.format(bench=bench, workdir=self.workdir, barrier=BARRIER)
        )
        return self._drain_with(
            [sys.executable, script], self.remaining, n, cap, processes=processes, barrier=True
        )

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        self.conn.close()
