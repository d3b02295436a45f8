"""The asyncio API: the same queue, the same Results, as coroutines.

:class:`AsyncQueue` wraps a synchronous :class:`~sqqueue.queue.Queue`, so the queue logic
is the very same code, and the event loop never waits on the database. On PostgreSQL,
whose driver has an asyncio face, the hot operations (enqueue, dequeue, complete, fail,
release, extend and their batches) run natively on the loop (see :mod:`sqqueue.bridge`):
no thread per call. Every other call, and every call on SQLite (whose driver is
synchronous), runs in a worker thread. Waiting for work (``dequeue(wait=...)``) runs the
shared wait plan with asyncio sleeps: a waiting consumer holds no thread.

Example::

    from sqqueue import AsyncSQLiteQueue

    async def main():
        async with AsyncSQLiteQueue("jobs.db", table_name="emails") as queue:
            await queue.enqueue({"to": "ada@example.com"})
            message = (await queue.dequeue(wait=5)).unwrap()
            if message is not None:
                await queue.complete(message)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, ParamSpec, TypeVar, cast

from . import bridge
from .core import consume, settle
from .core.checks import MAX_BATCH_SIZE, bounded_int, error_text
from .core.compat import AsyncCompat, message_id_keyword
from .core.consume import Step
from .core.queue import NO_RESULT, MessageRef, Queue
from .exceptions import (
    CompletionError,
    DequeueError,
    EnqueueError,
    ErrorKind,
    QueueError,
    RequeueError,
)
from .loop_signals import receive_signals, stop_receiving
from .message import Message
from .queue import SQLiteQueue, connect
from .result import Err, Ok, Result
from .stats import QueueStats
from .threads import DedicatedThread, run_in_own_thread
from .worker import (
    HEARTBEAT_RETRY,
    SETTLE_WAIT,
    Claimed,
    RunningTask,
    WorkerCore,
    WorkerStats,
)

__all__ = ["AsyncQueue", "AsyncSQLiteQueue", "AsyncWorker", "connect_async"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


# Give-backs of cancelled claims still running: a task the loop holds only weakly must be
# referenced until it ends.
_unfinished: set[asyncio.Future[None]] = set()


def _outcome(fn: Callable[[Message], Any], message: Message) -> tuple[Any, BaseException | None]:
    """``(fn(message), None)``, or ``(None, what it raised)``."""
    try:
        return fn(message), None
    except BaseException as exc:  # whatever it is: the handler's failure, not the worker's
        return None, exc


def _may_wait(wait: object) -> bool:
    """Whether an enqueue may wait for room in a full queue, which blocks: then it runs in
    a thread. Anything but a plain zero goes there, where the call checks it (an odd
    ``wait`` is answered with an Err, as by the synchronous call)."""
    return not (type(wait) in (int, float) and wait == 0)


async def _on_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a sync call of the queue logic on the event loop (sqqueue.bridge), to its end
    even if the awaiting task is cancelled meanwhile, as a call in a thread would."""
    started = bridge.start(functools.partial(fn, *args, **kwargs))
    if started.done:  # it never waited (nothing to cancel): no task needed
        return cast(T, started.value())
    return cast(T, await asyncio.shield(asyncio.ensure_future(started.finish())))


class AsyncQueue(AsyncCompat):
    """Asyncio face of a queue: the methods of :class:`~sqqueue.queue.Queue`, awaited.

    ``native``: run the hot operations on the event loop, without threads; by default
    wherever the backend can (PostgreSQL, with the ``greenlet`` package its extra brings),
    but not on Windows, whose default event loop psycopg's asyncio connections cannot use
    (pass ``native=True`` there with a selector event loop). ``native=False`` runs every
    call in a worker thread, as on SQLite.
    """

    sync: Queue  #: the queue it awaits

    def __init__(self, queue: Queue, *, native: bool | None = None) -> None:
        self.sync = queue
        self.name = queue.name
        able = queue.parts.backend.native_asyncio and bridge.AVAILABLE
        if native and not able:
            raise ValueError(
                "native=True needs a backend whose driver has an asyncio face (PostgreSQL) "
                "and the greenlet package (pip install 'sqqueue[postgres]')"
            )
        self._native = able and sys.platform != "win32" if native is None else bool(native)

    @property
    def native(self) -> bool:
        """Whether the hot operations run on the event loop rather than in threads."""
        return self._native

    @property
    def closed(self) -> bool:
        """Whether the queue was closed (it stays closed)."""
        return self.sync.closed

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _hot(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a hot operation: natively on the loop where it can, else in a thread. Either
        way, it runs to its end even if the awaiting task is cancelled meanwhile (it took
        effect or not, as its Result would have said), like a call in a thread."""
        if not self._native:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await _on_loop(fn, *args, **kwargs)

    def _start(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._native:
            return asyncio.ensure_future(bridge.run(fn))
        return asyncio.ensure_future(asyncio.to_thread(fn))

    async def _drive(self, plan: Generator[Step, Any, T]) -> T:
        """Carry out a wait plan: storage calls natively or in a thread, sleeps on the event
        loop."""
        signal_ = self.sync.parts.signal
        try:
            step = next(plan)
            while True:
                if step[0] == "call":
                    step = plan.send(await self._call_uncancelled(step[1]))
                else:
                    step = plan.send(await signal_.wait_async(step[2], step[1], step[3]))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _plan(
        self,
        limit: int,
        visibility_timeout: float | None,
        wait: float,
        cancelled: Callable[[], bool] | None,
    ) -> Generator[Step, Any, list[Message]]:
        """The sync queue's wait plan for a claim, for this driver to carry out."""
        timeout = consume.lease_seconds(visibility_timeout, self.sync.default_visibility_timeout)
        return consume.claim_plan(self.sync.parts, limit, timeout, wait, cancelled)

    async def _call_uncancelled(self, fn: Callable[[], T]) -> T:
        """Run a storage call (natively or in a thread); if the task is cancelled meanwhile,
        let the call finish and give back any message it leased, so nothing is stranded
        under a lease nobody holds."""
        future = self._start(fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The give-back is a task of its own: cancelled again (a TaskGroup, then the
            # loop's shutdown), this one stops waiting for it, but it still runs.
            back = asyncio.ensure_future(self._give_back(future))
            _unfinished.add(back)
            back.add_done_callback(_unfinished.discard)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(back)
            raise

    async def _give_back(self, call: asyncio.Future[Any]) -> None:
        """Once a cancelled claim's call has ended, release what it leased."""
        with contextlib.suppress(Exception):
            result = await call
            if isinstance(result, list):
                for message in result:
                    if isinstance(message, Message):
                        await self._hot(self.sync.release, message)

    async def _guarded(
        self, error_cls: type[QueueError], action: str, coro: Awaitable[T]
    ) -> Result[T, Any]:
        try:
            return Ok(await coro)
        except Exception as exc:  # logged and turned into an Err as the sync calls' are
            return self.sync.parts.failed(error_cls, action, exc)

    # -- context management --------------------------------------------------------------

    async def close(self) -> None:
        await self._call(self.sync.close)

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- the queue API -----------------------------------------------------------------

    async def enqueue(
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
        run = self._call if _may_wait(wait) else self._hot
        return await run(
            functools.partial(
                self.sync.enqueue, dedup_key=dedup_key, group=group, ttl=ttl, wait=wait
            ),
            payload,
            priority,
            delay,
            max_attempts,
        )

    async def enqueue_batch(
        self, payloads: Sequence[Any], *, wait: float = 0
    ) -> Result[list[int], EnqueueError]:
        run = self._call if _may_wait(wait) else self._hot
        return await run(functools.partial(self.sync.enqueue_batch, wait=wait), payloads)

    async def enqueue_in(
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
        """The outbox enqueue; ``conn`` is used from a worker thread, so open it with
        ``check_same_thread=False``."""
        return await self._call(
            functools.partial(self.sync.enqueue_in, dedup_key=dedup_key, group=group, ttl=ttl),
            conn,
            payload,
            priority,
            delay,
            max_attempts,
        )

    async def dequeue(
        self,
        visibility_timeout: float | None = None,
        wait: float = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> Result[Message | None, DequeueError]:
        """Lease the next message; with ``wait``, suspend (not block) until one comes."""

        async def run() -> Message | None:
            cancelled = consume.cancel_check(cancel)
            messages = await self._drive(self._plan(1, visibility_timeout, wait, cancelled))
            return messages[0] if messages else None

        return await self._guarded(DequeueError, "dequeue", run())

    async def dequeue_batch(
        self,
        batch_size: int = 10,
        visibility_timeout: float | None = None,
        wait: float = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> Result[list[Message], DequeueError]:
        async def run() -> list[Message]:
            size = bounded_int(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
            cancelled = consume.cancel_check(cancel)
            return await self._drive(self._plan(size, visibility_timeout, wait, cancelled))

        return await self._guarded(DequeueError, "dequeue_batch", run())

    @contextlib.asynccontextmanager
    async def claim(
        self, wait: float = 0, visibility_timeout: float | None = None
    ) -> AsyncIterator[Message | None]:
        """``async with queue.claim(wait=5) as message:``: completed if the block succeeds,
        failed if it raises; ``None`` when no message came in time."""
        message = (await self.dequeue(visibility_timeout=visibility_timeout, wait=wait)).unwrap()
        if message is None:
            yield None
            return
        ended = self.sync.parts.leases.ended_here  # whether the block ended the lease itself
        try:
            yield message
        except Exception as exc:
            if ended(message.id, message.lease_token) is None:
                failed = await self.fail_message(message, error=error_text(exc))
                settle.unsettled(self.name, message, "failed", failed)
            raise
        except BaseException:
            # Cancelled or interrupted, not failed: give it back, attempt not counted.
            if ended(message.id, message.lease_token) is None:
                released = await asyncio.shield(self.release(message))
                settle.unsettled(self.name, message, "given back", released)
            raise
        if ended(message.id, message.lease_token) is not None:
            return
        result = await self.complete(message)
        if isinstance(result, Err) and result.error.kind is not ErrorKind.NOT_FOUND:
            raise result.error

    @message_id_keyword
    async def complete(
        self, message: MessageRef, *, result: Any = NO_RESULT
    ) -> Result[None, CompletionError]:
        return await self._hot(functools.partial(self.sync.complete, result=result), message)

    async def complete_batch(self, messages: Sequence[MessageRef]) -> Result[int, CompletionError]:
        return await self._hot(self.sync.complete_batch, messages)

    @message_id_keyword
    async def fail_message(
        self,
        message: MessageRef,
        send_to_dlq: bool = False,
        error: str | None = None,
        delay: float | timedelta | None = None,
    ) -> Result[None, RequeueError]:
        return await self._hot(self.sync.fail_message, message, send_to_dlq, error, delay)

    @message_id_keyword
    async def requeue(self, message: MessageRef) -> Result[None, RequeueError]:
        return await self._hot(self.sync.requeue, message)

    async def release(self, message: MessageRef) -> Result[None, RequeueError]:
        return await self._hot(self.sync.release, message)

    async def release_batch(self, messages: Sequence[MessageRef]) -> Result[int, RequeueError]:
        return await self._hot(self.sync.release_batch, messages)

    async def extend(
        self, message: MessageRef, seconds: float | timedelta
    ) -> Result[datetime, RequeueError]:
        return await self._hot(self.sync.extend, message, seconds)

    async def extend_batch(
        self,
        messages: Sequence[MessageRef],
        visibility_timeout: float | timedelta | None = None,
    ) -> Result[int, RequeueError]:
        return await self._hot(self.sync.extend_batch, messages, visibility_timeout)

    async def peek(self) -> Result[Message | None, QueueError]:
        return await self._call(self.sync.peek)

    async def is_empty(self) -> Result[bool, QueueError]:
        return await self._call(self.sync.is_empty)

    async def is_drained(self) -> Result[bool, QueueError]:
        return await self._call(self.sync.is_drained)

    async def stats(self, expiring_within: float = 60.0) -> Result[QueueStats, QueueError]:
        return await self._call(self.sync.stats, expiring_within)

    async def list_messages(
        self, state: str = "pending", limit: int = 100, after_id: int = 0
    ) -> Result[list[dict[str, Any]], QueueError]:
        return await self._call(self.sync.list_messages, state, limit, after_id)

    async def get_message(self, message_id: int) -> Result[dict[str, Any] | None, QueueError]:
        return await self._call(self.sync.get_message, message_id)

    async def get_completed(
        self, limit: int = 100, after_id: int = 0
    ) -> Result[list[dict[str, Any]], QueueError]:
        return await self._call(self.sync.get_completed, limit, after_id)

    async def purge(
        self, state: str | Sequence[str] | None = None, older_than: float | timedelta | None = None
    ) -> Result[int, QueueError]:
        return await self._call(self.sync.purge, state, older_than)

    async def redrive(
        self,
        ids: Sequence[int] | None = None,
        to_queue: str | None = None,
        rate: float | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> Result[int, RequeueError]:
        return await self._call(self.sync.redrive, ids, to_queue, rate, progress)

    async def delete_dead_letters(self, ids: Sequence[int]) -> Result[int, QueueError]:
        return await self._call(self.sync.delete_dead_letters, ids)

    def ddl(self) -> list[str]:
        return self.sync.ddl()

    def wake_waiters(self) -> None:
        self.sync.wake_waiters()


class AsyncSQLiteQueue(AsyncQueue):
    """:class:`~sqqueue.SQLiteQueue` for asyncio; takes the same constructor arguments.

    Opening the file (and creating or migrating its tables) happens in the constructor,
    which is quick; every later call runs off the event loop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(SQLiteQueue(*args, **kwargs))
        self.db_path: str | os.PathLike[str] = self.sync.db_path  # type: ignore[attr-defined]
        self.table_name: str = self.sync.table_name

    @staticmethod
    async def list_queues(db_path: str | os.PathLike[str]) -> Result[list[str], QueueError]:
        return await asyncio.to_thread(SQLiteQueue.list_queues, db_path)


async def connect_async(
    url: str, table_name: str | None = None, *, native: bool | None = None, **settings: Any
) -> AsyncQueue:
    """``sqqueue.connect`` for asyncio: opens the queue off the event loop::

    queue = await connect_async("postgresql://app@db/app", "emails")

    ``native``: see :class:`AsyncQueue`.
    """
    args = (url,) if table_name is None else (url, table_name)
    return AsyncQueue(await asyncio.to_thread(connect, *args, **settings), native=native)


AsyncHandler = Callable[[Message], Awaitable[Any]]
_HOOKS = ("on_start", "on_success", "on_failure", "on_dead_letter")  # WorkerHooks' fields
# What one of an AsyncWorker's own steps calls besides its bookkeeping, which decides
# where it runs (see AsyncWorker._step).
_Needs = Literal["nothing", "database", "your code"]


class AsyncWorker(WorkerCore):
    """:class:`~sqqueue.Worker` for coroutine handlers: ``concurrency`` tasks on the loop.

    Same behaviour: completes on return, fails on exception (any: a CancelledError the
    handler lets escape too), prefetch and grouped acknowledgements, heartbeats,
    ``task_timeout`` (the handler's task is cancelled; one that ignores that runs on
    apart, and its slot takes the next message), and graceful shutdown on
    ``stop()``, SIGTERM or SIGINT (when run on the main thread's loop: a signal stops every
    AsyncWorker running there, and the last to end puts back the handlers the program had
    before). The heartbeat's storage calls run on a thread of its own, so that nothing
    filling the loop's default thread pool holds up the leases. Cancelling the task
    running :meth:`run` stops at once: running handlers are cancelled and their messages
    given back to the queue. A plain (not ``async``) handler runs on a thread of its own
    for each message (see :mod:`sqqueue.threads`); a coroutine must not block the loop,
    which runs the heartbeat too::

        async def handle(message): ...
        await AsyncWorker(queue, handle, concurrency=10).run()
    """

    __slots__ = (
        "_aqueue",
        "_async_handler",
        "_given_up",
        "_handoff",
        "_is_coroutine",
        "_loop",
        "_running",
        "_settling_steps",
        "_strays",
    )

    _runs_coroutines = True

    def __init__(self, queue: AsyncQueue | Queue, handler: AsyncHandler, **options: Any) -> None:
        sync_queue = queue.sync if isinstance(queue, AsyncQueue) else queue
        super().__init__(sync_queue, handler, **options)
        self._async_handler = handler
        self._is_coroutine = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004  (callable objects)
        )
        self._aqueue = queue if isinstance(queue, AsyncQueue) else AsyncQueue(queue)
        self._running: dict[object, asyncio.Future[Any]] = {}
        # With task_timeout: per runner, a future resolved when its handler is given up on;
        # and the handlers given up on that still run (kept referenced until they end).
        self._given_up: dict[object, asyncio.Future[None]] = {}
        self._strays: set[asyncio.Future[Any]] = set()
        # The worker's own steps settling a message off the loop (in threads, or bridged).
        self._settling_steps: set[asyncio.Future[Any]] = set()
        # Guards the prefetch state (see WorkerCore); made on the loop, in run().
        self._handoff: asyncio.Condition | None = None
        # The loop run() runs on: the heartbeat's thread hands it what must run there.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> WorkerStats:
        """Process messages until stopped; returns the stats."""
        self._start_once()
        # SIGTERM and SIGINT stop every AsyncWorker running on this loop (a first one
        # gracefully, a second one at once), and once the last of them ends, the
        # program's own handlers are back.
        receiving = (
            self.handle_signals
            and threading.current_thread() is threading.main_thread()
            and receive_signals(self._on_signal)
        )
        logger.info("worker %s: started with %d task(s)", self.name, self.concurrency)
        drained = asyncio.Event()
        self._handoff = asyncio.Condition()
        self._loop = asyncio.get_running_loop()
        acker = self._start_acks()
        try:
            runners = [asyncio.create_task(self._runner(i)) for i in range(self.concurrency)]
            # The heartbeat's calls run on a thread of its own, never the loop's default
            # pool: handlers' asyncio.to_thread calls, hooks or retry_delay filling that
            # pool must not hold up the leases of handlers still running.
            beats = DedicatedThread(f"{self.name}-heartbeat")
            heart = asyncio.create_task(self._heartbeat_loop(drained, beats))
            try:
                while not self._stopping.is_set():
                    await asyncio.sleep(0.05)
            except BaseException:
                # Cancelled from outside: stop at once, giving running messages back.
                self.stop(immediate=True)
                raise
            finally:
                # Every step of shutdown runs, even when cancelled again meanwhile.
                to_the_end, in_thread = self._to_the_end, asyncio.to_thread
                cancelled = await to_the_end(self._release_prefetched())
                cancelled |= await self._drain(runners)
                cancelled |= await to_the_end(in_thread(self._close_acks, acker))
                cancelled |= await to_the_end(in_thread(self._wait_for_timeouts))
                drained.set()
                try:
                    cancelled |= await to_the_end(heart)
                finally:
                    beats.close()
                if cancelled:
                    raise asyncio.CancelledError
        finally:
            if receiving:
                stop_receiving(self._on_signal)
        logger.info("worker %s: stopped (%s)", self.name, self.stats)
        return self.stats

    async def _drain(self, runners: list[asyncio.Task[None]]) -> bool:
        """Wait for the runners (``grace_period``), cut off what still runs, wait for
        steps settling messages (``SETTLE_WAIT``); whether it was cancelled meanwhile."""
        deadline = time.monotonic() + self.grace_period
        pending = {r for r in runners if not r.done()}
        cancelled = False
        try:
            while pending and not self._immediate.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                _, pending = await asyncio.wait(pending, timeout=min(remaining, 0.05))
        except asyncio.CancelledError:
            cancelled = True
            self.stop(immediate=True)
        cancelled |= await self._to_the_end(asyncio.to_thread(self._cut_off))
        for handler_task in [*self._running.values(), *self._strays]:
            handler_task.cancel()  # cut off: their messages went back to the queue
        for runner in runners:
            runner.cancel()
        cancelled |= await self._to_the_end(asyncio.gather(*runners, return_exceptions=True))
        # A cancelled runner's step settling its message goes on (off the loop): wait.
        if self._settling_steps:
            try:
                await asyncio.wait(self._settling_steps, timeout=SETTLE_WAIT)
            except asyncio.CancelledError:
                # Cancelled again: stop waiting, but finish shutting down (run() ends
                # with the cancellation).
                return True
        return cancelled

    async def _to_the_end(self, step: Awaitable[T]) -> bool:
        """Await a step of shutdown to its end, even when cancelled meanwhile (then the
        worker stops at once: bounded waits end early); whether it was cancelled."""
        future = asyncio.ensure_future(step)
        cancelled = False
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                if future.cancelled():
                    raise
                cancelled = True
                self.stop(immediate=True)
        future.result()  # (its own exception, if any)
        return cancelled

    async def _runner(self, index: int) -> None:
        """One handler slot. Should its own steps ever raise, the failure is logged, its
        message failed, and the slot carries on."""
        key = ("task", index)
        while not self._stopping.is_set():
            try:
                await self._consume_loop(key)
            except asyncio.CancelledError:
                raise  # the worker is shutting down
            except BaseException as exc:
                await asyncio.to_thread(self._runner_failed, key, exc)
                await asyncio.sleep(0.1)  # never a tight loop

    async def _consume_loop(self, key: object) -> None:
        while not self._stopping.is_set():
            claimed = await self._take_async()
            if claimed is None:
                continue
            message = claimed[0]
            # Registered as running here, on the loop, before on_start (your code) waits
            # for a thread: from now on the heartbeat keeps its lease.
            with self._lock:
                task = self._register(key, message, claimed[1])
            if task is None:  # stopping: not started
                await self._step("database", self._give_back, [message])
                return
            await self._step("nothing", self._announce, task)
            if task.abandoned:  # timed out or cut off while on_start ran: settled already
                await self._step("nothing", self._end, key, task, None, None)
                continue
            handler_task = asyncio.ensure_future(self._invoke(message))
            self._running[key] = handler_task
            waits: set[asyncio.Future[Any]] = {handler_task}
            if self.task_timeout is not None:
                # Resolved when the heartbeat gives up on the handler (see _replace_abandoned).
                waits.add(
                    self._given_up.setdefault(key, asyncio.get_running_loop().create_future())
                )
            try:
                # wait(), not await: cancelling this runner (shutdown) must not be taken
                # for the handler's outcome, nor the handler's outcome for a cancellation.
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._running.pop(key, None)
                self._given_up.pop(key, None)
            if not handler_task.done():
                self._let_go(key, task, handler_task)  # timed out, and ignoring its cancel
                continue
            value: Any = None
            error: BaseException | None = asyncio.CancelledError()
            if not handler_task.cancelled():  # (it is when cancelled before it started)
                value, error = handler_task.result()
            # Only a success left to the ack thread settles without the database; a
            # failure runs retry_delay, when given: code of yours.
            needs: _Needs = "nothing"
            if error is not None and self.retry_delay is not None:
                needs = "your code"
            elif error is not None or self.results or not self._acks_open:
                needs = "database"
            await self._step(needs, self._end, key, task, value, error)

    async def _step(
        self, needs: _Needs, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run one of the worker's own steps around a handler (begin, end) on the loop,
        unless it could block it: in a thread when it runs code of yours (a hook, which
        every step may call, or ``retry_delay``), or when it uses the database and the
        queue's calls do not run on the loop natively. (A thread per step cost no-op
        handlers three quarters of their throughput on SQLite: bench/profile-notes.md.)"""
        hooked = any(getattr(self.hooks, name) is not None for name in _HOOKS)
        if needs == "nothing" and not hooked:
            return fn(*args, **kwargs)
        if needs == "database" and not hooked and self._aqueue.native:
            step = asyncio.ensure_future(_on_loop(fn, *args, **kwargs))
        else:
            step = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        if needs != "nothing":
            # Settling a message: a runner cancelled at shutdown leaves it to end
            # (shielded), and run() waits for it (see _drain).
            self._settling_steps.add(step)
            step.add_done_callback(self._settling_steps.discard)
        return await asyncio.shield(step)

    async def _invoke(self, message: Message) -> tuple[Any, BaseException | None]:
        """Run the handler: (its value, None) or (None, what it raised).

        Whatever it raises is returned, not raised: KeyboardInterrupt or SystemExit
        escaping a task would stop the event loop, and a CancelledError escaping the
        handler is its failure, unless this worker cancelled it (task_timeout or the end
        of shutdown), when the task is abandoned and its outcome ignored.
        """
        try:
            if self._is_coroutine:
                return await self._async_handler(message), None
            # A plain function runs in a thread, so it cannot block the event loop: one
            # of its own, not the loop's pool, which runs the worker's own steps. Its
            # outcome comes back as a value: a StopIteration could not cross a future.
            value, error = await run_in_own_thread(_outcome, self._async_handler, message)
            if inspect.iscoroutine(value):
                # A plain callable that makes the coroutine (``lambda m: handle(m, db)``):
                # its work is that coroutine, run here like an async handler's.
                return await value, None
            return value, error
        except BaseException as exc:
            return None, exc

    async def _take_async(self) -> Claimed | None:
        """The next message: one fetched earlier, or a fetch of our own for us, the
        runners idle beside us and those about to be; None when stopping or nothing came."""
        handoff = self._handoff
        assert handoff is not None  # made by run()
        async with handoff:
            while self._must_wait():
                self._idle += 1
                try:
                    await handoff.wait()
                finally:
                    self._idle -= 1
            step, stale = self._next_or_fetch()
        if stale:
            await asyncio.to_thread(self._give_back, stale)
        if not isinstance(step, int):
            return step
        batch: list[Message] = []
        try:
            result = await self._aqueue.dequeue_batch(
                step, visibility_timeout=self.lease, wait=self.poll_wait, cancel=self._stopping
            )
            if isinstance(result, Err):
                self._dequeue_failed(result.error)
                if not self._stopping.is_set():  # the database is in trouble: back off
                    await asyncio.sleep(min(self.poll_wait, 1.0))
            else:
                batch = result.value
        finally:
            async with handoff:
                mine, back = self._fetched(batch)
                handoff.notify_all()
        if back:
            await asyncio.to_thread(self._give_back, back)
        return mine

    async def _release_prefetched(self) -> None:
        """At shutdown, while runners may still take what is prefetched: give back what
        was claimed but never started (taken out on the loop, where runners take it)."""
        await asyncio.to_thread(self._give_back, self._unstarted())

    def _replace_abandoned(self) -> None:
        # The abandoned handler's task is cancelled, and its runner stops waiting for it:
        # the runner carries on by itself (or ends, when stopping), even if the handler
        # ignores the cancellation. Decided on the loop, where the runner notes its
        # handler's task: from this thread, a runner that found its task not abandoned a
        # moment ago may not have noted it yet, and would wait for it for good.
        loop = self._loop
        assert loop is not None  # set by run(), whose heartbeat calls this
        with self._lock:
            abandoned = [(key, task) for key, task in self._tasks.items() if task.abandoned]
        for key, task in abandoned:
            with contextlib.suppress(RuntimeError):  # (the loop is closed: nobody waits)
                loop.call_soon_threadsafe(self._give_up, key, task)

    def _give_up(self, key: object, task: RunningTask) -> None:
        """On the loop: cancel the handler of the abandoned ``task`` and stop its runner
        waiting for it, if that runner still runs it (by now it may have gone on to its
        next message, which must not be touched). A runner that has not started the
        handler yet sees the task abandoned itself, and does not start it."""
        with self._lock:
            if self._tasks.get(key) is not task:
                return
        running = self._running.get(key)
        if running is not None:
            running.cancel()
        given_up = self._given_up.get(key)
        if given_up is not None and not given_up.done():
            given_up.set_result(None)

    def _let_go(self, key: object, task: RunningTask, handler_task: asyncio.Future[Any]) -> None:
        """A handler timed out and cancelled, but still running (it swallowed the
        cancellation): its message was failed already; it runs on apart, and its slot
        takes the next message."""
        with self._lock:
            if self._tasks.get(key) is task:
                del self._tasks[key]
        self._strays.add(handler_task)
        handler_task.add_done_callback(self._strays.discard)
        logger.warning(
            "worker %s: the handler of message %d runs on though it timed out and was "
            "cancelled (it ignores cancellation); its slot goes on without it",
            self.name,
            task.message.id,
            extra={"message_id": task.message.id, "attempt": task.message.attempts},
        )

    async def _heartbeat_loop(self, drained: asyncio.Event, beats: DedicatedThread) -> None:
        """The heartbeat: its rounds' storage calls (extending leases, timing handlers out,
        giving back messages held unstarted too long) run on ``beats``, its own thread."""
        handoff = self._handoff
        assert handoff is not None  # made by run()
        failing_since: float | None = None  # when the rounds began to fail, if they do
        while not drained.is_set():
            pause = self.tick
            try:
                async with handoff:
                    stale = self._stale()
                if stale:
                    await beats.run(self._give_back, stale)
                running = await beats.run(self._beat)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # never a silent end: said, and tried again
                failing_since = self._heartbeat_failed(exc, failing_since)
                pause = min(self.heartbeat, HEARTBEAT_RETRY)
            else:
                failing_since = None
                if self._stopping.is_set() and not running:
                    return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drained.wait(), pause)
