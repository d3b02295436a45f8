"""What ``.delay()`` gives back: a handle on the call, its status and its result."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ..exceptions import QueueError
from ..result import Err, Result
from .payload import MARK

if TYPE_CHECKING:
    from .task import Task

__all__ = ["ResultUnavailable", "TaskFailed", "TaskHandle", "TaskStatus"]

TaskStatus = Literal["pending", "running", "failed", "done", "dead", "unknown"]


class TaskFailed(Exception):
    """The call was dead-lettered: ``error`` is its last error (the traceback's last line
    of the task's exception, or why it could not run)."""

    def __init__(self, task: str, message_id: int, error: str | None) -> None:
        super().__init__(
            f"task {task} (message {message_id}) failed: {error or 'no error recorded'}"
        )
        self.task = task
        self.message_id = message_id
        self.error = error


class ResultUnavailable(LookupError):
    """There is no result to give: it has expired (``result_ttl``), or the id is not a
    call of this task."""


def _status(found: dict[str, Any] | None) -> TaskStatus:
    if found is None:
        return "unknown"
    status = found["status"]
    if status == "processing":
        return "running"
    if status in ("ready", "delayed", "waiting"):
        # A failed attempt leaves its error. A run given back at shutdown (its attempt
        # counts, as a crash's does) did not fail: it waits to run again, "pending".
        failed = found.get("attempts", 0) > 0 and found.get("last_error") is not None
        return "failed" if failed else "pending"
    if status in ("done", "dead"):
        return status  # type: ignore[no-any-return]
    return "unknown"


class TaskHandle:
    """One call of a task: ``status()`` and ``result(timeout=...)``.

    Its ``id`` is the message id: store it (in a web session, a row) and rebuild the
    handle later with ``task.handle(id)``.
    """

    def __init__(self, task: Task[Any, Any], message_id: int) -> None:
        self.task = task
        self.id = message_id

    def __repr__(self) -> str:
        return f"TaskHandle(task={self.task.name!r}, id={self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and (other.task.name, other.id) == (
            self.task.name,
            self.id,
        )

    def __hash__(self) -> int:
        return hash((self.task.name, self.id))

    def _lookup(self) -> Result[dict[str, Any] | None, QueueError]:
        """The message of this call; None when there is none, or when the id is a call of
        another task (an id from a web request may be anyone's: never another's result)."""
        try:
            queue = self.task.app.queue(self.task.queue)
        except (QueueError, ValueError) as exc:
            return Err(QueueError(f"cannot open queue {self.task.queue!r}: {exc}"))
        return queue.get_message(self.id).map(self._mine)

    def _mine(self, found: dict[str, Any] | None) -> dict[str, Any] | None:
        """``found`` if it is a call of this task, still readable; else None."""
        payload = found.get("payload") if found is not None else None
        if not isinstance(payload, dict) or MARK not in payload:
            return None
        if payload.get("name") != self.task.name:
            return None
        assert found is not None
        return None if self._expired(found) else found

    def _expired(self, found: dict[str, Any]) -> bool:
        """Whether a finished call is past ``result_ttl`` by the app's clock: gone, as
        once maintenance has pruned it (whether or not it has yet). The queue prunes what
        completed more than its retention ago: the same bound."""
        completed = found.get("completed_at") if found.get("status") == "done" else None
        if not isinstance(completed, datetime):  # (not done; or a field that cannot be read)
            return False
        return completed.timestamp() < self.task.app.now() - self.task.app.result_ttl

    def status(self) -> Result[TaskStatus, QueueError]:
        """``Ok`` with where the call is:

        - ``"pending"``: waiting to run (delayed, or behind others of its group, too;
          or given back by a worker shutting down while it ran: run again);
        - ``"running"``: a worker holds it (one that died, until its lease runs out);
        - ``"failed"``: an attempt failed; it will be retried;
        - ``"done"``: it ran (kept while the queue keeps history: tasks that store results);
        - ``"dead"``: it failed for good and is in the dead-letter queue;
        - ``"unknown"``: no such message: it ran and was not kept (a task that stores no
          result), its history expired (``result_ttl`` passed since it finished, pruned
          yet or not), or the id is wrong.
        """
        return self._lookup().map(_status)

    def _outcome(self, found: dict[str, Any] | None) -> tuple[bool, Any]:
        """(finished, value) for a looked-up message; raises for a failed or lost call."""
        status = _status(found)
        if status == "done":
            assert found is not None
            return True, found.get("result")
        if status == "dead":
            assert found is not None
            raise TaskFailed(self.task.name, self.id, found.get("last_error"))
        if status == "unknown":
            raise ResultUnavailable(
                f"no result for message {self.id} of task {self.task.name}: it has expired "
                f"(results are kept {self.task.app.result_ttl:g} s) or the id is not a call "
                "of this task"
            )
        return False, None

    def _check_stored(self, timeout: float | None) -> float | None:
        if not self.task.store_result:
            raise ValueError(
                f"task {self.task.name} does not store results: declare it with "
                "@tasks.task(store_result=True) (or Tasks(..., store_result=True))"
            )
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        return None if timeout is None else time.monotonic() + float(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the call to finish and return its value (``None`` = wait as long as it
        takes). Raises :class:`TaskFailed` if it was dead-lettered, ``TimeoutError`` if it
        has not finished in time, :class:`ResultUnavailable` if its result expired, and
        the ``QueueError`` of a failed database read."""
        deadline = self._check_stored(timeout)
        nap = 0.005
        while True:
            found = self._lookup()
            if isinstance(found, Err):
                raise found.error
            finished, value = self._outcome(found.value)
            if finished:
                return value
            nap = self._next_nap(deadline, nap)
            time.sleep(nap)

    async def result_async(self, timeout: float | None = None) -> Any:
        """:meth:`result` for asyncio: waits without blocking the event loop."""
        deadline = self._check_stored(timeout)
        nap = 0.005
        while True:
            found = await asyncio.to_thread(self._lookup)
            if isinstance(found, Err):
                raise found.error
            finished, value = self._outcome(found.value)
            if finished:
                return value
            nap = self._next_nap(deadline, nap)
            await asyncio.sleep(nap)

    async def status_async(self) -> Result[TaskStatus, QueueError]:
        return await asyncio.to_thread(self.status)

    def _next_nap(self, deadline: float | None, nap: float) -> float:
        """The next poll interval (5 ms doubling to 200 ms); TimeoutError past the deadline."""
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"task {self.task.name} (message {self.id}) has not finished in time"
                )
            return min(nap * 2, 0.2, remaining)
        return min(nap * 2, 0.2)
