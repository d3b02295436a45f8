"""What a running task can know about its own run: ``current_task()``."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import datetime

__all__ = ["RUNNING", "TaskContext", "current_task"]


@dataclass(frozen=True)
class TaskContext:
    """The run of a task, as seen from inside it.

    ``message_id`` is stable across retries and redeliveries of one call: use it as an
    idempotency key for side effects that must not happen twice.
    """

    task: str  #: the task's name
    message_id: int
    attempt: int  #: 1 for the first delivery
    max_attempts: int
    queue: str
    tick: datetime | None = None  #: for a periodic task's run: the tick it is for (UTC)


#: the run in progress, set by the worker around each task call
RUNNING: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "sqqueue_current_task", default=None
)


def current_task() -> TaskContext | None:
    """The task being run by a worker in this thread or asyncio task, or None::

    @tasks.task()
    def charge(order_id: int) -> None:
        run = current_task()
        payments.charge(order_id, idempotency_key=f"charge-{run.message_id}")
    """
    return RUNNING.get()
