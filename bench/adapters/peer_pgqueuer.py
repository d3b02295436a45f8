"""PgQueuer (peer on PostgreSQL, bench/.venv-pgpeers), driven as its README shows.

Its tables are installed (``Queries.install()``) in the measurement's own schema, on the
server in ``BENCH_PG_URL``; the jobs are enqueued untimed with ``Queries.enqueue`` (lists
of 1,000), then ``pgq run app:main`` drains them: an asyncpg connection, one
``@pgq.entrypoint`` whose async handler does nothing, every setting at its default. Only
the worker workload is measured.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, ClassVar

from .base import Adapter as Base
from .base import Unsupported, make_payload
from .pg import POLL_INTERVAL, in_schema, pg_url, schema_for, server_version, split_options

# As its examples/consumer.py: a factory that is an async context manager.
_APP = """
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job


@asynccontextmanager
async def main():
    connection = await asyncpg.connect({dsn!r}, server_settings={settings!r})
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("handle")
    async def handle(job: Job) -> None:
        pass

    try:
        yield pgq
    finally:
        await connection.close()
"""


class Adapter(Base):
    name = "pgqueuer"
    package = "pgqueuer"
    at_least_once = "yes"
    semantics = (
        "FOR UPDATE SKIP LOCKED claims in batches (10 by default), heartbeats, a job whose "
        "worker stops beating is picked again; acknowledgements buffered and written in "
        "groups (a job leaves its table for the log table when its group is flushed)"
    )
    how: ClassVar[dict[str, str]] = {
        "worker": "`pgq run app:main`: asyncpg connection, one async no-op entrypoint, "
        "defaults (batch size 10, no concurrency limit); jobs enqueued with "
        "Queries.enqueue, 1,000 a call",
    }

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        import psycopg

        self.schema = schema_for(workdir)
        self.url = in_schema(pg_url(), self.schema)
        self.conn = psycopg.connect(self.url, autocommit=True)
        self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        asyncio.run(self._queries(lambda q: q.install()))

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        return f"{version('pgqueuer')} (asyncpg {version('asyncpg')}) on {server_version()}"

    async def _queries(self, fn: Any) -> Any:
        """Run ``fn(Queries)`` on an asyncpg connection of this schema."""
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        dsn, settings = split_options(self.url)
        conn = await asyncpg.connect(dsn, server_settings=settings)
        try:
            return await fn(Queries(AsyncpgDriver(conn)))
        finally:
            await conn.close()

    def prefill(self, n: int) -> None:
        async def enqueue(q: Any) -> None:
            for lo in range(0, n, 1000):
                count = min(n, lo + 1000) - lo
                payloads = [make_payload(i).encode() for i in range(lo, lo + count)]
                await q.enqueue(["handle"] * count, payloads, [0] * count)

        asyncio.run(self._queries(enqueue))

    def remaining(self) -> int:
        """Jobs not yet done: a job stays in its table until its acknowledgement is flushed."""
        row = self.conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
        return int(row[0]) if row else 0

    def run_worker(self, n: int, cap: float, processes: int, concurrency: int) -> dict[str, Any]:
        if processes != 1:
            raise Unsupported("measured with one worker process")
        self.prefill(n)
        dsn, settings = split_options(self.url)
        self._script("pgqapp.py", _APP.format(dsn=dsn, settings=settings))
        argv = [sys.executable, "-m", "pgqueuer", "run", "pgqapp:main"]
        return self._drain_with(argv, self.remaining, n, cap, interval=POLL_INTERVAL)

    def smoke(self) -> None:
        out = self.run_worker(20, 10.0, 1, 4)
        if out.get("done") != 20:
            raise RuntimeError(f"its worker did not run the 20 jobs: {out}")

    def files(self) -> list[str]:
        return []

    def size_parts(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        self.conn.close()
