"""class Queue: the public methods, each short, delegating to the modules of the core.

:class:`Queue` holds everything that does not depend on the database (argument checks,
payload encoding, leases and fencing, Results, metrics, maintenance cadence) over a
storage backend; :mod:`sqqueue.queue` binds it to SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..backends.base import Backend
from ..exceptions import (
    CompletionError,
    DequeueError,
    EnqueueError,
    ErrorKind,
    QueueError,
    RequeueError,
)
from ..message import Item, Message
from ..metrics import Metrics
from ..result import Err, Ok, Result
from ..retry import RetryPolicy
from ..serializers import Serializer
from ..settings import Settings
from ..signing import SigningKeys
from ..stats import QueueStats
from . import admin, consume, convert, group_commit, settle
from .checks import (
    MAX_BATCH_SIZE,
    bounded_int,
    error_text,
)
from .compat import Compat, message_id_keyword
from .parts import Clock, Parts
from .produce import Producer, batch_items, driver_connection

logger = logging.getLogger(__name__)

MessageRef = Message | int
NO_RESULT: Any = object()  # complete() without a result (None is a result: JSON null)


class Queue(Compat):
    """A persistent queue with leases, retries and a dead-letter queue.

    Use :class:`~sqqueue.SQLiteQueue`, :class:`~sqqueue.PostgresQueue` or
    :func:`~sqqueue.connect`; this class holds the logic they share. Every method that
    returns a :class:`~sqqueue.Result` returns ``Err`` for expected failures and never
    raises.
    """

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        signer: SigningKeys | None = None,
    ) -> None:
        self._backend = backend
        self._closed = False
        self.name = backend.name
        #: opened with read_only=True: reads work, every call that would write returns
        #: Err(kind=READ_ONLY), and nothing on disk changes
        self.read_only = backend.read_only
        #: the settings the queue was opened with (see :class:`~sqqueue.settings.Settings`)
        self.settings = settings
        self.setting_sources = dict(settings.sources)
        self.table_name: str = settings.table_name
        # The defaults of new messages and leases: public, and settable at any time (a
        # producer checks them again when they change).
        self.default_max_attempts: int = settings.default_max_attempts
        self.default_visibility_timeout: float = settings.default_visibility_timeout
        self.default_priority: int = settings.default_priority
        self.default_ttl: float | None = settings.default_ttl
        self._retry: RetryPolicy = settings.retry
        #: the parts this queue's modules share, and with them the asyncio queue, workers
        #: and tools (internal: not covered by the compatibility promise)
        self.parts = Parts(backend, serializer, clock, metrics, signer, settings.accept_unsigned)
        self.parts.upkeep.threshold = settings.vacuum_threshold
        shared = settings.group_commit_max
        if shared is None:
            shared = group_commit.DEFAULT_MAX if backend.shares_commits else 1
        self.parts.commits.max_messages = shared
        self._producer = Producer(self.parts, self)

    # The upkeep cadence: settable at any time.
    @property
    def vacuum_threshold(self) -> int:
        return self.parts.upkeep.threshold

    @vacuum_threshold.setter
    def vacuum_threshold(self, value: int) -> None:
        # Checked here: a bad value would otherwise surface after some write's commit.
        try:
            self.parts.upkeep.threshold = bounded_int(value, "vacuum_threshold", 0, 2**31)
        except QueueError as exc:
            raise ValueError(str(exc)) from None

    # The retry policy: settable at any time.
    @property
    def retry(self) -> RetryPolicy:
        """How long a failed message waits before it is delivered again."""
        return self._retry

    @retry.setter
    def retry(self, value: RetryPolicy) -> None:
        # Checked here, as vacuum_threshold is: a bad value would otherwise surface as a
        # storage error from the next fail_message (or a worker's), far from the mistake.
        if not isinstance(value, RetryPolicy):
            raise ValueError(
                "retry must be a sqqueue.RetryPolicy (RetryPolicy.immediate() for no "
                f"delay, RetryPolicy.fixed(30), ...), got {type(value).__name__}"
            )
        self._retry = value

    # -- context management --------------------------------------------------------------

    def close(self) -> None:
        """Close the queue's database connections. Further calls return ``Err(CLOSED)``.

        Safe while other threads are inside calls: those finish (or return
        ``Err(CLOSED)``), and a connection in use is closed when its call ends.
        """
        self._closed = True
        self._backend.close()
        self.parts.signal.nudge()  # consumers waiting on this object look again, and stop

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called on this queue object (it stays closed)."""
        return self._closed

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- producing -----------------------------------------------------------------------

    def enqueue(
        self,
        payload: Any,
        priority: int | None = None,
        delay: float | timedelta = 0,
        max_attempts: int | None = None,
        *,
        dedup_key: str | None = None,
        group: str | None = None,
        ttl: float | timedelta | None = None,
        wait: float = 0,
    ) -> Result[int, EnqueueError]:
        """Add a message; ``Ok(id)``.

        Higher ``priority`` is delivered first; ``delay`` (seconds) keeps it invisible
        until due; ``max_attempts`` bounds deliveries before the dead-letter queue.

        - ``dedup_key``: a second enqueue with the same key within the queue's
          ``dedup_window`` adds nothing and returns ``Ok(original_id)``.
        - ``group``: messages of one group are delivered one at a time, in order.
        - ``ttl``: seconds after which the message is never delivered.
        - ``wait``: when the queue is at ``max_depth``, wait up to this long for room
          (else ``Err(QueueFull)`` at once).

        Example::

            queue.enqueue({"order": 42}, dedup_key="order-42", group="customer-7")
        """
        item: object
        if (
            priority is None
            and max_attempts is None
            and dedup_key is None
            and group is None
            and ttl is None
            and type(delay) is int
            and delay == 0
            and not isinstance(payload, Item)
        ):
            item = payload  # a bare payload takes the defaults (no Item to build and check)
        else:
            item = Item(payload, priority, delay, max_attempts, dedup_key, group, ttl)
        try:  # guard, inline: about 3% of an enqueue (bench/profile-notes.md)
            return Ok(self._producer.store([item], wait)[0])
        except Exception as exc:
            return self.parts.failed(EnqueueError, "enqueue", exc)

    def enqueue_batch(
        self, payloads: Sequence[Any], *, wait: float = 0
    ) -> Result[list[int], EnqueueError]:
        """Add many messages in one transaction: all of them, or none; ``Ok([ids])``.

        Items are payloads, ``(payload, priority, delay, max_attempts)`` tuples (trailing
        items may be left out; ``None`` means the queue's default) or :class:`Item`
        objects for the other options::

            queue.enqueue_batch(["a", "b", ("urgent", 10), Item("c", dedup_key="c-1")])
        """
        store = self._producer.store
        return self.parts.guard(
            EnqueueError, "enqueue_batch", lambda: Ok(store(batch_items(payloads), wait))
        )

    def enqueue_in(
        self,
        conn: Any,
        payload: Any,
        priority: int | None = None,
        delay: float | timedelta = 0,
        max_attempts: int | None = None,
        *,
        dedup_key: str | None = None,
        group: str | None = None,
        ttl: float | timedelta | None = None,
    ) -> Result[int, EnqueueError]:
        """Enqueue inside *your* transaction on ``conn``: the message commits or rolls back
        with your own rows (the outbox pattern)::

            with sqlite3.connect("app.db") as conn:          # commits on success
                conn.execute("INSERT INTO orders (id) VALUES (?)", (42,))
                queue.enqueue_in(conn, {"order": 42}).unwrap()

        ``conn`` is a ``sqlite3.Connection`` on the queue's file (a ``psycopg``
        connection on PostgreSQL), or a SQLAlchemy ``Session`` or ``Connection`` in a
        transaction on it. A transaction that has not written yet is joined too.
        """
        item = Item(payload, priority, delay, max_attempts, dedup_key, group, ttl)

        def run() -> Result[int, EnqueueError]:
            if conn is None:
                raise QueueError(
                    "enqueue_in needs your open database connection, got None",
                    ErrorKind.INVALID_INPUT,
                )
            return Ok(self._producer.store([item], 0, conn=driver_connection(conn))[0])

        return self.parts.guard(EnqueueError, "enqueue_in", run)

    # -- consuming -----------------------------------------------------------------------

    def wake_waiters(self) -> None:
        """Wake every consumer of this queue blocked in ``dequeue(wait=...)`` in this process."""
        self.parts.signal.notify()

    def dequeue(
        self,
        visibility_timeout: float | None = None,
        wait: float = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> Result[Message | None, DequeueError]:
        """Lease the next message: ``Ok(message)``, or ``Ok(None)`` when none is ready.

        The message stays invisible to other consumers for ``visibility_timeout`` seconds
        (the queue default otherwise); complete it before then, or it is delivered again.
        With ``wait`` (seconds), block until a message is available or the time is up::

            message = queue.dequeue(wait=30).unwrap()   # None after 30 s with no work

        Setting the ``cancel`` event (then calling ``wake_waiters()``) ends the wait early.
        """
        parts = self.parts

        def run() -> Result[Message | None, DequeueError]:
            timeout = consume.lease_seconds(visibility_timeout, self.default_visibility_timeout)
            # Checked without a wait too: a call that works only while wait is 0 hides the
            # mistake until the day a wait is added.
            cancelled = consume.cancel_check(cancel)
            if wait == 0:  # no waiting: no wait plan to carry out
                messages = consume.claim(parts, 1, timeout)
            else:
                plan = consume.claim_plan(parts, 1, timeout, wait, cancelled)
                messages = consume.drive(parts, plan)
            return Ok(messages[0] if messages else None)

        return parts.guard(DequeueError, "dequeue", run)

    def dequeue_batch(
        self,
        batch_size: int = 10,
        visibility_timeout: float | None = None,
        wait: float = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> Result[list[Message], DequeueError]:
        """Lease up to ``batch_size`` messages in one transaction; ``Ok([])`` when none.

        With ``wait``, block until at least one message is available or the time is up.
        """
        parts = self.parts

        def run() -> Result[list[Message], DequeueError]:
            size = bounded_int(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
            timeout = consume.lease_seconds(visibility_timeout, self.default_visibility_timeout)
            cancelled = consume.cancel_check(cancel)
            plan = consume.claim_plan(parts, size, timeout, wait, cancelled)
            return Ok(consume.drive(parts, plan))

        return parts.guard(DequeueError, "dequeue_batch", run)

    @contextlib.contextmanager
    def claim(
        self, wait: float = 0, visibility_timeout: float | None = None
    ) -> Iterator[Message | None]:
        """Lease one message for a ``with`` block: completed if the block succeeds, failed
        (with the exception as its error) if it raises. Yields ``None`` when no message
        came within ``wait`` seconds. Raises the ``DequeueError`` if leasing fails::

            with queue.claim(wait=5) as message:
                if message is not None:
                    process(message.payload)
        """
        message = self.dequeue(visibility_timeout=visibility_timeout, wait=wait).unwrap()
        if message is None:
            yield None
            return
        ended_here = self.parts.leases.ended_here
        try:
            yield message
        except Exception as exc:
            if ended_here(message.id, message.lease_token) is None:
                failed = self.fail_message(message, error=error_text(exc))
                settle.unsettled(self.name, message, "failed", failed)
            raise
        except BaseException:
            # Interrupted (Ctrl-C, exit), not failed: give it back, attempt not counted.
            if ended_here(message.id, message.lease_token) is None:
                settle.unsettled(self.name, message, "given back", self.release(message))
            raise
        if ended_here(message.id, message.lease_token) is not None:
            return  # the block completed, failed or gave back the message itself
        result = self.complete(message)
        if isinstance(result, Err) and result.error.kind is not ErrorKind.NOT_FOUND:
            # NOT_FOUND: completed by another object meanwhile. Anything else means the
            # work may be done twice (e.g. the lease expired): say so loudly.
            raise result.error

    @message_id_keyword
    def complete(
        self, message: MessageRef, *, result: Any = NO_RESULT
    ) -> Result[None, CompletionError]:
        """Acknowledge a leased message: it is removed for good (or kept as history, when
        the queue has ``retention``).

        Refused (``Err``, nothing changes) if the lease expired or the message went to
        another consumer, so a slow consumer can never delete work someone else now holds.

        ``result``: a JSON value kept with the completed message, read back with
        ``get_message(id)["result"]`` until the history is pruned. Needs a queue that
        keeps history (``retention`` or ``retention_max``)::

            queue.complete(message, result={"sent": True})
        """
        parts = self.parts

        def run() -> Result[None, CompletionError]:
            text = None if result is NO_RESULT else settle.result_text(parts, result)
            settle.complete(parts, message, text)
            return Ok(None)

        return parts.guard(CompletionError, "complete", run)

    @property
    def keeps_history(self) -> bool:
        """Whether completed messages are kept (the ``retention``/``retention_max``
        settings), and with them the results given to :meth:`complete`."""
        return self._backend.policy.keeps_history

    def complete_batch(self, messages: Sequence[MessageRef]) -> Result[int, CompletionError]:
        """Acknowledge several leased messages in one transaction: all of them or, if any
        is refused (expired or lost lease, unknown id), none; ``Ok(count)``::

            batch = queue.dequeue_batch(100).unwrap()
            ...  # process them
            queue.complete_batch(batch)
        """
        parts = self.parts
        return parts.guard(
            CompletionError, "complete_batch", lambda: Ok(settle.complete_batch(parts, messages))
        )

    @message_id_keyword
    def fail_message(
        self,
        message: MessageRef,
        send_to_dlq: bool = False,
        error: str | None = None,
        delay: float | timedelta | None = None,
    ) -> Result[None, RequeueError]:
        """Record a failed attempt.

        The message is retried after ``delay`` seconds (by default, what the queue's
        ``retry`` policy says for its attempt count), or goes to the dead-letter queue
        when it has used its attempts or ``send_to_dlq`` is true (which also works on a
        pending message). ``error`` is kept with the message (``last_error``).
        """
        parts = self.parts

        def run() -> Result[None, RequeueError]:
            settle.fail(parts, message, send_to_dlq, error, delay, self.retry.delay)
            return Ok(None)

        return parts.guard(RequeueError, "fail_message", run)

    def _give_back(
        self, message: MessageRef, refund: bool, action: str
    ) -> Result[None, RequeueError]:
        """Return a leased message to the queue, visible at once (requeue and release)."""
        parts = self.parts

        def run() -> Result[None, RequeueError]:
            settle.give_back(parts, message, refund, action)
            return Ok(None)

        return parts.guard(RequeueError, action, run)

    @message_id_keyword
    def requeue(self, message: MessageRef) -> Result[None, RequeueError]:
        """Give a leased message back: it is visible again at once, at the back of its
        priority. The attempt it used still counts; it is not recorded as a failure."""
        return self._give_back(message, refund=False, action="requeue")

    def release(self, message: MessageRef) -> Result[None, RequeueError]:
        """Give back a leased message that was not worked on: it is visible again at once
        and the attempt is not counted. For consumers shutting down with prefetched work."""
        return self._give_back(message, refund=True, action="release")

    def release_batch(self, messages: Sequence[MessageRef]) -> Result[int, RequeueError]:
        """:meth:`release` for several leased messages, in one transaction: all of them
        or, if any is refused (its lease lost or expired), none; ``Ok(count)``. For a
        consumer that stops with messages it claimed but never started::

            batch = queue.dequeue_batch(100).unwrap()
            ...  # stopping after some of them: give the rest back
            queue.release_batch(batch[done:])
        """
        parts = self.parts
        return parts.guard(
            RequeueError, "release_batch", lambda: Ok(settle.release_batch(parts, messages))
        )

    def extend(
        self, message: MessageRef, seconds: float | timedelta
    ) -> Result[datetime, RequeueError]:
        """Extend a live lease to ``seconds`` from now, for slow work; ``Ok(new_expiry)``."""
        parts = self.parts
        return parts.guard(
            RequeueError, "extend", lambda: Ok(settle.extend(parts, message, seconds))
        )

    def extend_batch(
        self,
        messages: Sequence[MessageRef],
        visibility_timeout: float | timedelta | None = None,
    ) -> Result[int, RequeueError]:
        """Extend several live leases to ``visibility_timeout`` seconds from now (default:
        the queue's ``default_visibility_timeout``) in one transaction; ``Ok(count)``.

        Each lease is fenced by its own token, as with :meth:`extend`. Not all or nothing:
        a lease that was lost or expired is left as it is while the others are extended,
        and the result is then ``Err(LeasesNotExtended)``, whose ``refused`` maps each id
        not extended to why (and ``extended`` counts the others). A worker's heartbeat
        extends the leases of its running handlers this way::

            result = queue.extend_batch(running, visibility_timeout=60)
            if isinstance(result, Err) and isinstance(result.error, LeasesNotExtended):
                for message_id, why in result.error.refused.items():
                    ...  # lost: someone else may be working on it now
        """
        parts = self.parts
        default = self.default_visibility_timeout

        def run() -> Result[int, RequeueError]:
            length = consume.lease_seconds(visibility_timeout, default)
            return Ok(settle.extend_batch(parts, messages, length))

        return parts.guard(RequeueError, "extend_batch", run)

    # -- inspection ----------------------------------------------------------------------

    def peek(self) -> Result[Message | None, QueueError]:
        """The message ``dequeue`` would return next, without leasing it; ``Ok(None)`` if none."""
        parts = self.parts
        return parts.guard(QueueError, "peek", lambda: Ok(convert.next_in_line(parts)))

    def is_empty(self) -> Result[bool, QueueError]:
        """``Ok(True)`` when there is no message to dequeue now (0.1.0's meaning).

        Messages leased by consumers, delayed ones not yet due and group members waiting
        for their turn do not count, so ``while not queue.is_empty().value:
        queue.dequeue()`` never spins on a message someone else holds. To ask whether the
        queue holds anything at all, use :meth:`is_drained`.
        """
        backend = self._backend
        return self.parts.guard(QueueError, "is_empty", lambda: Ok(backend.peek() is None))

    def is_drained(self) -> Result[bool, QueueError]:
        """``Ok(True)`` when the queue holds no message at all: none ready, delayed,
        waiting or leased (dead letters and kept history aside). A producer waiting for
        all its work to be finished asks this."""
        backend = self._backend
        return self.parts.guard(QueueError, "is_drained", lambda: Ok(backend.is_drained()))

    def stats(self, expiring_within: float = 60.0) -> Result[QueueStats, QueueError]:
        """Counts by state, the oldest ready message's age, leases about to expire, totals
        since creation and file sizes. Cheap: counts are kept up to date in the database."""
        parts = self.parts
        return parts.guard(QueueError, "stats", lambda: Ok(admin.stats(parts, expiring_within)))

    def list_messages(
        self, state: str = "pending", limit: int = 100, after_id: int = 0
    ) -> Result[list[dict[str, Any]], QueueError]:
        """A page of messages in ``state`` ("ready", "delayed", "waiting", "processing",
        "dead", "done", "pending" for ready and delayed together, or "all"), by id, as
        dicts; pass the last id seen as ``after_id`` for the next page::

            page = queue.list_messages("dead", limit=50).unwrap()
            more = queue.list_messages("dead", limit=50, after_id=page[-1]["id"]).unwrap()
        """
        parts = self.parts
        return parts.guard(
            QueueError,
            "list_messages",
            lambda: Ok(admin.list_messages(parts, state, limit, after_id)),
        )

    def get_message(self, message_id: int) -> Result[dict[str, Any] | None, QueueError]:
        """One message by id, whatever its state, as a dict like :meth:`list_messages`
        gives (``status`` says where it is: ready, delayed, waiting, processing, dead or
        done), plus ``dedup_key``, the deduplication key it holds (or None); ``Ok(None)``
        when the queue has no such message (completed without ``retention``, or never
        existed)::

            found = queue.get_message(42).unwrap()
            if found is not None:
                print(found["status"], found["attempts"], found["last_error"])
        """
        parts = self.parts
        return parts.guard(
            QueueError, "get_message", lambda: Ok(admin.get_message(parts, message_id))
        )

    def get_completed(
        self, limit: int = 100, after_id: int = 0
    ) -> Result[list[dict[str, Any]], QueueError]:
        """Completed messages kept by the queue's ``retention`` setting, by id, as dicts
        (``id``, ``payload``, ``priority``, ``attempts``, ``enqueued_at``, ``completed_at``,
        ``result``: what :meth:`complete` was given, else None)."""
        return self.list_messages("done", limit=limit, after_id=after_id)

    # -- looking after the queue ---------------------------------------------------------

    def redrive(
        self,
        ids: Sequence[int] | None = None,
        to_queue: str | None = None,
        rate: float | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> Result[int, RequeueError]:
        """Move dead letters back to be delivered again; ``Ok(count moved)``.

        ``ids`` picks which (default: all). ``to_queue`` sends them to another queue of the
        same file (default: this one, keeping their ids). ``rate`` caps messages per second,
        so a large redrive does not flood consumers. ``progress(done, total)`` is called
        as it goes. Each message keeps its last error; its attempts start over and the
        ones it used are added to ``prior_attempts``::

            queue.redrive(rate=50, progress=lambda done, total: print(done, "/", total))

        A paced redrive waits only between chunks, and ``close()`` from another thread
        ends it at once with ``Err(CLOSED)`` (what was moved by then stays moved). What
        ``progress`` raises is logged and the redrive goes on (KeyboardInterrupt and
        SystemExit are let through).
        """
        parts = self.parts
        return parts.guard(
            RequeueError,
            "redrive",
            lambda: Ok(admin.redrive(parts, ids, to_queue, rate, progress)),
        )

    def delete_dead_letters(self, ids: Sequence[int]) -> Result[int, QueueError]:
        """Delete the dead letters with these ids, in one transaction; ``Ok(count deleted)``.

        Ids that are not among the queue's dead letters (redriven or deleted already, or
        never dead) are skipped, so the count says how many went::

            queue.delete_dead_letters([12, 15])
        """
        parts = self.parts
        return parts.guard(
            QueueError, "delete_dead_letters", lambda: Ok(admin.delete_dead_letters(parts, ids))
        )

    def purge(
        self, state: str | Sequence[str] | None = None, older_than: float | timedelta | None = None
    ) -> Result[int, QueueError]:
        """Delete messages, in one transaction; ``Ok(count)``.

        ``state`` is "ready", "delayed", "waiting", "processing", "dead", "done", "pending"
        (ready and delayed) or a list of them; by default every message that is not dead or
        done. ``older_than``
        (seconds) keeps the more recent ones: live messages by when they were enqueued,
        dead letters by when they died, kept completed ones by when they were completed::

            queue.purge()                                   # empty the queue
            queue.purge("dead", older_than=7 * 86400)       # dead for more than a week
        """
        parts = self.parts
        return parts.guard(QueueError, "purge", lambda: Ok(admin.purge(parts, state, older_than)))

    def ddl(self) -> list[str]:
        """The statements that create this queue's tables, for teams that apply schema
        changes themselves (``sqqueue migrate --sql``)."""
        return self._backend.ddl()
