"""The names of sqqueue 0.1.0, gathered in one block so 0.1.0 code keeps working unchanged.

Each is a short alias over the modern calls and the queue's parts; new code uses the
modern names beside them. :class:`Compat` gives them to :class:`~sqqueue.Queue`,
:class:`AsyncCompat` the same, awaited, to :class:`~sqqueue.AsyncQueue`:

=================================  ==============================================
0.1.0                              modern
=================================  ==============================================
``get_dead_letters()``             ``list_messages("dead")`` (paged)
``reprocess_dead_letter(id)``      ``redrive([id])``
``recover_processing_messages()``  nothing to call: dequeue recovers by itself
``get_all_statuses()``             ``stats()``
``vacuum_database()``              routine upkeep (``vacuum_threshold``)
``perform_checkpoint()``           routine upkeep
``get_operation_count()``          ``stats()`` totals
``complete(message_id=...)``       ``complete(message)`` (also ``fail_message``,
                                   ``requeue``; see :func:`message_id_keyword`)
``queue.logger``                   ``logging.getLogger("sqqueue")``
``queue.statsd_client``            ``statsd_host=`` (metrics go there)
=================================  ==============================================

Elsewhere, where 0.1.0's shape lives in the modern call itself: ``SQLiteQueue``'s
positional order and defaults, ``statsd_port=None`` (:mod:`sqqueue.queue`); a dead
letter's ``created_at`` key beside ``enqueued_at`` (:mod:`.convert`); a ``Message`` equal
to its ``(id, payload)`` pair and unpacked as one (:mod:`sqqueue.message`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from ..exceptions import QueueError, RequeueError
from ..metrics import StatsdMetrics
from ..result import Ok, Result
from . import admin
from .parts import Parts

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _moved(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The positional arguments, with 0.1.0's ``message_id=`` keyword moved in front."""
    if "message_id" not in kwargs:
        return args
    if args:
        raise TypeError(f"{name}() got the message twice: positionally and as message_id=")
    return (kwargs.pop("message_id"),)


def message_id_keyword(method: F) -> F:
    """Let a call that takes a message as its first argument also take it as
    ``message_id=``, the keyword 0.1.0 gave it (``queue.complete(message_id=5)``)."""
    name = method.__name__
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def call_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await method(self, *_moved(name, args, kwargs), **kwargs)

        return cast(F, call_async)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(self, *_moved(name, args, kwargs), **kwargs)

    return cast(F, call)


class Compat:
    """The 0.1.0 methods and attributes of :class:`~sqqueue.Queue`."""

    parts: Parts

    @property
    def logger(self) -> logging.Logger:
        """0.1.0's ``queue.logger``: the library's logger (it adds no handler of its own)."""
        return logging.getLogger("sqqueue")

    @property
    def statsd_client(self) -> Any:
        """0.1.0's ``queue.statsd_client``: the ``statsd.StatsClient`` metrics go to, or
        None when statsd is off."""
        metrics = self.parts.metrics
        return metrics.client if isinstance(metrics, StatsdMetrics) else None

    def get_dead_letters(self) -> Result[list[dict[str, Any]], QueueError]:
        """Dead letters as dicts: ``id`` (the original), ``payload``, ``priority``,
        ``attempts``, ``max_attempts``, ``last_error``, ``enqueued_at`` (also under 0.1.0's
        key ``created_at``), ``updated_at``, ``dead_at``."""
        parts = self.parts
        return parts.guard(QueueError, "get_dead_letters", lambda: Ok(admin.dead_letters(parts)))

    def reprocess_dead_letter(self, message_id: int) -> Result[None, RequeueError]:
        """Put a dead letter back in the queue with the same id and a fresh attempt count."""
        parts = self.parts

        def run() -> Result[None, RequeueError]:
            admin.revive(parts, message_id)
            return Ok(None)

        return parts.guard(RequeueError, "reprocess_dead_letter", run)

    def recover_processing_messages(self) -> Result[int, QueueError]:
        """Return every message whose lease expired to the queue now; ``Ok(count)``.

        Dequeue does this by itself, so calling it is only needed to see the count. A
        message on its last attempt goes to the dead-letter queue instead.
        """
        parts = self.parts
        return parts.guard(
            QueueError, "recover_processing_messages", lambda: Ok(admin.recover(parts))
        )

    def get_all_statuses(self) -> Result[dict[str, int], QueueError]:
        """Message counts by status, as in 0.1.0: ``Ok({"pending": 2, "processing": 1,
        ...})``.

        ``pending`` counts ready and delayed messages and ``processing`` the leased ones
        (0.1.0's meanings); ``waiting`` counts group members waiting for their turn and
        ``dead`` the dead letters. Every key is present. Each message counts where the
        next dequeue puts it, as in :meth:`stats`: one whose lease ran out is ``pending``
        (``dead`` on its last attempt), one past its time to live ``dead`` (or, with
        ``on_expire="drop"``, nowhere). Read from the counters the database keeps (and a
        step per lease run out or message past its time to live), so it costs about the
        same at any depth; :meth:`stats` has the finer breakdown and
        :meth:`list_messages` the messages themselves.
        """
        backend = self.parts.backend
        return self.parts.guard(
            QueueError, "get_all_statuses", lambda: Ok(backend.settled_counts())
        )

    def vacuum_database(self, conn: Any = None) -> Result[None, QueueError]:
        """Rebuild the database file to give free space back to the filesystem.

        This rewrites the whole file; routine upkeep (every ``vacuum_threshold``
        operations) reclaims space in small steps instead.
        """
        backend = self.parts.backend
        return self.parts.guard(QueueError, "vacuum_database", lambda: Ok(backend.vacuum(conn)))

    def perform_checkpoint(self, conn: Any = None) -> Result[None, QueueError]:
        """Copy the write-ahead log into the database file and truncate the log."""
        backend = self.parts.backend
        return self.parts.guard(
            QueueError, "perform_checkpoint", lambda: Ok(backend.checkpoint(conn))
        )

    def get_operation_count(self) -> int:
        """Write operations made through this object since its last upkeep round (as in
        0.1.0: back to 0 each time routine maintenance runs, every ``vacuum_threshold``
        messages written; it only grows when ``vacuum_threshold`` is 0)."""
        return self.parts.upkeep.operations


class AsyncCompat:
    """The 0.1.0 methods of :class:`~sqqueue.AsyncQueue`: those of :class:`Compat`,
    awaited (each runs the sync queue's in a thread)."""

    sync: Compat

    def _call(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        raise NotImplementedError  # the asyncio queue's

    async def get_dead_letters(self) -> Result[list[dict[str, Any]], QueueError]:
        return await self._call(self.sync.get_dead_letters)

    async def reprocess_dead_letter(self, message_id: int) -> Result[None, RequeueError]:
        return await self._call(self.sync.reprocess_dead_letter, message_id)

    async def recover_processing_messages(self) -> Result[int, QueueError]:
        return await self._call(self.sync.recover_processing_messages)

    async def get_all_statuses(self) -> Result[dict[str, int], QueueError]:
        return await self._call(self.sync.get_all_statuses)

    async def vacuum_database(self, conn: Any = None) -> Result[None, QueueError]:
        return await self._call(self.sync.vacuum_database, conn)

    async def perform_checkpoint(self, conn: Any = None) -> Result[None, QueueError]:
        return await self._call(self.sync.perform_checkpoint, conn)

    def get_operation_count(self) -> int:
        return self.sync.get_operation_count()
