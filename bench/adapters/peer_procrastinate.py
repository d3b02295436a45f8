"""procrastinate (peer on PostgreSQL, bench/.venv-pgpeers), driven as its docs show.

Its schema is applied (``app.schema_manager.apply_schema()``) in the measurement's own
schema (first on the search path), on the server in ``BENCH_PG_URL``; the jobs are deferred
untimed with ``batch_defer`` (1,000 a call), then ``procrastinate --app=app.app worker
--concurrency 4`` runs them: a ``PsycopgConnector``, one async task that does nothing,
every other setting at its default. Only the worker workload is measured.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from .base import Adapter as Base
from .base import Unsupported, make_payload
from .pg import POLL_INTERVAL, in_schema, pg_url, schema_for, server_version

_APP = """
from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo={url!r}))


@app.task(name="handle")
async def handle(payload):
    pass
"""


class Adapter(Base):
    name = "procrastinate"
    package = "procrastinate"
    at_least_once = "yes"
    semantics = (
        "one job fetched per call (a function with FOR UPDATE SKIP LOCKED), its status "
        "set when it ends; jobs of a worker that stops its heartbeat can be retried; "
        "finished jobs stay in the table (its default)"
    )
    how: ClassVar[dict[str, str]] = {
        "worker": "`procrastinate --app=app.app worker --concurrency 4`: PsycopgConnector, "
        "one async no-op task, other settings default; jobs deferred with batch_defer, "
        "1,000 a call",
    }

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        import psycopg

        self.schema = schema_for(workdir)
        self.url = in_schema(pg_url(), self.schema)
        self.conn = psycopg.connect(self.url, autocommit=True)
        self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        self._script("procapp.py", _APP.format(url=self.url))
        sys.path.insert(0, self.workdir)
        import procapp  # type: ignore[import-not-found]

        self.app = procapp.app.open()
        self.task = procapp.handle
        self.app.schema_manager.apply_schema()

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        return f"{version('procrastinate')} (psycopg {version('psycopg')}) on {server_version()}"

    def prefill(self, n: int) -> None:
        for lo in range(0, n, 1000):
            self.task.batch_defer(
                *[{"payload": make_payload(i)} for i in range(lo, min(n, lo + 1000))]
            )

    def remaining(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        ).fetchone()
        return int(row[0]) if row else 0

    def run_worker(self, n: int, cap: float, processes: int, concurrency: int) -> dict[str, Any]:
        if processes != 1:
            raise Unsupported("measured with one worker process")
        self.prefill(n)
        argv = [sys.executable, "-m", "procrastinate", "--app=procapp.app", "worker",
                "--concurrency", str(concurrency)]  # fmt: skip
        return self._drain_with(argv, self.remaining, n, cap, interval=POLL_INTERVAL,
                                env={"PYTHONPATH": os.pathsep.join(filter(None, [self.workdir, os.environ.get("PYTHONPATH")]))})  # fmt: skip

    def smoke(self) -> None:
        out = self.run_worker(20, 10.0, 1, 4)
        if out.get("done") != 20:
            raise RuntimeError(f"its worker did not run the 20 jobs: {out}")

    def files(self) -> list[str]:
        return []

    def size_parts(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        self.app.close()
        self.conn.close()
