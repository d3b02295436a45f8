"""Plain SQL on PostgreSQL (psycopg 3): the least work a queue there can do, as the
reference for sqqueue-pg's ratios.

One table (identity id, payload, status, lease expiry) with a partial index on the pending
rows, in the measurement's own schema on the same server as sqqueue-pg. The connection is
in autocommit mode, so a single statement is a whole transaction (one round trip), and
every operation is one statement:

* enqueue: one ``INSERT``;
* dequeue + ack: a claim ``WITH c AS (SELECT id ... ORDER BY id LIMIT 1 FOR UPDATE SKIP
  LOCKED) UPDATE ... RETURNING``, then a ``DELETE``;
* batches: one ``INSERT ... SELECT unnest(%s)`` of the 100 payloads; the claim with
  ``LIMIT 100``, then one ``DELETE ... WHERE id = ANY(%s)`` (2-3 times the rate of an
  ``executemany`` of single statements in one transaction, though psycopg pipelines it);
* waiting (wake-up test only): ``LISTEN`` on a second connection; the producer's INSERT
  carries a ``pg_notify`` in the same statement.

There is no redelivery logic, no counts, no priorities: a shape, not a queue library.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import BARRIER
from .base import Adapter as Base
from .pg import POLL_INTERVAL, pg_url, schema_for, server_version

_CREATE = """
CREATE TABLE IF NOT EXISTS q (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload     TEXT NOT NULL,
    status      SMALLINT NOT NULL DEFAULT 0,  -- 0 pending, 1 claimed
    lease_until DOUBLE PRECISION
)"""
# The index a claim needs to find the oldest pending row in O(log n) at any depth.
_INDEX = "CREATE INDEX IF NOT EXISTS q_pending ON q (id) WHERE status = 0"
_INSERT = "INSERT INTO q (payload) VALUES (%s)"
_INSERT_MANY = "INSERT INTO q (payload) SELECT unnest(%s::text[])"
_INSERT_NOTIFY = """
WITH i AS (INSERT INTO q (payload) VALUES (%s) RETURNING id)
SELECT pg_notify(%s, '') FROM i"""
_CLAIM = """
WITH c AS (SELECT id FROM q WHERE status = 0 ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE q SET status = 1, lease_until = %s FROM c WHERE q.id = c.id
RETURNING q.id, q.payload"""
_DELETE = "DELETE FROM q WHERE id = %s"
_DELETE_MANY = "DELETE FROM q WHERE id = ANY(%s)"

# A worker process as a user of plain psycopg would write it: claim, (no-op), delete, one
# message at a time; a short sleep when the queue is empty. Stopped by SIGTERM.
_WORKER = """
import sys, time
sys.path.insert(0, {bench!r})
from adapters.plain_pg import Adapter

queue = Adapter({workdir!r})
{barrier}
while True:
    if queue.dequeue_ack() is None:
        time.sleep(0.001)
"""


class Adapter(Base):
    name = "plain-pg"
    package = "psycopg"
    at_least_once = "baseline"
    semantics = "reference shape only: atomic claim (SKIP LOCKED), no redelivery, no queue features"
    how: ClassVar[dict[str, str]] = {
        "enqueue_batch": "one INSERT ... SELECT unnest(payloads)",
        "dequeue_batch": "claim ... LIMIT 100 ... UPDATE RETURNING, then one DELETE ... "
        "WHERE id = ANY(ids)",
        "claim_batch": "claim ... LIMIT 100 ... UPDATE RETURNING",
        "wait": "LISTEN on a second connection; INSERT + pg_notify in one statement",
        "fill": "INSERT ... unnest of 1,000",
        "stats": "SELECT count(*) ... WHERE status = 0",
        "worker": "a process looping claim + DELETE one message at a time (the dequeue above)",
        "producers": "each thread its own connection, one INSERT per message",
    }
    cross_process_wait = "LISTEN/NOTIFY"
    shared_across_threads = False  # a connection runs one statement at a time

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        import psycopg

        self._psycopg = psycopg
        self.url = pg_url()
        self.schema = schema_for(workdir)
        self.channel = self.schema
        self.listener: Any = None
        self.conn = psycopg.connect(self.url, autocommit=True)
        # Several processes open the same schema: one creates it, under a lock.
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.schema,))
            self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            self.conn.execute(f'SET search_path TO "{self.schema}"')
            self.conn.execute(_CREATE)
            self.conn.execute(_INDEX)

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        return f"psycopg {version('psycopg')} on {server_version()}"

    def _do(self, fn: Any) -> Any:
        try:
            return fn(self.conn)
        except self._psycopg.Error as exc:
            self._error(exc)
            return None

    def enqueue(self, payload: str) -> bool:
        return self._do(lambda c: c.execute(_INSERT, (payload,))) is not None

    def enqueue_wake(self, payload: str) -> bool:
        return self._do(lambda c: c.execute(_INSERT_NOTIFY, (payload, self.channel))) is not None

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        return self._do(lambda c: c.execute(_INSERT_MANY, (list(payloads),))) is not None

    def _claim(self, n: int) -> list[tuple[int, str]]:
        until = time.time() + 300.0
        rows = self._do(lambda c: c.execute(_CLAIM, (n, until)).fetchall())
        return sorted(rows) if rows else []

    def dequeue_ack(self) -> str | None:
        rows = self._claim(1)
        if not rows:
            return None
        ident, payload = rows[0]
        self._do(lambda c: c.execute(_DELETE, (ident,)))
        return payload

    def dequeue_batch_ack(self, n: int) -> list[str]:
        rows = self._claim(n)
        if rows:
            self._do(lambda c: c.execute(_DELETE_MANY, ([r[0] for r in rows],)))
        return [r[1] for r in rows]

    def claim_batch(self, n: int) -> int:
        return len(self._claim(n))

    def wait_dequeue_ack(self, timeout: float) -> str | None:
        if self.listener is None:
            self.listener = self._psycopg.connect(self.url, autocommit=True)
            self.listener.execute(f'LISTEN "{self.channel}"')
        deadline = time.monotonic() + timeout
        while True:
            p = self.dequeue_ack()  # after LISTEN: a later insert's notification is queued
            remaining = deadline - time.monotonic()
            if p is not None or remaining <= 0:
                return p
            for _ in self.listener.notifies(timeout=remaining, stop_after=1):
                pass

    def stats(self) -> Any:
        row = self.conn.execute("SELECT count(*) FROM q WHERE status = 0").fetchone()
        return row[0] if row else None

    def remaining(self) -> int:
        """Messages not yet deleted (pending or claimed)."""
        row = self.conn.execute("SELECT count(*) FROM q").fetchone()
        return int(row[0]) if row else 0

    def run_worker(self, n: int, cap: float, processes: int, concurrency: int) -> dict[str, Any]:
        self.prefill(n)
        bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        script = self._script(
            "plainworker.py", _WORKER.format(bench=bench, workdir=self.workdir, barrier=BARRIER)
        )
        return self._drain_with([sys.executable, script], self.remaining, n, cap,
                                processes=processes, barrier=True, interval=POLL_INTERVAL)  # fmt: skip

    def files(self) -> list[str]:
        return []

    def size_parts(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        for c in (self.listener, self.conn):
            if c is not None:
                c.close()
