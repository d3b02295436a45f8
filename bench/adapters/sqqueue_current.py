"""sqqueue from this repository (src/sqqueue), run in the project's .venv."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import BARRIER
from .base import Adapter as Base

# A worker process as the README shows it: the queue with its default settings, a handler
# that does nothing, ``Worker(...).run()`` until SIGTERM.
_WORKER_APP = """
from sqqueue import SQLiteQueue, Worker

queue = SQLiteQueue({path!r}, table_name="bench")


def handle(message):
    pass

{barrier}
Worker(queue, handle, concurrency={concurrency}).run()
"""

_TASK_APP = """
from sqqueue import Tasks

tasks = Tasks({path!r}, synchronous="normal", lock_timeout=30.0)


@tasks.task
def noop(n: int) -> None:
    pass
"""


class Adapter(Base):
    name = "sqqueue"
    package = "sqqueue"
    at_least_once = "yes"
    semantics = (
        "leases with automatic redelivery on expiry, fenced acks, atomic claim "
        "(one message: SELECT then UPDATE in one BEGIN IMMEDIATE transaction; a batch: "
        "its UPDATE in one, its rows read after the commit)"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue": "enqueue()",
        "dequeue": "dequeue(), then complete()",
        "enqueue_batch": "native enqueue_batch()",
        "dequeue_batch": "native dequeue_batch(100), then complete_batch() (one transaction)",
        "claim_batch": "native dequeue_batch(100)",
        "wait": "dequeue(wait=...): one data_version watcher per process and file, polling 2-10 ms",
        "fill": "enqueue_batch() of 1,000",
        "stats": "stats()",
        "tasks": "@tasks.task no-op, .delay() per call; `sqqueue worker app:tasks` (1 thread)",
        "worker": "Worker(queue, no-op, concurrency=4).run() in a process of its own, "
        "default settings",
        "producers": "one queue object shared by the threads, enqueue() per message",
    }
    cross_process_wait = "dequeue(wait=...)"

    #: the database file, in the work directory
    filename = "sqqueue.db"
    #: settings of a subject that differs only in them (an encrypted file's key)
    extra: ClassVar[dict[str, Any]] = {}

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        from sqqueue import SQLiteQueue

        self.path = os.path.join(workdir, self.filename)
        # Settings spelled out so no SQQUEUE_* variable or config file changes them.
        self.q = SQLiteQueue(
            self.path,
            table_name="bench",
            vacuum_threshold=1000,
            default_visibility_timeout=300.0,
            synchronous="normal",
            lock_timeout=30.0,
            **self.extra,
        )

    @classmethod
    def version(cls) -> str:
        import sqqueue

        snapshot = "sqqueue-bench-src-" in (sqqueue.__file__ or "")
        return f"{sqqueue.__version__} (this repo{', snapshot of src/' if snapshot else ''})"

    def enqueue(self, payload: str) -> bool:
        r = self.q.enqueue(payload)
        if r.is_err():
            self._error(r.error)
            return False
        return True

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        r = self.q.enqueue_batch(payloads)
        if r.is_err():
            self._error(r.error)
            return False
        return True

    def _ack(self, message: Any) -> bool:
        r = self.q.complete(message)
        if r.is_err():
            self._error(r.error)
            return False
        return True

    def dequeue_ack(self) -> str | None:
        r = self.q.dequeue()
        if r.is_err():
            self._error(r.error)
            return None
        m = r.value
        if m is None:
            return None
        self._ack(m)
        return m.payload  # type: ignore[no-any-return]

    def wait_dequeue_ack(self, timeout: float) -> str | None:
        r = self.q.dequeue(wait=timeout)
        if r.is_err():
            self._error(r.error)
            return None
        m = r.value
        if m is None:
            return None
        self._ack(m)
        return m.payload  # type: ignore[no-any-return]

    def dequeue_batch_ack(self, n: int) -> list[str]:
        r = self.q.dequeue_batch(n)
        if r.is_err():
            self._error(r.error)
            return []
        done = self.q.complete_batch(r.value)  # one transaction for the whole batch
        if done.is_err():
            self._error(done.error)
            return []
        return [m.payload for m in r.value]

    def claim_batch(self, n: int) -> int:
        r = self.q.dequeue_batch(n)
        if r.is_err():
            self._error(r.error)
            return 0
        return len(r.value)

    def stats(self) -> Any:
        return self.q.stats().unwrap()

    def remaining(self) -> int:
        """Messages not yet done (pending, delayed or leased)."""
        return int(self.q.stats().unwrap().depth)

    def worker_app(self, concurrency: int) -> str:
        return _WORKER_APP.format(path=self.path, barrier=BARRIER, concurrency=concurrency)

    def run_worker(self, n: int, cap: float, processes: int, concurrency: int) -> dict[str, Any]:
        self.prefill(n)
        import sys

        script = self._script("workerapp.py", self.worker_app(concurrency))
        return self._drain_with(
            [sys.executable, script],
            self.remaining,
            n,
            cap,
            env={"SQQUEUE_CONFIG": "none"},
            processes=processes,
            barrier=True,
            interval=self.poll_interval,
        )

    #: How often the driver asks how many messages are left while a worker drains.
    poll_interval = 0.005

    def run_tasks(self, n: int, cap: float) -> dict[str, Any]:
        import sys

        app = os.path.join(self.workdir, "taskapp.py")
        with open(app, "w") as f:
            f.write(_TASK_APP.format(path=os.path.join(self.workdir, "tasks.db")))
        sys.path.insert(0, self.workdir)
        import taskapp  # type: ignore[import-not-found]

        for i in range(n):
            taskapp.noop.delay(i).unwrap()
        queue = taskapp.tasks.queue()
        result = self._drain_with(
            [sys.executable, "-m", "sqqueue.cli", "worker", "taskapp:tasks", "--concurrency", "1"],
            lambda: queue.stats().unwrap().depth,
            n,
            cap,
            env={"SQQUEUE_CONFIG": "none"},
        )
        taskapp.tasks.close()
        return result

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        self.q.close()
