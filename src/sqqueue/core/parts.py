"""What the queue's modules share for one queue object: its backend, codec, clock,
metrics, wake-up signals, lease memory, upkeep and group commit, and how a failure
becomes an ``Err``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..backends.base import Backend
from ..exceptions import ErrorKind, QueueError
from ..metrics import Metrics, NullMetrics
from ..result import Err, Result
from ..serializers import Codec, Serializer
from ..signing import SigningKeys
from ..wakeup import signal_for
from .consume import Leases
from .group_commit import GroupCommit
from .upkeep import Upkeep

logger = logging.getLogger(__name__)

#: ``extra`` of a log record about a failure the caller also gets, as an ``Err``.
RETURNED_AS_ERR = {"returned_as_err": True}

T = TypeVar("T")
QE = TypeVar("QE", bound=QueueError)
Clock = Callable[[], float]

_LOG_LEVEL_BY_KIND = {
    ErrorKind.LOCKED: logging.WARNING,
    ErrorKind.DISK_FULL: logging.ERROR,
    ErrorKind.READ_ONLY: logging.ERROR,
    ErrorKind.CORRUPT: logging.ERROR,
    ErrorKind.STORAGE: logging.ERROR,
}


class Parts:
    """The state of one queue object that its modules work on (no database state: that
    is the backend's)."""

    def __init__(
        self,
        backend: Backend,
        serializer: Serializer | None,
        clock: Clock | None,
        metrics: Metrics | None,
        signer: SigningKeys | None = None,
        accept_unsigned: bool = False,
    ) -> None:
        self.backend = backend
        self.name = backend.name
        self.read_only = backend.read_only
        self.codec = Codec(serializer)
        self.clock: Clock = clock or time.time
        self.metrics: Metrics = metrics or NullMetrics()
        self.signal = signal_for(backend.wakeup_key)
        # Producers blocked on a full queue wait on their own signal, so completions do
        # not wake idle consumers.
        self.room = signal_for(backend.wakeup_key + ":room")
        self.leases = Leases(backend, self.name)
        self.upkeep = Upkeep(backend, self.name, self.metrics)
        #: signs new messages and verifies claimed ones (None: neither; see signing.py)
        self.signer = signer
        #: deliver messages stored without a signature (those of before signing was on)
        self.accept_unsigned = accept_unsigned
        #: messages this object refused ("signature invalid") and unsigned ones it
        #: delivered (accept_unsigned), since it was opened
        self.signature_counts = {"signature_invalid": 0, "unsigned_accepted": 0}
        self.counts_lock = threading.Lock()
        #: concurrent enqueues share their transactions through it (the outbox does not)
        self.commits = GroupCommit(backend, max_messages=1000)

    def now(self) -> float:
        """The queue's clock, in Unix seconds."""
        return float(self.clock())

    def guard(
        self, error_cls: type[QE], action: str, fn: Callable[[], Result[T, QE]]
    ) -> Result[T, QE]:
        """Run ``fn``; turn any QueueError into ``Err(error_cls)``. Never raises Exception."""
        try:
            return fn()
        except Exception as exc:
            return self.failed(error_cls, action, exc)

    def failed(self, error_cls: type[QE], action: str, exc: Exception) -> Err[Any, QE]:
        """The ``Err`` for an exception raised by ``action`` (see ``guard``)."""
        if isinstance(exc, QueueError):
            # The caller gets the Err; the log only speaks up for trouble with the database
            # (a write refused by a queue opened read-only is the caller's own choice).
            level = _LOG_LEVEL_BY_KIND.get(exc.kind, logging.DEBUG)
            if self.read_only and exc.kind is ErrorKind.READ_ONLY:
                level = logging.DEBUG
            # Trouble with the database is logged with its traceback, the driver's own
            # error chained below it. (Marked as such: the sqqueue command, which prints
            # the Err, leaves it out.)
            logger.log(
                level,
                "queue %r: %s failed: %s",
                self.name,
                action,
                exc,
                exc_info=exc if level >= logging.ERROR else None,
                extra=RETURNED_AS_ERR,
            )
            if isinstance(exc, error_cls) and type(exc) is not error_cls:
                return Err(exc)  # a more specific error (QueueFull) reaches the caller as is
            error = error_cls(f"{action} failed: {exc}", exc.kind, exc.message_id)
        else:
            # The Result promise: report, do not raise.
            logger.error("queue %r: %s failed unexpectedly", self.name, action, exc_info=exc)
            error = error_cls(f"{action} failed unexpectedly: {exc!r}", ErrorKind.STORAGE)
        error.__cause__ = exc  # what happened underneath, for a traceback of the Err
        return Err(error)
