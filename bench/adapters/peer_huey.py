"""huey's SQLite storage, huey.storage.SqliteStorage, used directly (peer, bench/.venv-peers).

Only the storage layer is measured (what a huey consumer calls to move task data), not
huey's task serialization or consumer process; except in the tasks workload, which runs
no-op tasks through huey's own consumer process.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from .base import Adapter as Base
from .base import Unsupported, make_payload

_TASK_APP = """
from huey import Huey
from huey.storage import SqliteStorage


class Storage(SqliteStorage):
    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("PRAGMA synchronous = NORMAL")  # as every subject (its default: FULL)
        return conn


huey = Huey("bench", storage_class=Storage, filename={path!r})


@huey.task()
def noop(n):
    pass


@huey.task()
def handle(payload):
    pass
"""


class Adapter(Base):
    name = "huey"
    package = "huey"
    at_least_once = "no"
    semantics = (
        "dequeue() deletes the row in the same transaction (at-most-once: a consumer "
        "that dies after dequeue loses the task); no ack"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue_batch": "emulated: loop of enqueue() (no batch API)",
        "dequeue_batch": "emulated: loop of dequeue()",
        "claim_batch": "n/a: no batch dequeue",
        "wait": "none (dequeue() returns None; consumers poll every 1 ms)",
        "fill": "its INSERT via executemany inside its own db(commit=True) transaction",
        "stats": "queue_size() (SELECT COUNT)",
        "tasks": "@huey.task() no-op, one call each; `huey_consumer` (1 thread worker)",
        "worker": "@huey.task() no-op taking the payload, one call each; `huey_consumer -w 4 "
        "-k thread` (its consumer with 4 worker threads), SqliteHuey storage with "
        "synchronous=NORMAL; a task leaves the queue when it is taken",
    }

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        from huey.storage import SqliteStorage

        self.path = os.path.join(workdir, "huey.db")
        self.s = SqliteStorage(name="bench", filename=self.path, timeout=30)
        # WAL is its default; its fsync option only offers FULL or OFF: set NORMAL.
        self.s.conn.execute("PRAGMA synchronous = NORMAL")

    def enqueue(self, payload: str) -> bool:
        try:
            self.s.enqueue(payload.encode())
            return True
        except Exception as exc:
            self._error(exc)
            return False

    def dequeue_ack(self) -> str | None:
        try:
            data = self.s.dequeue()
        except Exception as exc:
            self._error(exc)
            return None
        return None if data is None else bytes(data).decode()

    def fill(self, payloads: Any) -> None:
        for i in range(0, len(payloads), 1000):
            rows = [("bench", memoryview(p.encode()), 0) for p in payloads[i : i + 1000]]
            with self.s.db(commit=True) as curs:
                curs.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)

    def stats(self) -> Any:
        return self.s.queue_size()

    def _task_app(self) -> Any:
        """The huey app module (hueyapp.py in the work directory), imported."""
        import sys

        self._script("hueyapp.py", _TASK_APP.format(path=os.path.join(self.workdir, "tasks.db")))
        sys.path.insert(0, self.workdir)
        import hueyapp  # type: ignore[import-not-found]

        return hueyapp

    def _consume(self, app: Any, n: int, cap: float, threads: int) -> dict[str, Any]:
        import sys

        argv = [sys.executable, "-m", "huey.bin.huey_consumer", "hueyapp.huey"]
        return self._drain_with(
            [*argv, "-w", str(threads), "-k", "thread", "-q"], app.huey.storage.queue_size, n, cap
        )

    def run_tasks(self, n: int, cap: float) -> dict[str, Any]:
        app = self._task_app()
        for i in range(n):
            app.noop(i)  # enqueues (huey's call of a task)
        return self._consume(app, n, cap, threads=1)

    def run_worker(self, n: int, cap: float, processes: int, concurrency: int) -> dict[str, Any]:
        if processes != 1:
            raise Unsupported("measured with one consumer process")
        app = self._task_app()
        for i in range(n):
            app.handle(make_payload(i))
        return self._consume(app, n, cap, threads=concurrency)

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        self.s.close()
