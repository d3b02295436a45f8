"""Tasks: call a function later, on a schedule, or every N seconds, through a queue.

::

    from sqqueue import Tasks

    tasks = Tasks("jobs.db")                     # or a PostgreSQL URL, or Tasks(queue)

    @tasks.task(retries=5, timeout=60)
    def send_email(to: str, subject: str) -> None: ...

    send_email.delay("ada@example.com", subject="hi")             # Ok(TaskHandle)
    send_email.schedule(("ada@example.com",), {"subject": "hi"}, delay=3600)

    @tasks.periodic(cron="0 3 * * *", tz="Europe/Paris")
    def nightly_cleanup() -> None: ...

and ``sqqueue worker myapp.jobs:tasks --concurrency 4`` runs them. Calls are JSON
messages (see :mod:`sqqueue.tasks.payload`), delivered at least once: write tasks so
that running one twice does no harm (``current_task().message_id`` is a stable key).
"""

from .app import Tasks
from .context import TaskContext, current_task
from .payload import InvalidTaskMessage, UnknownTask
from .periodic import Schedule
from .results import ResultUnavailable, TaskFailed, TaskHandle, TaskStatus
from .runner import ResultNotJSON, TaskStats, TaskWorker
from .task import Task

__all__ = [
    "InvalidTaskMessage",
    "ResultNotJSON",
    "ResultUnavailable",
    "Schedule",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "TaskStats",
    "TaskStatus",
    "TaskWorker",
    "Tasks",
    "UnknownTask",
    "current_task",
]
