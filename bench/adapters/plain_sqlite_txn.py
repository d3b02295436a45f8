"""Plain sqlite3 with every statement in its own ``BEGIN IMMEDIATE ... COMMIT``.

The benchmark's former reference, kept as a labelled second subject so that earlier
reports' ratios can be read against it: the same table, index and statements as
plain_sqlite.py (the least work, the reference every ratio is taken against), but each
write wrapped in an explicit transaction, run through a Python callback. Measured on the
one-by-one and batch workloads only.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from . import plain_sqlite as least
from .plain_sqlite import Adapter as Least


class Adapter(Least):
    name = "sqlite3-txn"
    semantics = (
        "the former reference: the least-work shape, but every statement in its own "
        "BEGIN IMMEDIATE ... COMMIT through a Python callback"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue": "BEGIN IMMEDIATE; INSERT; COMMIT",
        "dequeue": "BEGIN IMMEDIATE; claim UPDATE ... RETURNING; COMMIT, then BEGIN "
        "IMMEDIATE; DELETE; COMMIT",
        "enqueue_batch": "executemany INSERT, one transaction",
        "dequeue_batch": "claim UPDATE ... LIMIT 100 RETURNING and executemany DELETE, each "
        "in BEGIN IMMEDIATE ... COMMIT",
        "claim_batch": "claim UPDATE ... LIMIT 100 RETURNING in BEGIN IMMEDIATE ... COMMIT",
        "wait": "none",
        "fill": "executemany INSERT of 1,000",
        "stats": "SELECT count(*) ... WHERE status = 0",
    }

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
        return self._write(lambda c: c.execute(least.INSERT, (payload,))) is not None

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        rows = [(p,) for p in payloads]
        return self._write(lambda c: c.executemany(least.INSERT, rows)) is not None

    def _claim(self, n: int) -> list[tuple[int, str]]:
        until = time.time() + least.LEASE
        if n == 1:
            rows = self._write(lambda c: c.execute(least.CLAIM_ONE, (until,)).fetchall())
        else:
            rows = self._write(lambda c: c.execute(least.CLAIM, (until, n)).fetchall())
        return rows or []

    def dequeue_ack(self) -> str | None:
        rows = self._claim(1)
        if not rows:
            return None
        ident, payload = rows[0]
        self._write(lambda c: c.execute(least.DELETE, (ident,)))
        return payload

    def dequeue_batch_ack(self, n: int) -> list[str]:
        rows = self._claim(n)
        if rows:
            ids = [(r[0],) for r in rows]
            self._write(lambda c: c.executemany(least.DELETE, ids))
        return [r[1] for r in rows]

    def claim_batch(self, n: int) -> int:
        return len(self._claim(n))
