"""sqqueue: a persistent message queue for Python that needs no broker.

from sqqueue import SQLiteQueue

queue = SQLiteQueue("jobs.db", table_name="emails")
queue.enqueue({"to": "ada@example.com"})
message = queue.dequeue().value      # a Message, or None when the queue is empty
if message is not None:
    msg_id, payload = message
    queue.complete(message)
"""

from importlib.metadata import PackageNotFoundError, version

from .aio import AsyncQueue, AsyncSQLiteQueue, AsyncWorker, connect_async
from .exceptions import (
    CompletionError,
    DequeueError,
    EnqueueError,
    ErrorKind,
    LeasesNotExtended,
    QueueError,
    QueueFull,
    Reject,
    RequeueError,
)
from .message import Item, Message
from .queue import PostgresQueue, Queue, SQLiteQueue, connect, list_queues
from .result import Err, Ok, Result, UnwrapError
from .retry import RetryPolicy
from .serializers import Serializer
from .stats import QueueStats
from .tasks import Tasks
from .worker import Worker, WorkerHooks, WorkerStats, worker

# The version is defined once, in pyproject.toml; the installed metadata carries it here.
try:
    __version__ = version("sqqueue")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncQueue",
    "AsyncSQLiteQueue",
    "AsyncWorker",
    "CompletionError",
    "DequeueError",
    "EnqueueError",
    "Err",
    "ErrorKind",
    "Item",
    "LeasesNotExtended",
    "Message",
    "Ok",
    "PostgresQueue",
    "Queue",
    "QueueError",
    "QueueFull",
    "QueueStats",
    "Reject",
    "RequeueError",
    "Result",
    "RetryPolicy",
    "SQLiteQueue",
    "Serializer",
    "Tasks",
    "UnwrapError",
    "Worker",
    "WorkerHooks",
    "WorkerStats",
    "__version__",
    "connect",
    "connect_async",
    "list_queues",
    "worker",
]
