"""huey's SQLite storage, huey.storage.SqliteStorage, used directly (peer, bench/.venv-peers).

Only the storage layer is measured (what a huey consumer calls to move task data), not
huey's task serialization or consumer process; except in the tasks workload, which runs
no-op tasks through huey's own consumer process.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from .base import Adapter as Base

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

    def run_tasks(self, n: int, cap: float) -> dict[str, Any]:
        import sys

        app = os.path.join(self.workdir, "hueyapp.py")
        with open(app, "w") as f:
            f.write(_TASK_APP.format(path=os.path.join(self.workdir, "tasks.db")))
        sys.path.insert(0, self.workdir)
        import hueyapp  # type: ignore[import-not-found]

        for i in range(n):
            hueyapp.noop(i)  # enqueues (huey's call of a task)
        storage = hueyapp.huey.storage
        argv = [sys.executable, "-m", "huey.bin.huey_consumer", "hueyapp.huey"]
        return self._drain_with(
            [*argv, "-w", "1", "-k", "thread", "-q"], storage.queue_size, n, cap
        )

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        self.s.close()
