"""sqqueue's PostgreSQL backend (PostgresQueue, src/sqqueue) in the project's .venv.

The server is the one in ``BENCH_PG_URL`` (see adapters/pg.py); the queue's tables go in a
schema of their own for each measurement. Everything else is the SQLite adapter's.
"""

from __future__ import annotations

from typing import ClassVar

from .base import BARRIER
from .base import Adapter as Base
from .pg import POLL_INTERVAL, pg_url, schema_for, server_version
from .sqqueue_current import Adapter as SQLiteAdapter

# A worker process: the queue with its default settings, a no-op handler, until SIGTERM.
_WORKER_APP = """
from sqqueue import PostgresQueue, Worker

queue = PostgresQueue({url!r}, "bench", schema={schema!r})


def handle(message):
    pass

{barrier}
Worker(queue, handle, concurrency={concurrency}).run()
"""


class Adapter(SQLiteAdapter):
    name = "sqqueue-pg"
    package = "sqqueue"
    at_least_once = "yes"
    semantics = (
        "leases with automatic redelivery on expiry, fenced acks, atomic claim "
        "(FOR UPDATE SKIP LOCKED), LISTEN/NOTIFY wake-ups; one transaction per call on a "
        "pooled connection, a single statement for enqueue, dequeue and complete"
    )
    how: ClassVar[dict[str, str]] = {
        **SQLiteAdapter.how,
        "wait": "dequeue(wait=...): LISTEN/NOTIFY, polling every 1 s as the fallback",
    }
    cross_process_wait = "dequeue(wait=...)"
    poll_interval = POLL_INTERVAL

    def __init__(self, workdir: str) -> None:  # not the SQLite adapter's queue: Base only
        Base.__init__(self, workdir)
        from sqqueue import PostgresQueue

        self.schema = schema_for(workdir)
        # Settings spelled out so no SQQUEUE_* variable or config file changes them.
        self.q = PostgresQueue(  # type: ignore[assignment]
            pg_url(),
            "bench",
            schema=self.schema,
            vacuum_threshold=1000,
            default_visibility_timeout=300.0,
            lock_timeout=30.0,
        )

    @classmethod
    def version(cls) -> str:
        return f"{super().version()} on {server_version()}"

    def worker_app(self, concurrency: int) -> str:
        return _WORKER_APP.format(
            url=pg_url(), schema=self.schema, barrier=BARRIER, concurrency=concurrency
        )

    def files(self) -> list[str]:
        return []

    def size_parts(self) -> tuple[int, int]:
        return 0, 0
