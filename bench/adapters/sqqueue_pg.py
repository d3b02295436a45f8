"""sqqueue's PostgreSQL backend (PostgresQueue, src/sqqueue) in the project's .venv.

The server is the one in ``BENCH_PG_URL`` (see adapters/pg.py); the queue's tables go in a
schema of their own for each measurement. Everything else is the SQLite adapter's.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Adapter as Base
from .pg import pg_url, schema_for, server_version
from .sqqueue_current import Adapter as SQLiteAdapter


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

    def files(self) -> list[str]:
        return []

    def size_parts(self) -> tuple[int, int]:
        return 0, 0
