"""Errors carried by ``Err`` results (and raised for invalid configuration).

Every queue error has a ``kind`` (an :class:`ErrorKind`) so callers can branch on *what*
happened without parsing messages, and a message that says what to do about it::

    result = queue.complete(message)
    if result.is_err() and result.error.kind is ErrorKind.LEASE_EXPIRED:
        ...  # someone else may be processing it now; do not commit side effects twice
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "CompletionError",
    "DequeueError",
    "EnqueueError",
    "ErrorKind",
    "LeasesNotExtended",
    "QueueError",
    "QueueFull",
    "Reject",
    "RequeueError",
]


class ErrorKind(str, Enum):
    """Why an operation failed."""

    INVALID_INPUT = "invalid_input"  #: an argument is out of range or of the wrong type
    SERIALIZATION = "serialization"  #: the payload cannot be stored with this serializer
    NOT_FOUND = "not_found"  #: no message with that id in this queue
    WRONG_STATE = "wrong_state"  #: the message exists but is not in a state for this call
    LEASE_EXPIRED = "lease_expired"  #: the caller's lease ran out; the message is back
    LEASE_LOST = "lease_lost"  #: another consumer holds the message now
    LOCKED = "locked"  #: the database stayed locked past the deadline
    QUEUE_FULL = "queue_full"  #: the queue holds its maximum depth of messages
    UNKNOWN_OUTCOME = "unknown_outcome"  #: the connection died mid-commit: it may have happened
    DISK_FULL = "disk_full"  #: the disk (or file size limit) is full
    READ_ONLY = "read_only"  #: the database cannot be written
    CORRUPT = "corrupt"  #: the database file or a stored message is damaged
    CLOSED = "closed"  #: the queue object was closed
    STORAGE = "storage"  #: any other database failure


#: Failures of the database itself, not of any one message or call: trying the same
#: work again message by message would only meet them again (each waiting out the lock
#: timeout, for a lock). Grouped work (shared commits, a worker's grouped completions)
#: gives up on the whole group after one of these.
DATABASE_FAILURES = frozenset(
    {
        ErrorKind.LOCKED,
        ErrorKind.DISK_FULL,
        ErrorKind.READ_ONLY,
        ErrorKind.CLOSED,
        ErrorKind.CORRUPT,
    }
)


class QueueError(Exception):
    """Base class of every sqqueue error."""

    def __init__(
        self,
        message: str,
        kind: ErrorKind = ErrorKind.STORAGE,
        message_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message_id = message_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r}, kind={self.kind.value})"


class EnqueueError(QueueError):
    """Adding messages failed."""


class QueueFull(EnqueueError):
    """The queue is at its ``max_depth``: nothing was enqueued."""

    def __init__(self, message: str, message_id: int | None = None) -> None:
        super().__init__(message, ErrorKind.QUEUE_FULL, message_id)


class DequeueError(QueueError):
    """Taking messages failed."""


class CompletionError(QueueError):
    """Completing (acknowledging) a message failed."""


class RequeueError(QueueError):
    """Failing, requeueing, extending or reprocessing a message failed."""


class LeasesNotExtended(RequeueError):
    """``extend_batch`` could not extend some of the leases it was given (lost, expired,
    unknown); it extended the others. ``refused`` maps the id of each lease left as it was
    to why (the error ``extend`` would have returned); ``extended`` counts those extended.
    ``kind`` and ``message_id`` are those of the first refusal."""

    def __init__(self, message: str, refused: dict[int, QueueError], extended: int) -> None:
        first_id, first = next(iter(refused.items()))
        super().__init__(message, first.kind, first_id)
        self.refused = refused
        self.extended = extended


class Reject(Exception):
    """Raised by a worker's handler: this message can never succeed, so it goes to the
    dead-letter queue at once, with this exception's line as its error, instead of being
    retried::

        def handle(message):
            if "to" not in message.payload:
                raise Reject("no recipient")   # last_error: "Reject: no recipient"
    """
